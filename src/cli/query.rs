//! `storepulse query`: SQL over the latest snapshot, printed as a table, CSV or JSON.

use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args)]
pub struct QueryArgs {
    /// Folder the snapshots are in.
    #[arg(long, env = "STOREPULSE_SNAPSHOT_DIR", default_value = "snapshots")]
    pub snapshot_dir: PathBuf,
    /// Output format.
    #[arg(long, env = "STOREPULSE_FORMAT", value_enum, default_value = "table")]
    pub format: crate::query::Format,
    /// The SQL statement (read-only).
    pub sql: String,
}

pub fn query(args: QueryArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let out = rt.block_on(async {
        let session = crate::query::Session::open(&args.snapshot_dir).await?;
        let (schema, batches) = session.sql(&args.sql).await?;
        Ok::<_, crate::query::QueryError>(crate::query::render(schema, &batches, args.format)?)
    })?;
    print!("{out}");
    Ok(())
}
