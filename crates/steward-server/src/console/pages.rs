//! The console's pages as HTML strings. Every value is written through [`Esc`] (or [`Enc`]
//! inside URLs); the only unescaped text is the markup in this file.

use std::collections::HashMap;

use steward_proto::admin::{
    DeviceDetail, DeviceStatus, DeviceSummary, DeviceTaskState, GatewayStatus, GatewaySummary,
    ListenerCertStatus, TaskDetail, TaskState, TaskSummary,
};
use steward_proto::{AgentError, FailedAttempt, FailureKind};

use super::html::{Enc, Esc, ago, bytes, command_line};
use crate::ApiFailure;

/// Which part of the console a page belongs to (highlighted in the header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Section {
    Devices,
    Tasks,
    Gateways,
    Certificates,
    None,
}

/// The header of a logged-in page: who is logged in, and the token its forms carry.
#[derive(Debug, Clone)]
pub(crate) struct Nav {
    pub(crate) user: String,
    pub(crate) csrf: String,
    pub(crate) section: Section,
}

/// What the start-task form shows (the defaults, or what was sent when it was refused).
#[derive(Debug, Clone)]
pub(crate) struct TaskFormValues {
    pub(crate) command: String,
    pub(crate) args: String,
    pub(crate) target: String,
    pub(crate) timeout_secs: String,
}

impl Default for TaskFormValues {
    fn default() -> Self {
        Self {
            command: String::new(),
            args: String::new(),
            target: "all".to_owned(),
            timeout_secs: "300".to_owned(),
        }
    }
}

const STYLE: &str = r#"
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans",sans-serif;color:#1c2333;background:#f4f5f7}
header{display:flex;align-items:center;gap:1.4rem;padding:.55rem 1.5rem;background:#1e2a45;color:#fff}
header .brand{font-weight:700;font-size:1.1rem;letter-spacing:.02em;color:#fff;text-decoration:none}
header nav a{color:#c9d4ea;text-decoration:none;margin-right:1rem;padding:.2rem 0}
header nav a.current{color:#fff;border-bottom:2px solid #6ea8ff}
header .who{margin-left:auto;display:flex;align-items:center;gap:.7rem;color:#c9d4ea}
header .who button{background:transparent;color:#fff;border:1px solid #6d7c9c;border-radius:4px;padding:.2rem .7rem;cursor:pointer}
main{padding:1.2rem 1.5rem 3rem;max-width:1280px}
h1{font-size:1.45rem;margin:.2rem 0 1rem}
h2{font-size:1.12rem;margin:1.6rem 0 .6rem}
h3{font-size:1rem;margin:1rem 0 .4rem}
a{color:#1f5fbf}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid #dfe3ea}
th,td{padding:.45rem .7rem;text-align:left;vertical-align:top;border-bottom:1px solid #e6e9ef}
th{background:#eef1f6;font-weight:600;font-size:.9rem;color:#3a4357}
tr:last-child td{border-bottom:none}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:.3rem 1.2rem;margin:0;background:#fff;border:1px solid #dfe3ea;padding:.8rem 1rem}
dl.facts dt{font-weight:600;color:#3a4357}
dl.facts dd{margin:0}
code,pre{font-family:ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:.88rem}
pre{margin:0;padding:.5rem .7rem;background:#141a26;color:#e8ebf0;border-radius:4px;white-space:pre-wrap;word-break:break-word;max-height:22rem;overflow:auto}
.badge{display:inline-block;padding:.05rem .6rem;border-radius:999px;font-size:.82rem;font-weight:700;white-space:nowrap}
.badge.online,.badge.succeeded{background:#d9f3df;color:#11652b}
.badge.offline,.badge.failed,.badge.red{background:#fbdedd;color:#9b1c14}
.badge.green{background:#d9f3df;color:#11652b}
ul.problems{margin:0;padding-left:1.1rem}
.badge.timed_out{background:#fde9cc;color:#8a4b00}
.badge.running{background:#dbe8fd;color:#1d4fa0}
.badge.pending{background:#eceef2;color:#4a5263}
.muted{color:#6a7285;font-size:.88rem}
.err{color:#9b1c14}
.alert{background:#fdeceb;border:1px solid #f0b4af;color:#7d170f;padding:.6rem .9rem;border-radius:4px;margin:0 0 1rem}
.alert code{font-weight:700}
.card{background:#fff;border:1px solid #dfe3ea;border-radius:6px;padding:1rem 1.2rem;margin:0 0 1.2rem}
.login{max-width:24rem;margin:4rem auto}
form label{display:block;font-weight:600;margin:.7rem 0 .25rem}
form .hint{font-weight:400;color:#6a7285;font-size:.85rem}
input[type=text],input[type=password],input[type=number],textarea{width:100%;padding:.4rem .55rem;border:1px solid #b9c1cf;border-radius:4px;font:inherit}
textarea{font-family:ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace;min-height:4.5rem}
.row{display:flex;gap:1rem}
.row>div{flex:1}
button.primary{margin-top:1rem;background:#1f5fbf;color:#fff;border:0;border-radius:4px;padding:.5rem 1.2rem;font:inherit;font-weight:600;cursor:pointer}
progress{width:7rem;vertical-align:middle}
"#;

/// The page frame: head, header with navigation and log-out, and `body` in `<main>`.
fn layout(title: &str, nav: Option<&Nav>, refresh: bool, body: &str) -> String {
    let mut s = String::with_capacity(body.len() + STYLE.len() + 1024);
    s.push_str("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    s.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
    if refresh {
        s.push_str("<meta http-equiv=\"refresh\" content=\"2\">");
    }
    w!(
        s,
        "<title>{} · Steward</title><style>{STYLE}</style></head><body>",
        Esc(title)
    );
    s.push_str("<header><a class=\"brand\" href=\"/devices\">Steward</a>");
    if let Some(nav) = nav {
        let cur = |sec: Section| {
            if nav.section == sec {
                " class=\"current\""
            } else {
                ""
            }
        };
        w!(
            s,
            "<nav><a href=\"/devices\"{}>Devices</a><a href=\"/tasks\"{}>Tasks</a>\
             <a href=\"/gateways\"{}>Gateways</a>\
             <a href=\"/certificates\"{}>Certificates</a></nav>\
             <form class=\"who\" method=\"post\" action=\"/logout\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <span>Signed in as <strong>{}</strong></span>\
             <button type=\"submit\" id=\"logout\">Log out</button></form>",
            cur(Section::Devices),
            cur(Section::Tasks),
            cur(Section::Gateways),
            cur(Section::Certificates),
            Esc(&nav.csrf),
            Esc(&nav.user)
        );
    }
    s.push_str("</header><main>");
    s.push_str(body);
    s.push_str("</main></body></html>\n");
    s
}

/// A failure as an alert: its stable ID and message.
fn alert(f: &ApiFailure) -> String {
    format!(
        "<div class=\"alert\" role=\"alert\" id=\"error\"><code>{}</code> {}</div>",
        Esc(f.id),
        Esc(&f.message)
    )
}

/// An error page.
pub(crate) fn failure(nav: Option<&Nav>, f: &ApiFailure) -> String {
    let body = format!(
        "<h1>{} {}</h1>{}<p><a href=\"/devices\">Back to the devices</a></p>",
        f.status.as_u16(),
        Esc(f.status.canonical_reason().unwrap_or("Error")),
        alert(f)
    );
    layout("Error", nav, false, &body)
}

/// The login form, with the last failure (AUTH-FAILED, AUTH-LOCKED, ...) above it.
pub(crate) fn login(username: &str, next: &str, error: Option<&ApiFailure>) -> String {
    let mut b = String::new();
    b.push_str("<div class=\"login card\"><h1>Sign in</h1>");
    if let Some(f) = error {
        b.push_str(&alert(f));
    }
    w!(
        b,
        "<form method=\"post\" action=\"/login\">\
         <input type=\"hidden\" name=\"next\" value=\"{}\">\
         <label for=\"username\">User name</label>\
         <input type=\"text\" id=\"username\" name=\"username\" value=\"{}\" \
         autocomplete=\"username\" required autofocus>\
         <label for=\"password\">Password</label>\
         <input type=\"password\" id=\"password\" name=\"password\" \
         autocomplete=\"current-password\" required>\
         <button class=\"primary\" type=\"submit\" id=\"login\">Sign in</button></form></div>",
        Esc(next),
        Esc(username)
    );
    layout("Sign in", None, false, &b)
}

fn status_badge(s: DeviceStatus) -> &'static str {
    match s {
        DeviceStatus::Online => "<span class=\"badge online\">Online</span>",
        DeviceStatus::Offline => "<span class=\"badge offline\">Offline</span>",
    }
}

/// Whether the device holds its persistent connection now (a task reaches it at once).
fn connected_badge(connected: bool) -> &'static str {
    if connected {
        "<span class=\"badge online\" title=\"persistent connection held now: tasks reach it at once\">Connected</span>"
    } else {
        "<span class=\"muted\" title=\"no persistent connection: tasks wait for its next check-in\">–</span>"
    }
}

fn state_badge(s: TaskState) -> &'static str {
    match s {
        TaskState::Pending => "<span class=\"badge pending\">Pending</span>",
        TaskState::Running => "<span class=\"badge running\">Running</span>",
        TaskState::Succeeded => "<span class=\"badge succeeded\">Succeeded</span>",
        TaskState::Failed => "<span class=\"badge failed\">Failed</span>",
        TaskState::TimedOut => "<span class=\"badge timed_out\">Timed out</span>",
    }
}

/// A time as "12 s ago" over `2026-05-01T10:00:00Z`, or a dash.
fn time(t: Option<&str>, now: i64) -> String {
    match t {
        None => "<span class=\"muted\">—</span>".to_owned(),
        Some(t) => match ago(t, now) {
            Some(rel) => format!(
                "<time datetime=\"{0}\">{1}</time><br><span class=\"muted\">{0}</span>",
                Esc(t),
                Esc(&rel)
            ),
            None => Esc(t).to_string(),
        },
    }
}

/// A last check-in, or "never".
fn checkin(t: Option<&str>, now: i64) -> String {
    match t {
        None => "<span class=\"muted\">never</span>".to_owned(),
        Some(_) => time(t, now),
    }
}

fn last_error(e: Option<&AgentError>) -> String {
    match e {
        None => "<span class=\"muted\">none</span>".to_owned(),
        Some(e) => format!(
            "<span class=\"err\"><code>{}</code> {}</span><br><span class=\"muted\">at {}</span>",
            Esc(&e.id),
            Esc(&e.message),
            Esc(&e.at)
        ),
    }
}

fn kind_label(k: FailureKind) -> &'static str {
    match k {
        FailureKind::Dns => "DNS",
        FailureKind::Refused => "refused",
        FailureKind::Timeout => "timeout (filtered)",
        FailureKind::Tls => "TLS",
        FailureKind::WrongPeer => "wrong peer",
        FailureKind::Http => "HTTP",
    }
}

/// A device's failed ways to the server (gateway, address, kind, count, last time), shown
/// next to its last error: a blocked gateway port stays visible while another way works.
fn failed_attempts(list: &[FailedAttempt]) -> String {
    if list.is_empty() {
        return "<span class=\"muted\">none</span>".to_owned();
    }
    let mut s = String::from("<ul class=\"failed-attempts problems\">");
    for a in list {
        w!(
            s,
            "<li class=\"err\">{} <code>{}</code> {}: <code>{}</code> × {}, last at {}\
             <br><span class=\"muted\">{}</span></li>",
            a.gateway.as_deref().map_or_else(
                || "LAN".to_owned(),
                |g| format!("gateway <code>{}</code>", Esc(g))
            ),
            Esc(&a.address),
            Esc(kind_label(a.kind)),
            Esc(&a.id),
            a.count,
            Esc(&a.last_at),
            Esc(&a.detail)
        );
    }
    s.push_str("</ul>");
    s
}

fn or_dash(v: Option<&str>) -> String {
    v.map_or_else(
        || "<span class=\"muted\">—</span>".to_owned(),
        |v| Esc(v).to_string(),
    )
}

fn device_link(id: &str, name: &str) -> String {
    format!("<a href=\"/devices/{}\">{}</a>", Enc(id), Esc(name))
}

/// The warning the Devices page shows while `[listen] protocol = "http"` (CONFIG-AGENT-HTTP).
pub(crate) fn http_warning(http_addr: &str) -> String {
    format!(
        "<div class=\"card\" id=\"http-warning\"><strong>CONFIG-AGENT-HTTP: agents on the LAN \
         use plain HTTP</strong> ({}). Inventory and task output cross the LAN readable by \
         anyone on it; requests and answers are still signed (identity and integrity hold). \
         Gateways, agents behind them and enrollment keep using HTTPS.</div>",
        Esc(http_addr)
    )
}

/// The devices table.
pub(crate) fn devices(nav: &Nav, list: &[DeviceSummary], now: i64) -> String {
    let online = list
        .iter()
        .filter(|d| d.status == DeviceStatus::Online)
        .count();
    let connected = list.iter().filter(|d| d.connected).count();
    let mut b = String::new();
    w!(
        b,
        "<h1>Devices</h1><p class=\"muted\">{} devices, {online} online, {connected} holding a \
         persistent connection.</p>",
        list.len()
    );
    if list.is_empty() {
        b.push_str(
            "<div class=\"card\">No device has enrolled yet. Write an enrollment package \
             (<code>steward package agent --out FILE</code>) and enroll an agent with it \
             (<code>steward-agent enroll --package FILE</code>).</div>",
        );
        return layout("Devices", Some(nav), false, &b);
    }
    // Certificates within 30 days of expiry: the agent renews long before, so one here is a
    // renewal that is not happening.
    let expiring: Vec<&DeviceSummary> = list.iter().filter(|d| d.cert_warning.is_some()).collect();
    if !expiring.is_empty() {
        b.push_str(
            "<div class=\"card\" id=\"cert-warnings\"><strong>Certificates expiring</strong><ul>",
        );
        for d in expiring {
            w!(
                b,
                "<li>{}: {}</li>",
                device_link(&d.id, &d.name),
                Esc(d.cert_warning.as_deref().unwrap_or_default())
            );
        }
        b.push_str("</ul></div>");
    }
    b.push_str(
        "<table id=\"devices\"><thead><tr><th>Name</th><th>OS</th><th>Status</th>\
         <th>Connected</th><th>Last check-in</th><th>Connection path</th><th>Last error</th>\
         <th>Failed attempts</th><th>Tags</th></tr>\
         </thead><tbody>",
    );
    for d in list {
        w!(
            b,
            "<tr data-device-id=\"{}\"><td class=\"name\">{}</td><td>{}</td>\
             <td class=\"status\">{}</td><td class=\"connected\">{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td></tr>",
            Esc(&d.id),
            device_link(&d.id, &d.name),
            or_dash(d.os.as_deref()),
            status_badge(d.status),
            connected_badge(d.connected),
            checkin(d.last_checkin.as_deref(), now),
            or_dash(d.connection_path.as_deref()),
            last_error(d.last_error.as_ref()),
            failed_attempts(&d.failed_attempts),
            Esc(&d.tags.join(", "))
        );
    }
    b.push_str("</tbody></table>");
    layout("Devices", Some(nav), false, &b)
}

/// The platform root CA and a root roll's phase and progress (`steward server ca roll`).
fn ca_roll(b: &mut String, s: &steward_proto::admin::CaRollStatus) {
    w!(
        b,
        "<div class=\"card\" id=\"ca-roll\"><h2>Platform root CA</h2><dl class=\"facts\">\
         <dt>Phase</dt><dd id=\"ca-roll-phase\">{}</dd><dt>Root</dt><dd>{}</dd>\
         <dt>SHA-256</dt><dd><code>{}</code></dd><dt>Valid until</dt><dd>{}</dd>\
         <dt>Issuing CA</dt><dd>{}</dd>",
        match s.phase.as_str() {
            "staged" => "staged: distributing the new root",
            "overlap" => "finalized: the previous root is still trusted",
            _ => "idle",
        },
        Esc(&s.root.subject),
        Esc(&s.root.sha256),
        Esc(&s.root.not_after),
        Esc(&s.issuing.subject),
    );
    if let Some(p) = &s.previous_root {
        w!(
            b,
            "<dt>Previous root</dt><dd>{} (<code>{}</code>)</dd>",
            Esc(&p.subject),
            Esc(&p.sha256)
        );
    }
    b.push_str("</dl>");
    match &s.staged {
        None => b.push_str(
            "<p class=\"muted\">No root roll staged (<code>steward server ca roll stage</code>).</p>",
        ),
        Some(st) => {
            let ready = st.acknowledged == st.total;
            w!(
                b,
                "<h3>Staged: distribute</h3><dl class=\"facts\" id=\"staged-ca\">\
                 <dt>New root</dt><dd>{}</dd><dt>SHA-256</dt><dd><code>{}</code></dd>\
                 <dt>Staged</dt><dd>{}</dd><dt>Acknowledged</dt>\
                 <dd class=\"progress\">{} of {} agents (profile version {}){}</dd></dl>",
                Esc(&st.subject),
                Esc(&st.sha256),
                Esc(&st.staged_at),
                st.acknowledged,
                st.total,
                st.profile_version,
                if ready { " — ready to finalize" } else { "" }
            );
            if !st.pending.is_empty() {
                b.push_str("<p>Not yet acknowledged:</p><ul class=\"pending\">");
                for p in &st.pending {
                    w!(b, "<li>{}</li>", Esc(p));
                }
                b.push_str("</ul>");
            }
        }
    }
    b.push_str("</div>");
}

/// The server's listener certificates: what each serves, and a third-party certificate's
/// progress through stage → distribute → finalize (who has not acknowledged its root yet);
/// and the platform root CA with a root roll's progress, when known.
pub(crate) fn certificates(
    nav: &Nav,
    list: &[ListenerCertStatus],
    roll: Option<&steward_proto::admin::CaRollStatus>,
) -> String {
    let mut b = String::new();
    b.push_str(
        "<h1>Certificates</h1><p class=\"muted\">The server's listener certificates. Replace one \
         with a third-party certificate in phases: <code>steward server cert import FILE \
         --listener agent</code> (stage), wait until every agent has acknowledged its root \
         (distribute), then <code>steward server cert finalize --listener agent</code>; \
         <code>rollback</code> before that undoes the stage.</p>",
    );
    for s in list {
        w!(
            b,
            "<div class=\"card\" id=\"cert-{}\"><h2>{} listener</h2><dl class=\"facts\">\
             <dt>Subject</dt><dd>{}</dd><dt>Issuer</dt><dd>{}</dd>\
             <dt>SHA-256</dt><dd><code>{}</code></dd><dt>Valid</dt><dd>{} – {}</dd>\
             <dt>Source</dt><dd>{}</dd></dl>",
            Esc(&s.listener),
            Esc(&s.listener),
            Esc(&s.subject),
            Esc(&s.issuer),
            Esc(&s.sha256),
            Esc(&s.not_before),
            Esc(&s.not_after),
            if s.third_party {
                "third-party (its root is in the communication profile)"
            } else if s.renewal_due {
                "platform CA (renewal due: within the hour)"
            } else {
                "platform CA (renewed automatically)"
            }
        );
        if let Some(w) = &s.warning {
            w!(b, "<p class=\"warn\">{}</p>", Esc(w));
        }
        match &s.staged {
            None => b.push_str("<p class=\"muted\">Nothing staged.</p>"),
            Some(st) => {
                let ready = st.acknowledged == st.total;
                w!(
                    b,
                    "<h3>Staged: distribute</h3><dl class=\"facts\" id=\"staged-{}\">\
                     <dt>SHA-256</dt><dd><code>{}</code></dd><dt>Subject</dt><dd>{}</dd>\
                     <dt>Root</dt><dd>{}</dd><dt>Valid until</dt><dd>{}</dd>\
                     <dt>Staged</dt><dd>{}</dd><dt>Acknowledged</dt>\
                     <dd class=\"progress\">{} of {} agents (profile version {}){}</dd></dl>",
                    Esc(&s.listener),
                    Esc(&st.sha256),
                    Esc(&st.subject),
                    Esc(&st.root_subject),
                    Esc(&st.not_after),
                    Esc(&st.staged_at),
                    st.acknowledged,
                    st.total,
                    st.profile_version,
                    if ready { " — ready to finalize" } else { "" }
                );
                if !st.pending.is_empty() {
                    b.push_str("<p>Not yet acknowledged:</p><ul class=\"pending\">");
                    for p in &st.pending {
                        w!(b, "<li>{}</li>", Esc(p));
                    }
                    b.push_str("</ul>");
                }
            }
        }
        b.push_str("</div>");
    }
    if let Some(r) = roll {
        ca_roll(&mut b, r);
    }
    layout("Certificates", Some(nav), false, &b)
}

/// One device: summary, inventory, applied policies, tasks.
pub(crate) fn device(
    nav: &Nav,
    d: &DeviceDetail,
    commands: &HashMap<u64, (String, Vec<String>)>,
    now: i64,
) -> String {
    let s = &d.summary;
    let mut b = String::new();
    w!(
        b,
        "<h1>{} {}</h1><dl class=\"facts\" id=\"summary\">\
         <dt>Device ID</dt><dd><code>{}</code></dd>\
         <dt>OS</dt><dd>{}</dd>\
         <dt>Last check-in</dt><dd>{}</dd>\
         <dt>Connection path</dt><dd>{}</dd>\
         <dt>Last error</dt><dd>{}</dd>\
         <dt>Failed attempts</dt><dd id=\"failed-attempts\">{}</dd>\
         <dt>Tags</dt><dd>{}</dd></dl>",
        Esc(&s.name),
        status_badge(s.status),
        Esc(&s.id),
        or_dash(s.os.as_deref()),
        checkin(s.last_checkin.as_deref(), now),
        or_dash(s.connection_path.as_deref()),
        last_error(s.last_error.as_ref()),
        failed_attempts(&s.failed_attempts),
        or_dash(Some(s.tags.join(", ").as_str()).filter(|t| !t.is_empty()))
    );

    b.push_str("<h2>Inventory</h2>");
    match &d.inventory {
        None => b.push_str(
            "<div class=\"card muted\">No inventory has arrived yet; the agent sends it at its \
             next check-in.</div>",
        ),
        Some(inv) => {
            w!(
                b,
                "<dl class=\"facts\" id=\"inventory\">\
                 <dt>Host name</dt><dd>{}</dd>\
                 <dt>Operating system</dt><dd>{} {}</dd>\
                 <dt>Kernel</dt><dd>{}</dd>\
                 <dt>CPU</dt><dd>{} × {}</dd>\
                 <dt>Memory</dt><dd>{}</dd>\
                 <dt>Agent version</dt><dd>{}</dd></dl>",
                Esc(&inv.hostname),
                Esc(&inv.os_name),
                Esc(&inv.os_version),
                Esc(&inv.kernel),
                inv.cpu_count,
                Esc(&inv.cpu_model),
                Esc(&bytes(inv.memory_total_bytes)),
                Esc(&inv.agent_version)
            );
            b.push_str("<h3>Disks</h3>");
            if inv.disks.is_empty() {
                b.push_str("<p class=\"muted\">None reported.</p>");
            } else {
                b.push_str(
                    "<table id=\"disks\"><thead><tr><th>Mount point</th><th>File system</th>\
                     <th>Size</th><th>Available</th></tr></thead><tbody>",
                );
                for disk in &inv.disks {
                    w!(
                        b,
                        "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                        Esc(&disk.mount),
                        Esc(&disk.fs),
                        Esc(&bytes(disk.total_bytes)),
                        Esc(&bytes(disk.available_bytes))
                    );
                }
                b.push_str("</tbody></table>");
            }
            b.push_str("<h3>Network interfaces</h3>");
            if inv.interfaces.is_empty() {
                b.push_str("<p class=\"muted\">None reported.</p>");
            } else {
                b.push_str(
                    "<table id=\"interfaces\"><thead><tr><th>Interface</th><th>MAC</th>\
                     <th>Addresses</th></tr></thead><tbody>",
                );
                for i in &inv.interfaces {
                    let addrs: Vec<String> = i
                        .addresses
                        .iter()
                        .map(|a| format!("<code>{}</code>", Esc(a)))
                        .collect();
                    w!(
                        b,
                        "<tr><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
                        Esc(&i.name),
                        Esc(&i.mac),
                        if addrs.is_empty() {
                            "<span class=\"muted\">none</span>".to_owned()
                        } else {
                            addrs.join("<br>")
                        }
                    );
                }
                b.push_str("</tbody></table>");
            }
        }
    }

    b.push_str("<h2>Applied policies</h2>");
    if d.applied_policies.is_empty() {
        b.push_str("<p class=\"muted\">None.</p>");
    }
    for p in &d.applied_policies {
        w!(b, "<h3>{}</h3>", Esc(&p.name));
        if p.values.is_empty() {
            b.push_str("<p class=\"muted\">No values.</p>");
            continue;
        }
        b.push_str(
            "<table class=\"policy\"><thead><tr><th>Setting</th><th>Value</th></tr></thead><tbody>",
        );
        for (k, v) in &p.values {
            w!(
                b,
                "<tr><td><code>{}</code></td><td><code>{}</code></td></tr>",
                Esc(k),
                Esc(v)
            );
        }
        b.push_str("</tbody></table>");
    }

    b.push_str("<h2>Tasks</h2>");
    if d.tasks.is_empty() {
        b.push_str("<p class=\"muted\">No task has run on this device.</p>");
    } else {
        b.push_str(
            "<table id=\"device-tasks\"><thead><tr><th>Task</th><th>Command</th><th>State</th>\
             <th>Exit code</th><th>Finished</th><th>Output</th></tr></thead><tbody>",
        );
        for t in &d.tasks {
            let cmd = commands
                .get(&t.task_id)
                .map(|(c, a)| format!("<code>{}</code>", Esc(&command_line(c, a))))
                .unwrap_or_default();
            w!(
                b,
                "<tr><td><a href=\"/tasks/{0}\">#{0}</a></td><td>{1}</td><td>{2}</td>\
                 <td>{3}</td><td>{4}</td><td>{5}</td></tr>",
                t.task_id,
                cmd,
                state_badge(t.state),
                exit_code(t.exit_code),
                time(t.finished_at.as_deref(), now),
                output(t)
            );
        }
        b.push_str("</tbody></table>");
    }
    layout(&s.name, Some(nav), false, &b)
}

fn gateway_badge(s: GatewayStatus) -> &'static str {
    match s {
        GatewayStatus::Green => "<span class=\"badge green\">Green</span>",
        GatewayStatus::Red => "<span class=\"badge red\">Red</span>",
    }
}

/// The gateways: each green or red with its problems (ID and evidence), what it reported,
/// and during a port change the devices that do not hold its new entry yet.
pub(crate) fn gateways(nav: &Nav, list: &[GatewaySummary], now: i64) -> String {
    let mut b = String::new();
    let red = list
        .iter()
        .filter(|g| g.status == GatewayStatus::Red)
        .count();
    w!(
        b,
        "<h1>Gateways</h1><p class=\"muted\">{} gateways, {red} red.</p>",
        list.len()
    );
    if list.is_empty() {
        b.push_str(
            "<div class=\"card\">No gateway has joined. Make a join token \
             (<code>steward gateway token --out FILE</code>) and join a gateway with it \
             (<code>steward gateway join</code>).</div>",
        );
        return layout("Gateways", Some(nav), false, &b);
    }
    b.push_str(
        "<table id=\"gateways\"><thead><tr><th>Gateway</th><th>Status</th><th>Address</th>\
         <th>Last report</th><th>Problems</th><th>Agents without the current entry</th></tr>\
         </thead><tbody>",
    );
    for g in list {
        let address = g.report.as_ref().map_or_else(
            || "<span class=\"muted\">—</span>".to_owned(),
            |r| {
                let mut a = format!(
                    "<code>{}:{}</code><br><span class=\"muted\">version {}, health {}</span>",
                    Esc(&r.external_name),
                    r.listen_port,
                    Esc(&r.version),
                    Esc(&r.health)
                );
                if !r.previous_ports.is_empty() {
                    let ports: Vec<String> =
                        r.previous_ports.iter().map(|p| p.to_string()).collect();
                    w!(
                        a,
                        "<br><span class=\"muted previous-ports\">still answering on {} \
                         until every agent has the new port</span>",
                        Esc(&ports.join(", "))
                    );
                }
                a
            },
        );
        // Certificate expiry (the 30-day warning) and a renewal in progress.
        let mut address = address;
        for c in &g.certificates {
            w!(
                address,
                "<br><span class=\"muted gateway-cert\">{} certificate expires {}</span>",
                Esc(&c.role),
                Esc(&c.not_after)
            );
            if let Some(warning) = &c.warning {
                w!(
                    address,
                    "<br><span class=\"err cert-warning\">{}</span>",
                    Esc(warning)
                );
            }
        }
        if let Some(r) = &g.renewal {
            w!(
                address,
                "<br><span class=\"cert-renewal\">{}</span>",
                Esc(r)
            );
        }
        let problems = if g.problems.is_empty() {
            "<span class=\"muted\">none</span>".to_owned()
        } else {
            let mut p = String::from("<ul class=\"problems\">");
            for x in &g.problems {
                w!(
                    p,
                    "<li class=\"err\"><code>{}</code> {}</li>",
                    Esc(&x.id),
                    Esc(&x.message)
                );
            }
            p.push_str("</ul>");
            p
        };
        let pending = if g.pending_total == 0 {
            "<span class=\"muted\">none</span>".to_owned()
        } else {
            let mut p = format!(
                "<span class=\"pending-total\">{}</span> device(s) do not hold the profile \
                 with this gateway's current entry yet:<ul class=\"pending-devices\">",
                g.pending_total
            );
            for d in &g.pending_devices {
                w!(p, "<li>{}</li>", Esc(d));
            }
            p.push_str("</ul>");
            let shown = u64::try_from(g.pending_devices.len()).unwrap_or(u64::MAX);
            if g.pending_total > shown {
                w!(
                    p,
                    "<span class=\"muted\">and {} more</span>",
                    g.pending_total - shown
                );
            }
            p
        };
        w!(
            b,
            "<tr data-gateway-id=\"{}\"><td><code>{}</code>{}</td><td class=\"status\">{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            Esc(&g.id),
            Esc(&g.id),
            if g.revoked {
                " <span class=\"muted\">(revoked)</span>"
            } else {
                ""
            },
            gateway_badge(g.status),
            address,
            checkin(g.reported_at.as_deref(), now),
            problems,
            pending
        );
    }
    b.push_str("</tbody></table>");
    layout("Gateways", Some(nav), false, &b)
}

fn exit_code(c: Option<i32>) -> String {
    c.map_or_else(
        || "<span class=\"muted\">—</span>".to_owned(),
        |c| c.to_string(),
    )
}

fn output(t: &DeviceTaskState) -> String {
    match &t.output {
        None => "<span class=\"muted\">—</span>".to_owned(),
        Some(o) => {
            let mut s = format!("<pre class=\"output\">{}</pre>", Esc(o));
            if t.truncated {
                s.push_str(
                    "<span class=\"muted truncated\">Output truncated at the agent-settings \
                     limit (task_output_max_bytes).</span>",
                );
            }
            s
        }
    }
}

fn progress(t: &TaskSummary) -> String {
    format!(
        "<progress max=\"{0}\" value=\"{1}\">{1}/{0}</progress> \
         <span class=\"progress-text\">{1}/{0} finished</span>",
        t.targets, t.finished
    )
}

/// The task list and the start-task form.
pub(crate) fn tasks(
    nav: &Nav,
    list: &[TaskSummary],
    v: &TaskFormValues,
    error: Option<&ApiFailure>,
    now: i64,
) -> String {
    let mut b = String::new();
    b.push_str(
        "<h1>Tasks</h1><form class=\"card\" id=\"start-task\" method=\"post\" action=\"/tasks\">",
    );
    b.push_str("<h2 style=\"margin-top:0\">Start a task</h2>");
    if let Some(f) = error {
        b.push_str(&alert(f));
    }
    w!(
        b,
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <div class=\"row\"><div>\
         <label for=\"command\">Command <span class=\"hint\">— the program to run, without a \
         shell (e.g. <code>echo</code>, <code>/usr/bin/uptime</code>)</span></label>\
         <input type=\"text\" id=\"command\" name=\"command\" value=\"{}\" required></div>\
         <div><label for=\"target\">Target <span class=\"hint\">— <code>all</code>, \
         <code>tag:NAME</code> or <code>device:NAME</code></span></label>\
         <input type=\"text\" id=\"target\" name=\"target\" value=\"{}\" required></div>\
         <div style=\"flex:0 0 10rem\"><label for=\"timeout_secs\">Timeout \
         <span class=\"hint\">(seconds)</span></label>\
         <input type=\"number\" id=\"timeout_secs\" name=\"timeout_secs\" min=\"1\" value=\"{}\" \
         required></div></div>\
         <label for=\"args\">Arguments <span class=\"hint\">— one argument per line, taken \
         literally: spaces inside a line belong to that argument, nothing is quoted or \
         expanded; blank lines are skipped</span></label>\
         <textarea id=\"args\" name=\"args\" rows=\"3\">{}</textarea>\
         <button class=\"primary\" type=\"submit\" id=\"start\">Start task</button></form>",
        Esc(&nav.csrf),
        Esc(&v.command),
        Esc(&v.target),
        Esc(&v.timeout_secs),
        Esc(&v.args)
    );
    b.push_str("<h2>Recent tasks</h2>");
    if list.is_empty() {
        b.push_str("<p class=\"muted\">No task has been started yet.</p>");
    } else {
        b.push_str(
            "<table id=\"tasks\"><thead><tr><th>Task</th><th>Command</th><th>Target</th>\
             <th>Started</th><th>Progress</th></tr></thead><tbody>",
        );
        for t in list {
            w!(
                b,
                "<tr><td><a href=\"/tasks/{0}\">#{0}</a></td><td><code>{1}</code></td>\
                 <td><code>{2}</code></td><td>{3}</td><td>{4}</td></tr>",
                t.id,
                Esc(&command_line(&t.command, &t.args)),
                Esc(&t.target),
                time(Some(&t.created_at), now),
                progress(t)
            );
        }
        b.push_str("</tbody></table>");
    }
    layout("Tasks", Some(nav), false, &b)
}

/// One task: what it runs and every targeted device's result. Refreshes itself every 2 s
/// while a device is still pending or running.
pub(crate) fn task(nav: &Nav, t: &TaskDetail, now: i64) -> String {
    let s = &t.summary;
    let open = t.results.iter().any(|r| !r.state.is_final());
    let mut b = String::new();
    w!(
        b,
        "<h1>Task #{}</h1><dl class=\"facts\" id=\"task-summary\">\
         <dt>Command</dt><dd><code id=\"command-line\">{}</code></dd>\
         <dt>Target</dt><dd><code>{}</code></dd>\
         <dt>Started</dt><dd>{}</dd>\
         <dt>Progress</dt><dd>{}</dd></dl>",
        s.id,
        Esc(&command_line(&s.command, &s.args)),
        Esc(&s.target),
        time(Some(&s.created_at), now),
        progress(s)
    );
    if open {
        b.push_str(
            "<p class=\"muted\" id=\"refreshing\">Some devices have not finished; this page \
             reloads every 2 seconds.</p>",
        );
    }
    b.push_str(
        "<h2>Results</h2><table id=\"results\"><thead><tr><th>Device</th><th>State</th>\
         <th>Exit code</th><th>Finished</th><th>Output</th></tr></thead><tbody>",
    );
    for r in &t.results {
        w!(
            b,
            "<tr data-device-id=\"{}\"><td class=\"name\">{}</td><td class=\"state\">{}</td>\
             <td>{}</td><td>{}</td><td class=\"result\">{}</td></tr>",
            Esc(&r.device_id),
            device_link(&r.device_id, &r.device_name),
            state_badge(r.state),
            exit_code(r.exit_code),
            time(r.finished_at.as_deref(), now),
            output(r)
        );
    }
    b.push_str("</tbody></table>");
    layout(&format!("Task #{}", s.id), Some(nav), open, &b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nav() -> Nav {
        Nav {
            user: "<admin>".into(),
            csrf: "TOKEN\"".into(),
            section: Section::Devices,
        }
    }

    #[test]
    fn device_values_are_escaped_everywhere() {
        let evil = "<img src=x onerror=alert(1)>";
        let d = DeviceSummary {
            id: "id\"><script>".into(),
            name: evil.into(),
            os: Some(evil.into()),
            status: DeviceStatus::Online,
            last_checkin: Some(evil.into()),
            connection_path: Some(evil.into()),
            last_error: Some(AgentError {
                id: evil.into(),
                message: evil.into(),
                at: evil.into(),
            }),
            failed_attempts: vec![],
            tags: vec![evil.into()],
            cert_expires_at: Some(evil.into()),
            cert_warning: Some(evil.into()),
            cert_renewal_pending: false,
            connected: false,
        };
        let page = devices(&nav(), &[d], 0);
        assert!(!page.contains("<img"), "{page}");
        assert!(!page.contains("<script>"), "{page}");
        assert!(!page.contains("<admin>"));
        assert!(page.contains("&lt;img src=x onerror=alert(1)&gt;"));
        assert!(
            page.contains("value=\"TOKEN&quot;\""),
            "the CSRF field is escaped"
        );
        assert!(
            page.contains("href=\"/devices/id%22%3E%3Cscript%3E\""),
            "{page}"
        );
        assert!(page.contains("badge online\">Online<"));
    }

    #[test]
    fn certificates_show_progress_and_who_is_pending_escaped() {
        let evil = "<img src=x onerror=alert(1)>";
        let s = ListenerCertStatus {
            listener: "agent".into(),
            subject: evil.into(),
            third_party: false,
            staged: Some(steward_proto::admin::StagedCert {
                sha256: "AB".into(),
                root_subject: evil.into(),
                acknowledged: 2,
                total: 3,
                profile_version: 7,
                pending: vec![evil.into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut n = nav();
        n.section = Section::Certificates;
        let roll = steward_proto::admin::CaRollStatus {
            phase: "staged".into(),
            staged: Some(steward_proto::admin::StagedCert {
                subject: evil.into(),
                acknowledged: 4,
                total: 5,
                profile_version: 9,
                pending: vec![evil.into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let page = certificates(&n, &[s], Some(&roll));
        assert!(!page.contains("<img"), "{page}");
        assert!(page.contains("staged: distributing the new root"), "{page}");
        assert!(page.contains("4 of 5 agents (profile version 9)"), "{page}");
        assert!(page.contains("2 of 3 agents (profile version 7)"), "{page}");
        assert!(page.contains("<ul class=\"pending\"><li>&lt;img"), "{page}");
        assert!(
            page.contains("href=\"/certificates\" class=\"current\""),
            "{page}"
        );
    }

    fn evil_attempt(evil: &str) -> FailedAttempt {
        FailedAttempt {
            gateway: Some(evil.into()),
            address: evil.into(),
            kind: FailureKind::Timeout,
            id: evil.into(),
            detail: evil.into(),
            last_at: evil.into(),
            count: 7,
        }
    }

    #[test]
    fn failed_attempts_show_next_to_the_last_error_escaped() {
        let evil = "<img src=x onerror=alert(1)>";
        let mut d = DeviceSummary {
            id: "d1".into(),
            name: "pc-1".into(),
            os: None,
            status: DeviceStatus::Online,
            last_checkin: None,
            connection_path: None,
            last_error: None,
            failed_attempts: vec![evil_attempt(evil)],
            tags: vec![],
            cert_expires_at: None,
            cert_warning: None,
            cert_renewal_pending: false,
            connected: false,
        };
        let page = devices(&nav(), std::slice::from_ref(&d), 0);
        assert!(!page.contains("<img"), "{page}");
        assert!(page.contains("<th>Failed attempts</th>"));
        assert!(page.contains("<th>Connected</th>"));
        assert!(page.contains("0 holding a persistent connection"));
        assert!(page.contains("timeout (filtered)"));
        assert!(page.contains("× 7"));
        d.failed_attempts[0].gateway = None;
        let detail = DeviceDetail {
            summary: d,
            inventory: None,
            applied_policies: vec![],
            tasks: vec![],
        };
        let page = device(&nav(), &detail, &HashMap::new(), 0);
        assert!(!page.contains("<img"), "{page}");
        assert!(page.contains("id=\"failed-attempts\"><ul"), "{page}");
        assert!(page.contains("LAN <code>&lt;img"), "{page}");
    }

    #[test]
    fn gateways_show_status_problems_and_pending_devices_escaped() {
        use steward_proto::GatewayReport;
        use steward_proto::admin::GatewayProblem;
        let evil = "<script>alert(1)</script>";
        let g = GatewaySummary {
            id: evil.into(),
            revoked: false,
            report: Some(GatewayReport {
                external_name: evil.into(),
                listen_port: 9443,
                thumbprints: vec![],
                version: evil.into(),
                health: evil.into(),
                previous_ports: vec![8443],
                trust_anchors_pem: vec![],
                probes: vec![],
            }),
            reported_at: Some(evil.into()),
            status: GatewayStatus::Red,
            problems: vec![GatewayProblem {
                id: "GATEWAY-PORT-FILTERED".into(),
                message: evil.into(),
            }],
            pending_devices: vec![evil.into()],
            pending_total: 3,
            certificates: vec![],
            renewal: None,
        };
        let mut nav = nav();
        nav.section = Section::Gateways;
        let page = gateways(&nav, std::slice::from_ref(&g), 0);
        assert!(!page.contains("<script>"), "{page}");
        assert!(page.contains("badge red\">Red<"));
        assert!(page.contains("<code>GATEWAY-PORT-FILTERED</code> &lt;script&gt;"));
        assert!(page.contains("still answering on 8443"));
        assert!(page.contains("<span class=\"pending-total\">3</span>"));
        assert!(page.contains("and 2 more"));
        assert!(page.contains("href=\"/gateways\" class=\"current\""));
        let green = GatewaySummary {
            status: GatewayStatus::Green,
            problems: vec![],
            pending_devices: vec![],
            pending_total: 0,
            ..g
        };
        let page = gateways(&nav, &[green], 0);
        assert!(page.contains("badge green\">Green<"));
        assert!(!page.contains("pending-devices"));
    }

    #[test]
    fn task_output_is_escaped_and_open_tasks_refresh() {
        let result = |state, output: Option<&str>| DeviceTaskState {
            task_id: 7,
            device_id: "d1".into(),
            device_name: "web-1".into(),
            state,
            exit_code: Some(0),
            output: output.map(str::to_owned),
            truncated: true,
            finished_at: None,
        };
        let mut t = TaskDetail {
            summary: TaskSummary {
                id: 7,
                command: "echo".into(),
                args: vec!["</pre><b>".into()],
                target: "all".into(),
                created_at: "2027-01-01T00:00:00Z".into(),
                targets: 2,
                finished: 1,
            },
            results: vec![
                result(TaskState::Succeeded, Some("</pre><script>x</script>")),
                result(TaskState::Running, None),
            ],
        };
        let page = task(&nav(), &t, 0);
        assert!(!page.contains("<script>x"), "{page}");
        assert!(page.contains("&lt;/pre&gt;&lt;script&gt;x&lt;/script&gt;"));
        assert!(page.contains("Output truncated"));
        assert!(page.contains("http-equiv=\"refresh\""));
        t.results[1].state = TaskState::Failed;
        assert!(!task(&nav(), &t, 0).contains("http-equiv=\"refresh\""));
    }

    #[test]
    fn login_form_keeps_name_and_shows_the_failure_id() {
        let f = ApiFailure::new(
            axum::http::StatusCode::UNAUTHORIZED,
            "AUTH-FAILED",
            "wrong user name or password",
        );
        let page = login("\"admin", "/tasks", Some(&f));
        assert!(page.contains("<code>AUTH-FAILED</code> wrong user name or password"));
        assert!(page.contains("value=\"&quot;admin\""));
        assert!(page.contains("name=\"next\" value=\"/tasks\""));
        assert!(
            !page.contains("action=\"/logout\""),
            "no header form before login"
        );
    }
}
