//! A query worker: a child process of the page server (`storepulse serve-worker`, hidden)
//! that holds one DataFusion session over the latest snapshot and answers one request at
//! a time, read as a JSON line from stdin, with a frame on stdout: status (u16), version
//! length (u16), body length (u32), all big-endian, then the version and the JSON body.
//!
//! It runs under the limits its parent set before it started (`pool.rs`: address space,
//! priority, death with the parent) and adds DataFusion's own (`query::Limits`). It opens
//! the newest snapshot whenever the `LATEST` pointers have moved since it last did, and
//! when the files of the one it has were pruned under a query, it opens the newest and
//! runs the query again, once.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::answers::{self, OverviewQuery};
use crate::query::{Limits, QueryError, Session};

/// Which requests a worker serves: the page's own questions, or `POST /api/sql`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    Page,
    Sql,
}

/// `storepulse serve-worker`: started by the page server, never by hand.
#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    #[arg(long)]
    pub snapshot_dir: PathBuf,
    /// Bytes of DataFusion's memory pool.
    #[arg(long)]
    pub memory_pool: usize,
    /// Bytes of spill files at most (0: none).
    #[arg(long)]
    pub spill_limit: u64,
    /// How far behind a topic's merged view may be and still be read, in milliseconds.
    #[arg(long)]
    pub max_behind_ms: u64,
    #[arg(long, value_enum)]
    pub role: Role,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Request {
    Overview {
        query: OverviewQuery,
    },
    Customer {
        id: u64,
    },
    CustomerHistory {
        id: u64,
    },
    Sql {
        sql: String,
        limit: usize,
        max_bytes: usize,
        /// Read the Delta tables' history (`query --as-of`, `--compare-to`), when given.
        #[serde(default)]
        history: History,
    },
}

/// `as_of` and `compare_to` of a SQL request, as `query`'s flags.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct History {
    pub as_of: Option<String>,
    pub compare_to: Option<String>,
}

/// [`History`] parsed: the point read and the point compared with.
type Points = (Option<crate::lake::AsOf>, Option<crate::lake::Since>);

impl History {
    fn is_empty(&self) -> bool {
        self.as_of.is_none() && self.compare_to.is_none()
    }

    /// Both points parsed; the error names the field.
    pub fn parse(&self) -> Result<Points, String> {
        let as_of = self.as_of.as_deref().map(str::parse).transpose();
        let as_of = as_of.map_err(|e| format!("`as_of`: {e}"))?;
        let since = self.compare_to.as_deref().map(str::parse).transpose();
        let since = since.map_err(|e| format!("`compare_to`: {e}"))?;
        Ok((as_of, since))
    }
}

/// A session over the Delta tables' history for one request: the tables as of `as_of`
/// (else the newest snapshot), and `rfm_then` and `segment_movement` for `compare_to`.
/// Returns it with the version text its answer names.
async fn history_session(
    (dir, at): (&Path, &crate::snapshot::Location),
    limits: Limits,
    history: &History,
) -> Result<(Session, String), QueryError> {
    let bad = |e: String| QueryError::Sql(datafusion::error::DataFusionError::Plan(e));
    let (as_of, since) = history.parse().map_err(bad)?;
    let (session, mut version) = match (&as_of, &history.as_of) {
        (Some(as_of), Some(text)) => (
            Session::open_as_of(at, as_of).await?,
            format!("tables as of {text}"),
        ),
        _ => {
            let s = Session::open_at(at, limits.max_behind).await?;
            let v = super::version_of(dir, &s.parts);
            (s, v)
        }
    };
    let session = session.limited(limits).await?;
    if let Some(since) = &since {
        let v = session.compare_to(at, since).await?;
        version = format!("{version}, compared with rfm version {v}");
    }
    Ok((session, version))
}

/// The executable the workers run: this one.
pub fn executable() -> std::io::Result<PathBuf> {
    // `/proc/self/exe` still works when the file was replaced since this process started.
    let proc = PathBuf::from("/proc/self/exe");
    if proc.exists() {
        return Ok(proc);
    }
    std::env::current_exe()
}

struct Loaded {
    /// The `LATEST` pointers when it was opened: a change means a new snapshot.
    pointers: String,
    version: String,
    session: Session,
}

/// Serves requests until stdin closes (the parent went away or let this worker go).
pub fn main(args: WorkerArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("storepulse-worker")
        .enable_all()
        .build()?;
    let limits = Limits {
        memory_pool: args.memory_pool,
        spill: args.spill_limit,
        partitions: 2,
        max_behind: std::time::Duration::from_millis(args.max_behind_ms),
    };
    let mut loaded: Option<Loaded> = None;
    let mut timeline = crate::lake::Timeline::default();
    let at = crate::snapshot::Location::parse(&args.snapshot_dir)?;
    let stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    for line in stdin.lines() {
        let request: Request = serde_json::from_str(&line?)?;
        let dir = &args.snapshot_dir;
        let (status, version, body) = runtime.block_on(async {
            let state = (&mut loaded, &mut timeline);
            match answer((dir, &at), limits, state, &request).await {
                Ok((version, body)) => (200, version, body),
                Err((status, message)) => (
                    status,
                    loaded
                        .as_ref()
                        .map(|l| l.version.clone())
                        .unwrap_or_default(),
                    json!({ "error": super::scrub(&message, dir) }),
                ),
            }
        });
        let body = serde_json::to_vec(&body)?;
        let version = version.as_bytes();
        let mut frame = Vec::with_capacity(8 + version.len() + body.len());
        frame.extend_from_slice(&status.to_be_bytes());
        frame.extend_from_slice(&(version.len().min(u16::MAX as usize) as u16).to_be_bytes());
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&version[..version.len().min(u16::MAX as usize)]);
        frame.extend_from_slice(&body);
        stdout.write_all(&frame)?;
        stdout.flush()?;
    }
    Ok(())
}

/// Opens the newest snapshot unless the one loaded is still the newest.
async fn ensure<'a>(
    (dir, at): (&Path, &crate::snapshot::Location),
    limits: Limits,
    loaded: &'a mut Option<Loaded>,
    force: bool,
) -> Result<&'a Loaded, (u16, String)> {
    let pointers = crate::snapshot::view::pointers_at(at).await;
    if pointers.is_empty() {
        return Err((503, "no snapshot yet".into()));
    }
    // Still the newest, and its folders still there (not pruned or removed under it).
    let current = loaded
        .as_ref()
        .is_some_and(|l| l.pointers == pointers && l.session.parts.iter().all(|p| p.present()));
    if force || !current {
        *loaded = None;
        let opened = match Session::open_at(at, limits.max_behind).await {
            Ok(session) => session.limited(limits).await,
            Err(e) => Err(e),
        };
        let session = opened.map_err(|e| {
            let said = match &e {
                QueryError::Snapshot(e) => super::scrub::snapshot_error(e, dir),
                e => e.to_string(),
            };
            (503, format!("the snapshot could not be opened: {said}"))
        })?;
        let version = super::version_of(dir, &session.parts);
        *loaded = Some(Loaded {
            pointers,
            version,
            session,
        });
    }
    Ok(loaded.as_ref().expect("loaded above"))
}

/// A query failed because files of its snapshot were pruned while it was loaded.
fn files_gone(message: &str) -> bool {
    message.contains("No such file or directory")
        || (message.contains("not found") && message.contains(".parquet"))
}

/// The answer to `request`: from the newest snapshot (`loaded`, opened again when it moved
/// or its files were pruned), or for a customer's segment over time from the Delta tables'
/// history (`timeline`, which needs no snapshot loaded).
async fn answer(
    dir: (&Path, &crate::snapshot::Location),
    limits: Limits,
    (loaded, timeline): (&mut Option<Loaded>, &mut crate::lake::Timeline),
    request: &Request,
) -> Result<(String, Value), (u16, String)> {
    if let Request::CustomerHistory { id } = request {
        let body = answers::customer_history(dir.1, timeline, *id).await?;
        return Ok(("tables".to_string(), body));
    }
    let mut first = true;
    loop {
        let l = ensure(dir, limits, loaded, !first).await?;
        let result = match request {
            Request::Overview { query } => {
                let info =
                    super::snapshot_info(&l.version, &l.session.parts, l.session.cut.as_ref());
                answers::overview(&l.session, info, query).await
            }
            Request::Customer { id } => answers::customer(&l.session, &l.version, *id).await,
            Request::CustomerHistory { .. } => unreachable!("answered above"),
            Request::Sql {
                sql,
                limit,
                max_bytes,
                history,
            } if !history.is_empty() => {
                let plan = |text: &str| super::scrub::scrub_plan(text, dir.0);
                let (session, version) = history_session(dir, limits, history)
                    .await
                    .map_err(sql_refusal)?;
                let body = answers::sql(&session, (&version, plan), sql, *limit, *max_bytes)
                    .await
                    .map_err(sql_refusal)?;
                return Ok((version, body));
            }
            Request::Sql {
                sql,
                limit,
                max_bytes,
                ..
            } => {
                let plan = |text: &str| super::scrub::scrub_plan(text, dir.0);
                answers::sql(&l.session, (&l.version, plan), sql, *limit, *max_bytes)
                    .await
                    .map_err(sql_refusal)
            }
        };
        match result {
            Err((_, message)) if first && files_gone(&message) => first = false,
            Err(refusal) => return Err(refusal),
            Ok(body) => return Ok((l.version.clone(), body)),
        }
    }
}

fn sql_refusal(e: QueryError) -> (u16, String) {
    let text = e.to_string();
    if let Some((flag, what)) = answers::exceeded(&text) {
        return (
            400,
            format!("the query needs more {what} than a query may use ({flag}): {text}"),
        );
    }
    match e {
        QueryError::Sql(_) | QueryError::Lake(_) | QueryError::NoTables(_) => (400, text),
        _ => (500, text),
    }
}
