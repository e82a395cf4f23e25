//! The four result tables as Delta Lake tables, beside the snapshots: `<snapshot-dir>/tables/
//! <table>/` in a folder or a bucket prefix, so that any Delta reader (Spark, Polars, pandas
//! through `deltalake`, DuckDB's delta extension) reads them and their history.
//!
//! One commit per table per published result, each marked with Delta's application
//! transaction (`txn`: app id [`APP_ID`], version = the result's sequence, the id of the
//! snapshot it comes from). A publisher first reads the table's last sequence and skips a
//! result it already holds or a newer one (a retry, a restart, a slower rival); two
//! publishers of one result that race are ordered by the log's conditional put, and the
//! loser's commit is refused as a concurrent transaction. `rfm` is replaced whole (its
//! scores are global quintiles); the daily tables are partitioned by `day`, and a commit
//! replaces only the days whose rows changed since the table's latest version.
//!
//! The store is the one the snapshots use: a folder through object_store's local file
//! system, a bucket through the project's own S3 client (rooted at the bucket; the table
//! URL carries the prefix), so deltalake needs no AWS SDK.

mod follow;
mod history;
mod publish;
mod timeline;

pub use follow::{publish_last, publish_latest, Follower, Notify};
pub use history::Since;
pub use publish::{publish, Published, CHECKPOINT_EVERY};
pub use timeline::Timeline;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use deltalake::logstore::{default_logstore, LogStoreRef, StorageConfig};
use deltalake::{DeltaTable, DeltaTableError, ObjectStore};
use url::Url;

use crate::snapshot::remote::Location;

/// The folder of the tables, below the snapshot folder or bucket prefix.
pub const TABLES_DIR: &str = "tables";

/// The application id of every commit's `txn`.
pub const APP_ID: &str = "storepulse";

/// The commit metadata of `rfm` that holds the result's event time (its latest purchase,
/// microseconds since the epoch).
pub const EVENT_TIME_KEY: &str = "storepulse.event_time";

#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    #[error("the Delta table {table}: {source}")]
    Delta {
        table: String,
        #[source]
        source: Box<DeltaTableError>,
    },
    #[error("the tables' location {0}: {1}")]
    Location(String, String),
    #[error(
        "the Delta table {table} has versions up to {newest}; there is no version {asked} yet"
    )]
    NoVersion {
        table: String,
        newest: u64,
        asked: u64,
    },
    #[error("no result is held by every table at or before that point (table, result): {0}")]
    Mixed(String),
    #[error("reading the snapshot's {table}: {message}")]
    Read { table: String, message: String },
    #[error(
        "no version of rfm kept holds a result from {days} days of event time or more before \
         the one read (the oldest kept: {oldest}); compare with a version or a time instead"
    )]
    NoneThatOld { days: u32, oldest: String },
}

/// How often the tables are committed to and how long their history is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// At most one commit per table this often while streaming (the last result of a run
    /// or of a processor is always committed).
    pub every: Duration,
    /// Log entries and removed data files are kept this long (set when a table is created):
    /// time travel reaches this far back.
    pub retention: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            every: Duration::from_secs(3600),
            retention: Duration::from_secs(30 * 86_400),
        }
    }
}

/// Where the tables live: a store and the URL of the `tables/` folder in it, and the
/// policy they are kept by.
#[derive(Clone)]
pub struct Lake {
    root: Arc<dyn ObjectStore>,
    base: Url,
    pub policy: Policy,
}

impl std::fmt::Debug for Lake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.base.as_str())
    }
}

impl Lake {
    /// The tables of the snapshots at `at` (a local folder is created if missing).
    pub fn at(at: &Location) -> Result<Lake, LakeError> {
        match at {
            Location::Dir(dir) => Self::local(dir),
            Location::Bucket(bucket) => {
                let key = bucket.key(TABLES_DIR);
                let text = format!("{}/", bucket.object_url(&key));
                let base =
                    Url::parse(&text).map_err(|e| LakeError::Location(text, e.to_string()))?;
                Ok(Lake {
                    root: bucket.store.clone(),
                    base,
                    policy: Policy::default(),
                })
            }
        }
    }

    fn local(dir: &Path) -> Result<Lake, LakeError> {
        let tables = dir.join(TABLES_DIR);
        let bad =
            |e: std::io::Error| LakeError::Location(tables.display().to_string(), e.to_string());
        std::fs::create_dir_all(&tables).map_err(bad)?;
        let tables = std::fs::canonicalize(&tables).map_err(bad)?;
        let base = Url::from_directory_path(&tables).map_err(|()| {
            LakeError::Location(tables.display().to_string(), "not an absolute path".into())
        })?;
        Ok(Lake {
            root: Arc::new(object_store::local::LocalFileSystem::new()),
            base,
            policy: Policy::default(),
        })
    }

    /// The same tables kept by `policy`.
    pub fn with_policy(mut self, policy: Policy) -> Lake {
        self.policy = policy;
        self
    }

    /// The URL of `table`'s folder (what a reader is pointed at).
    pub fn url(&self, table: &str) -> Url {
        self.base
            .join(&format!("{table}/"))
            .expect("a table name is a valid URL path segment")
    }

    fn log_store(&self, table: &str) -> Result<LogStoreRef, LakeError> {
        let url = self.url(table);
        // A local table's folder exists before it is loaded (the kernel takes a missing
        // folder for a bad location, not for a table yet to be created).
        if let Ok(path) = url.to_file_path() {
            std::fs::create_dir_all(&path)
                .map_err(|e| LakeError::Location(path.display().to_string(), e.to_string()))?;
        }
        let config = StorageConfig::default();
        let prefixed: Arc<dyn ObjectStore> = Arc::from(
            config
                .decorate_store(self.root.clone(), &url)
                .map_err(|e| delta(table, e))?,
        );
        Ok(default_logstore(prefixed, self.root.clone(), &url, &config))
    }

    /// `table` at its latest version; `None` when it has not been created yet.
    pub async fn open(&self, table: &str) -> Result<Option<DeltaTable>, LakeError> {
        // No log at all: not a table yet, said without asking the kernel (which logs an
        // error for it).
        if !self.has_log(table).await? {
            return Ok(None);
        }
        let mut t = DeltaTable::new(self.log_store(table)?);
        match t.load().await {
            Ok(()) => Ok(Some(t)),
            Err(DeltaTableError::NotATable(_)) => Ok(None),
            Err(e) => Err(delta(table, e)),
        }
    }

    /// Whether `table` has a `_delta_log/` with anything in it.
    async fn has_log(&self, table: &str) -> Result<bool, LakeError> {
        let url = self
            .url(table)
            .join("_delta_log/")
            .expect("a valid path segment");
        if let Ok(path) = url.to_file_path() {
            return Ok(std::fs::read_dir(&path).is_ok_and(|mut d| d.next().is_some()));
        }
        let prefix = object_store::path::Path::from(url.path().trim_start_matches('/'));
        let listed = self
            .root
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(|e| delta(table, DeltaTableError::from(e)))?;
        Ok(!listed.objects.is_empty())
    }

    /// `table` as of `version`, or of the last commit at or before `time`.
    pub async fn open_as_of(&self, table: &str, at: &AsOf) -> Result<DeltaTable, LakeError> {
        let mut t = DeltaTable::new(self.log_store(table)?);
        if let AsOf::Version(v) = at {
            t.load().await.map_err(|e| delta(table, e))?;
            let newest = t.version().unwrap_or(0);
            if *v > newest {
                return Err(LakeError::NoVersion {
                    table: table.to_string(),
                    newest,
                    asked: *v,
                });
            }
        }
        let loaded = match at {
            AsOf::Version(v) => t.load_version(*v).await,
            AsOf::Time(time) => t.load_with_datetime(*time).await,
        };
        loaded.map_err(|e| delta(table, e))?;
        Ok(t)
    }
}

/// A point in a table's history: a Delta version, or a time (the last commit at or before
/// it; Delta reads commit times from its log files' modification times).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AsOf {
    Version(u64),
    Time(chrono::DateTime<chrono::Utc>),
}

impl std::str::FromStr for AsOf {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(v) = s.parse::<u64>() {
            return Ok(AsOf::Version(v));
        }
        chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| AsOf::Time(t.with_timezone(&chrono::Utc)))
            .map_err(|_| {
                format!(
                    "`{s}` is neither a table version (a whole number) nor an RFC 3339 time \
                     (2020-11-01T00:00:00Z)"
                )
            })
    }
}

/// The result (the snapshot id of its `txn`) a loaded table holds; `None` for version 0.
pub async fn result_of(table: &DeltaTable, name: &str) -> Result<Option<i64>, LakeError> {
    let snapshot = table.snapshot().map_err(|e| delta(name, e))?;
    snapshot
        .transaction_version(table.log_store().as_ref(), APP_ID)
        .await
        .map_err(|e| delta(name, e))
}

fn delta(table: &str, source: DeltaTableError) -> LakeError {
    LakeError::Delta {
        table: table.to_string(),
        source: Box::new(source),
    }
}

#[cfg(test)]
mod tests;
