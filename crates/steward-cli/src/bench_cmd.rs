//! `steward bench`: the swarm benchmark's command line (the engine is `steward-bench`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use steward_bench::{handshake, identity, multi, net, swarm};
use steward_proto::admin::{NewPackage, NewTask, TaskCreated, paths};

use crate::admin::Conn;
use crate::cli::Format;

#[derive(Debug, Subcommand)]
pub(crate) enum BenchCmd {
    /// Enroll N identities in bulk through the real enrollment route (a key pair and CSR each,
    /// one package token from the admin API), measure the enrollment rate, and store them
    /// (keys 0600) for swarms.
    Prepare(PrepareArgs),
    /// Run N simulated agents, each with its own identity, speaking the real protocol over
    /// mutual TLS; report check-ins/s, latency, errors by kind, handshakes, the fan-out over
    /// held connections, and the server's RSS and CPU. Each agent holds a socket, so when N
    /// exceeds what one process's open-file limit allows the agents are spread over several
    /// processes of this command (see --processes), reported as one swarm.
    Swarm(SwarmArgs),
    /// The handshake ceiling: full and resumed mutual-TLS handshakes per second of bare rustls
    /// (in this process, with the agent site's certificate) against Steward's agent site.
    Handshake(HandshakeArgs),
}

#[derive(Debug, Args)]
pub(crate) struct PrepareArgs {
    #[command(flatten)]
    conn: Conn,
    /// Identities to enroll.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    agents: u32,
    /// The identity directory to write (0700; identities.jsonl is 0600).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Enrollments in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Debug, Args)]
pub(crate) struct SwarmArgs {
    /// The admin connection (`--server` is the console URL, or `--data-dir`): used only to
    /// create the fan-out task with `--persistent`.
    #[command(flatten)]
    conn: Conn,
    /// The identity directory from `steward bench prepare`.
    #[arg(long, value_name = "DIR")]
    identities: PathBuf,
    /// Simulated agents (the first N identities).
    #[arg(long)]
    agents: usize,
    /// Check-in interval, seconds (the agent's default is 60).
    #[arg(long, default_value_t = 60)]
    interval: u64,
    /// Jitter of the interval, percent (the agent's default is 10).
    #[arg(long, default_value_t = 10)]
    jitter: u8,
    /// How long to run, seconds.
    #[arg(long)]
    duration: u64,
    /// Hold each agent's connection and long-poll between check-ins, as the agent does; with
    /// a fan-out task (see --task-at).
    #[arg(long)]
    persistent: bool,
    /// With --persistent: create a task for all devices this many seconds after the start
    /// [default: 1.15 × the interval, when that is at least 10 s before the end].
    #[arg(long, value_name = "SECONDS")]
    task_at: Option<f64>,
    /// With --persistent: no fan-out task.
    #[arg(long)]
    no_task: bool,
    /// Connect through this gateway (https://host:port) instead of the agent site. Several
    /// (repeated or comma-separated): the agents are split among them in blocks, one per
    /// process (process K uses gateway K mod G), so there are at least as many processes.
    #[arg(long, value_name = "URL", value_delimiter = ',')]
    via_gateway: Vec<String>,
    /// The agent site to use instead of the one the identities' profile names.
    #[arg(long, value_name = "URL")]
    agent_site: Option<String>,
    /// Loopback source addresses to spread connections over (127.0.1.1, …).
    #[arg(long, default_value_t = 64)]
    sources: usize,
    /// Connect, handshake and request timeout, seconds.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Start as agents that checked in before (in an earlier swarm) and kept their state: the
    /// configuration version noted by that run and the inventory hash only, as a restarted
    /// agent does; without it every agent makes a first contact (sends its inventory).
    #[arg(long)]
    resume: bool,
    /// No TLS session cache on the agents (every handshake is full).
    #[arg(long)]
    no_resumption: bool,
    /// The server's process ID, to report its RSS and CPU (same host only).
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
    /// Processes to spread the agents over: each holds one socket per agent, and a process may
    /// not open more files than the hard RLIMIT_NOFILE. The processes share one timeline and
    /// one report; this one starts them, samples the server and creates the fan-out task
    /// [default: 1 when the agents fit the hard limit less 1,000, else as many as needed;
    /// with several gateways, a multiple of their number].
    #[arg(long, value_name = "P", value_parser = clap::value_parser!(u32).range(1..=4096))]
    processes: Option<u32>,
    /// (Internal) run as child K of P of a swarm spread over processes: identities
    /// [K·N/P, (K+1)·N/P), the child protocol on stdin and stdout.
    #[arg(long, value_name = "K/P", hide = true)]
    slice: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Debug, Args)]
pub(crate) struct HandshakeArgs {
    /// The server's data directory (the bare server uses its agent-site certificate and key).
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// The identity directory from `steward bench prepare`.
    #[arg(long, value_name = "DIR")]
    identities: PathBuf,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Seconds per series.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// The Steward server's process ID, to report its CPU per handshake.
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

fn runtime(name: &str) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .thread_name(name)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn show_progress(format: Format) -> bool {
    format == Format::Text && std::io::stderr().is_terminal()
}

pub(crate) fn run(cmd: BenchCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        BenchCmd::Prepare(a) => prepare(a),
        BenchCmd::Swarm(a) => run_swarm(a),
        BenchCmd::Handshake(a) => run_handshake(a),
    }
}

fn prepare(a: PrepareArgs) -> anyhow::Result<ExitCode> {
    let rt = runtime("bench-enroll")?;
    let report = rt.block_on(async {
        let admin = a.conn.connect().await?;
        let package: steward_proto::BootstrapPackage = admin
            .post(
                paths::PACKAGES,
                &NewPackage {
                    expires_secs: 24 * 3600,
                    max_uses: a.agents,
                    tags: vec![],
                },
            )
            .await?;
        let bar = steward_bench::progress(u64::from(a.agents), "enrolled", show_progress(a.format));
        let opts = identity::PrepareOptions {
            agents: a.agents as usize,
            concurrency: a.concurrency,
            out: a.out.clone(),
            timeout: Duration::from_secs(30),
        };
        let r = identity::prepare(&package, &opts, &bar).await;
        bar.finish_and_clear();
        anyhow::Ok(r?)
    })?;
    match a.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Text => {
            let l = &report.latency_ms;
            let f = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
            println!(
                "enrolled {} of {} identities in {:.1} s: {:.1} enrollments/s ({} in flight); request p50 {} / p99 {} / max {} ms; stored in {}",
                report.enrolled,
                report.requested,
                report.secs,
                report.rate_per_sec,
                report.concurrency,
                f(l.p50_ms),
                f(l.p99_ms),
                f(l.max_ms),
                a.out.display()
            );
            for (k, n) in &report.errors {
                println!("  {n} failed attempt(s): {k}");
            }
            if let Some(e) = &report.first_error {
                println!("  first failure: {e}");
            }
        }
    }
    Ok(if report.enrolled == report.requested {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The agent site the identities' profile names, or `--agent-site`.
fn site_target(a: &SwarmArgs, meta: &identity::StoreMeta) -> anyhow::Result<net::Target> {
    Ok(match (&a.agent_site, meta.servers.first()) {
        (Some(s), _) => net::Target::from_url(s)?,
        (None, Some(s)) => net::Target::resolve(&s.host, s.port)?,
        (None, None) => {
            anyhow::bail!("the identities' profile names no server: give --agent-site URL")
        }
    })
}

/// Where process `k`'s agents connect: gateway `k` mod G, or the agent site.
fn target_of(a: &SwarmArgs, meta: &identity::StoreMeta, k: usize) -> anyhow::Result<net::Target> {
    match a.via_gateway.get(k % a.via_gateway.len().max(1)) {
        Some(g) => Ok(net::Target::from_url(g)?),
        None => site_target(a, meta),
    }
}

fn swarm_options(
    a: &SwarmArgs,
    meta: &identity::StoreMeta,
    task_at: Duration,
) -> anyhow::Result<swarm::SwarmOptions> {
    Ok(swarm::SwarmOptions {
        agents: a.agents,
        interval: Duration::from_secs(a.interval.max(1)),
        jitter_percent: a.jitter.min(100),
        duration: Duration::from_secs(a.duration.max(1)),
        persistent: a.persistent,
        task_after: task_at,
        sources: a.sources,
        timeout: Duration::from_secs(a.timeout.max(1)),
        resumption: !a.no_resumption,
        server_pid: a.server_pid,
        resume: if a.resume {
            Some(steward_bench::swarm::Resume {
                config_version: meta.config_version.context(
                    "--resume: no earlier swarm noted a configuration version in this identity store",
                )?,
                profile_version: meta.profile_version.unwrap_or(0),
            })
        } else {
            None
        },
    })
}

/// How many processes, and why (one line for stderr).
fn choose_processes(
    agents: usize,
    asked: Option<u32>,
    gateways: usize,
    hard: u64,
) -> anyhow::Result<(usize, String)> {
    use steward_bench::limits::{FD_MARGIN, agents_per_process, processes_for};
    let budget = agents_per_process(hard);
    let hard_text = if hard == u64::MAX {
        "unlimited".to_owned()
    } else {
        hard.to_string()
    };
    let limit = format!(
        "at most {budget} agents a process (hard RLIMIT_NOFILE {hard_text} less {FD_MARGIN} for other descriptors)"
    );
    let (p, why) = match asked {
        Some(p) => (p as usize, format!("--processes; {limit}")),
        None => {
            let need = processes_for(agents, hard);
            let mut why = if need == 1 {
                format!("{agents} agents fit in one, {limit}")
            } else {
                format!("{agents} agents, {limit}")
            };
            let g = gateways.max(1);
            let p = need.div_ceil(g) * g;
            if g > 1 {
                why.push_str(&format!(
                    "; a multiple of the {g} gateways (process K uses gateway K mod {g})"
                ));
            }
            (p, why)
        }
    };
    if p > agents.max(1) {
        anyhow::bail!("{p} processes for {agents} agents: at least one agent each");
    }
    if gateways > p {
        anyhow::bail!(
            "{gateways} gateways need at least as many processes (process K uses gateway K mod {gateways}); give --processes {gateways} or more"
        );
    }
    let per = agents.div_ceil(p);
    if per > budget {
        eprintln!(
            "steward bench: warning: {per} agents a process, more than the {limit}: expect file-descriptor errors"
        );
    }
    let head = if p == 1 {
        "1 process".to_owned()
    } else {
        format!("{p} processes of up to {per} agents")
    };
    Ok((p, format!("{head}: {why}")))
}

/// `--slice K/P`.
fn parse_slice(s: &str) -> anyhow::Result<(usize, usize)> {
    let parsed = s
        .split_once('/')
        .and_then(|(k, p)| Some((k.parse::<usize>().ok()?, p.parse::<usize>().ok()?)));
    match parsed {
        Some((k, p)) if k < p => Ok((k, p)),
        _ => anyhow::bail!("--slice {s:?}: expected K/P with K < P"),
    }
}

fn run_swarm(a: SwarmArgs) -> anyhow::Result<ExitCode> {
    if let Some(s) = a.slice.clone() {
        return run_swarm_child(&a, &s);
    }
    let meta = identity::load_meta(&a.identities)?;
    let hard = steward_bench::limits::nofile().hard;
    let (processes, why) = choose_processes(a.agents, a.processes, a.via_gateway.len(), hard)?;
    eprintln!("steward bench: {why}");
    let interval = Duration::from_secs(a.interval.max(1));
    let duration = Duration::from_secs(a.duration.max(1));
    let task_at = a
        .task_at
        .map(Duration::from_secs_f64)
        .unwrap_or_else(|| interval.mul_f64(1.15));
    let fan_out = a.persistent && !a.no_task && task_at + Duration::from_secs(10) <= duration;
    if a.persistent && !a.no_task && !fan_out {
        eprintln!(
            "steward bench: no fan-out task: it would be created at {:.0} s, less than 10 s before the end",
            task_at.as_secs_f64()
        );
    }
    let opts = swarm_options(&a, &meta, task_at)?;
    let via_gateway = !a.via_gateway.is_empty();
    let target_label = if a.via_gateway.len() > 1 {
        let mut addrs = Vec::new();
        for g in &a.via_gateway {
            addrs.push(net::Target::from_url(g)?.addr.to_string());
        }
        addrs.join(",")
    } else {
        target_of(&a, &meta, 0)?.addr.to_string()
    };
    let rt = runtime("bench-agent")?;
    let report = rt.block_on(async {
        let task: Option<swarm::TaskLaunch> = if fan_out {
            // Log in now, so the task's clock does not include the login.
            let admin = a.conn.connect().await?;
            Some(Box::pin(async move {
                let created: TaskCreated = admin
                    .post(
                        paths::TASKS,
                        &NewTask {
                            command: "true".into(),
                            args: vec![],
                            timeout_secs: 60,
                            target: "all".into(),
                        },
                    )
                    .await
                    .map_err(|e| format!("{e:#}"))?;
                Ok(created.id)
            }))
        } else {
            None
        };
        let bar = steward_bench::progress(a.duration, "s", show_progress(a.format));
        if processes == 1 {
            let (_, ids) = identity::load(&a.identities, a.agents)?;
            let target = target_of(&a, &meta, 0)?;
            let r = swarm::run(
                ids,
                &meta.trust_anchors_pem,
                target,
                via_gateway,
                opts,
                task,
                bar,
            )
            .await;
            return anyhow::Ok(r?);
        }
        if meta.count < a.agents {
            return Err(steward_bench::BenchError::TooFewIdentities {
                dir: a.identities.clone(),
                have: meta.count,
                want: a.agents,
            }
            .into());
        }
        let exe =
            std::env::current_exe().context("cannot find this executable to start children")?;
        let args = child_args(&a);
        let spawn = |k: usize| {
            let mut cmd = std::process::Command::new(&exe);
            cmd.args(&args)
                .arg("--slice")
                .arg(format!("{k}/{processes}"));
            cmd
        };
        let popts = multi::ParentOptions {
            processes,
            opts,
            target: target_label,
            via_gateway,
        };
        anyhow::Ok(multi::run_parent(spawn, popts, task, bar).await?)
    })?;
    if let Some(v) = report.config_version {
        identity::save_config_version(&a.identities, v, report.profile_version)?;
    }
    match a.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Text => print!("{}", report.text()),
    }
    Ok(ExitCode::SUCCESS)
}

/// The arguments every child gets (then `--slice K/P`): what its agents need; not the admin
/// connection, the task, the server or the output format, which are the parent's.
fn child_args(a: &SwarmArgs) -> Vec<std::ffi::OsString> {
    let mut v: Vec<std::ffi::OsString> = vec!["bench".into(), "swarm".into()];
    let mut pair = |k: &str, val: std::ffi::OsString| {
        v.push(k.into());
        v.push(val);
    };
    pair("--identities", a.identities.clone().into_os_string());
    pair("--agents", a.agents.to_string().into());
    pair("--interval", a.interval.to_string().into());
    pair("--jitter", a.jitter.to_string().into());
    pair("--duration", a.duration.to_string().into());
    pair("--sources", a.sources.to_string().into());
    pair("--timeout", a.timeout.to_string().into());
    if !a.via_gateway.is_empty() {
        pair("--via-gateway", a.via_gateway.join(",").into());
    }
    if let Some(s) = &a.agent_site {
        pair("--agent-site", s.into());
    }
    for (on, flag) in [
        (a.persistent, "--persistent"),
        (a.resume, "--resume"),
        (a.no_resumption, "--no-resumption"),
    ] {
        if on {
            v.push(flag.into());
        }
    }
    v
}

/// A child of a swarm spread over processes: its slice of the identities, the child protocol
/// on stdin and stdout (nothing else on stdout).
fn run_swarm_child(a: &SwarmArgs, slice: &str) -> anyhow::Result<ExitCode> {
    let (k, p) = parse_slice(slice)?;
    let range = multi::slice(a.agents, k, p);
    let (meta, ids) = identity::load_range(&a.identities, range.clone())?;
    let target = target_of(a, &meta, k)?;
    // The timeline's task instant comes from the parent; `task_after` is not used here.
    let opts = swarm_options(a, &meta, Duration::ZERO)?;
    let rt = runtime("bench-agent")?;
    rt.block_on(multi::run_child(
        ids,
        range.start,
        &meta.trust_anchors_pem,
        target,
        opts,
    ))?;
    Ok(ExitCode::SUCCESS)
}

fn run_handshake(a: HandshakeArgs) -> anyhow::Result<ExitCode> {
    let (meta, ids) = identity::load(&a.identities, a.clients.max(1))?;
    let dd = steward_server::DataDir::new(&a.data_dir);
    let bare_cfg = handshake::bare_config(
        &dd.agent_cert(),
        &dd.issuing_cert(),
        &dd.agent_key(),
        &dd.root_cert(),
    )?;
    let steward = match meta.servers.first() {
        Some(s) => net::Target::resolve(&s.host, s.port)?,
        None => anyhow::bail!("the identities' profile names no server"),
    };
    let secs = Duration::from_secs(a.secs.max(1));
    // The bare server on a runtime of its own with two workers, as the Steward server has on
    // this machine; the clients on another.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bare-tls")
        .enable_all()
        .build()
        .context("cannot start the bare server's runtime")?;
    let stop = Arc::new(AtomicBool::new(false));
    let (addr, serving) = server_rt.block_on(handshake::serve_bare(bare_cfg, stop.clone()))?;
    let mut bare = steward.clone();
    bare.addr = addr;
    let rt = runtime("bench-client")?;
    let pid = a.server_pid;
    let steward_cpu = move || pid.and_then(steward_bench::limits::sample).map(|s| s.cpu);
    let bare_cpu = || handshake::threads_cpu("bare-tls");
    let rows = rt.block_on(async {
        let mut rows = Vec::new();
        for resumed in [false, true] {
            rows.push(
                handshake::measure(
                    "bare rustls",
                    &bare,
                    &ids,
                    &meta.trust_anchors_pem,
                    resumed,
                    secs,
                    &bare_cpu,
                )
                .await?,
            );
            rows.push(
                handshake::measure(
                    "steward agent site",
                    &steward,
                    &ids,
                    &meta.trust_anchors_pem,
                    resumed,
                    secs,
                    &steward_cpu,
                )
                .await?,
            );
        }
        anyhow::Ok(rows)
    })?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = server_rt.block_on(serving);
    match a.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Format::Text => {
            println!(
                "{:<20} {:<8} {:>7} {:>10} {:>10} {:>8} {:>14} {:>7}",
                "server",
                "mode",
                "clients",
                "handshakes",
                "per second",
                "ratio",
                "server CPU/hs",
                "errors"
            );
            for pair in rows.chunks(2) {
                let base = pair.first().map_or(0.0, |b| b.per_sec);
                for r in pair {
                    println!(
                        "{:<20} {:<8} {:>7} {:>10} {:>10.0} {:>7.0}% {:>14} {:>7}",
                        r.server,
                        r.mode,
                        r.clients,
                        r.handshakes,
                        r.per_sec,
                        if base > 0.0 {
                            100.0 * r.per_sec / base
                        } else {
                            0.0
                        },
                        r.server_cpu_us
                            .map_or_else(|| "-".to_owned(), |c| format!("{c:.0} us")),
                        r.errors.values().sum::<u64>() + r.other_kind
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Top {
        #[command(subcommand)]
        cmd: BenchCmd,
    }

    fn swarm_args(extra: &[&str]) -> SwarmArgs {
        let mut argv = vec![
            "bench",
            "swarm",
            "--identities",
            "IDS",
            "--agents",
            "100",
            "--duration",
            "30",
        ];
        argv.extend_from_slice(extra);
        match Top::try_parse_from(argv).unwrap().cmd {
            BenchCmd::Swarm(a) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn gateways_repeat_or_split_on_commas() {
        let a = swarm_args(&[
            "--via-gateway",
            "https://127.0.0.1:1,https://127.0.0.1:2",
            "--via-gateway",
            "https://127.0.0.1:3",
        ]);
        assert_eq!(a.via_gateway.len(), 3);
        // The children get the same list and their slice, and parse back to the same swarm.
        // `steward bench swarm …`: with `Top` standing for `steward bench`, "bench" is argv[0].
        let mut argv = child_args(&a);
        assert_eq!(argv.first().map(|s| s.as_os_str()), Some("bench".as_ref()));
        argv.extend(["--slice".into(), "2/3".into()]);
        let Top {
            cmd: BenchCmd::Swarm(c),
        } = Top::try_parse_from(argv).unwrap()
        else {
            panic!("not a swarm");
        };
        assert_eq!(c.via_gateway, a.via_gateway);
        assert_eq!(c.slice.as_deref(), Some("2/3"));
        assert_eq!((c.agents, c.duration, c.persistent), (100, 30, false));
        assert!(c.processes.is_none() && c.server_pid.is_none());
    }

    #[test]
    fn processes_chosen_from_the_limit_and_gateways() {
        // This machine: hard limit 20,000.
        assert_eq!(choose_processes(19_000, None, 0, 20_000).unwrap().0, 1);
        let (p, why) = choose_processes(100_000, None, 0, 20_000).unwrap();
        assert_eq!(p, 6, "{why}");
        assert!(why.contains("at most 19000 agents a process"), "{why}");
        // Four gateways: a multiple of four.
        assert_eq!(choose_processes(100_000, None, 4, 20_000).unwrap().0, 8);
        assert_eq!(choose_processes(100, None, 3, 20_000).unwrap().0, 3);
        assert_eq!(choose_processes(100, Some(2), 0, 20_000).unwrap().0, 2);
        assert!(choose_processes(100, Some(2), 3, 20_000).is_err());
        assert!(choose_processes(2, Some(3), 0, 20_000).is_err());
        assert_eq!(parse_slice("1/4").unwrap(), (1, 4));
        for bad in ["4/4", "x/2", "1", "-1/2"] {
            assert!(parse_slice(bad).is_err(), "{bad}");
        }
    }
}
