//! Finding snapshots on disk: the one `LATEST` points at, the newest one that is complete
//! and readable (falling back past damaged or foreign ones), and the parts of a Kafka
//! processor's folder. Nothing here panics on what it reads: a damaged file is a
//! [`SnapshotError`] that names it.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::manifest::{self, Manifest};
use super::{io_err, parse_id, tables, Published, SnapshotError, LATEST_FILE, PARTITIONS_DIR};

/// Tables every snapshot holds; `state_seen` is only in a Kafka partition's.
const REQUIRED: [&str; 6] = [
    tables::DAILY_SALES,
    tables::DAILY_CATEGORY_SALES,
    tables::DAILY_BRAND_SALES,
    tables::RFM,
    tables::STATE_OPEN_SETS,
    tables::STATE_CUSTOMER_ORDERS,
];

/// The snapshot `LATEST` points at, its manifest read (not checked: see [`Published::verify`]).
pub fn latest(dir: &Path) -> Result<Published, SnapshotError> {
    let name = pointed(dir)?.ok_or_else(|| SnapshotError::None(dir.to_path_buf()))?;
    open(&dir.join(name))
}

fn pointed(dir: &Path) -> Result<Option<String>, SnapshotError> {
    let pointer = dir.join(LATEST_FILE);
    match fs::read_to_string(&pointer) {
        Ok(s) => Ok(Some(s.trim().to_string())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("reading", &pointer)(e)),
    }
}

fn open(path: &Path) -> Result<Published, SnapshotError> {
    let manifest_path = path.join(manifest::MANIFEST_FILE);
    let bytes = fs::read(&manifest_path).map_err(io_err("reading", &manifest_path))?;
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|source| SnapshotError::Manifest {
            path: manifest_path,
            source,
        })?;
    Ok(Published {
        path: path.to_path_buf(),
        manifest,
    })
}

impl Published {
    /// Checks what a reader relies on without reading the data: this build's format, every
    /// table present, and each Parquet file's schema equal to the contract's (names and
    /// types, in order). A snapshot that passes cannot make the loaders panic.
    pub fn verify(&self) -> Result<(), SnapshotError> {
        let damaged = |path: &Path, what: String| SnapshotError::Damaged {
            path: path.to_path_buf(),
            what,
        };
        if self.manifest.format != manifest::FORMAT_VERSION {
            return Err(damaged(
                &self.path,
                format!(
                    "format {} (this build reads format {})",
                    self.manifest.format,
                    manifest::FORMAT_VERSION
                ),
            ));
        }
        let optional = self
            .table_path(tables::STATE_SEEN)
            .map(|_| tables::STATE_SEEN);
        for table in REQUIRED.into_iter().chain(optional) {
            let path = self
                .table_path(table)
                .ok_or_else(|| SnapshotError::Incomplete(self.path.clone(), table.to_string()))?;
            let file = File::open(&path).map_err(io_err("opening", &path))?;
            let found = ParquetRecordBatchReaderBuilder::try_new(file)
                .map_err(|e| damaged(&path, format!("not readable as Parquet: {e}")))?
                .schema()
                .clone();
            let want = tables::schema(table);
            let shape = |s: &datafusion::arrow::datatypes::Schema| {
                s.fields()
                    .iter()
                    .map(|f| format!("{} {}", f.name(), f.data_type()))
                    .collect::<Vec<_>>()
            };
            if shape(&found) != shape(&want) {
                return Err(damaged(
                    &path,
                    format!(
                        "columns [{}], expected [{}]",
                        shape(&found).join(", "),
                        shape(&want).join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The snapshots of `dir` to try, newest first: the one `LATEST` points at, then the older
/// ones still kept.
fn candidates(dir: &Path) -> Result<Vec<PathBuf>, SnapshotError> {
    let Some(name) = pointed(dir)? else {
        return Ok(Vec::new());
    };
    let newest = parse_id(&name).unwrap_or(u64::MAX);
    let mut older: Vec<(u64, PathBuf)> = fs::read_dir(dir)
        .map_err(io_err("listing", dir))?
        .filter_map(|e| {
            let e = e.ok()?;
            let id = parse_id(&e.file_name().to_string_lossy())?;
            (id < newest).then(|| (id, e.path()))
        })
        .collect();
    older.sort_unstable_by_key(|o| std::cmp::Reverse(o.0));
    Ok(std::iter::once(dir.join(name))
        .chain(older.into_iter().map(|(_, p)| p))
        .collect())
}

/// The newest snapshot of `dir` for which `accept` succeeds, with what it returned. A
/// snapshot that fails is reported on stderr and the next older one tried; when none
/// succeeds, the newest one's error. `SnapshotError::None` when `dir` has no snapshot.
pub fn newest_good<T>(
    dir: &Path,
    mut accept: impl FnMut(&Published) -> Result<T, SnapshotError>,
) -> Result<(Published, T), SnapshotError> {
    let mut first_error = None;
    for path in candidates(dir)? {
        match open(&path).and_then(|p| accept(&p).map(|t| (p, t))) {
            Ok(found) => return Ok(found),
            Err(e) => {
                eprintln!("storepulse: skipping snapshot {}: {e}", path.display());
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or_else(|| SnapshotError::None(dir.to_path_buf())))
}

/// The newest complete, readable snapshot of `dir` (see [`Published::verify`]).
pub fn latest_complete(dir: &Path) -> Result<Published, SnapshotError> {
    newest_good(dir, Published::verify).map(|(p, ())| p)
}

/// The latest complete snapshot of every part in `dir`: the embedded `run`'s, or one per
/// partition below `partitions/` for `process`.
pub fn latest_parts(dir: &Path) -> Result<Vec<Published>, SnapshotError> {
    if dir.join(LATEST_FILE).exists() {
        return Ok(vec![latest_complete(dir)?]);
    }
    let parts_dir = dir.join(PARTITIONS_DIR);
    let mut parts = Vec::new();
    if let Ok(entries) = fs::read_dir(&parts_dir) {
        let mut dirs: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        dirs.sort();
        for d in dirs {
            if d.join(LATEST_FILE).exists() {
                parts.push(latest_complete(&d)?);
            }
        }
    }
    if parts.is_empty() {
        return Err(SnapshotError::None(dir.to_path_buf()));
    }
    Ok(parts)
}

/// The `LATEST` pointers of `dir` (the run's, or every partition's) as one string: it
/// changes whenever a snapshot is published, and reading it costs a few small files.
pub fn pointers(dir: &Path) -> String {
    let mut v = fs::read_to_string(dir.join(LATEST_FILE))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    if let Ok(entries) = fs::read_dir(dir.join(PARTITIONS_DIR)) {
        let mut parts: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        parts.sort();
        for p in parts {
            if let Ok(s) = fs::read_to_string(p.join(LATEST_FILE)) {
                v.push_str(&format!("|{}:{}", p.display(), s.trim()));
            }
        }
    }
    v
}
