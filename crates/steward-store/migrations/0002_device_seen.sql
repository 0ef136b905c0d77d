-- Steward schema, version 2: last-seen moves out of `devices` into a narrow table of its own.
--
-- Every check-in notes its device as seen; the server writes those sightings in one batched
-- transaction every few seconds. In `devices` each sighting dirtied the device's wide row, and
-- with an inventory (about 1 KB of JSON) stored in it that row fills most of a page: a flush of
-- the 8,500 devices seen in 5 s of a 100,000-device fleet wrote about 8,500 pages, so the cost
-- of a sighting grew with the fleet. Here about 60 sightings share a page and the flush writes in
-- key order, so the same flush touches at most the table's ~1,800 pages. BENCHMARKS.md has the
-- figures.
CREATE TABLE device_seen (
    device_id       TEXT PRIMARY KEY NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    last_seen       INTEGER NOT NULL,  -- the newest sighting flushed
    connection_path TEXT               -- how it connected then (`lan via host:port`)
) WITHOUT ROWID;

INSERT INTO device_seen (device_id, last_seen, connection_path)
    SELECT id, last_seen, connection_path FROM devices WHERE last_seen IS NOT NULL;

ALTER TABLE devices DROP COLUMN last_seen;
ALTER TABLE devices DROP COLUMN connection_path;
