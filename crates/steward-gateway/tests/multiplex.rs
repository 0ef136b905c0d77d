//! The gateway multiplexes its agents over HTTP/2 to the server: many agents' long-polls held
//! at the gateway at once ride one (or two) upstream connection(s), so the server holds a
//! descriptor per gateway rather than per agent; a task wakes them through it; the agent site
//! gives a gateway's identity a stream limit for its whole fleet and anyone else a small one;
//! and when the upstream connection dies (the server restarts), the gateway opens a new one,
//! one at a time, and names a peer that does not speak HTTP/2; and it names an agent's
//! certificate to the server by thumbprint once the server has verified it whole. Real server,
//! gateway and TLS in one process, on loopback.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{capture_logs, fetch, https};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use steward_proto::admin::{NewPackage, NewTask, TaskCreated, paths as admin};
use steward_proto::{BootstrapPackage, WakeUp, paths};
use steward_server::{Server, ServerOverrides};

/// Agents holding a long-poll at the gateway at once: more than the small stream limit (100)
/// a non-gateway peer gets, so the test fails if the gateway's connection were given it (the
/// polls beyond it would queue at the gateway and never reach the server).
const AGENTS: usize = 120;
/// Stream limits the agent site announces (steward-server's `http::GATEWAY_MAX_STREAMS` and
/// `http::OTHER_MAX_STREAMS`).
const GATEWAY_MAX_STREAMS: usize = 262_144;
const OTHER_MAX_STREAMS: usize = 100;

fn agent_identity(data_dir: &Path) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let dir = steward_agent::store::DataDir::new(data_dir);
    let id = dir.load_identity().unwrap().unwrap();
    let mut chain = vec![CertificateDer::from_pem_slice(id.cert_pem.as_bytes()).unwrap()];
    for c in &id.chain_pem {
        chain.push(CertificateDer::from_pem_slice(c.as_bytes()).unwrap());
    }
    let key = PrivatePkcs8KeyDer::from_pem_file(dir.key_path()).unwrap();
    (chain, PrivateKeyDer::Pkcs8(key))
}

/// Enrolls `n` agents on the LAN with one package, a few at a time.
async fn enroll_many(rig: &common::Rig, n: usize) -> Vec<PathBuf> {
    let pkg: BootstrapPackage = fetch(
        rig.admin
            .post(format!("{}{}", rig.server.console_url(), admin::PACKAGES))
            .bearer_auth(&rig.token)
            .json(&NewPackage {
                expires_secs: 600,
                max_uses: u32::try_from(n).unwrap(),
                tags: vec![],
            }),
    )
    .await;
    let file = rig.root.join("fleet.package");
    std::fs::write(&file, serde_json::to_vec(&pkg).unwrap()).unwrap();
    let mut dirs = Vec::new();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let data_dir = rig.root.join(format!("agent-{i}"));
        dirs.push(data_dir.clone());
        let package = file.clone();
        set.spawn(async move {
            steward_agent::enroll(&steward_agent::EnrollOptions {
                name: Some(format!("pc-{i}")),
                package,
                data_dir,
                force: false,
            })
            .await
            .unwrap();
        });
        if set.len() >= 8 {
            set.join_next().await.unwrap().unwrap();
        }
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    dirs
}

/// Established TCP connections whose local end is `port` on this host (IPv4): the server's
/// side of the connections to its agent site.
fn established_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let want = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1].ends_with(&want) && f[3] == "01"
        })
        .count()
}

/// What is left of a rig once its server is stopped (the gateway keeps running): the
/// temporary directory that holds everything, its root, the platform root's PEM, and the
/// address the agent site had.
struct Stopped {
    _dir: tempfile::TempDir,
    root: PathBuf,
    root_pem: String,
    agent_addr: std::net::SocketAddr,
}

async fn stop_server(rig: common::Rig) -> Stopped {
    let common::Rig {
        _dir,
        root,
        server,
        root_pem,
        ..
    } = rig;
    let agent_addr = server.agent_addr;
    server.shutdown().await.unwrap();
    Stopped {
        _dir,
        root,
        root_pem,
        agent_addr,
    }
}

/// A running gateway and `agents` agents enrolled on a rig whose server is then stopped, so
/// that a stand-in can take the server's address.
async fn gateway_alone(agents: usize) -> (steward_gateway::RunningGateway, Vec<PathBuf>, Stopped) {
    let rig = common::Rig::start("127.0.0.2:0".parse().unwrap()).await;
    let gateway = rig.gateway(Duration::from_secs(3600)).await;
    let dirs = enroll_many(&rig, agents).await;
    (gateway, dirs, stop_server(rig).await)
}

/// The gateway's identity certificate chain and key, as its data directory holds them.
fn gateway_identity(dir: &Path) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let chain = CertificateDer::pem_file_iter(dir.join("identity.pem"))
        .unwrap()
        .chain(CertificateDer::pem_file_iter(dir.join("chain.pem")).unwrap())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("identity.key")).unwrap();
    (chain, key)
}

/// A TLS connection to the agent site at `addr` with `cfg`.
async fn tls_connect(
    addr: std::net::SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(cfg)
        .connect(
            rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap(),
            tcp,
        )
        .await
        .unwrap()
}

fn client_tls(
    root_pem: &str,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(root_pem.as_bytes()).unwrap())
        .unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// One HTTP/2 request to the agent site with `cfg`'s identity: the answer's status and the
/// stream limit the server announced in its SETTINGS.
async fn h2_get(
    addr: std::net::SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    path: &str,
) -> (u16, usize) {
    let tls = tls_connect(addr, cfg).await;
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(b"h2".as_slice()),
        "the agent site negotiates HTTP/2"
    );
    let (mut send, mut conn) = h2::client::handshake(tls).await.unwrap();
    let req = hyper::Request::get(format!("https://127.0.0.1:{}{path}", addr.port()))
        .body(())
        .unwrap();
    let (answer, _) = send.send_request(req, true).unwrap();
    let resp = tokio::select! {
        r = answer => r.unwrap(),
        ended = &mut conn => panic!("the HTTP/2 connection ended first: {ended:?}"),
    };
    // The server's SETTINGS come first on the connection, so they are in by its answer.
    (resp.status().as_u16(), conn.max_concurrent_send_streams())
}

/// An HTTP/2 connection to the agent site with `cfg`'s identity, one ping, then nothing: how
/// long after the answer the server closed it (at most `limit`).
async fn h2_idle_close(
    addr: std::net::SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    limit: Duration,
) -> Option<Duration> {
    let tls = tls_connect(addr, cfg).await;
    // `send` stays alive: the client must not be the one closing the connection.
    let (mut send, mut conn) = h2::client::handshake(tls).await.unwrap();
    let req = hyper::Request::get(format!("https://127.0.0.1:{}{}", addr.port(), paths::PING))
        .body(())
        .unwrap();
    let (answer, _) = send.send_request(req, true).unwrap();
    let resp = tokio::select! {
        r = answer => r.unwrap(),
        ended = &mut conn => panic!("the HTTP/2 connection ended first: {ended:?}"),
    };
    assert_eq!(resp.status().as_u16(), 200);
    drop(resp);
    let idle_since = Instant::now();
    let closed = tokio::time::timeout(limit, &mut conn).await.ok();
    drop(send);
    closed.map(|_| idle_since.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleets_long_polls_ride_one_upstream_connection_and_a_task_wakes_them() {
    capture_logs();
    let rig = common::Rig::start("127.0.0.2:0".parse().unwrap()).await;
    let gateway = rig.gateway(Duration::from_secs(3600)).await;
    let dirs = enroll_many(&rig, AGENTS).await;
    let service = rig.server.service();
    let agent_port = rig.server.agent_addr.port();
    let handshakes_before = service.admission().stats.handshakes.load(Ordering::Relaxed);
    let established_before = established_to(agent_port);

    // Every agent holds a long-poll at the gateway, each over its own connection to it.
    let url = format!(
        "https://127.0.0.2:{}{}?wait=60",
        gateway.addr.port(),
        paths::WAIT
    );
    let mut polls = tokio::task::JoinSet::new();
    for d in &dirs {
        let client = https(&rig.root_pem, Some(agent_identity(d)));
        let url = url.clone();
        polls.spawn(async move {
            let resp = client.get(url).send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.text().await.unwrap())
        });
    }
    // Within the 50 s a poll is held, so none can have been answered and replaced meanwhile.
    let deadline = Instant::now() + Duration::from_secs(30);
    while service.admission().connected.count() < AGENTS {
        assert!(
            Instant::now() < deadline,
            "only {} of {AGENTS} long-polls reached the server",
            service.admission().connected.count()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // All of them held at the server at once, over the gateway's one link.
    let handshakes =
        service.admission().stats.handshakes.load(Ordering::Relaxed) - handshakes_before;
    let established = established_to(agent_port);
    assert_eq!(
        handshakes, 1,
        "{AGENTS} long-polls through the gateway took {handshakes} new TLS connections"
    );
    assert!(
        established <= established_before + 1,
        "{established} connections to the agent site with {AGENTS} long-polls held (before: \
         {established_before})"
    );
    // Every device's poll registered, and none answered yet: all of them held at once.
    assert!(
        polls.try_join_next().is_none(),
        "a long-poll was answered before the task"
    );

    // A task for all of them answers every long-poll through the gateway at once (they are
    // held for 50 s otherwise).
    let created: TaskCreated = fetch(
        rig.admin
            .post(format!("{}{}", rig.server.console_url(), admin::TASKS))
            .bearer_auth(&rig.token)
            .json(&NewTask {
                command: "true".into(),
                args: vec![],
                timeout_secs: 10,
                target: "all".into(),
            }),
    )
    .await;
    assert_eq!(created.targets, AGENTS);
    let woken = tokio::time::timeout(Duration::from_secs(30), async {
        let mut n = 0;
        while let Some(r) = polls.join_next().await {
            let (status, body) = r.unwrap();
            assert_eq!(status, 200, "{body}");
            let wake: WakeUp = serde_json::from_str(&body).unwrap();
            // "wake" when no admission slot was free to look (many woke at once).
            assert!(["tasks", "wake"].contains(&wake.reason.as_str()), "{body}");
            n += 1;
        }
        n
    })
    .await
    .expect("every long-poll is woken by the task");
    assert_eq!(woken, AGENTS);

    // The upstream connection dies with the server; the restarted server is reached over a
    // new one, with no agent's request failing for it.
    let Stopped {
        _dir,
        root,
        root_pem,
        agent_addr,
    } = stop_server(rig).await;
    let loopback = Some("127.0.0.1:0".parse().unwrap());
    let server = Server::start(
        &root.join("server"),
        ServerOverrides {
            agent_addr: Some(agent_addr),
            console_addr: loopback,
            crl_addr: None,
        },
    )
    .await
    .unwrap();
    let client = https(&root_pem, Some(agent_identity(&dirs[0])));
    let ping = client
        .get(format!(
            "https://127.0.0.2:{}{}",
            gateway.addr.port(),
            paths::PING
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        ping.status().as_u16(),
        200,
        "{}",
        ping.text().await.unwrap()
    );
    assert_eq!(
        server
            .service()
            .admission()
            .stats
            .handshakes
            .load(Ordering::Relaxed),
        1,
        "the gateway opened one new connection to the restarted server"
    );
    gateway.shutdown().await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_site_gives_a_gateway_a_large_stream_limit_and_an_agent_a_small_one() {
    let rig = common::Rig::start("127.0.0.2:0".parse().unwrap()).await;
    let addr = rig.server.agent_addr;

    // An agent's own certificate over HTTP/2: served, with the small limit.
    let pc = rig.agent("pc").await;
    let (chain, key) = agent_identity(&pc);
    let cfg = client_tls(&rig.root_pem, chain, key, &[b"h2"]);
    let (status, limit) = h2_get(addr, cfg, paths::PING).await;
    assert_eq!(status, 200);
    assert_eq!(limit, OTHER_MAX_STREAMS);

    // The gateway's identity: the limit for its whole fleet (its CRL route answers it).
    let (chain, key) = gateway_identity(&rig.gateway_dir);
    let cfg = client_tls(&rig.root_pem, chain, key, &[b"h2", b"http/1.1"]);
    let (status, limit) = h2_get(addr, cfg, paths::GATEWAY_CRL).await;
    assert_eq!(status, 200);
    assert_eq!(limit, GATEWAY_MAX_STREAMS);

    // An HTTP/1.1-only client still gets HTTP/1.1.
    let (chain, key) = agent_identity(&pc);
    let cfg = client_tls(&rig.root_pem, chain, key, &[b"http/1.1"]);
    let tls = tls_connect(addr, cfg).await;
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(b"http/1.1".as_slice())
    );

    // An idle HTTP/2 connection is not held: closed after the idle time (30 s for a peer
    // other than a gateway), as HTTP/1.1's header-read timeout closes an idle one.
    let (chain, key) = agent_identity(&pc);
    let cfg = client_tls(&rig.root_pem, chain, key, &[b"h2"]);
    let closed = h2_idle_close(addr, cfg, Duration::from_secs(45)).await;
    let closed = closed.expect("the server closes an idle HTTP/2 connection");
    assert!(
        closed >= Duration::from_secs(25),
        "closed after {closed:?} idle"
    );
    rig.server.shutdown().await.unwrap();
}

/// An agent that goes away in the middle of its long-poll does not cancel the poll's stream
/// upstream (the gateway's `forward`): cancelled streams whose answers are already on their
/// way count toward h2's cap on the resets it makes itself, and past 1,024 of them the whole
/// connection, every agent's requests on it, is closed. The poll stays held at the server until
/// its hold ends, then goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_leaving_mid_poll_does_not_cancel_its_stream_upstream() {
    capture_logs();
    let rig = common::Rig::start("127.0.0.2:0".parse().unwrap()).await;
    let gateway = rig.gateway(Duration::from_secs(3600)).await;
    let dirs = enroll_many(&rig, 1).await;
    let service = rig.server.service();
    let held = || service.admission().connected.open_polls();
    let eventually = async |want: usize, within: Duration| {
        let deadline = Instant::now() + within;
        while held() != want {
            assert!(
                Instant::now() < deadline,
                "{} polls held, not {want}",
                held()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    // Held at the server for 6 s (the agent listens 8 s, the server answers 2 s before).
    let url = format!(
        "https://127.0.0.2:{}{}?wait=8",
        gateway.addr.port(),
        paths::WAIT
    );
    let client = https(&rig.root_pem, Some(agent_identity(&dirs[0])));
    let poll = tokio::spawn(async move { client.get(url).send().await.map(|r| r.status()) });
    eventually(1, Duration::from_secs(5)).await;
    let reached = Instant::now();
    // The agent goes: its request, client and connection to the gateway are dropped.
    poll.abort();
    assert!(poll.await.unwrap_err().is_cancelled());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        held(),
        1,
        "the agent's leaving cancelled its long-poll at the server"
    );
    // Answered by the server at the end of its hold, and gone then.
    eventually(0, Duration::from_secs(10)).await;
    assert!(
        reached.elapsed() >= Duration::from_secs(4),
        "the poll ended {:?} after it reached the server, before its hold",
        reached.elapsed()
    );
}

/// Streams the server resets itself on one gateway connection: more than h2's default cap
/// (1,024) over a connection's life.
const SERVER_RESETS: u32 = 1_100;

/// One HTTP/2 frame: 9-byte header, then the payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK string literal (no Huffman coding), for names and values under 127 bytes.
fn hpack_str(out: &mut Vec<u8>, s: &str) {
    out.push(u8::try_from(s.len()).unwrap());
    out.extend_from_slice(s.as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_connection_survives_the_streams_the_server_resets() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const DATA: u8 = 0;
    const HEADERS: u8 = 1;
    const SETTINGS: u8 = 4;
    const GOAWAY: u8 = 7;
    let rig = common::Rig::start("127.0.0.2:0".parse().unwrap()).await;
    let addr = rig.server.agent_addr;
    let (chain, key) = gateway_identity(&rig.gateway_dir);
    let cfg = client_tls(&rig.root_pem, chain, key, &[b"h2"]);
    let tls = tls_connect(addr, cfg).await;
    let (mut rd, mut wr) = tokio::io::split(tls);
    // Raw frames, because a well-behaved client library cannot be made to do what provokes
    // the server: each stream announces a 5-byte body and sends 1, which the server refuses by
    // resetting that stream itself. Resets the server sends on its own count against h2's cap
    // over the connection's life, as do the ones it sends when it answers (a 503 from the
    // admission queue) before an upload has arrived, which a gateway's connection meets in
    // every overload (BENCHMARKS.md, swarm round 5). At the default cap the connection ends
    // with GOAWAY ENHANCE_YOUR_CALM after 1,024 and every agent request on it fails.
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    for n in 0..SERVER_RESETS {
        let stream = 2 * n + 1;
        // :method POST, :scheme https (static table), :path and :authority (indexed names).
        let mut block = vec![0x83, 0x87, 0x04];
        hpack_str(&mut block, "/agent/v1/no-such-route");
        block.push(0x01);
        hpack_str(&mut block, "127.0.0.1");
        // content-length (static index 28): 5, and then a body of 1 byte.
        block.extend([0x0f, 0x0d]);
        hpack_str(&mut block, "5");
        out.extend(frame(HEADERS, 0x4, stream, &block));
        out.extend(frame(DATA, 0x1, stream, b"{"));
    }
    // Then one request that must still be answered on this connection.
    let last = 2 * SERVER_RESETS + 1;
    let mut block = vec![0x82, 0x87, 0x04];
    hpack_str(&mut block, paths::GATEWAY_CRL);
    block.push(0x01);
    hpack_str(&mut block, "127.0.0.1");
    out.extend(frame(HEADERS, 0x1 | 0x4, last, &block));
    let reader = tokio::spawn(async move {
        // Until the last stream's answer (HEADERS on it) or GOAWAY: which one came.
        loop {
            let mut head = [0u8; 9];
            if rd.read_exact(&mut head).await.is_err() {
                return None;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            if rd.read_exact(&mut payload).await.is_err() {
                return None;
            }
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            match head[3] {
                GOAWAY => return Some(Err(payload)),
                HEADERS if stream == last => return Some(Ok(payload)),
                _ => {}
            }
        }
    });
    wr.write_all(&out).await.unwrap();
    wr.flush().await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("the server neither answered nor closed the connection")
        .unwrap();
    match ended {
        Some(Ok(_)) => {}
        Some(Err(goaway)) => panic!(
            "the server closed the gateway's connection: GOAWAY last stream {:?}, code {:?}, {:?}",
            goaway.get(0..4),
            goaway.get(4..8),
            String::from_utf8_lossy(goaway.get(8..).unwrap_or_default())
        ),
        None => panic!("the connection ended without an answer"),
    }
    rig.server.shutdown().await.unwrap();
}

/// Agents whose requests reach the gateway together while it has no connection to the server.
const WAITING: usize = 12;

/// How long the stand-in for the server holds each connection before it closes it.
const STAND_IN_HOLD: Duration = Duration::from_secs(2);

/// Every agent's ping through the gateway at once: each one's status and body.
async fn ping_all(root_pem: &str, dirs: &[PathBuf], gateway_port: u16) -> Vec<(u16, String)> {
    let url = format!("https://127.0.0.2:{gateway_port}{}", paths::PING);
    let mut pings = tokio::task::JoinSet::new();
    for d in dirs {
        let client = https(root_pem, Some(agent_identity(d)));
        let url = url.clone();
        pings.spawn(async move {
            let r = client.get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        });
    }
    let mut out = Vec::new();
    while let Some(r) = pings.join_next().await {
        out.push(r.unwrap());
    }
    out
}

/// With no connection to the server (it restarted), the requests that arrive while the gateway
/// connects wait for that one attempt and share its outcome. A pool that learns only from the
/// handshake that the server speaks HTTP/2 opened one connection per waiting request, which
/// after a restart is every agent's at once (BENCHMARKS.md, swarm round 11).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_waiting_for_the_server_share_one_connection_attempt() {
    capture_logs();
    let (
        gateway,
        dirs,
        Stopped {
            _dir,
            root_pem,
            agent_addr,
            ..
        },
    ) = gateway_alone(WAITING).await;

    // In the server's place: a listener that takes each connection and says nothing until it
    // closes it, so every ping arrives while the gateway's one attempt is under way.
    let stand_in = tokio::net::TcpListener::bind(agent_addr).await.unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    let listener = tokio::spawn(async move {
        while let Ok((tcp, _)) = stand_in.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                tokio::time::sleep(STAND_IN_HOLD).await;
                drop(tcp);
            });
        }
    });
    let answers = ping_all(&root_pem, &dirs, gateway.addr.port()).await;
    assert_eq!(answers.len(), WAITING);
    for (status, body) in &answers {
        assert_eq!(*status, 502, "{body}");
        assert!(body.contains("GATEWAY-UPSTREAM-UNREACHABLE"), "{body}");
        assert!(body.contains("TLS handshake"), "{body}");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "{WAITING} requests waiting for the server made more than one connection attempt"
    );
    listener.abort();
    gateway.shutdown().await;
}

/// TLS as the server's agent site has it (its certificate and key, from the rig's `root`),
/// agreeing to `alpn`, for a stand-in in its place.
fn stand_in_tls(root: &Path, alpn: &[u8]) -> tokio_rustls::TlsAcceptor {
    let pki = root.join("server").join("pki");
    let mut chain = CertificateDer::pem_file_iter(pki.join("agent-site.crt"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    if chain.len() == 1 {
        chain.push(CertificateDer::from_pem_file(pki.join("issuing.crt")).unwrap());
    }
    let key = PrivateKeyDer::from_pem_file(pki.join("agent-site.key")).unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

/// Something at the server's address that completes TLS with the server's own certificate but
/// speaks only HTTP/1.1 (a proxy, another service) is named as such in the 502 agents get.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_http2_at_the_servers_address_is_named() {
    capture_logs();
    let (
        gateway,
        dirs,
        Stopped {
            _dir,
            root,
            root_pem,
            agent_addr,
        },
    ) = gateway_alone(1).await;

    let acceptor = stand_in_tls(&root, b"http/1.1");
    let stand_in = tokio::net::TcpListener::bind(agent_addr).await.unwrap();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let counted = handshakes.clone();
    let listener = tokio::spawn(async move {
        while let Ok((tcp, _)) = stand_in.accept().await {
            if let Ok(tls) = acceptor.accept(tcp).await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    drop(tls);
                });
            }
        }
    });
    let answers = ping_all(&root_pem, &dirs, gateway.addr.port()).await;
    let (status, body) = &answers[0];
    assert_eq!(*status, 502, "{body}");
    assert!(body.contains("GATEWAY-UPSTREAM-UNREACHABLE"), "{body}");
    assert!(
        body.contains("did not agree to HTTP/2 (ALPN http/1.1)"),
        "{body}"
    );
    // The handshake itself succeeded (the certificate was not the problem), once. The
    // stand-in counts it when it has read the gateway's Finished, which may be just after the
    // gateway gave up.
    let deadline = Instant::now() + Duration::from_secs(10);
    while handshakes.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(handshakes.load(Ordering::SeqCst), 1);
    listener.abort();
    gateway.shutdown().await;
}

/// How the server's agent site counts the agent certificates gateways forward: whole, by a
/// thumbprint it knew, by one it did not.
fn forwarded(service: &steward_server::Service) -> [u64; 3] {
    let s = &service.admission().stats;
    [
        s.forwarded_whole.load(Ordering::Relaxed),
        s.forwarded_by_thumbprint.load(Ordering::Relaxed),
        s.forwarded_unknown.load(Ordering::Relaxed),
    ]
}

/// One agent's connection to the gateway: HTTP/1.1 over one TLS connection, never made
/// again (a closed connection fails the request rather than opening another).
struct AgentConn {
    send: hyper::client::conn::http1::SendRequest<http_body_util::Empty<hyper::body::Bytes>>,
    driver: tokio::task::JoinHandle<()>,
}

impl AgentConn {
    async fn open(root_pem: &str, dir: &Path, gateway_port: u16) -> Self {
        let (chain, key) = agent_identity(dir);
        let cfg = client_tls(root_pem, chain, key, &[b"http/1.1"]);
        let tcp = tokio::net::TcpStream::connect(("127.0.0.2", gateway_port))
            .await
            .unwrap();
        let tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(
                rustls_pki_types::ServerName::try_from("127.0.0.2").unwrap(),
                tcp,
            )
            .await
            .unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
        let driver = tokio::spawn(async move {
            conn.await.unwrap();
        });
        Self { send, driver }
    }

    /// `n` pings, one after the other: each one's status.
    async fn pings(&mut self, n: usize) -> Vec<u16> {
        let mut out = Vec::new();
        for _ in 0..n {
            let req = hyper::Request::get(paths::PING)
                .header(hyper::header::HOST, "127.0.0.2")
                .body(http_body_util::Empty::new())
                .unwrap();
            // An error here is the gateway having closed the connection.
            self.send.ready().await.unwrap();
            let resp = self.send.send_request(req).await.unwrap();
            out.push(resp.status().as_u16());
            http_body_util::BodyExt::collect(resp.into_body())
                .await
                .unwrap();
        }
        out
    }
}

impl Drop for AgentConn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// The agent's certificate crosses from gateway to server whole once per agent connection;
/// after the server acknowledged it, the gateway names it by thumbprint. When the server
/// forgets it (a revocation since), the agent does not notice: the gateway sends it whole
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_certificate_crosses_whole_once_then_by_thumbprint() {
    capture_logs();
    let rig = common::Rig::start("127.0.0.2:0".parse().unwrap()).await;
    let gateway = rig.gateway(Duration::from_secs(3600)).await;
    let dirs = enroll_many(&rig, 2).await;
    let service = rig.server.service();
    let port = gateway.addr.port();
    let mut agent = AgentConn::open(&rig.root_pem, &dirs[0], port).await;

    assert_eq!(agent.pings(5).await, vec![200; 5]);
    assert_eq!(forwarded(&service), [1, 4, 0]);

    // Revoking the other agent re-signs the CRLs: the server's verifier is new and knows no
    // certificate. The next ping is named, refused as unknown, and sent again whole.
    let other = steward_agent::store::DataDir::new(&dirs[1])
        .load_identity()
        .unwrap()
        .unwrap()
        .device_id;
    rig.revoke_device(&other).await;
    assert_eq!(agent.pings(3).await, vec![200; 3]);
    assert_eq!(forwarded(&service), [2, 6, 1]);

    // Another connection starts whole again.
    let mut again = AgentConn::open(&rig.root_pem, &dirs[0], port).await;
    assert_eq!(again.pings(2).await, vec![200; 2]);
    assert_eq!(forwarded(&service), [3, 7, 1]);
    drop((agent, again));
    gateway.shutdown().await;
    rig.server.shutdown().await.unwrap();
}

/// How the stand-in server below answers.
const OLDER: usize = 0;
const NEWER: usize = 1;

/// A gateway never names a certificate by thumbprint to a server that did not say it may (a
/// server older than thumbprints), and when a server that said so is replaced by an older one
/// (which reads a request without the certificate as the gateway's own, 403), the agent's
/// request is sent again whole and the gateway stops naming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_server_is_only_ever_sent_the_certificate_whole() {
    capture_logs();
    let (
        gateway,
        dirs,
        Stopped {
            _dir,
            root,
            root_pem,
            agent_addr,
        },
    ) = gateway_alone(1).await;

    // In the server's place: HTTP/2 with its certificate, answering every request 200 (403 to
    // a thumbprint when it plays an older server), and noting which way each named the agent.
    let acceptor = stand_in_tls(&root, b"h2");
    let stand_in = tokio::net::TcpListener::bind(agent_addr).await.unwrap();
    let mode = Arc::new(AtomicUsize::new(OLDER));
    let seen = Arc::new(std::sync::Mutex::new(Vec::<&'static str>::new()));
    let (m, log) = (mode.clone(), seen.clone());
    let listener = tokio::spawn(async move {
        while let Ok((tcp, _)) = stand_in.accept().await {
            let Ok(tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let (m, log) = (m.clone(), log.clone());
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let h = req.headers();
                    let how = match (
                        h.contains_key(steward_proto::AGENT_CERT_HEADER),
                        h.contains_key(steward_proto::AGENT_CERT_SHA256_HEADER),
                    ) {
                        (true, false) => "whole",
                        (false, true) => "thumbprint",
                        _ => "other",
                    };
                    log.lock().unwrap().push(how);
                    let newer = m.load(Ordering::SeqCst) == NEWER;
                    let mut resp = hyper::Response::new(http_body_util::Full::new(
                        hyper::body::Bytes::from_static(b"{}"),
                    ));
                    if how == "thumbprint" && !newer {
                        *resp.status_mut() = hyper::StatusCode::FORBIDDEN;
                    }
                    if how == "whole" && newer {
                        resp.headers_mut().insert(
                            steward_proto::AGENT_CERT_KNOWN_HEADER,
                            hyper::header::HeaderValue::from_static("sha256"),
                        );
                    }
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc),
            );
        }
    });
    let mut agent = AgentConn::open(&root_pem, &dirs[0], gateway.addr.port()).await;
    let taken = || std::mem::take(&mut *seen.lock().unwrap());

    // Never told it may: whole every time.
    assert_eq!(agent.pings(3).await, vec![200; 3]);
    assert_eq!(taken(), ["whole"; 3]);
    // A server that acknowledges: whole once, then by thumbprint.
    mode.store(NEWER, Ordering::SeqCst);
    assert_eq!(agent.pings(3).await, vec![200; 3]);
    assert_eq!(taken(), ["whole", "thumbprint", "thumbprint"]);
    // Replaced by an older one: the named request's 403 never reaches the agent, and from
    // then on the certificate goes whole.
    mode.store(OLDER, Ordering::SeqCst);
    assert_eq!(agent.pings(2).await, vec![200; 2]);
    assert_eq!(taken(), ["thumbprint", "whole", "whole"]);
    drop(agent);
    listener.abort();
    gateway.shutdown().await;
}
