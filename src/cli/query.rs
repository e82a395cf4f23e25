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
    /// A topic's merged view is read when it is at most this far behind the partitions'
    /// newest snapshots (the cut it merges is said on stderr); further behind, or `0s`, the
    /// newest snapshots are merged (seconds at millions of customers).
    #[arg(long, env = "STOREPULSE_MAX_BEHIND", default_value = "10m", value_parser = super::duration::parse_duration)]
    pub max_behind: std::time::Duration,
    /// Read the tables as they were at this point of their Delta Lake history (`run
    /// --tables`): a table version (0 is the empty table, n the n-th result published) or
    /// an RFC 3339 time (the last commit at or before it).
    #[arg(long, value_name = "VERSION|TIME")]
    pub as_of: Option<crate::lake::AsOf>,
    /// Also register `rfm_then` (the `rfm` table at this point of its Delta Lake history:
    /// a version, an RFC 3339 time, or `30d`: the newest version at least 30 days of event
    /// time before the result read) and the view `segment_movement` (customers from one
    /// segment to another, with their money then, now and in between).
    #[arg(long, value_name = "VERSION|TIME|Nd")]
    pub compare_to: Option<crate::lake::Since>,
    /// The SQL statement (read-only).
    pub sql: String,
}

pub fn query(args: QueryArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let out = rt.block_on(async {
        let at = crate::snapshot::Location::parse(&args.snapshot_dir)?;
        let compare = |session: crate::query::Session| async {
            if let Some(since) = &args.compare_to {
                let version = session.compare_to(&at, since).await?;
                tracing::info!(
                    version,
                    "segment_movement compares with this version of rfm"
                );
            }
            Ok::<_, crate::query::QueryError>(session)
        };
        if let Some(as_of) = &args.as_of {
            let session = compare(crate::query::Session::open_as_of(&at, as_of).await?).await?;
            let (schema, batches) = session.sql(&args.sql).await?;
            return Ok(crate::query::render(schema, &batches, args.format)?);
        }
        let session = compare(crate::query::Session::open_at(&at, args.max_behind).await?).await?;
        match &session.cut {
            Some(cut) if !cut.is_newest() => tracing::info!("read {}", cut.describe()),
            None if session.is_merge() => tracing::info!(
                partitions = session.parts.len(),
                "merged the newest snapshots of the partitions (no merged view within --max-behind)"
            ),
            _ => {}
        }
        let (schema, batches) = session.sql(&args.sql).await?;
        Ok::<_, crate::query::QueryError>(crate::query::render(schema, &batches, args.format)?)
    })?;
    print!("{out}");
    Ok(())
}
