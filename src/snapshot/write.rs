//! Writing a snapshot's files: Parquet tables (zstd, no dictionary for columns unique per
//! row, sorted ids as deltas), built batch by batch where they are large, and small files
//! made durable or replaced atomically.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::error::ArrowError;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, Encoding, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use datafusion::parquet::schema::types::ColumnPath;

use super::manifest::TableFile;
use super::{io_err, tables, SnapshotError};

/// Writes `table` into the folder `dir`; returns its name and manifest entry.
pub(super) fn write_table(
    dir: &Path,
    table: &str,
    batch: &RecordBatch,
) -> Result<(String, TableFile), SnapshotError> {
    write_table_batches(dir, table, std::iter::once(Ok(batch.clone())))
}

/// [`write_table`] of a table built batch by batch (each dropped once written).
pub(super) fn write_table_batches(
    dir: &Path,
    table: &str,
    batches: impl Iterator<Item = Result<RecordBatch, ArrowError>>,
) -> Result<(String, TableFile), SnapshotError> {
    let file = format!("{table}.parquet");
    let (bytes, rows) = write_parquet_batches(&dir.join(&file), table, batches)?;
    Ok((table.to_string(), TableFile { file, rows, bytes }))
}

/// Columns of `table` with a value for nearly every row: a dictionary would only be
/// built to be dropped, and ids sorted ascending are stored as deltas.
fn unique_columns(table: &str) -> &'static [(&'static str, bool)] {
    match table {
        tables::RFM => &[
            ("user_id", true),
            ("first_purchase", false),
            ("last_purchase", false),
            ("monetary", false),
        ],
        tables::STATE_CUSTOMER_ORDERS => &[("user_id", true), ("order_id", false)],
        tables::STATE_OPEN_SETS => &[("value", false)],
        tables::STATE_OPEN_ORDERS => &[("order_id", true)],
        _ => &[],
    }
}

/// Writes one table and makes it durable; returns the file's size.
#[cfg(test)]
pub(super) fn write_parquet(
    path: &Path,
    table: &str,
    batch: &RecordBatch,
) -> Result<u64, SnapshotError> {
    write_parquet_batches(path, table, std::iter::once(Ok(batch.clone()))).map(|(bytes, _)| bytes)
}

/// [`write_parquet`] of batches (at least one; the first's schema is the file's); returns
/// the file's size and rows.
fn write_parquet_batches(
    path: &Path,
    table: &str,
    mut batches: impl Iterator<Item = Result<RecordBatch, ArrowError>>,
) -> Result<(u64, u64), SnapshotError> {
    let first = match batches.next() {
        Some(b) => b?,
        None => RecordBatch::new_empty(tables::schema(table)),
    };
    let file = File::create(path).map_err(io_err("creating", path))?;
    let mut props =
        WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::try_new(1)?));
    let schema = first.schema();
    for &(name, sorted) in unique_columns(table) {
        let column = ColumnPath::from(name);
        props = props.set_column_dictionary_enabled(column.clone(), false);
        // Deltas are for integers only (a file of another schema is written as it is).
        let integer = schema
            .field_with_name(name)
            .is_ok_and(|f| f.data_type().is_integer());
        if sorted && integer {
            props = props.set_column_encoding(column, Encoding::DELTA_BINARY_PACKED);
        }
    }
    let props = props.build();
    let mut writer = ArrowWriter::try_new(file, schema, Some(props))?;
    let mut rows = first.num_rows() as u64;
    writer.write(&first)?;
    drop(first);
    for batch in batches {
        let batch = batch?;
        rows += batch.num_rows() as u64;
        writer.write(&batch)?;
    }
    let file = writer.into_inner()?;
    file.sync_all().map_err(io_err("syncing", path))?;
    let bytes = file
        .metadata()
        .map(|m| m.len())
        .map_err(io_err("measuring", path))?;
    Ok((bytes, rows))
}

pub(super) fn write_durable(path: &Path, bytes: &[u8]) -> Result<(), SnapshotError> {
    let mut f = File::create(path).map_err(io_err("creating", path))?;
    f.write_all(bytes).map_err(io_err("writing", path))?;
    f.sync_all().map_err(io_err("syncing", path))
}

/// Replaces `<dir>/<name>` with `bytes` atomically and durably: written to a temporary
/// name, fsynced, renamed over it, the folder fsynced. A reader sees the old file or the
/// new one, never a part. Returns the file's path.
pub(super) fn replace_durable(
    dir: &Path,
    name: &str,
    bytes: &[u8],
) -> Result<PathBuf, SnapshotError> {
    let tmp = dir.join(format!(".tmp-{name}-{}", std::process::id()));
    write_durable(&tmp, bytes)?;
    let path = dir.join(name);
    fs::rename(&tmp, &path).map_err(io_err("replacing", &path))?;
    sync_dir(dir)?;
    Ok(path)
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), SnapshotError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing", dir))
}
