//! `storepulse serve`: the store page from the latest snapshot until Ctrl-C or SIGTERM.

use std::path::PathBuf;

use clap::Args;

use super::flags::PageLimitArgs;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Folder the snapshots are in (of `run` or of `process`).
    #[arg(long, env = "STOREPULSE_SNAPSHOT_DIR", default_value = "snapshots")]
    pub snapshot_dir: PathBuf,
    /// Address of the page (port 0: any free port).
    #[arg(long, env = "STOREPULSE_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: std::net::SocketAddr,
    #[command(flatten)]
    pub limits: PageLimitArgs,
}

pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let bound = crate::serve::start(
        args.snapshot_dir.clone(),
        args.http_addr,
        args.limits.config(),
    )
    .map_err(|e| anyhow::anyhow!("serving on {}: {e}", args.http_addr))?;
    tracing::info!(
        snapshot_dir = %args.snapshot_dir.display(),
        "store page on http://{bound}/; Ctrl-C stops"
    );
    let shutdown = crate::shutdown::install("closing the page");
    while !shutdown.load(std::sync::atomic::Ordering::SeqCst) {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(())
}
