//! A real agent run inside a test process, and bounded waiting: shared by the integration
//! tests that drive `steward_agent::run` against a real server.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use steward_agent::RunOptions;
use tokio::sync::oneshot;

/// The agent's `run` on its own thread and current-thread runtime, as the binary runs it.
pub struct RunningAgent {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl RunningAgent {
    pub fn start(data_dir: PathBuf) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(steward_agent::run(
                RunOptions {
                    data_dir,
                    once: false,
                    crls: Vec::new(),
                    gateway_set_aside: None,
                    gateways_only: false,
                },
                async move {
                    let _ = stopped.await;
                },
            ))
            .map_err(|e| e.to_string())
        });
        Self {
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().expect("agent thread").expect("agent run");
        }
    }
}

/// Polls `probe` every 20 ms until it gives a value; fails the test after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
