-- Steward schema, version 4: port-change phasing and agents' failed attempts.
--
-- A gateway's port change is phased: the gateway keeps answering on its old port until every
-- active device holds a communication profile with the new entry. The server knows that by
-- comparing what each device says it holds (`profile_version_acked`, from its check-ins) with
-- the profile version at which the gateway's current entry first appeared
-- (`entry_since_version`).
ALTER TABLE devices ADD COLUMN profile_version_acked INTEGER NOT NULL DEFAULT 0;
-- Every way to the server that failed, as the agent last reported it (JSON array of
-- FailedAttempt), and when it arrived (server time): a blocked gateway port stays visible
-- while the agent works through another way.
ALTER TABLE devices ADD COLUMN failed_attempts TEXT;
ALTER TABLE devices ADD COLUMN failed_attempts_at INTEGER;
ALTER TABLE gateways ADD COLUMN entry_since_version INTEGER NOT NULL DEFAULT 0;

-- "Who has not got the new entry yet" is asked at every gateway report (every minute per
-- gateway) and on the gateways page; without an index it would read every device row.
CREATE INDEX devices_profile_pending ON devices (profile_version_acked) WHERE revoked = 0;
-- "Which agents failed lately" likewise; most devices never report a failure, so the partial
-- index stays small.
CREATE INDEX devices_failed_attempts_at ON devices (failed_attempts_at)
    WHERE failed_attempts_at IS NOT NULL;
