-- Steward schema, version 6: gateway certificate renewal (issue 5).
--
-- A gateway has two platform-issued certificates: its identity (gateway→server, CN = gateway
-- ID; `gateways.cert_serial`/`cert_sha256` stay the one it is authenticated by) and its server
-- certificate (what agents see at the edge). Per role, the one in use (`current`) and a renewed
-- one issued but not in use yet (`next`): a next identity is accepted next to the current one
-- until its first use promotes it; a next server certificate is promoted when the gateway
-- reports it as the one it serves (after every agent acknowledged a profile holding its
-- thumbprint). The certificate a promotion supersedes goes into `revoked_certs`. Rows exist
-- for gateways joined (or renewed) from version 6 on.
CREATE TABLE gateway_certs (
    gateway_id   TEXT NOT NULL REFERENCES gateways (id),
    role         TEXT NOT NULL,     -- identity | server
    slot         TEXT NOT NULL,     -- current | next
    serial       TEXT NOT NULL,     -- upper-case hex
    sha256       TEXT NOT NULL,     -- of the certificate (hex)
    spki_sha256  TEXT NOT NULL,     -- of its public key: a renewal must bring a fresh key
    not_before   INTEGER NOT NULL,
    not_after    INTEGER NOT NULL,
    issued_at    INTEGER NOT NULL,
    PRIMARY KEY (gateway_id, role, slot)
);

-- The external names the gateway joined with (JSON array): what a renewed server certificate
-- covers. NULL for gateways joined before version 6 (their reported external name is used).
ALTER TABLE gateways ADD COLUMN external_names TEXT;
