-- Internet gateways. Gateway join tokens live with the enrollment tokens (same hashing, expiry
-- and atomic consumption), told apart by `kind` so neither kind of token can be used as the
-- other.
ALTER TABLE enrollment_tokens ADD COLUMN kind TEXT NOT NULL DEFAULT 'agent';  -- agent | gateway

CREATE TABLE gateways (
    id            TEXT PRIMARY KEY NOT NULL,  -- UUID, also its client certificate's CN
    cert_serial   TEXT NOT NULL,              -- its client (identity) certificate, upper-case hex
    cert_sha256   TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    revoked       INTEGER NOT NULL DEFAULT 0,
    revoked_at    INTEGER,
    report        TEXT,                       -- JSON GatewayReport, the latest
    reported_at   INTEGER
);
