-- Steward schema, version 1. Times are Unix seconds (UTC) unless named *_rfc3339; JSON columns
-- hold serde_json text of the steward-proto types named in the comments.

CREATE TABLE settings (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);

CREATE TABLE devices (
    id                   TEXT PRIMARY KEY NOT NULL,  -- UUID, also the client certificate's CN
    name                 TEXT NOT NULL,
    cert_serial          TEXT NOT NULL,              -- upper-case hex
    cert_sha256          TEXT NOT NULL,              -- upper-case hex of the DER's SHA-256
    tags                 TEXT NOT NULL DEFAULT '[]', -- JSON array of strings
    created_at           INTEGER NOT NULL,
    last_seen            INTEGER,
    connection_path      TEXT,
    last_error           TEXT,                       -- JSON AgentError
    config_version_acked INTEGER NOT NULL DEFAULT 0,
    os                   TEXT,                       -- "name version", from the inventory
    inventory            TEXT,                       -- JSON Inventory
    inventory_hash       TEXT,
    inventory_at         INTEGER,
    revoked              INTEGER NOT NULL DEFAULT 0,
    revoked_at           INTEGER
);
CREATE INDEX devices_by_name ON devices (name);

CREATE TABLE enrollment_tokens (
    token_hash TEXT PRIMARY KEY NOT NULL,  -- hex SHA-256 of the token; the token itself is never stored
    expires_at INTEGER NOT NULL,
    max_uses   INTEGER NOT NULL,
    uses       INTEGER NOT NULL DEFAULT 0,
    tags       TEXT NOT NULL DEFAULT '[]',
    created_at INTEGER NOT NULL,
    created_by TEXT NOT NULL
);

CREATE TABLE tasks (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    command      TEXT NOT NULL,
    args         TEXT NOT NULL,  -- JSON array of strings
    timeout_secs INTEGER NOT NULL,
    target       TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    created_by   TEXT NOT NULL
);

CREATE TABLE task_devices (
    task_id      INTEGER NOT NULL REFERENCES tasks (id),
    device_id    TEXT NOT NULL REFERENCES devices (id),
    state        TEXT NOT NULL,  -- pending, running, succeeded, failed, timed_out
    exit_code    INTEGER,
    output       TEXT,
    truncated    INTEGER NOT NULL DEFAULT 0,
    delivered_at INTEGER,
    finished_at  TEXT,           -- RFC 3339, as the agent reported it
    committed_at INTEGER,
    PRIMARY KEY (task_id, device_id)
);
-- The check-in's "anything pending for me?" is an index probe, never a scan.
CREATE INDEX task_devices_by_device_state ON task_devices (device_id, state);

CREATE TABLE policies (
    name       TEXT PRIMARY KEY NOT NULL,
    target     TEXT NOT NULL,    -- all | tag:NAME
    settings   TEXT NOT NULL,    -- JSON object of string values
    updated_at INTEGER NOT NULL
);

CREATE TABLE admins (
    username      TEXT PRIMARY KEY NOT NULL,
    password_hash TEXT NOT NULL,  -- PHC string (argon2id)
    failed_logins INTEGER NOT NULL DEFAULT 0,
    locked_until  INTEGER
);

CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY NOT NULL,  -- hex SHA-256 of the bearer token
    username   TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
