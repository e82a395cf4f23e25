//! Finding snapshots on disk: the one `LATEST` points at, the newest one that is complete
//! and readable (falling back past damaged or foreign ones), and the parts of a Kafka
//! processor's folder. Nothing here panics on what it reads: a damaged file is a
//! [`SnapshotError`] that names it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::manifest::{self, Manifest};
use super::{
    io_err, parse_id, tables, InputPosition, Published, SnapshotError, TableSource, LATEST_FILE,
    PARTITIONS_DIR,
};

/// Tables every snapshot holds; `state_seen` is only in a Kafka partition's.
/// The last is not in snapshots of the older formats (see [`manifest::has_open_orders`]).
const REQUIRED: [&str; 7] = [
    tables::DAILY_SALES,
    tables::DAILY_CATEGORY_SALES,
    tables::DAILY_BRAND_SALES,
    tables::RFM,
    tables::STATE_OPEN_SETS,
    tables::STATE_CUSTOMER_ORDERS,
    tables::STATE_OPEN_ORDERS,
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

pub(super) fn open(path: &Path) -> Result<Published, SnapshotError> {
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
        fetched: None,
        fetched_chain: None,
    })
}

impl Published {
    /// Checks that the manifest is of this build's format (an incremental snapshot's
    /// format for one that names a chain).
    pub fn verify_format(&self) -> Result<(), SnapshotError> {
        let (want, older) = match self.manifest.chain {
            Some(_) => (manifest::DELTA_FORMAT, manifest::OLDER_DELTA_FORMAT),
            None => (manifest::FORMAT_VERSION, manifest::OLDER_FORMAT),
        };
        if self.manifest.format == want || self.manifest.format == older {
            return Ok(());
        }
        Err(SnapshotError::Damaged {
            path: self.path.clone(),
            what: match self.manifest.chain {
                None => format!(
                    "format {} (this build reads formats {older} and {want})",
                    self.manifest.format
                ),
                Some(_) => format!(
                    "format {} (this build reads formats {older} and {want} for an incremental snapshot)",
                    self.manifest.format
                ),
            },
        })
    }

    /// Checks what a reader relies on without reading the data: this build's format, every
    /// table present, and each Parquet file's schema equal to the contract's (names and
    /// types, in order), for this snapshot and, for an incremental one, every snapshot of
    /// its chain. A snapshot that passes cannot make the loaders panic.
    pub fn verify(&self) -> Result<(), SnapshotError> {
        for part in self.chain()? {
            part.verify_one()?;
        }
        Ok(())
    }

    /// The snapshots restoring this one reads, in order: itself for a whole snapshot;
    /// for an incremental one its base, then each snapshot of the chain up to itself. A
    /// missing or foreign link is [`SnapshotError::Damaged`].
    pub fn chain(&self) -> Result<Vec<Published>, SnapshotError> {
        if let (Some(links), Some(_)) = (&self.fetched_chain, self.manifest.chain) {
            let mut chain = links.to_vec();
            chain.push(self.clone());
            return Ok(chain);
        }
        let mut chain = vec![self.clone()];
        while let Some(link) = chain.last().and_then(|p| p.manifest.chain) {
            let child = chain.last().expect("not empty");
            // Named as the snapshot read, with the link that is broken.
            let broken = |what: String| SnapshotError::Damaged {
                path: self.path.clone(),
                what: format!(
                    "its chain is broken at snapshot {} (the one snapshot {} follows): {what}",
                    link.parent, child.manifest.id
                ),
            };
            if child.fetched.is_some() || chain.len() > 100_000 {
                return Err(broken("an incremental snapshot read from memory".into()));
            }
            let folder = child.path.parent().unwrap_or(Path::new("."));
            let path = folder.join(format!("{}{:06}", super::PREFIX, link.parent));
            let parent = open(&path).map_err(|e| broken(e.to_string()))?;
            parent.follows(&link).map_err(broken)?;
            chain.push(parent);
        }
        chain.reverse();
        Ok(chain)
    }

    /// Refuses an incremental snapshot where its own tables would be read as a result
    /// (readers restore one through its chain first): they hold only what changed since
    /// the snapshot before.
    pub fn readable_alone(&self) -> Result<(), SnapshotError> {
        match self.manifest.chain {
            None => Ok(()),
            Some(_) => Err(SnapshotError::Config(format!(
                "{} is an incremental snapshot (its tables hold only what changed since the \
                 snapshot before): it is read restored through its chain",
                self.path.display()
            ))),
        }
    }

    /// Whether this snapshot is the one a chain's `link` follows: the `parent` it names,
    /// one link shorter, from the same base. Else what is wrong, for a `Damaged` error.
    pub(super) fn follows(&self, link: &manifest::Chain) -> Result<(), String> {
        let fits = self.manifest.id == link.parent
            && match self.manifest.chain {
                Some(c) => c.base == link.base && c.length + 1 == link.length,
                None => link.parent == link.base && link.length == 1,
            };
        match fits {
            true => Ok(()),
            false => Err(format!(
                "its chain's snapshot {} is not the one it follows",
                link.parent
            )),
        }
    }

    pub(super) fn verify_one(&self) -> Result<(), SnapshotError> {
        let damaged = |path: &Path, what: String| SnapshotError::Damaged {
            path: path.to_path_buf(),
            what,
        };
        self.verify_format()?;
        let optional = self
            .table_path(tables::STATE_SEEN)
            .map(|_| tables::STATE_SEEN);
        // A merged view holds the query tables alone.
        let required: &[&str] = match self.manifest.input {
            InputPosition::View { .. } => &tables::QUERY_TABLES,
            _ if manifest::has_open_orders(self.manifest.format) => &REQUIRED,
            _ => &REQUIRED[..REQUIRED.len() - 1],
        };
        for table in required.iter().copied().chain(optional) {
            let (path, source) = self.table_source(table)?;
            let found = match source {
                TableSource::File(f) => {
                    ParquetRecordBatchReaderBuilder::try_new(f).map(|b| b.schema().clone())
                }
                TableSource::Bytes(b) => {
                    ParquetRecordBatchReaderBuilder::try_new(b).map(|b| b.schema().clone())
                }
            }
            .map_err(|e| damaged(&path, format!("not readable as Parquet: {e}")))?;
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
/// snapshot that fails is logged (a warning) and the next older one tried; when none
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
                tracing::warn!(path = %path.display(), error = %e, "skipping snapshot");
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

/// What a snapshot folder holds: the embedded `run`'s snapshots, or the partitions of one
/// Kafka topic (`process`), each partition's latest complete snapshot.
#[derive(Debug, Clone)]
pub enum SnapshotSet {
    Run(Box<Published>),
    Topic(TopicSet),
}

/// The latest complete snapshot of each partition of one topic that has one.
#[derive(Debug, Clone)]
pub struct TopicSet {
    pub topic: String,
    /// The topic's partition count, which every snapshot of the set records.
    pub partitions: i32,
    /// By partition; a partition that has no snapshot yet is missing.
    pub parts: Vec<(i32, Published)>,
}

impl TopicSet {
    /// The set of partition snapshots `parts` (each one's latest) found at `at`: refused,
    /// naming the difference, when they are not of one topic and partition count.
    pub fn of(at: &Path, parts: Vec<Published>) -> Result<TopicSet, SnapshotError> {
        let shapes = parts
            .iter()
            .map(kafka_shape)
            .collect::<Result<Vec<_>, _>>()?;
        let SetShape { topic, partitions } = agreed_shape(at, &shapes)?;
        Ok(TopicSet {
            topic,
            partitions,
            parts: shapes.iter().map(|s| s.1).zip(parts).collect(),
        })
    }

    /// Partitions without a snapshot: while any is missing no day of the merge is final.
    pub fn missing(&self) -> Vec<i32> {
        (0..self.partitions)
            .filter(|p| !self.parts.iter().any(|(q, _)| q == p))
            .collect()
    }

    /// The merged watermark: the lowest partition's, none while one has none.
    pub fn watermark(&self) -> Option<i64> {
        let per_partition: Vec<Option<i64>> = (0..self.partitions)
            .map(|p| {
                let part = self.parts.iter().find(|(q, _)| *q == p);
                part.and_then(|(_, s)| s.manifest.watermark_us)
            })
            .collect();
        crate::aggregate::merge_watermarks(&per_partition)
    }
}

impl SnapshotSet {
    /// Every snapshot of the set.
    pub fn snapshots(&self) -> Vec<Published> {
        match self {
            SnapshotSet::Run(p) => vec![(**p).clone()],
            SnapshotSet::Topic(t) => t.parts.iter().map(|(_, p)| p.clone()).collect(),
        }
    }
}

/// What a set of partition snapshots is of: one topic at one partition count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetShape {
    pub topic: String,
    pub partitions: i32,
}

/// The partition folders below `dir` that have published a snapshot, in name order.
fn partition_folders(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir.join(PARTITIONS_DIR)) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join(LATEST_FILE).exists())
        .collect();
    v.sort();
    v
}

/// One partition's snapshot: (topic, partition, partition count).
fn kafka_shape(s: &Published) -> Result<(String, i32, i32), SnapshotError> {
    let InputPosition::Kafka {
        topic,
        partition,
        partitions,
        ..
    } = &s.manifest.input
    else {
        return Err(SnapshotError::Damaged {
            path: s.path.clone(),
            what: "a snapshot below partitions/ that is not a partition's".into(),
        });
    };
    Ok((topic.clone(), *partition, *partitions))
}

/// One partition's snapshot: (topic, partition, partition count), checked against the
/// folder it was found in.
fn partition_of(
    dir: &Path,
    folder: &Path,
    s: &Published,
) -> Result<(String, i32, i32), SnapshotError> {
    let shape = kafka_shape(s)?;
    let (topic, partition) = (&shape.0, shape.1);
    if super::partition_dir(dir, topic, partition) != folder {
        return Err(SnapshotError::Damaged {
            path: s.path.clone(),
            what: format!("the snapshot of {topic}-{partition} in the folder of another"),
        });
    }
    Ok(shape)
}

/// The shape the partitions agree on; an error naming the difference when they do not.
fn agreed_shape(dir: &Path, parts: &[(String, i32, i32)]) -> Result<SetShape, SnapshotError> {
    let differ = |what: &str, of: &dyn Fn(&(String, i32, i32)) -> String| {
        let mut values: Vec<String> = parts.iter().map(of).collect();
        values.dedup();
        (values.len() > 1).then(|| SnapshotError::Inconsistent {
            dir: dir.to_path_buf(),
            what: what.to_string(),
            found: parts
                .iter()
                .map(|p| format!("{}-{}: {}", p.0, p.1, of(p)))
                .collect::<Vec<_>>()
                .join(", "),
        })
    };
    if let Some(e) = differ("topics", &|p| p.0.clone()) {
        return Err(e);
    }
    if let Some(e) = differ("partition counts", &|p| p.2.to_string()) {
        return Err(e);
    }
    Ok(SetShape {
        topic: parts[0].0.clone(),
        partitions: parts[0].2,
    })
}

/// The shape of the partition snapshots in `dir` from their manifests alone (none when
/// there are none); an error when they are not one set, or when `dir` also holds a `run`
/// snapshot.
pub fn set_shape(dir: &Path) -> Result<Option<SetShape>, SnapshotError> {
    if dir.join(LATEST_FILE).exists() {
        return Err(SnapshotError::Mixed(dir.to_path_buf()));
    }
    let mut parts = Vec::new();
    for folder in partition_folders(dir) {
        parts.push(partition_of(dir, &folder, &latest(&folder)?)?);
    }
    if parts.is_empty() {
        return Ok(None);
    }
    agreed_shape(dir, &parts).map(Some)
}

/// The latest complete snapshots in `dir`: the embedded `run`'s, or those of every partition
/// below `partitions/` for `process`. Refuses, naming the difference, a folder that mixes a
/// `run` snapshot with partitions, partitions of two topics or of two partition counts.
pub fn latest_parts(dir: &Path) -> Result<SnapshotSet, SnapshotError> {
    let folders = partition_folders(dir);
    if dir.join(LATEST_FILE).exists() {
        if !folders.is_empty() {
            return Err(SnapshotError::Mixed(dir.to_path_buf()));
        }
        return Ok(SnapshotSet::Run(Box::new(latest_complete(dir)?)));
    }
    if folders.is_empty() {
        return Err(SnapshotError::None(dir.to_path_buf()));
    }
    let mut shapes = Vec::new();
    let mut parts = Vec::new();
    for folder in folders {
        let snapshot = latest_complete(&folder)?;
        let shape = partition_of(dir, &folder, &snapshot)?;
        parts.push((shape.1, snapshot));
        shapes.push(shape);
    }
    let SetShape { topic, partitions } = agreed_shape(dir, &shapes)?;
    Ok(SnapshotSet::Topic(TopicSet {
        topic,
        partitions,
        parts,
    }))
}

/// The `LATEST` pointers of `dir` (the run's, or every partition's and the merged view's) as one string: it
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
    if let Ok(s) = fs::read_to_string(super::view_dir(dir).join(LATEST_FILE)) {
        v.push_str(&format!("|merged:{}", s.trim()));
    }
    v
}
