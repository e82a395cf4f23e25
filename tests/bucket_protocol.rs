//! The publication protocol in a bucket, driven through the library against a real
//! S3-protocol server on loopback (s3s, linked into this test) whose request hook forces
//! each interleaving a review named: claims that fence earlier writers, a zombie that
//! publishes after the takeover, rejected lines that travel with their snapshot, pruning
//! across failed publishes, a pointer put that landed whatever its answer, large files in
//! parts, readers that fall back past a damaged snapshot.

mod common;
#[path = "common/s3.rs"]
mod s3;

use std::path::Path;

use s3::{pointer, rejected_of};
use storepulse::aggregate::{Core, CoreConfig};
use storepulse::snapshot::{
    Counts, InputPosition, Publisher, SnapshotError, SnapshotMeta, SnapshotStore, WindowConfig,
};

/// A core fed `events` generated lines, and what its snapshot records beside it, with
/// `rejected_bytes` of the folder's `rejected.csv` covered.
fn state_of(events: u64, rejected_bytes: u64) -> (Core, SnapshotMeta) {
    let mut core = Core::new(CoreConfig::default());
    let mut data = Vec::new();
    storepulse::generate::generate(&mut data, events, 3).unwrap();
    let all = storepulse::replay::read_all(data.as_slice(), &Default::default()).unwrap();
    common::feed(&mut core, &all.dict, all.events);
    let meta = SnapshotMeta {
        input: InputPosition::File {
            path: "generated".into(),
            order: "file".into(),
            lines_read: events,
            events_applied: core.accepted(),
            complete: true,
            rejected_bytes,
        },
        counts: Counts {
            accepted: core.accepted(),
            ..Counts::default()
        },
        config: WindowConfig::of(&CoreConfig::default(), "2000-01-01T00:00:00Z".into()),
    };
    (core, meta)
}

/// [`state_of`] as the snapshot of partition 0 (of 1) of `purchases`, its offsets the
/// lines read.
fn partition_state_of(events: u64) -> (Core, SnapshotMeta) {
    let (core, meta) = state_of(events, 0);
    let input = InputPosition::Kafka {
        topic: "purchases".into(),
        partition: 0,
        partitions: 1,
        next_offset: events as i64,
        end_of_input: false,
        inputs: Default::default(),
    };
    (core, SnapshotMeta { input, ..meta })
}

/// A writer's store: snapshots staged in `dir`, published through `publisher`.
fn store_of(dir: &Path, publisher: Publisher, keep: usize) -> SnapshotStore {
    SnapshotStore::open(dir, keep)
        .unwrap()
        .with_remote(publisher)
        .unwrap()
}

/// Writes a snapshot of `events` lines through `store`; its id.
fn write(store: &mut SnapshotStore, events: u64) -> Result<u64, SnapshotError> {
    let (core, meta) = state_of(events, 0);
    store.write(&core, meta).map(|m| m.id)
}

/// `query`'s answer for the number of customers at `url`, as CSV.
fn rfm_count(server: &s3::Server, url: &str) -> String {
    server.ok(&[
        "query",
        "--format",
        "csv",
        "--snapshot-dir",
        url,
        "SELECT COUNT(*) AS n FROM rfm",
    ])
}

fn snapshot_of(dir: &Path, publisher: Publisher, events: u64) -> Result<u64, SnapshotError> {
    write(&mut store_of(dir, publisher, 3), events)
}

#[test]
fn a_writer_that_claims_the_prefix_fences_every_earlier_writer() {
    let server = s3::Server::start("shop");
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let bucket = server.prefix("shared");
    // Both claim the prefix while it is empty; the later claim is the owner.
    let a = Publisher::claim(bucket.clone(), 3).unwrap();
    let b = Publisher::claim(bucket.clone(), 3).unwrap();
    match snapshot_of(a_dir.path(), a, 500) {
        Err(SnapshotError::Fenced { url, .. }) => assert_eq!(url, "s3://shop/shared"),
        other => panic!("the earlier writer published: {other:?}"),
    }
    let (claimed, name) = pointer(&server, "shared");
    assert_eq!(name, "", "the claim names no snapshot yet: {claimed}");
    let id = snapshot_of(b_dir.path(), b, 800).unwrap();
    let (text, name) = pointer(&server, "shared");
    assert!(name.starts_with(&format!("snap-{id:06}-")), "{text}");
    // Writers are 128 random bits; the pointer carries the claim's epoch.
    let writer = text
        .lines()
        .nth(1)
        .unwrap()
        .strip_prefix("writer ")
        .unwrap();
    assert_eq!(writer.len(), 32, "{text}");
    assert!(writer.chars().all(|c| c.is_ascii_hexdigit()), "{text}");
    assert_eq!(text.lines().nth(2), Some("epoch 2"), "{text}");
    assert!(
        name.ends_with(writer),
        "the folder is the writer's own: {text}"
    );
    // A writer that claims the prefix after a publish continues from its pointer.
    let c = Publisher::claim(bucket, 3).unwrap();
    let next = snapshot_of(tempfile::tempdir().unwrap().path(), c, 900).unwrap();
    assert!(next > id);
    let (text, name) = pointer(&server, "shared");
    assert!(name.starts_with(&format!("snap-{next:06}-")), "{text}");
    assert_eq!(text.lines().nth(2), Some("epoch 3"), "{text}");
}

/// The review's first finding: a processor paused past its session publishes after the
/// new owner took its partition but before the new owner's first publish. The new owner
/// claimed the partition when it took it, so the zombie is refused, never the owner.
#[test]
fn a_zombie_publishing_after_the_takeover_is_fenced_not_the_new_owner() {
    let server = s3::Server::start("shop");
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let bucket = server.prefix("partitions/purchases-0");
    let mut a = store_of(
        a_dir.path(),
        Publisher::claim(bucket.clone(), 3).unwrap(),
        3,
    );
    let first = write(&mut a, 300).unwrap();
    // b takes the partition over (a's session ended while it was paused).
    let mut b = store_of(
        b_dir.path(),
        Publisher::claim(bucket.clone(), 3).unwrap(),
        3,
    );
    let (claimed, name) = pointer(&server, "partitions/purchases-0");
    assert!(
        name.starts_with(&format!("snap-{first:06}-")),
        "b claims a's snapshot: {claimed}"
    );
    // a comes back and publishes its periodic snapshot: refused.
    let err = write(&mut a, 600).unwrap_err();
    assert!(matches!(err, SnapshotError::Fenced { .. }), "{err}");
    assert_eq!(pointer(&server, "partitions/purchases-0").0, claimed);
    // b's first publish goes through.
    let next = write(&mut b, 900).unwrap();
    let (text, name) = pointer(&server, "partitions/purchases-0");
    assert!(name.starts_with(&format!("snap-{next:06}-")), "{text}");
    let manifest = server.file(&format!("partitions/purchases-0/{name}/manifest.json"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(manifest).unwrap()).unwrap();
    assert_eq!(
        manifest["counts"]["accepted"],
        state_of(900, 0).0.accepted(),
        "the pointer names b's state"
    );
}

/// A fenced writer's rejected lines never replace the owner's: they travel in pieces that
/// only the manifests their writer published list, and each byte is uploaded once.
#[test]
fn rejected_lines_travel_with_their_snapshot_in_few_pieces_and_a_fenced_writers_go() {
    let server = s3::Server::start("shop");
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let bucket = server.prefix("run");
    let mut a = store_of(
        a_dir.path(),
        Publisher::claim(bucket.clone(), 3).unwrap(),
        3,
    );
    let mut b = store_of(
        b_dir.path(),
        Publisher::claim(bucket.clone(), 3).unwrap(),
        3,
    );
    let header = "line,reason,original_line\n";
    let a_lines = format!("{header}7,malformed_row,\"a's line\"\n");
    std::fs::write(a_dir.path().join("rejected.csv"), &a_lines).unwrap();
    let (core, meta) = state_of(200, a_lines.len() as u64);
    assert!(matches!(
        a.write(&core, meta),
        Err(SnapshotError::Fenced { .. })
    ));
    let root = server.file("run");
    assert!(
        !s3::objects(&root).iter().any(|o| o == "rejected.csv"),
        "nothing of a's at the prefix's root"
    );
    let a_writer = a.remote_writer().unwrap().to_string();
    assert!(
        s3::objects(&root)
            .iter()
            .any(|o| o.starts_with("rejected/") && o.contains(&a_writer)),
        "a staged its piece before it was fenced"
    );
    // b's file grows over 24 snapshots, 3 kept.
    let mut b_lines = header.to_string();
    for i in 0..24 {
        b_lines.push_str(&format!("{i},negative_price,\"b's line {i}\"\n"));
        std::fs::write(b_dir.path().join("rejected.csv"), &b_lines).unwrap();
        let (core, meta) = state_of(300 + i, b_lines.len() as u64);
        b.write(&core, meta).unwrap();
        assert_eq!(
            String::from_utf8(rejected_of(&server, "run")).unwrap(),
            b_lines
        );
    }
    // The pieces in the bucket are those the kept snapshots list (a's is gone), and the
    // newest lists few: merged as they grow, not one per snapshot.
    let pieces: std::collections::BTreeSet<String> = s3::objects(&root)
        .into_iter()
        .filter(|o| o.starts_with("rejected/"))
        .collect();
    let mut listed = std::collections::BTreeSet::new();
    let mut newest = 0;
    let (_, pointed) = pointer(&server, "run");
    for o in s3::objects(&root) {
        if let Some(folder) = o.strip_suffix("/manifest.json") {
            let m: serde_json::Value =
                serde_json::from_slice(&std::fs::read(root.join(&o)).unwrap()).unwrap();
            let list = m["rejected_pieces"].as_array().unwrap();
            if folder == pointed {
                newest = list.len();
            }
            listed.extend(list.iter().map(|p| p.as_str().unwrap().to_string()));
        }
    }
    assert_eq!(pieces, listed);
    assert!(!pieces.iter().any(|p| p.contains(&a_writer)), "{pieces:?}");
    assert!((1..=5).contains(&newest), "{newest} pieces: {pieces:?}");
}

/// Pruning follows the pointers published, not ids: ids are taken before a publish, so
/// failed publishes leave gaps, and the previous pointer's folder must stay for a reader
/// that just followed it.
#[test]
fn pruning_keeps_the_previous_pointers_folder_across_failed_publishes() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let server = s3::Server::start("shop");
    let dir = tempfile::tempdir().unwrap();
    let mut w = store_of(
        dir.path(),
        Publisher::claim(server.prefix("gaps"), 2).unwrap(),
        2,
    );
    let first = write(&mut w, 100).unwrap();
    let (_, first_name) = pointer(&server, "gaps");
    // The next two publishes fail at their manifest (their tables are in the bucket).
    let refused = Arc::new(AtomicUsize::new(2));
    let left = refused.clone();
    server.faults.hook(move |r| {
        if r.is_put("/manifest.json") && left.load(Ordering::SeqCst) > 0 {
            left.fetch_sub(1, Ordering::SeqCst);
            return s3::Action::Fail(403);
        }
        s3::Action::Pass
    });
    assert!(write(&mut w, 200).is_err());
    assert!(write(&mut w, 300).is_err());
    assert_eq!(refused.load(Ordering::SeqCst), 0);
    let published = write(&mut w, 400).unwrap();
    assert_eq!(published, first + 3, "failed publishes left two ids unused");
    // The snapshot folders in the bucket, whole or not.
    let folders = |server: &s3::Server| {
        let mut v: Vec<String> = s3::objects(&server.file("gaps"))
            .into_iter()
            .filter(|o| o.starts_with("snap-"))
            .filter_map(|o| o.split('/').next().map(str::to_string))
            .collect();
        v.dedup();
        v
    };
    // The previous pointer's folder stays; the failed publishes' leftovers are gone.
    let (_, newest) = pointer(&server, "gaps");
    assert_eq!(folders(&server), [first_name, newest.clone()]);
    // One more: the oldest pointer's folder goes, the two newest stay.
    write(&mut w, 500).unwrap();
    let (_, last) = pointer(&server, "gaps");
    assert_eq!(folders(&server), [newest, last]);
}

/// Incremental snapshots in a bucket: with `keep` 2, the prune keeps every folder of the
/// pointed snapshot's chain and the newest whole snapshot older than it (a prune by the
/// kept pointers alone would leave the pointed snapshot without its base); readers fetch the
/// chain, and with its base damaged fall back to that whole snapshot.
#[test]
fn a_bucket_keeps_the_chains_it_points_at_and_a_whole_snapshot_before_them() {
    use storepulse::snapshot::Kind;
    let server = s3::Server::start("shop");
    let dir = tempfile::tempdir().unwrap();
    let part = server.prefix("c/partitions/purchases-0");
    let mut store = store_of(dir.path(), Publisher::claim(part, 2).unwrap(), 2);
    let mut customers = Vec::new();
    // Whole, incremental, whole, then a chain of three on it. An incremental snapshot here
    // holds the whole state of the same lines as its base (a superset of what changed
    // restores the same).
    for (events, kind) in [
        (200, Kind::Whole),
        (400, Kind::Changes),
        (600, Kind::Whole),
        (600, Kind::Changes),
        (600, Kind::Changes),
        (600, Kind::Changes),
    ] {
        let (core, meta) = partition_state_of(events);
        let m = store.write_kind(&core, None, meta, kind).unwrap();
        assert_eq!(m.chain.is_some(), kind == Kind::Changes);
        customers.push(m.customers);
    }
    let prefix = "c/partitions/purchases-0";
    let mut folders: Vec<u64> = s3::objects(&server.file(prefix))
        .iter()
        .filter_map(|o| o.strip_suffix("/manifest.json"))
        .filter_map(|f| f.strip_prefix("snap-")?.split('-').next()?.parse().ok())
        .collect();
    folders.sort_unstable();
    assert_eq!(
        folders,
        [1, 3, 4, 5, 6],
        "the chain 3..6 and the whole 1 before it"
    );
    assert_ne!(customers[0], customers[5]);
    let url = server.url("c");
    assert_eq!(rfm_count(&server, &url), format!("n\n{}\n", customers[5]));
    let (_, newest) = pointer(&server, prefix);
    let base = newest.replacen("snap-000006", "snap-000003", 1);
    std::fs::write(
        server.file(&format!("{prefix}/{base}/rfm.parquet")),
        b"damaged",
    )
    .unwrap();
    assert_eq!(
        rfm_count(&server, &url),
        format!("n\n{}\n", customers[0]),
        "{customers:?}"
    );
}

/// A pointer put that landed is published, whatever came back: its answer lost and every
/// retry failed, or a prune after it refused.
#[test]
fn a_pointer_that_landed_is_published_whatever_its_answer() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let server = s3::Server::start("shop");
    let dir = tempfile::tempdir().unwrap();
    let mut w = store_of(
        dir.path(),
        Publisher::claim(server.prefix("lost"), 2).unwrap(),
        2,
    );
    let puts = Arc::new(AtomicUsize::new(0));
    let seen = puts.clone();
    server.faults.hook(move |r| {
        if r.is_put("/LATEST") {
            // The first lands and its answer is lost; its retries find the store failing.
            return match seen.fetch_add(1, Ordering::SeqCst) {
                0 => s3::Action::FailAfter(500),
                _ => s3::Action::Fail(503),
            };
        }
        if r.is_delete() {
            return s3::Action::Fail(403);
        }
        s3::Action::Pass
    });
    let id = write(&mut w, 100).expect("published although no answer said so");
    assert!(puts.load(Ordering::SeqCst) >= 2, "the put was retried");
    let (text, name) = pointer(&server, "lost");
    assert!(name.starts_with(&format!("snap-{id:06}-")), "{text}");
    // Later publishes, whose prunes are refused, are published too.
    server.faults.hook(|r| match r.is_delete() {
        true => s3::Action::Fail(403),
        false => s3::Action::Pass,
    });
    for events in [200, 300, 400] {
        let id = write(&mut w, events).expect("a failed prune fails no publish");
        let (text, name) = pointer(&server, "lost");
        assert!(name.starts_with(&format!("snap-{id:06}-")), "{text}");
    }
    let kept = s3::objects(&server.file("lost"))
        .iter()
        .filter(|o| o.ends_with("/manifest.json"))
        .count();
    assert_eq!(
        kept,
        4,
        "nothing could be removed: {:?}",
        s3::objects(&server.file("lost"))
    );
    server.faults.clear_hook();
    write(&mut w, 500).unwrap();
    let kept = s3::objects(&server.file("lost"))
        .iter()
        .filter(|o| o.ends_with("/manifest.json"))
        .count();
    assert_eq!(kept, 2, "the next prune catches up");
}

/// Large tables go up in parts streamed from the disk, not in one request held in memory.
#[test]
fn large_tables_are_uploaded_in_parts() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let server = s3::Server::start("shop");
    let dir = tempfile::tempdir().unwrap();
    // A snapshot written locally, its rfm table then made 21 MiB (past the 16 MiB part).
    let (core, meta) = state_of(300, 0);
    let manifest = SnapshotStore::open(dir.path(), 3)
        .unwrap()
        .write(&core, meta)
        .unwrap();
    let local = dir.path().join("snap-000001");
    let big: Vec<u8> = (0..21u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(local.join("rfm.parquet"), &big).unwrap();
    let parts = Arc::new(AtomicUsize::new(0));
    let seen = parts.clone();
    server.faults.hook(move |r| {
        if r.method == http::Method::PUT && r.query.contains("partNumber=") {
            seen.fetch_add(1, Ordering::SeqCst);
        }
        s3::Action::Pass
    });
    let mut publisher = Publisher::claim(server.prefix("parts"), 3).unwrap();
    publisher
        .publish(&local, "snap-000001", &manifest, None)
        .unwrap();
    assert_eq!(parts.load(Ordering::SeqCst), 2, "16 MiB, then 5");
    let (_, name) = pointer(&server, "parts");
    let got = std::fs::read(server.file(&format!("parts/{name}/rfm.parquet"))).unwrap();
    assert!(got == big, "the object is the file, byte for byte");
}

/// A reader of a bucket falls back past a damaged partition snapshot to the newest older
/// one that is whole, as a reader of a folder does.
#[test]
fn a_reader_falls_back_past_a_damaged_partition_snapshot() {
    let server = s3::Server::start("shop");
    let dir = tempfile::tempdir().unwrap();
    let part = server.prefix("t/partitions/purchases-0");
    let mut store = store_of(dir.path(), Publisher::claim(part, 3).unwrap(), 3);
    let mut customers = Vec::new();
    for events in [400, 800] {
        let (core, meta) = partition_state_of(events);
        customers.push(store.write(&core, meta).unwrap().customers);
    }
    assert!(customers[0] < customers[1], "{customers:?}");
    let url = server.url("t");
    assert_eq!(rfm_count(&server, &url), format!("n\n{}\n", customers[1]));
    let (_, newest) = pointer(&server, "t/partitions/purchases-0");
    std::fs::write(
        server.file(&format!("t/partitions/purchases-0/{newest}/rfm.parquet")),
        b"damaged",
    )
    .unwrap();
    assert_eq!(rfm_count(&server, &url), format!("n\n{}\n", customers[0]));
}

#[test]
fn a_bucket_reader_uses_a_view_behind_the_partitions_and_names_its_cut() {
    let server = s3::Server::start("shop");
    let (dir, work) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let part = server.prefix("t/partitions/purchases-0");
    let mut store = store_of(dir.path(), Publisher::claim(part, 3).unwrap(), 3);
    let url = server.url("t");
    let count = |max_behind: &str| {
        let args = [
            "query",
            "--format",
            "csv",
            "--snapshot-dir",
            &url,
            "--max-behind",
            max_behind,
            "SELECT COUNT(*) AS n FROM rfm",
        ];
        let out = server.command(&args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let said = String::from_utf8(out.stderr).unwrap();
        (String::from_utf8(out.stdout).unwrap(), said)
    };
    let mut customers = Vec::new();
    for events in [400, 800] {
        let (core, meta) = partition_state_of(events);
        customers.push(store.write(&core, meta).unwrap().customers);
        if customers.len() == 1 {
            let view =
                storepulse::snapshot::view::publish_to_bucket(&server.prefix("t"), work.path());
            assert!(view.unwrap().is_some(), "a view of the first snapshot");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    assert!(customers[0] < customers[1], "{customers:?}");
    // The view, one snapshot behind, is read and its cut said.
    let (n, said) = count("10m");
    assert_eq!(n, format!("n\n{}\n", customers[0]));
    assert!(
        said.contains("of purchases: partition 0 at snapshot 1 of 2 ("),
        "{said}"
    );
    // Nothing behind allowed: the newest snapshot, merged.
    let (n, said) = count("0s");
    assert_eq!(n, format!("n\n{}\n", customers[1]));
    assert!(
        said.contains("merged the newest snapshots") && !said.contains("read merged view"),
        "{said}"
    );
}

#[test]
fn a_store_without_etags_is_refused_not_taken_for_another_writer() {
    let server = s3::Server::start("shop");
    let dir = tempfile::tempdir().unwrap();
    let bucket = server.prefix("no-etags");
    // A first snapshot while the store gives ETags; from then on its pointer comes and
    // goes without them.
    snapshot_of(
        dir.path(),
        Publisher::claim(bucket.clone(), 3).unwrap(),
        200,
    )
    .unwrap();
    server.faults.hook(|r| match r.key.ends_with("/LATEST") {
        true => s3::Action::NoETag,
        false => s3::Action::Pass,
    });
    let said = |e: SnapshotError| {
        let text = e.to_string();
        assert!(!matches!(e, SnapshotError::Fenced { .. }), "{text}");
        assert!(text.contains("ETag"), "{text}");
    };
    said(Publisher::claim(bucket.clone(), 3).unwrap_err());
    let other = tempfile::tempdir().unwrap();
    match Publisher::open(bucket.clone(), 3) {
        Ok(p) => said(snapshot_of(other.path(), p, 300).unwrap_err()),
        Err(e) => said(e),
    }
    said(Publisher::claim(server.prefix("empty"), 3).unwrap_err());
}
