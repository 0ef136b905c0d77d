//! The DMZ test (issue 4): four network namespaces made for this run — internet, edge (the
//! perimeter firewall, with NAT from its public address to the gateway host), dmz, internal —
//! joined by veth pairs, with no route from the internet to the internal network and
//! nftables rules shaped like the article's firewall tables: from the internet only the
//! gateway port, out of the dmz host only the agent-site port of the server, into the
//! internal host from the dmz only that port. A real `steward server` runs in internal,
//! `steward gateway` in dmz, one `steward-agent` in internal and one in internet (enrolled on
//! the LAN, then moved: its profile names the LAN server first, which it cannot reach, then
//! the gateway).
//!
//! Shown: (1) both agents Online, the internet agent's path is the gateway and the internal
//! agent's is the LAN, and the internet agent's failed LAN attempt reaches the server;
//! (2) the gateway's port changes: the gateway keeps the old port while a device lacks the
//! new profile, the console names that device, the internet agent moves over through the old
//! port, and the old port closes by itself once every device has the new profile;
//! (3) the perimeter rule moved off the gateway's port: the gateway's self-probe through the
//! perimeter (hairpin NAT) turns it red naming the blocked address, `steward doctor gateway`
//! names it from the internet, and it turns green once put right; (4) a gateway run with
//! wrong credentials (an agent's identity) is refused by the server with an ID, and the
//! gateway names the reason.
//!
//! Needs root, `ip` (iproute2) and `nft` (nftables): it fails, not skips, without them (CI
//! installs both and runs as root). Every namespace and process is removed by drop guards.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic here is a failed test

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod procs;
use procs::{Proc, agent_bin, steward, wait_for};

/// Addresses inside the namespaces this test makes (nothing outside them sees these).
const EXT_IP: &str = "10.231.1.1"; // the perimeter's public address: the gateway's external name
const INET_IP: &str = "10.231.1.2"; // the internet host
const EDGE_DMZ_IP: &str = "10.231.3.1"; // the perimeter, facing the dmz
const GW_IP: &str = "10.231.3.2"; // the dmz host, behind the perimeter's NAT
const DMZ_INNER_IP: &str = "10.231.2.1"; // dmz, facing the internal network
const SERVER_IP: &str = "10.231.2.2"; // the internal host (server and LAN agent)
/// Fixed ports are safe: the namespaces are new for each run.
const AGENT_PORT: u16 = 4726;
const CONSOLE_PORT: u16 = 4727;
const CRL_PORT: u16 = 4728;
const GW_PORT: u16 = 8443;
/// The gateway's port after the port change (scenario 2).
const NEW_PORT: u16 = 9443;
/// Where the perimeter rule wrongly moves to (scenario 3).
const WRONG_PORT: u16 = 9444;

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(|euid| euid == "0"))
        .unwrap_or(false)
}

fn have(tool: &str, arg: &str) -> bool {
    Command::new(tool)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs a command with a bound on its time; panics on failure with its output.
fn sh(cmd: &mut Command) -> String {
    let out = bounded(cmd, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command, killing it if it takes longer than `limit`.
fn bounded(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{cmd:?} did not finish within {limit:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("panicked"),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The four namespaces; deleted on drop (their veths and nftables rules go with them).
struct Net {
    inet: String,
    edge: String,
    dmz: String,
    int: String,
}

impl Net {
    fn names(&self) -> [&str; 4] {
        [&self.inet, &self.edge, &self.dmz, &self.int]
    }

    /// `ip netns exec NS program`: the program keeps the PID (ip execs it), so killing the
    /// child kills the program.
    fn exec(&self, ns: &str, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program);
        c
    }

    fn create() -> Self {
        let base = format!("stw-{}", std::process::id());
        let net = Net {
            inet: format!("{base}-inet"),
            edge: format!("{base}-edge"),
            dmz: format!("{base}-dmz"),
            int: format!("{base}-int"),
        };
        // A leftover of an earlier run with the same PID (killed before its guard ran).
        for ns in net.names() {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        for ns in net.names() {
            sh(Command::new("ip").args(["netns", "add", ns]));
            sh(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]));
        }
        // Made inside the namespaces, so the names cannot collide with anything on the host.
        let ip = |args: &[&str]| sh(Command::new("ip").args(args));
        for (a, a_dev, b, b_dev) in [
            (&net.inet, "i0", &net.edge, "e0"),
            (&net.edge, "e1", &net.dmz, "d0"),
            (&net.dmz, "d1", &net.int, "n0"),
        ] {
            ip(&[
                "-n", a, "link", "add", a_dev, "type", "veth", "peer", "name", b_dev, "netns", b,
            ]);
        }
        for (ns, dev, addr) in [
            (&net.inet, "i0", INET_IP),
            (&net.edge, "e0", EXT_IP),
            (&net.edge, "e1", EDGE_DMZ_IP),
            (&net.dmz, "d0", GW_IP),
            (&net.dmz, "d1", DMZ_INNER_IP),
            (&net.int, "n0", SERVER_IP),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        // The internet host and the dmz host route through the perimeter; the internal
        // network has no route out at all.
        ip(&["-n", &net.inet, "route", "add", "default", "via", EXT_IP]);
        ip(&[
            "-n",
            &net.dmz,
            "route",
            "add",
            "default",
            "via",
            EDGE_DMZ_IP,
        ]);
        let sysctl = |ns: &str, kv: &str| {
            sh(Command::new("ip").args(["netns", "exec", ns, "sysctl", "-q", "-w", kv]));
        };
        // The perimeter routes; the dmz is a host, not a router.
        sysctl(&net.edge, "net.ipv4.ip_forward=1");
        sysctl(&net.dmz, "net.ipv4.ip_forward=0");
        net.firewall();
        net
    }

    /// The article's tables. Perimeter (a NAT firewall, as in front of a real DMZ): the
    /// public address forwards to the gateway host, the gateway port only — the ports are a
    /// set, so a test can open, close or move the rule. Hairpin NAT lets the gateway test its
    /// own external address from its side, through the same rule an agent meets. The dmz host
    /// admits only gateway ports from the perimeter and talks only to the server's agent-site
    /// port (and to its own external address); the internal host admits only that port, from
    /// the dmz.
    fn firewall(&self) {
        let edge = format!(
            "table ip steward_edge {{
  set gw_ports {{ type inet_service; elements = {{ {GW_PORT} }} }}
  chain prerouting {{
    type nat hook prerouting priority dstnat;
    ip daddr {EXT_IP} dnat to {GW_IP}
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat;
    oifname \"e1\" ip saddr {GW_IP} ct status dnat masquerade
  }}
  chain forward {{
    type filter hook forward priority 0; policy drop;
    ct state established,related accept
    ct status dnat ip daddr {GW_IP} tcp dport @gw_ports accept
  }}
}}
"
        );
        let dmz = format!(
            "table inet steward_dmz {{
  set gw_ports {{ type inet_service; elements = {{ {GW_PORT} }} }}
  chain input {{
    type filter hook input priority 0; policy drop;
    iif lo accept
    ct state established,related accept
    iifname \"d0\" ip daddr {GW_IP} tcp dport @gw_ports accept
  }}
  chain forward {{
    type filter hook forward priority 0; policy drop;
  }}
  chain output {{
    type filter hook output priority 0; policy drop;
    oif lo accept
    ct state established,related accept
    oifname \"d1\" ip daddr {SERVER_IP} tcp dport {AGENT_PORT} accept
    oifname \"d0\" ip daddr {EXT_IP} tcp dport @gw_ports accept
  }}
}}
"
        );
        let int = format!(
            "table inet steward_int {{
  chain input {{
    type filter hook input priority 0; policy drop;
    iif lo accept
    ct state established,related accept
    iifname \"n0\" ip saddr {DMZ_INNER_IP} ip daddr {SERVER_IP} tcp dport {AGENT_PORT} accept
  }}
}}
"
        );
        for (ns, rules) in [(&self.edge, edge), (&self.dmz, dmz), (&self.int, int)] {
            self.nft(ns, &rules);
        }
    }

    fn nft(&self, ns: &str, rules: &str) {
        let file = std::env::temp_dir().join(format!("{ns}.nft"));
        std::fs::write(&file, rules).unwrap();
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, "nft", "-f"]).arg(&file);
        sh(&mut c);
        let _ = std::fs::remove_file(&file);
    }

    /// Adds (`true`) or removes a port from the gateway-port rules, perimeter and dmz host
    /// alike: what a firewall admin does for a port change.
    fn gateway_port(&self, port: u16, open: bool) {
        let verb = if open { "add" } else { "delete" };
        for (ns, family, table) in [
            (&self.edge, "ip", "steward_edge"),
            (&self.dmz, "inet", "steward_dmz"),
        ] {
            sh(Command::new("ip").args([
                "netns",
                "exec",
                ns,
                "nft",
                verb,
                "element",
                family,
                table,
                "gw_ports",
                &format!("{{ {port} }}"),
            ]));
        }
    }

    /// Whether a TCP connection from `ns` to `addr:port` succeeds within `limit`:
    /// Ok(()) connected, Err(true) timed out (dropped), Err(false) refused or unreachable.
    fn connect(&self, ns: &str, addr: &str, port: u16, limit: u64) -> Result<(), bool> {
        let out = bounded(
            Command::new("ip").args([
                "netns",
                "exec",
                ns,
                "timeout",
                &limit.to_string(),
                "bash",
                "-c",
                &format!("exec 3<>/dev/tcp/{addr}/{port}"),
            ]),
            Duration::from_secs(limit + 10),
        );
        match out.status.code() {
            Some(0) => Ok(()),
            Some(124) => Err(true),
            _ => Err(false),
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.names() {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Reads every log file of an agent.
fn agent_logs(dir: &Path) -> String {
    std::fs::read_dir(dir.join("logs"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
        .collect()
}

#[test]
fn a_real_dmz_gateway_through_port_change_firewall_move_and_wrong_credentials() {
    assert!(
        is_root(),
        "the DMZ test makes network namespaces and needs root (CI runs as root)"
    );
    assert!(
        have("ip", "-V"),
        "the DMZ test needs `ip` (apt-get install iproute2)"
    );
    assert!(
        have("nft", "--version"),
        "the DMZ test needs `nft` (apt-get install nftables)"
    );
    let started = Instant::now();
    // STEWARD_TEST_KEEP=1 keeps the logs and data directories for a post-mortem.
    let keep = std::env::var_os("STEWARD_TEST_KEEP").is_some();
    let tmp = tempfile::Builder::new()
        .disable_cleanup(keep)
        .tempdir()
        .unwrap();
    if keep {
        eprintln!("keeping {}", tmp.path().display());
    }
    let log = |name: &str| tmp.path().join(name);
    // Dropped last (declared first): every process below is gone before the namespaces are.
    let net = Net::create();

    // The firewall as built: no route from the internet to the internal network; at the
    // public address only the gateway port passes, everything else is dropped.
    assert_eq!(net.connect(&net.inet, SERVER_IP, AGENT_PORT, 3), Err(false));
    assert_eq!(net.connect(&net.inet, EXT_IP, 22, 1), Err(true));

    // The server, in the internal network.
    let server = tmp.path().join("server");
    let pw = tmp.path().join("admin-pw");
    std::fs::write(&pw, "correct horse battery staple\n").unwrap();
    sh(net
        .exec(&net.int, &steward())
        .args([
            "server",
            "init",
            "--fqdn",
            "localhost",
            "--ip",
            SERVER_IP,
            "--data-dir",
        ])
        .arg(&server)
        .args(["--agent-addr", &format!("{SERVER_IP}:{AGENT_PORT}")])
        .args(["--console-addr", &format!("127.0.0.1:{CONSOLE_PORT}")])
        .args(["--crl-addr", &format!("{SERVER_IP}:{CRL_PORT}")])
        .arg("--admin-password-file")
        .arg(&pw));
    let mut server_proc = Proc::spawn(
        net.exec(&net.int, &steward())
            .args(["server", "run", "--data-dir"])
            .arg(&server),
        &log("server.log"),
    );
    let addresses = server.join("run").join("addresses.json");
    wait_for("the server to listen", Duration::from_secs(20), || {
        server_proc.assert_running("the server", &log("server.log"));
        addresses.exists().then_some(())
    });
    // The dmz reaches the agent site, and not the CRL port (plain HTTP) beside it.
    assert_eq!(net.connect(&net.dmz, SERVER_IP, AGENT_PORT, 3), Ok(()));
    assert!(net.connect(&net.dmz, SERVER_IP, CRL_PORT, 1).is_err());

    // Admin commands run where the console listens.
    let admin = |args: &[&str]| {
        let mut c = net.exec(&net.int, &steward());
        c.args(&args[..2])
            .arg("--data-dir")
            .arg(&server)
            .args(&args[2..]);
        c
    };
    let json = |args: &[&str]| -> Value {
        let mut c = admin(args);
        c.args(["--format", "json"]);
        serde_json::from_str(&sh(&mut c)).unwrap()
    };

    // The gateway, in the dmz, behind the perimeter's NAT: its external name is the public
    // address. It joins through the firewall, then runs. Its CRL comes over its own link to
    // the agent site (the CRL port is closed to it).
    let token = tmp.path().join("gateway.token");
    sh(&mut admin(&[
        "gateway",
        "token",
        "--out",
        token.to_str().unwrap(),
    ]));
    let gw = tmp.path().join("gateway");
    sh(net
        .exec(&net.dmz, &steward())
        .args(["gateway", "join", "--server"])
        .arg(format!("https://{SERVER_IP}:{AGENT_PORT}"))
        .arg("--token")
        .arg(&token)
        .arg("--data-dir")
        .arg(&gw)
        .args(["--external-name", EXT_IP])
        .args(["--listen", &format!("{GW_IP}:{GW_PORT}")]));
    let spawn_gateway = |name: &str| {
        Proc::spawn(
            net.exec(&net.dmz, &steward())
                .args(["gateway", "run", "--report-interval", "1", "--data-dir"])
                .arg(&gw),
            &log(name),
        )
    };
    let mut gw_proc = spawn_gateway("gateway.log");
    let gateway_id = wait_for("the gateway's report", Duration::from_secs(20), || {
        gw_proc.assert_running("the gateway", &log("gateway.log"));
        let list = json(&["gateway", "list"]);
        (list[0]["report"]["listen_port"] == GW_PORT)
            .then(|| list[0]["id"].as_str().unwrap().to_owned())
    });
    assert_eq!(net.connect(&net.inet, EXT_IP, GW_PORT, 3), Ok(()));
    // The gateway tested its own external address through the perimeter and is green.
    // Polls the console's view of the gateway until `ok`; on timeout, fails with the last.
    let gateway = |what: &str, ok: &dyn Fn(&Value) -> bool| -> Value {
        let start = Instant::now();
        loop {
            let list = json(&["gateway", "list"]);
            let g = list
                .as_array()
                .unwrap()
                .iter()
                .find(|g| g["id"] == gateway_id.as_str())
                .cloned()
                .unwrap();
            if ok(&g) {
                return g;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "timed out waiting for {what}; the gateway now: {g:#}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let g = gateway("the gateway green after its self-probe", &|g| {
        g["status"] == "green"
    });
    let probes = g["report"]["probes"].as_array().unwrap();
    assert!(
        probes.iter().any(|p| p["target"]["host"] == EXT_IP
            && p["target"]["port"] == GW_PORT
            && p["failure"].is_null()),
        "{g}"
    );

    // Two agents enroll on the LAN and receive the profile naming the gateway.
    let package = tmp.path().join("agent-package.json");
    sh(&mut admin(&[
        "package",
        "agent",
        "--out",
        package.to_str().unwrap(),
        "--max-uses",
        "2",
    ]));
    let enroll = |name: &str| {
        let dir = tmp.path().join(name);
        sh(net
            .exec(&net.int, &agent_bin())
            .args(["enroll", "--name", name, "--package"])
            .arg(&package)
            .arg("--data-dir")
            .arg(&dir));
        sh(net
            .exec(&net.int, &agent_bin())
            .args(["run", "--once", "--data-dir"])
            .arg(&dir));
        let config: Value =
            serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["profile"]["gateways"][0]["host"], EXT_IP, "{config}");
        assert_eq!(
            config["profile"]["gateways"][0]["port"], GW_PORT,
            "{config}"
        );
        dir
    };
    let lan_agent = enroll("pc-lan");
    let road_agent = enroll("pc-road");
    let device_id = |dir: &Path| -> String {
        let identity: Value =
            serde_json::from_slice(&std::fs::read(dir.join("identity.json")).unwrap()).unwrap();
        identity["device_id"].as_str().unwrap().to_owned()
    };
    let (lan_id, road_id) = (device_id(&lan_agent), device_id(&road_agent));
    let road_config: Value =
        serde_json::from_slice(&std::fs::read(road_agent.join("config.json")).unwrap()).unwrap();
    let servers = road_config["profile"]["servers"].as_array().unwrap();
    assert!(
        servers
            .iter()
            .any(|s| s["host"] == SERVER_IP && s["port"] == AGENT_PORT),
        "{road_config}"
    );

    // Scenario 1: the LAN agent runs in the internal network, the other on the internet,
    // where the LAN server's addresses lead nowhere and only the gateway answers.
    let spawn_lan = |name: &str| {
        Proc::spawn(
            net.exec(&net.int, &agent_bin())
                .args(["run", "--data-dir"])
                .arg(&lan_agent),
            &log(name),
        )
    };
    let mut lan_proc = spawn_lan("agent-lan.log");
    let mut road_proc = Proc::spawn(
        net.exec(&net.inet, &agent_bin())
            .args(["run", "--data-dir"])
            .arg(&road_agent),
        &log("agent-road.log"),
    );
    let device = |id: &str| -> Value {
        json(&["devices", "list"])
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == id)
            .cloned()
            .unwrap()
    };
    let via = |port: u16| format!("gateway {gateway_id} via {EXT_IP}:{port}");
    let road = wait_for(
        "both agents Online, the road agent through the gateway",
        Duration::from_secs(30),
        || {
            lan_proc.assert_running("the LAN agent", &log("agent-lan.log"));
            road_proc.assert_running("the internet agent", &log("agent-road.log"));
            let (lan, road) = (device(&lan_id), device(&road_id));
            (lan["status"] == "online"
                && road["status"] == "online"
                && road["connection_path"] == via(GW_PORT).as_str())
            .then_some(road)
        },
    );
    assert_eq!(
        device(&lan_id)["connection_path"],
        format!("lan via {SERVER_IP}:{AGENT_PORT}").as_str()
    );
    // It tried the LAN server first (no route from the internet), then the gateway; the
    // server has its failed attempt on the LAN address, named and counted.
    let road_logs = agent_logs(&road_agent);
    assert!(
        road_logs
            .lines()
            .any(|l| l.contains("AGENT-CONNECTION-FAILED")
                && l.contains(&format!("{SERVER_IP}:{AGENT_PORT}"))),
        "{road_logs}"
    );
    assert!(
        road_logs.lines().any(|l| l.contains("AGENT-CONNECTED")
            && l.contains(&format!("through gateway {EXT_IP}:{GW_PORT}"))),
        "{road_logs}"
    );
    let _ = road;
    let road = wait_for(
        "the road agent's failed LAN attempt at the server",
        Duration::from_secs(90),
        || {
            let d = device(&road_id);
            d["failed_attempts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| {
                    a["address"] == format!("{SERVER_IP}:{AGENT_PORT}").as_str()
                        && a["gateway"].is_null()
                })
                .then_some(d)
        },
    );
    let _ = road;

    // Scenario 2: the gateway's port changes. The firewall admin opens the new port beside
    // the old; the gateway admin changes the gateway's listen address and restarts it. No one
    // edits a profile. The LAN agent is stopped first, so the phasing can be seen: the
    // gateway must keep answering on the old port while a device lacks the new profile.
    drop(lan_proc);
    net.gateway_port(NEW_PORT, true);
    sh(net
        .exec(&net.dmz, &steward())
        .args(["gateway", "set-port", "--data-dir"])
        .arg(&gw)
        .args(["--listen", &format!("{GW_IP}:{NEW_PORT}")]));
    drop(gw_proc);
    let mut gw_proc = spawn_gateway("gateway-2.log");
    let g = gateway(
        "the new port reported, the old one kept for the stopped LAN agent",
        &|g| {
            g["report"]["listen_port"] == NEW_PORT
                && g["report"]["previous_ports"] == serde_json::json!([GW_PORT])
                && g["pending_total"] == 1
        },
    );
    assert!(
        g["pending_devices"][0].as_str().unwrap().contains(&lan_id),
        "the console names the device without the new profile: {g}"
    );
    // The internet agent learned the new port through the old one and moved to it.
    wait_for(
        "the road agent through the new port",
        Duration::from_secs(60),
        || {
            gw_proc.assert_running("the gateway", &log("gateway-2.log"));
            road_proc.assert_running("the internet agent", &log("agent-road.log"));
            (device(&road_id)["connection_path"] == via(NEW_PORT).as_str()).then_some(())
        },
    );
    // The old port still answers: the LAN agent has not heard of the new one.
    assert_eq!(net.connect(&net.inet, EXT_IP, GW_PORT, 3), Ok(()));
    // The LAN agent comes back, takes the new profile, and the old port closes by itself.
    let mut lan_proc = spawn_lan("agent-lan-2.log");
    let g = gateway("the old port retired", &|g| {
        g["report"]["previous_ports"]
            .as_array()
            .is_none_or(|p| p.is_empty())
            && g["pending_total"] == 0
            && g["status"] == "green"
    });
    assert_eq!(g["problems"], serde_json::json!([]), "{g}");
    assert!(net.connect(&net.inet, EXT_IP, GW_PORT, 3).is_err());
    assert_eq!(net.connect(&net.inet, EXT_IP, NEW_PORT, 3), Ok(()));
    let gw_log = std::fs::read_to_string(log("gateway-2.log")).unwrap();
    assert!(
        gw_log
            .lines()
            .any(|l| l.contains("GATEWAY-PORT-RETIRED") && l.contains(&GW_PORT.to_string())),
        "{gw_log}"
    );
    lan_proc.assert_running("the LAN agent", &log("agent-lan-2.log"));
    net.gateway_port(GW_PORT, false);

    // Scenario 3: the perimeter rule moves to a port the gateway does not listen on. The
    // gateway's self-probe of its external address meets the drop, and the console names
    // the blocked port; `steward doctor` on the internet host names it too.
    net.gateway_port(WRONG_PORT, true);
    net.gateway_port(NEW_PORT, false);
    let g = gateway("the gateway red, naming the blocked port", &|g| {
        g["status"] == "red"
    });
    let problems = g["problems"].as_array().unwrap();
    assert!(
        problems.iter().any(|p| p["id"] == "GATEWAY-PORT-FILTERED"
            && p["message"]
                .as_str()
                .unwrap()
                .contains(&format!("{EXT_IP}:{NEW_PORT}"))),
        "{g}"
    );
    let doctor = bounded(
        net.exec(&net.inet, &steward())
            .args(["doctor", "gateway", &format!("{EXT_IP}:{NEW_PORT}")])
            .arg("--agent-data-dir")
            .arg(&road_agent)
            .args(["--format", "json"]),
        Duration::from_secs(60),
    );
    let said = String::from_utf8_lossy(&doctor.stdout);
    assert_eq!(doctor.status.code(), Some(2), "{said}");
    assert!(
        said.contains("NET-TIMEOUT") && said.contains(&NEW_PORT.to_string()),
        "{said}"
    );
    // Put right, it turns green again by itself.
    net.gateway_port(NEW_PORT, true);
    net.gateway_port(WRONG_PORT, false);
    gateway("the gateway green again", &|g| g["status"] == "green");

    // Scenario 4: a gateway given wrong credentials (an agent's identity in place of its
    // own). The server refuses it by ID and names the certificate; the gateway names why.
    let wrong = tmp.path().join("gateway-wrong");
    std::fs::create_dir(&wrong).unwrap();
    for f in [
        "gateway.json",
        "server.pem",
        "server.key",
        "chain.pem",
        "anchors.pem",
    ] {
        std::fs::copy(gw.join(f), wrong.join(f)).unwrap();
    }
    let identity: Value =
        serde_json::from_slice(&std::fs::read(lan_agent.join("identity.json")).unwrap()).unwrap();
    let agent_id = lan_id;
    std::fs::write(
        wrong.join("identity.pem"),
        identity["cert_pem"].as_str().unwrap(),
    )
    .unwrap();
    std::fs::copy(lan_agent.join("agent.key"), wrong.join("identity.key")).unwrap();
    let out = bounded(
        net.exec(&net.dmz, &steward())
            .args([
                "gateway",
                "run",
                "--listen",
                &format!("{GW_IP}:{}", GW_PORT + 1),
            ])
            .arg("--data-dir")
            .arg(&wrong),
        Duration::from_secs(60),
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("GATEWAY-CRL-UNAVAILABLE")
            && said.contains("GATEWAY-NOT-TRUSTED")
            && said.contains(&agent_id),
        "{said}"
    );
    let server_log = std::fs::read_to_string(log("server.log")).unwrap();
    assert!(
        server_log
            .lines()
            .any(|l| l.contains("GATEWAY-NOT-TRUSTED") && l.contains(&agent_id)),
        "{server_log}"
    );
    // The real gateway is untouched: the internet agent still checks in through it.
    gw_proc.assert_running("the gateway", &log("gateway-2.log"));
    road_proc.assert_running("the internet agent", &log("agent-road.log"));
    assert_eq!(
        gateway("the real gateway healthy", &|g| g["report"]["health"]
            == "ok")["status"],
        "green"
    );

    assert!(
        started.elapsed() < Duration::from_secs(180),
        "the DMZ test took {:?}",
        started.elapsed()
    );
}
