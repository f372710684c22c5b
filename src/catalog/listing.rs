//! What a listing is: the entries of one directory (`Entry`, `EntryKind`),
//! a complete `Listing` held in memory or left in the on-disk catalog, and
//! the `DirSource` a directory stream reads.

use std::sync::Arc;
use std::time::SystemTime;

use super::db::StoredEntries;
use super::GrowingListing;

/// What a name in a directory is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File { size: u64, etag: String },
    Dir,
}

/// One name in a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub kind: EntryKind,
    pub mtime: SystemTime,
}

impl Entry {
    pub fn is_dir(&self) -> bool {
        self.kind == EntryKind::Dir
    }

    /// The entry named `name` for an object in a listing.
    pub fn of_object(name: &str, obj: &crate::store::ObjectMeta) -> Entry {
        Entry {
            name: name.to_owned(),
            kind: EntryKind::File {
                size: obj.size,
                etag: obj.etag.clone(),
            },
            mtime: obj.last_modified,
        }
    }

    /// The entry named `name` for a common prefix (S3 gives prefixes no
    /// time: `mtime` is the mount's).
    pub fn of_prefix(name: &str, mtime: SystemTime) -> Entry {
        Entry {
            name: name.to_owned(),
            kind: EntryKind::Dir,
            mtime,
        }
    }
}

#[cfg(test)]
impl Entry {
    /// A one-byte file, for unit tests.
    pub(crate) fn test_file(name: &str) -> Entry {
        Entry {
            name: name.into(),
            kind: EntryKind::File {
                size: 1,
                etag: "e".into(),
            },
            mtime: std::time::UNIX_EPOCH,
        }
    }

    /// A directory, for unit tests.
    pub(crate) fn test_dir(name: &str) -> Entry {
        Entry {
            name: name.into(),
            kind: EntryKind::Dir,
            mtime: std::time::UNIX_EPOCH,
        }
    }
}

/// Listings with more entries than this stay in SQLite (when there is an
/// on-disk catalog) instead of memory: about 1.5 MiB of entries.
pub const IN_MEMORY_LIMIT: usize = 10_000;

/// The complete contents of one directory at one moment.
pub struct Listing {
    /// When the listing started (wall clock, so it means the same after a restart).
    pub listed_at: SystemTime,
    pub(super) body: ListingBody,
}

pub(super) enum ListingBody {
    /// Sorted by name.
    Memory(Vec<Entry>),
    /// Left in the on-disk catalog, read a page or a name at a time.
    Stored(Arc<StoredEntries>),
}

impl Listing {
    /// A listing held in memory; `entries` must be sorted by name.
    pub fn in_memory(entries: Vec<Entry>, listed_at: SystemTime) -> Listing {
        Listing {
            listed_at,
            body: ListingBody::Memory(entries),
        }
    }

    pub(super) fn stored(entries: Arc<StoredEntries>, listed_at: SystemTime) -> Listing {
        Listing {
            listed_at,
            body: ListingBody::Stored(entries),
        }
    }

    pub fn get(&self, name: &str) -> Option<Entry> {
        match &self.body {
            ListingBody::Memory(entries) => entries
                .binary_search_by(|e| e.name.as_str().cmp(name))
                .ok()
                .map(|i| entries[i].clone()),
            ListingBody::Stored(stored) => stored.get(name),
        }
    }

    /// Entries after position `after` (0: from the start), at most `limit`,
    /// each with its position; a stream resumes after the last one.
    pub fn page(&self, after: u64, limit: usize) -> Vec<(u64, Entry)> {
        match &self.body {
            ListingBody::Memory(entries) => entries
                .iter()
                .enumerate()
                .skip(after as usize)
                .take(limit)
                .map(|(i, e)| (i as u64 + 1, e.clone()))
                .collect(),
            ListingBody::Stored(stored) => stored.page(after, limit),
        }
    }

    /// Up to `limit` entries named after `name` (which need not be in the
    /// listing), in name order.
    pub fn after_name(&self, name: &str, limit: usize) -> Vec<Entry> {
        match &self.body {
            ListingBody::Memory(entries) => {
                let from = entries.partition_point(|e| e.name.as_str() <= name);
                entries[from..].iter().take(limit).cloned().collect()
            }
            ListingBody::Stored(stored) => stored.after_name(name, limit),
        }
    }

    /// The entries, when the listing is held in memory.
    pub fn entries(&self) -> Option<&[Entry]> {
        match &self.body {
            ListingBody::Memory(entries) => Some(entries),
            ListingBody::Stored(_) => None,
        }
    }

    pub fn is_empty(&self) -> bool {
        match &self.body {
            ListingBody::Memory(entries) => entries.is_empty(),
            ListingBody::Stored(stored) => stored.is_empty(),
        }
    }

    pub fn count_files(&self) -> u64 {
        match &self.body {
            ListingBody::Memory(entries) => entries.iter().filter(|e| !e.is_dir()).count() as u64,
            ListingBody::Stored(stored) => stored.count_files(),
        }
    }

    /// Weight in the memory layer, in entries. A listing's own overhead
    /// (its key, the cache's bookkeeping, the vector) costs about as much as
    /// four entries: without it, thousands of small listings held several
    /// times the share of the budget they were counted as.
    pub(super) fn weight(&self) -> u32 {
        self.entries()
            .map_or(0, |e| e.len().min(u32::MAX as usize - 8) as u32)
            + 4
    }
}

/// What a directory stream reads: a complete listing, or one still arriving.
#[derive(Clone)]
pub enum DirSource {
    Complete(Arc<Listing>),
    Growing(Arc<GrowingListing>),
}
