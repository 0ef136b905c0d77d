-- Steward schema, version 5: certificate lifecycle (issue 5).
--
-- Revoked serials that no longer belong to a device row: a deleted device's certificate, and a
-- device certificate superseded by a renewal once the agent proved it uses the new one. The
-- CRLs list them alongside revoked devices and gateways, so deleting a device can never
-- un-revoke its identity.
CREATE TABLE revoked_certs (
    serial      TEXT PRIMARY KEY NOT NULL,   -- upper-case hex
    revoked_at  INTEGER NOT NULL,
    subject     TEXT NOT NULL,               -- the device (or gateway) ID it was issued to
    reason      TEXT NOT NULL                -- deleted | superseded
);

-- When the device's current certificate expires (NULL for rows from before version 5), and
-- the renewed certificate issued but not yet confirmed: both are accepted until the agent's
-- first request with the new one, which promotes it and retires the old.
ALTER TABLE devices ADD COLUMN cert_not_after INTEGER;
ALTER TABLE devices ADD COLUMN next_cert_serial TEXT;
ALTER TABLE devices ADD COLUMN next_cert_sha256 TEXT;
ALTER TABLE devices ADD COLUMN next_cert_not_after INTEGER;
