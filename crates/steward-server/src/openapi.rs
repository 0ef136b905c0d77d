//! The OpenAPI 3.1 description of the admin API (and, for reference, the agent site), written
//! by hand from steward_proto. A test checks that every route of `steward_proto::admin::paths`
//! and `steward_proto::paths` is described.

use serde_json::{Value, json};
use steward_proto::admin::paths as admin;
use steward_proto::paths as agent;

fn r(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn body(name: &str) -> Value {
    json!({ "required": true, "content": { "application/json": { "schema": r(name) } } })
}

fn ok(description: &str, schema: Value) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": schema } } })
}

fn err(description: &str) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": r("ApiError") } } })
}

fn array(name: &str) -> Value {
    json!({ "type": "array", "items": r(name) })
}

fn string() -> Value {
    json!({ "type": "string" })
}

fn strings() -> Value {
    json!({ "type": "array", "items": { "type": "string" } })
}

fn int() -> Value {
    json!({ "type": "integer", "minimum": 0 })
}

fn nullable(v: Value) -> Value {
    json!({ "oneOf": [v, { "type": "null" }] })
}

/// Gateway certificate renewal (issue 5): its messages, and the fields it adds to the gateway
/// report answer and summary (kept apart: the schema literal is at the macro's recursion limit).
fn gateway_renewal_schemas(mut schemas: Value) -> Value {
    schemas["GatewayRenewRequest"] = object(
        &[],
        json!({
            "identity_csr_pem": string(), "server_csr_pem": string(), "external_names": strings()
        }),
    );
    schemas["GatewayRenewResponse"] = object(
        &["chain_pem"],
        json!({
            "identity_cert_pem": string(), "server_cert_pem": string(), "chain_pem": strings(),
            "identity_not_after": string(), "server_not_after": string()
        }),
    );
    schemas["GatewayCertStatus"] = object(
        &["role", "serial", "sha256", "not_after"],
        json!({
            "role": { "type": "string", "enum": ["identity", "server"] }, "serial": string(),
            "sha256": string(), "not_after": string(), "next_sha256": string(),
            "warning": string()
        }),
    );
    let props = &mut schemas["GatewayReportResponse"]["properties"];
    props["renew_identity"] = json!({ "type": "boolean" });
    props["renew_server"] = json!({ "type": "boolean" });
    let props = &mut schemas["GatewaySummary"]["properties"];
    props["certificates"] = array("GatewayCertStatus");
    props["renewal"] = string();
    schemas
}

fn object(required: &[&str], props: Value) -> Value {
    json!({ "type": "object", "required": required, "properties": props })
}

fn string_map() -> Value {
    json!({ "type": "object", "additionalProperties": { "type": "string" } })
}

fn auth_errors(mut responses: Value) -> Value {
    responses["401"] = err(
        "AUTH-REQUIRED (no or unknown credentials; WWW-Authenticate offers the [auth] providers \
         in order), AUTH-NEGOTIATE-FAILED, AUTH-NTLM-NOT-SUPPORTED, AUTH-FAILED",
    );
    responses["403"] = err(
        "AUTH-PRINCIPAL-UNKNOWN (a Kerberos principal without a role), AUTH-ROLE-FORBIDDEN, \
         AUTH-PASSWORD-DISABLED",
    );
    // Only when no route-specific 400 is documented: the route's own entry names its cases.
    if responses.get("400").is_none() {
        responses["400"] = err(
            "AUTH-NEGOTIATE-MALFORMED (an Authorization: Negotiate value that is not a GSS-API \
             token: empty, not base64, oversized)",
        );
    }
    responses
}

/// The document.
pub fn document() -> Value {
    let secured = json!([
        { "negotiate": [] },
        { "basic": [] },
        { "bearer": [] },
        { "session": [] }
    ]);
    let mut paths = serde_json::Map::new();
    paths.insert(
        admin::LOGIN.to_owned(),
        json!({ "post": {
            "summary": "Log in with a local account",
            "security": [],
            "requestBody": body("LoginRequest"),
            "responses": {
                "200": ok("A bearer token (12 hours)", r("LoginResponse")),
                "400": err("REQUEST-MALFORMED"),
                "401": err("AUTH-FAILED: wrong user name or password"),
                "429": err("AUTH-LOCKED: 5 failed logins lock the account for 5 minutes; the message says until when"),
            }
        }}),
    );
    paths.insert(
        admin::DEVICES.to_owned(),
        json!({ "get": {
            "summary": "List devices",
            "security": secured,
            "responses": auth_errors(json!({ "200": ok("Devices", array("DeviceSummary")) })),
        }}),
    );
    paths.insert(
        admin::DEVICE.to_owned(),
        json!({ "get": {
            "summary": "One device by ID or name",
            "security": secured,
            "parameters": [{ "name": "id", "in": "path", "required": true, "schema": string(),
                             "description": "Device ID or host name" }],
            "responses": auth_errors(json!({
                "200": ok("The device", r("DeviceDetail")),
                "404": err("DEVICE-NOT-FOUND"),
                "409": err("DEVICE-NAME-AMBIGUOUS: several devices have that name; use an ID"),
            })),
        },
        "delete": {
            "summary": "Delete a device: its certificate is revoked and stays in the CRLs (re-signed before the answer)",
            "security": secured,
            "parameters": [{ "name": "id", "in": "path", "required": true, "schema": string(),
                             "description": "Device ID or host name" }],
            "responses": auth_errors(json!({
                "204": { "description": "Deleted and revoked" },
                "404": err("DEVICE-NOT-FOUND"),
                "409": err("DEVICE-NAME-AMBIGUOUS"),
            })),
        }}),
    );
    paths.insert(
        admin::TASKS.to_owned(),
        json!({
            "get": {
                "summary": "List tasks, newest first",
                "security": secured,
                "responses": auth_errors(json!({ "200": ok("Tasks", array("TaskSummary")) })),
            },
            "post": {
                "summary": "Run a command on the devices a target selects",
                "security": secured,
                "requestBody": body("NewTask"),
                "responses": auth_errors(json!({
                    "200": ok("Created; online targets are woken at once", r("TaskCreated")),
                    "400": err("TASK-INVALID, TASK-TARGET-INVALID, TASK-NO-TARGETS or REQUEST-MALFORMED"),
                })),
            }
        }),
    );
    paths.insert(
        admin::TASK.to_owned(),
        json!({ "get": {
            "summary": "One task with each device's state and output",
            "security": secured,
            "parameters": [{ "name": "id", "in": "path", "required": true, "schema": int() }],
            "responses": auth_errors(json!({
                "200": ok("The task", r("TaskDetail")),
                "404": err("TASK-NOT-FOUND"),
            })),
        }}),
    );
    paths.insert(
        admin::POLICIES.to_owned(),
        json!({
            "get": {
                "summary": "List policies",
                "security": secured,
                "responses": auth_errors(json!({ "200": ok("Policies", array("Policy")) })),
            },
            "post": {
                "summary": "Create or replace a policy by name (agent-settings keys: checkin_interval_secs, jitter_percent, long_poll_secs, task_output_max_bytes, persistent_connection = true|false)",
                "security": secured,
                "requestBody": body("Policy"),
                "responses": auth_errors(json!({
                    "200": ok("Saved; every waiting agent is woken to fetch its configuration", r("Policy")),
                    "400": err("POLICY-INVALID or REQUEST-MALFORMED"),
                })),
            }
        }),
    );
    paths.insert(
        admin::PACKAGES.to_owned(),
        json!({ "post": {
            "summary": "Make an enrollment (bootstrap) package",
            "security": secured,
            "requestBody": body("NewPackage"),
            "responses": auth_errors(json!({
                "200": ok("The package; its token is shown only here", r("BootstrapPackage")),
                "400": err("PACKAGE-INVALID or REQUEST-MALFORMED"),
            })),
        }}),
    );
    paths.insert(
        admin::GATEWAY_TOKENS.to_owned(),
        json!({ "post": {
            "summary": "Make a single-use gateway join token ({\"expires_secs\": N} → {\"token\", \"expires_at\"})",
            "security": secured,
            "responses": auth_errors(json!({
                "200": { "description": "The token; shown only here" },
                "400": err("GATEWAY-TOKEN-REQUEST-INVALID or REQUEST-MALFORMED"),
            })),
        }}),
    );
    paths.insert(
        admin::GATEWAYS.to_owned(),
        json!({ "get": {
            "summary": "List gateways with what each last reported (name, port, thumbprints, version, health), green or red with the reasons, and the devices that do not hold its current entry yet",
            "security": secured,
            "responses": auth_errors(json!({ "200": ok("Gateways", array("GatewaySummary")) })),
        }}),
    );
    paths.insert(
        admin::GATEWAY_REVOKE.to_owned(),
        json!({ "post": {
            "summary": "Revoke a gateway: refused at once, put in the CRL, removed from the profile",
            "security": secured,
            "parameters": [{ "name": "id", "in": "path", "required": true, "schema": string() }],
            "responses": auth_errors(json!({
                "204": { "description": "Revoked" },
                "404": err("GATEWAY-NOT-FOUND"),
            })),
        }}),
    );
    paths.insert(
        admin::DEVICE_REVOKE.to_owned(),
        json!({ "post": {
            "summary": "Revoke a device's certificate: refused at once, and in the CRLs (re-signed before the answer)",
            "security": secured,
            "parameters": [{ "name": "id", "in": "path", "required": true, "schema": string(),
                             "description": "Device ID or host name" }],
            "responses": auth_errors(json!({
                "204": { "description": "Revoked" },
                "404": err("DEVICE-NOT-FOUND"),
                "409": err("DEVICE-NAME-AMBIGUOUS"),
            })),
        }}),
    );
    paths.insert(
        admin::OPENAPI.to_owned(),
        json!({ "get": {
            "summary": "This document",
            "security": [],
            "responses": { "200": { "description": "OpenAPI 3.1", "content": { "application/json": {} } } },
        }}),
    );
    // The agent site is another listener (mutual TLS); described here so one document holds
    // the whole wire contract.
    let agent_server = json!([{ "url": "https://{fqdn}:4726", "description": "agent site (mutual TLS)",
                                "variables": { "fqdn": { "default": "localhost" } } }]);
    paths.insert(
        agent::ENROLL.to_owned(),
        json!({ "servers": agent_server, "post": {
            "summary": "Enroll: CSR plus bootstrap token; no client certificate",
            "security": [],
            "requestBody": body("EnrollRequest"),
            "responses": {
                "200": ok("The client certificate and profile", r("EnrollResponse")),
                "400": err("ENROLL-CSR-INVALID or REQUEST-MALFORMED"),
                "403": err("ENROLL-TOKEN-INVALID, ENROLL-TOKEN-EXPIRED or ENROLL-TOKEN-EXHAUSTED"),
                "413": err("REQUEST-TOO-LARGE"),
            }
        }}),
    );
    paths.insert(
        agent::CHECKIN.to_owned(),
        json!({ "servers": agent_server, "post": {
            "summary": "Check in (client certificate required)",
            "security": [{ "clientCertificate": [] }],
            "requestBody": body("CheckinRequest"),
            "responses": {
                "200": ok("Configuration when changed, tasks, acknowledged results", r("CheckinResponse")),
                "400": err("CHECKIN-FAILED-ATTEMPTS-INVALID or REQUEST-MALFORMED"),
                "401": err("AGENT-CERT-REQUIRED"),
                "403": err("AGENT-UNKNOWN-DEVICE"),
                "413": err("REQUEST-TOO-LARGE"),
                "503": err("SERVER-BUSY (admission control; header Retry-After: seconds)"),
            }
        }}),
    );
    paths.insert(
        agent::WAIT.to_owned(),
        json!({ "servers": agent_server, "get": {
            "summary": "Long-poll for work (client certificate required)",
            "security": [{ "clientCertificate": [] }],
            "parameters": [
                { "name": "config_version", "in": "query", "required": false, "schema": int() },
                { "name": "wait", "in": "query", "required": false, "schema": int(),
                  "description": "Seconds the agent listens; the server answers 204 two seconds before (or at long_poll_secs, whichever is sooner), so the connection is kept for the next check-in" },
                { "name": "tasks", "in": "query", "required": false, "schema": { "type": "string", "enum": ["carry"] },
                  "description": "`carry`: pending tasks come in the wake-up itself (handed out as a check-in would), when an admission slot is free; otherwise reason `tasks` means check in to fetch them" }
            ],
            "responses": {
                "200": ok("Work is waiting: reason `tasks`, `config`, or `wake` (woken while the server was busy: check in)", r("WakeUp")),
                "204": { "description": "Nothing within long_poll_secs (or the agent's wait, less 2 s)" },
                "401": err("AGENT-CERT-REQUIRED"),
                "403": err("AGENT-UNKNOWN-DEVICE"),
            }
        }}),
    );
    paths.insert(
        agent::PING.to_owned(),
        json!({ "servers": agent_server, "get": {
            "summary": "Prove the whole path (TLS, client certificate, a gateway's link) without side effects; authenticated like a check-in, directly or through a gateway",
            "security": [{ "clientCertificate": [] }],
            "responses": {
                "200": ok("Who the server takes the agent for, and through which gateway", r("Pong")),
                "401": err("AGENT-CERT-REQUIRED"),
                "403": err("AGENT-UNKNOWN-DEVICE, GATEWAY-NOT-TRUSTED or GATEWAY-AGENT-CERT-INVALID"),
            }
        }}),
    );
    paths.insert(
        agent::GATEWAY_JOIN.to_owned(),
        json!({ "servers": agent_server, "post": {
            "summary": "A gateway joins: single-use token, two CSRs (identity, server certificate) and its external names; no client certificate",
            "security": [],
            "responses": {
                "200": { "description": "The gateway's ID, both certificates, chain, anchors, CRL URL" },
                "400": err("GATEWAY-CSR-INVALID, GATEWAY-NAME-INVALID or REQUEST-MALFORMED"),
                "403": err("GATEWAY-TOKEN-INVALID, GATEWAY-TOKEN-EXPIRED or GATEWAY-TOKEN-USED"),
            }
        }}),
    );
    paths.insert(
        agent::GATEWAY_REPORT.to_owned(),
        json!({ "servers": agent_server, "post": {
            "summary": "A gateway reports itself (external name, bound port, previous ports, thumbprints, version, health, self-probes); the profile's gateway entries are derived from these reports",
            "security": [{ "clientCertificate": [] }],
            "requestBody": body("GatewayReport"),
            "responses": {
                "200": ok("Stored; what to probe, and whether every agent holds the current entry", r("GatewayReportResponse")),
                "400": err("GATEWAY-REPORT-INVALID or REQUEST-MALFORMED"),
                "401": err("GATEWAY-CERT-REQUIRED"),
                "403": err("GATEWAY-NOT-TRUSTED"),
            }
        }}),
    );

    paths.insert(
        agent::GATEWAY_RENEW.to_owned(),
        json!({ "servers": agent_server, "post": {
            "summary": "A gateway renews its identity and/or server certificate: CSRs for new keys made on the gateway, over its current identity; the new identity is accepted until its first use, the new server certificate is staged until every agent holds its thumbprint",
            "security": [{ "clientCertificate": [] }],
            "requestBody": body("GatewayRenewRequest"),
            "responses": {
                "200": ok("The renewed certificates and their chain", r("GatewayRenewResponse")),
                "400": err("GATEWAY-RENEW-INVALID, GATEWAY-CSR-INVALID, GATEWAY-RENEW-NAMES, GATEWAY-RENEW-KEY-REUSED or REQUEST-MALFORMED"),
                "401": err("GATEWAY-CERT-REQUIRED"),
                "403": err("GATEWAY-NOT-TRUSTED"),
            }
        }}),
    );

    paths.insert(
        agent::GATEWAY_CRL.to_owned(),
        json!({ "servers": agent_server, "get": {
            "summary": "The issuing CA's current CRL (DER), for enrolled gateways: fetched over the gateway's authenticated link, so the DMZ needs only the agent-site port",
            "security": [{ "clientCertificate": [] }],
            "responses": {
                "200": { "description": "The CRL (application/pkix-crl)" },
                "401": err("GATEWAY-CERT-REQUIRED"),
                "403": err("GATEWAY-NOT-TRUSTED"),
                "503": err("GATEWAY-CRL-NOT-READY"),
            }
        }}),
    );
    paths.insert(
        admin::SERVER_CA_ROLL.to_owned(),
        json!({ "get": {
            "summary": "The platform root CA and a root roll: phase (idle, staged, overlap), the root, the issuing CA, the previous root, and a staged root's distribution (acknowledged, total, pending)",
            "security": secured,
            "responses": auth_errors(json!({ "200": { "description": "The roll's status" } })),
        }}),
    );
    paths.insert(
        admin::SERVER_CA_ROLL_STAGE.to_owned(),
        json!({ "post": {
            "summary": "Stage a new platform root: made with the issuing CA's certificate under it, put into the communication profile and the trust bundle; nothing agents must accept is signed by it yet",
            "security": secured,
            "responses": auth_errors(json!({
                "200": { "description": "The roll's status, phase staged" },
                "409": err("SERVER-CA-ROLL-ALREADY-STAGED"),
            })),
        }}),
    );
    paths.insert(
        admin::SERVER_CA_ROLL_FINALIZE.to_owned(),
        json!({ "post": {
            "summary": "Finalize the root roll ({\"force\": bool}): the new root becomes the platform root, the previous one stays trusted, the listener certificates are re-issued and served without a restart; refused while agents have not acknowledged the new root unless forced (the answer names them and how they recover)",
            "security": secured,
            "responses": auth_errors(json!({
                "200": { "description": "The roll's status, stranded agents, recovery, re-issued listeners" },
                "409": err("SERVER-CA-ROLL-NOT-DISTRIBUTED"),
            })),
        }}),
    );
    paths.insert(
        admin::SERVER_CA_ROLL_ROLLBACK.to_owned(),
        json!({ "post": {
            "summary": "Roll back a staged root roll (before finalize): the new root leaves the profile and its files are deleted",
            "security": secured,
            "responses": auth_errors(json!({
                "200": { "description": "The roll's status, phase idle" },
                "409": err("SERVER-CA-ROLL-NOT-STAGED"),
            })),
        }}),
    );
    paths.insert(
        admin::SERVER_CERTS.to_owned(),
        json!({ "get": {
            "summary": "The server's listener certificates as served now (listener, subject, issuer, sha256, not_before, not_after, renewal_due, warning)",
            "security": secured,
            "responses": auth_errors(json!({ "200": { "description": "One entry per listener (agent, console)" } })),
        }}),
    );
    paths.insert(
        admin::SERVER_CERT_RENEW.to_owned(),
        json!({ "post": {
            "summary": "Renew a listener's certificate from the platform CA now; served from the next connection on, without a restart",
            "security": secured,
            "parameters": [{ "name": "listener", "in": "path", "required": true, "schema": string(),
                             "description": "agent or console" }],
            "responses": auth_errors(json!({
                "200": { "description": "The listener's new certificate" },
                "404": err("SERVER-LISTENER-UNKNOWN"),
            })),
        }}),
    );
    paths.insert(
        agent::RENEW.to_owned(),
        json!({ "servers": agent_server, "post": {
            "summary": "Renew the agent's client certificate: a CSR for a key made on the computer ({\"csr_pem\"} → {\"cert_pem\", \"chain_pem\", \"not_after\"}); the old certificate stays valid until the first request with the new one",
            "security": [{ "clientCertificate": [] }],
            "responses": {
                "200": { "description": "The renewed certificate" },
                "400": err("AGENT-RENEW-CSR-INVALID or REQUEST-MALFORMED"),
                "401": err("AGENT-CERT-REQUIRED"),
                "403": err("AGENT-UNKNOWN-DEVICE, GATEWAY-NOT-TRUSTED or GATEWAY-AGENT-CERT-INVALID"),
            }
        }}),
    );

    let agent_error = object(
        &["id", "message", "at"],
        json!({ "id": string(), "message": string(), "at": string() }),
    );
    let task_state = json!({ "type": "string",
        "enum": ["pending", "running", "succeeded", "failed", "timed_out"] });
    let task_summary_props = json!({
        "id": int(), "command": string(), "args": strings(), "target": string(),
        "created_at": string(), "targets": int(), "finished": int()
    });
    let mut task_detail_props = task_summary_props.clone();
    task_detail_props["results"] = array("DeviceTaskState");
    let summary_props = json!({
        "id": string(), "name": string(), "os": nullable(string()),
        "status": { "type": "string", "enum": ["online", "offline"] },
        "last_checkin": nullable(string()), "connection_path": nullable(string()),
        "last_error": nullable(r("AgentError")),
        "failed_attempts": array("FailedAttempt"), "tags": strings(),
        "connected": { "type": "boolean", "description": "The agent holds its persistent connection (long-poll) now: a task reaches it at once" }
    });
    let failure_kind = json!({ "type": "string",
        "enum": ["dns", "refused", "timeout", "tls", "wrong_peer", "http"] });
    let probe_target = object(
        &["host", "port"],
        json!({ "host": string(), "port": int() }),
    );
    let mut detail_props = summary_props.clone();
    detail_props["inventory"] = nullable(json!({ "type": "object" }));
    detail_props["applied_policies"] = array("AppliedPolicy");
    detail_props["tasks"] = array("DeviceTaskState");
    let profile = object(
        &["version", "servers", "trust_anchors_pem"],
        json!({
            "version": int(),
            "servers": { "type": "array", "items": object(&["host", "port"], json!({ "host": string(), "port": int() })) },
            "protocol": { "type": "string", "enum": ["https"] },
            "trust_anchors_pem": strings()
        }),
    );
    let settings = object(
        &[
            "checkin_interval_secs",
            "jitter_percent",
            "long_poll_secs",
            "task_output_max_bytes",
        ],
        json!({ "checkin_interval_secs": int(), "jitter_percent": int(),
                "long_poll_secs": int(), "task_output_max_bytes": int(),
                "persistent_connection": { "type": "boolean", "default": true,
                    "description": "Hold the long-poll between check-ins (absent: true)" } }),
    );
    let schemas = json!({
        "ApiError": object(&["id", "message"], json!({ "id": string(), "message": string() })),
        "LoginRequest": object(&["username", "password"], json!({ "username": string(), "password": { "type": "string", "format": "password" } })),
        "LoginResponse": object(&["token", "expires_at"], json!({ "token": string(), "expires_at": string() })),
        "AgentError": agent_error,
        "DeviceSummary": object(&["id", "name", "status", "tags"], summary_props),
        "DeviceDetail": object(&["id", "name", "status", "tags", "applied_policies", "tasks"], detail_props),
        "AppliedPolicy": object(&["name", "values"], json!({ "name": string(), "values": string_map() })),
        "DeviceTaskState": object(&["task_id", "device_id", "device_name", "state", "truncated"], json!({
            "task_id": int(), "device_id": string(), "device_name": string(), "state": task_state,
            "exit_code": nullable(json!({ "type": "integer" })), "output": nullable(string()),
            "truncated": { "type": "boolean" }, "finished_at": nullable(string())
        })),
        "NewTask": object(&["command", "args", "timeout_secs", "target"], json!({
            "command": string(), "args": strings(), "timeout_secs": int(),
            "target": { "type": "string", "description": "all, tag:NAME or device:NAME-OR-ID" }
        })),
        "TaskCreated": object(&["id", "targets"], json!({ "id": int(), "targets": int() })),
        "TaskSummary": object(&["id", "command", "args", "target", "created_at", "targets", "finished"], task_summary_props),
        "TaskDetail": object(&["id", "command", "args", "target", "created_at", "targets", "finished", "results"], task_detail_props),
        "Policy": object(&["name", "target", "values"], json!({
            "name": string(), "target": { "type": "string", "description": "all or tag:NAME" }, "values": string_map()
        })),
        "NewPackage": object(&["expires_secs", "max_uses"], json!({ "expires_secs": int(), "max_uses": int(), "tags": strings() })),
        "CommunicationProfile": profile,
        "BootstrapPackage": object(&["format", "profile", "token", "expires_at"], json!({
            "format": { "const": "steward-bootstrap/1" }, "profile": r("CommunicationProfile"),
            "token": string(), "expires_at": string()
        })),
        "EnrollRequest": object(&["token", "csr_pem", "hostname", "agent_version"], json!({
            "token": string(), "csr_pem": string(), "hostname": string(), "agent_version": string()
        })),
        "EnrollResponse": object(&["device_id", "cert_pem", "chain_pem", "profile"], json!({
            "device_id": string(), "cert_pem": string(), "chain_pem": strings(), "profile": r("CommunicationProfile")
        })),
        "AgentSettings": settings,
        "CheckinRequest": object(&["protocol", "agent_version", "config_version", "inventory_hash", "results", "connection"], json!({
            "protocol": int(), "agent_version": string(), "config_version": int(), "inventory_hash": string(),
            "inventory": nullable(json!({ "type": "object" })), "results": { "type": "array", "items": { "type": "object" } },
            "last_error": nullable(r("AgentError")),
            "connection": object(&["kind"], json!({ "kind": { "type": "string", "enum": ["lan", "gateway"] }, "server": string(), "gateway": string(), "via": string() })),
            "profile_version": int(),
            "failed_attempts": { "type": "array", "maxItems": steward_proto::MAX_FAILED_ATTEMPTS, "items": r("FailedAttempt") }
        })),
        "FailedAttempt": object(&["gateway", "address", "kind", "id", "detail", "last_at", "count"], json!({
            "gateway": nullable(string()), "address": string(), "kind": failure_kind.clone(),
            "id": string(), "detail": string(), "last_at": string(), "count": int()
        })),
        "Pong": object(&["device_id", "via_gateway", "server_time"], json!({
            "device_id": string(), "via_gateway": nullable(string()), "server_time": string()
        })),
        "ProbeTarget": probe_target,
        "ReachProbe": object(&["target", "failure", "detail", "at"], json!({
            "target": r("ProbeTarget"), "failure": nullable(failure_kind), "detail": string(), "at": string()
        })),
        "GatewayReport": object(&["external_name", "listen_port", "thumbprints", "version", "health"], json!({
            "external_name": string(), "listen_port": int(), "thumbprints": strings(),
            "version": string(), "health": string(),
            "previous_ports": { "type": "array", "items": int() },
            "trust_anchors_pem": strings(), "probes": array("ReachProbe")
        })),
        "GatewayReportResponse": object(&["probe", "all_agents_current", "pending_devices", "pending_total"], json!({
            "probe": array("ProbeTarget"), "all_agents_current": { "type": "boolean" },
            "pending_devices": strings(), "pending_total": int()
        })),
        "GatewaySummary": object(&["id", "revoked"], json!({
            "id": string(), "revoked": { "type": "boolean" },
            "report": nullable(r("GatewayReport")), "reported_at": nullable(string()),
            "status": { "type": "string", "enum": ["green", "red"] },
            "problems": { "type": "array", "items": object(&["id", "message"], json!({ "id": string(), "message": string() })) },
            "pending_devices": strings(), "pending_total": int()
        })),
        "CheckinResponse": object(&["device_id", "tasks", "acked_results", "send_inventory"], json!({
            "device_id": string(),
            "config": nullable(object(&["version", "profile", "settings", "policies"], json!({
                "version": int(), "profile": r("CommunicationProfile"), "settings": r("AgentSettings"),
                "policies": array("AppliedPolicy")
            }))),
            "tasks": array("TaskAssignment"),
            "acked_results": { "type": "array", "items": int() },
            "send_inventory": { "type": "boolean" }
        })),
        "TaskAssignment": object(&["task_id", "command", "args", "timeout_secs"], json!({
            "task_id": int(), "command": string(), "args": strings(), "timeout_secs": int()
        })),
        "WakeUp": object(&["reason"], json!({
            "reason": string(),
            "tasks": array("TaskAssignment")
        })),
    });
    let schemas = gateway_renewal_schemas(schemas);
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Steward admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "JSON over HTTPS on the console listener. Errors are ApiError bodies with stable IDs documented in docs/diagnostics.md."
        },
        "servers": [{ "url": "/" }],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "negotiate": {
                    "type": "http",
                    "scheme": "negotiate",
                    "description": "SPNEGO/Kerberos (RFC 4559) with a ticket for HTTP/<server name>, \
                                    when [auth] providers lists \"negotiate\"; the 200 carries the \
                                    server's mutual-authentication token in WWW-Authenticate. NTLM is \
                                    refused (AUTH-NTLM-NOT-SUPPORTED)."
                },
                "basic": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "A local account, when [auth] providers lists \"password\""
                },
                "bearer": { "type": "http", "scheme": "bearer" },
                "session": { "type": "apiKey", "in": "cookie", "name": crate::service::SESSION_COOKIE },
                "clientCertificate": { "type": "mutualTLS" }
            },
            "schemas": schemas
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_described_and_refs_resolve() {
        let doc = document();
        for p in [
            admin::LOGIN,
            admin::DEVICES,
            admin::DEVICE,
            admin::TASKS,
            admin::TASK,
            admin::POLICIES,
            admin::PACKAGES,
            admin::GATEWAY_TOKENS,
            admin::GATEWAYS,
            admin::GATEWAY_REVOKE,
            admin::DEVICE_REVOKE,
            admin::OPENAPI,
            admin::SERVER_CERTS,
            admin::SERVER_CERT_RENEW,
            agent::ENROLL,
            agent::CHECKIN,
            agent::WAIT,
            agent::PING,
            agent::GATEWAY_JOIN,
            agent::GATEWAY_REPORT,
            agent::GATEWAY_CRL,
            agent::RENEW,
        ] {
            assert!(doc["paths"].get(p).is_some(), "{p} is not described");
        }
        let text = doc.to_string();
        for part in text.split("#/components/schemas/").skip(1) {
            let name: String = part.chars().take_while(|c| c.is_alphanumeric()).collect();
            assert!(
                doc["components"]["schemas"].get(&name).is_some(),
                "unresolved $ref {name}"
            );
        }
    }
}
