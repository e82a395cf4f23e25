//! Designed shutdown: the first Ctrl-C or SIGTERM asks the command to stop (the pipeline
//! stops reading, drains and writes a final snapshot); a second one exits at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What a pipeline does when asked to stop (what `run` and `process` say).
pub const DRAIN: &str = "draining and writing a final snapshot";

/// Starts listening for signals on a small background thread; returns the stop flag. The
/// first signal is logged as `stopping: <doing>`.
pub fn install(doing: &'static str) -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let set = flag.clone();
    let spawned = std::thread::Builder::new()
        .name("storepulse-signals".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                wait_for_signal().await;
                tracing::info!("stopping: {doing} (again to exit at once)");
                set.store(true, Ordering::SeqCst);
                wait_for_signal().await;
                tracing::warn!("exiting at once");
                std::process::exit(130);
            });
        });
    if spawned.is_err() {
        tracing::warn!("could not watch for Ctrl-C; stop with SIGKILL");
    }
    flag
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
