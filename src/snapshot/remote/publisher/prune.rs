//! Pruning a writer's prefix: which snapshot folders the kept pointers still need (their
//! chains, and the newest whole snapshot before them) and which rejected-line pieces no
//! kept snapshot lists; step 4 of the protocol in [`super`].

use std::collections::HashSet;

use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt};

use super::super::pieces;
use super::super::read::manifest as read_manifest;
use super::{folder_id, folder_name, folder_writer, Publisher, REJECTED_DIR};
use crate::snapshot::manifest::Chain;
use crate::snapshot::SnapshotError;

impl Publisher {
    /// Removes the snapshot folders no kept pointer named: those older than every kept
    /// one, and this writer's own that never became a pointer (failed publishes). Other
    /// writers' folders not older than the kept ones stay (a writer fenced later removes
    /// nothing it did not write; they go once they are older). Then the rejected-line
    /// pieces no kept snapshot lists.
    pub(super) fn prune(&mut self) -> Result<(), SnapshotError> {
        self.prune_folders()?;
        if !self.pieces.is_empty() {
            self.prune_pieces()?;
        }
        Ok(())
    }

    /// Removes the rejected-line pieces no kept snapshot lists (see
    /// [`pieces::removable`]); the manifests of kept folders this writer did not publish
    /// are read once.
    fn prune_pieces(&mut self) -> Result<(), SnapshotError> {
        let b = self.bucket.clone();
        let dir = b.key(REJECTED_DIR);
        let listed: Vec<String> = self
            .rt
            .block_on(b.store.list_with_delimiter(Some(&dir)))
            .map_err(|e| b.error("listing", &dir, e))?
            .objects
            .into_iter()
            .filter_map(|o| Some(format!("{REJECTED_DIR}/{}", o.location.filename()?)))
            .collect();
        let mut needed = HashSet::new();
        let mut floor = u64::MAX;
        for folder in self.history.clone() {
            if !self.pieces_of.contains_key(&folder) {
                let m = self.rt.block_on(read_manifest(&b, &folder))?;
                self.pieces_of
                    .insert(folder.clone(), m.manifest.rejected_pieces);
            }
            let list = &self.pieces_of[&folder];
            floor = floor.min(pieces::covered(list));
            needed.extend(list.iter().cloned());
        }
        for piece in pieces::removable(&listed, &needed, &self.writer, floor) {
            let key = b.key(&piece);
            self.rt
                .block_on(b.store.delete(&key))
                .map_err(|e| b.error("removing", &key, e))?;
        }
        Ok(())
    }

    /// What the snapshot `folder` is, from its manifest, read once. A manifest that is not
    /// there or does not read as one is `Unreadable` (that snapshot is restored from by
    /// no one, so it needs nothing); a store error fails the prune, tried again at the next
    /// publish (a kept snapshot's chain is never taken for absent).
    fn link_of(&mut self, folder: &str) -> Result<Link, SnapshotError> {
        if let Some(link) = self.link_of.get(folder) {
            return Ok(*link);
        }
        let link = match self.rt.block_on(read_manifest(&self.bucket, folder)) {
            Ok(m) => m.manifest.chain.map_or(Link::Whole, Link::Chain),
            Err(e) if e.is_not_found() || matches!(e, SnapshotError::Manifest { .. }) => {
                Link::Unreadable
            }
            Err(e) => return Err(e),
        };
        self.link_of.insert(folder.to_string(), link);
        Ok(link)
    }

    /// The folders the kept snapshots need, and the lowest id among them: each kept one;
    /// for an incremental one every snapshot of its chain (its writer's, from the base
    /// on); and when any is incremental, the newest whole snapshot older than all of them
    /// (a damaged base fails its whole chain: that one is what readers fall back to, as in
    /// a folder). `ids` are the prefix's folders, ascending.
    fn needed_folders(
        &mut self,
        ids: &[(u64, Key)],
    ) -> Result<(HashSet<String>, Option<u64>), SnapshotError> {
        let mut needed = HashSet::new();
        let mut floor = None::<u64>;
        let mut chained = false;
        for folder in self.history.clone() {
            let Some(id) = folder_id(&folder) else {
                continue;
            };
            let mut low = id;
            if let (Link::Chain(c), Some(writer)) = (self.link_of(&folder)?, folder_writer(&folder))
            {
                low = c.base.min(id);
                needed.extend((low..id).map(|i| folder_name(i, writer)));
                chained = true;
            }
            floor = Some(floor.map_or(low, |f| f.min(low)));
            needed.insert(folder);
        }
        if let (true, Some(low)) = (chained, floor) {
            for (id, key) in ids.iter().rev().filter(|(id, _)| *id < low) {
                let Some(name) = key.filename() else {
                    continue;
                };
                if self.link_of(name)? == Link::Whole {
                    needed.insert(name.to_string());
                    floor = Some(*id);
                    break;
                }
            }
        }
        // What is known of folders no longer needed goes with them.
        self.link_of.retain(|name, _| needed.contains(name));
        Ok((needed, floor))
    }

    /// The snapshot folders: see [`Publisher::prune`].
    fn prune_folders(&mut self) -> Result<(), SnapshotError> {
        let ids = self.ids()?;
        let (needed, Some(floor)) = self.needed_folders(&ids)? else {
            return Ok(());
        };
        let b = &self.bucket;
        for (id, folder) in ids {
            let Some(name) = folder.filename() else {
                continue;
            };
            let own = folder_writer(name) == Some(self.writer.as_str());
            if needed.contains(name) || !(id < floor || own) {
                continue;
            }
            let listed = self
                .rt
                .block_on(b.store.list_with_delimiter(Some(&folder)))
                .map_err(|e| b.error("listing", &folder, e))?;
            for object in listed.objects {
                self.rt
                    .block_on(b.store.delete(&object.location))
                    .map_err(|e| b.error("removing", &object.location, e))?;
            }
        }
        Ok(())
    }
}

/// What a snapshot folder of the prefix is, as its prune needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Link {
    Whole,
    Chain(Chain),
    Unreadable,
}
