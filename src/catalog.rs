//! The catalog: what is in each directory, and the inode numbers of names.
//!
//! A directory is an S3 prefix. Its listing (ListObjectsV2 with delimiter
//! `/`, every page) is kept in memory for `metadata_ttl`, and `lookup`,
//! `getattr` and `readdir` are all answered from it, so a name costs no HEAD
//! and a path costs no LIST per component while its parent's listing is fresh.
//! Concurrent requests for the same listing share one fetch.
//!
//! Invariants:
//! - A name maps to the same inode number for the life of the mount, as long
//!   as it keeps its kind (a file replaced by a directory gets a new inode).
//! - When a key `a` and a prefix `a/` both exist, the directory wins.
//! - Names that cannot be path components (see [`crate::names`]) never
//!   appear in a listing.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tracing::debug;

use crate::error::FsError;
use crate::names;
use crate::store::ObjectStore;

pub type Ino = u64;
pub const ROOT_INO: Ino = 1;

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
}

/// The complete contents of one directory at one moment, sorted by name.
#[derive(Debug)]
pub struct Listing {
    pub entries: Vec<Entry>,
    pub listed_at: Instant,
}

impl Listing {
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries
            .binary_search_by(|e| e.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.entries[i])
    }
}

#[derive(Debug, Clone)]
struct Node {
    parent: Ino,
    name: String,
    is_dir: bool,
    /// Full object key of a file, or key prefix (ending in `/`) of a directory.
    key: String,
}

#[derive(Default)]
struct InodeTable {
    nodes: HashMap<Ino, Node>,
    by_name: HashMap<(Ino, String), Ino>,
    next: Ino,
}

impl InodeTable {
    fn new(root_prefix: &str) -> Self {
        let mut table = InodeTable {
            next: ROOT_INO + 1,
            ..Default::default()
        };
        table.nodes.insert(
            ROOT_INO,
            Node {
                parent: ROOT_INO,
                name: String::new(),
                is_dir: true,
                key: root_prefix.to_owned(),
            },
        );
        table
    }

    fn resolve(&mut self, parent: Ino, parent_prefix: &str, entry: &Entry) -> Ino {
        let is_dir = entry.is_dir();
        let map_key = (parent, entry.name.clone());
        if let Some(&ino) = self.by_name.get(&map_key) {
            if self.nodes.get(&ino).is_some_and(|n| n.is_dir == is_dir) {
                return ino;
            }
        }
        let ino = self.next;
        self.next += 1;
        let key = if is_dir {
            names::child_dir_prefix(parent_prefix, &entry.name)
        } else {
            names::child_key(parent_prefix, &entry.name)
        };
        self.nodes.insert(
            ino,
            Node {
                parent,
                name: entry.name.clone(),
                is_dir,
                key,
            },
        );
        self.by_name.insert(map_key, ino);
        ino
    }
}

pub struct Catalog<S> {
    store: Arc<S>,
    inodes: Mutex<InodeTable>,
    listings: moka::future::Cache<String, Arc<Listing>>,
    /// Modification time shown for directories without a marker object.
    mounted_at: SystemTime,
}

impl<S: ObjectStore> Catalog<S> {
    pub fn new(store: Arc<S>, root_prefix: &str, metadata_ttl: Duration) -> Self {
        let listings = moka::future::Cache::builder()
            // Counted in entries; a listing entry is about 100 bytes.
            .max_capacity(2_000_000)
            .weigher(|_k: &String, l: &Arc<Listing>| {
                l.entries.len().min(u32::MAX as usize) as u32 + 1
            })
            .time_to_live(metadata_ttl.max(Duration::from_millis(1)))
            .build();
        Catalog {
            store,
            inodes: Mutex::new(InodeTable::new(root_prefix)),
            listings,
            mounted_at: SystemTime::now(),
        }
    }

    pub fn mounted_at(&self) -> SystemTime {
        self.mounted_at
    }

    fn node(&self, ino: Ino) -> Result<Node, FsError> {
        self.inodes
            .lock()
            .unwrap()
            .nodes
            .get(&ino)
            .cloned()
            .ok_or(FsError::NotFound)
    }

    /// The object key of a file inode.
    pub fn file_key(&self, ino: Ino) -> Result<String, FsError> {
        let node = self.node(ino)?;
        if node.is_dir {
            return Err(FsError::IsADirectory);
        }
        Ok(node.key)
    }

    /// The listing of directory `ino`, fetched if not fresh in memory.
    pub async fn listing(&self, ino: Ino) -> Result<Arc<Listing>, FsError> {
        let node = self.node(ino)?;
        if !node.is_dir {
            return Err(FsError::NotADirectory);
        }
        self.listing_of_prefix(&node.key).await
    }

    async fn listing_of_prefix(&self, prefix: &str) -> Result<Arc<Listing>, FsError> {
        let store = self.store.clone();
        let mounted_at = self.mounted_at;
        self.listings
            .try_get_with(
                prefix.to_owned(),
                fetch_listing(store, prefix.to_owned(), mounted_at),
            )
            .await
            .map_err(|e| (*e).clone())
    }

    /// Resolves `name` in directory `parent` to an inode and its entry.
    pub async fn lookup(&self, parent: Ino, name: &str) -> Result<(Ino, Entry), FsError> {
        let listing = self.listing(parent).await?;
        let entry = listing.get(name).ok_or(FsError::NotFound)?.clone();
        let ino = self.resolve(parent, &entry)?;
        Ok((ino, entry))
    }

    /// Inode numbers for entries of directory `parent` (for readdir).
    pub fn resolve_all<'e>(
        &self,
        parent: Ino,
        entries: impl Iterator<Item = &'e Entry>,
    ) -> Result<Vec<Ino>, FsError> {
        let parent_prefix = self.node(parent)?.key;
        let mut table = self.inodes.lock().unwrap();
        Ok(entries
            .map(|e| table.resolve(parent, &parent_prefix, e))
            .collect())
    }

    fn resolve(&self, parent: Ino, entry: &Entry) -> Result<Ino, FsError> {
        let parent_prefix = self.node(parent)?.key;
        Ok(self
            .inodes
            .lock()
            .unwrap()
            .resolve(parent, &parent_prefix, entry))
    }

    /// The current entry of inode `ino`, answered from its parent's listing.
    pub async fn entry(&self, ino: Ino) -> Result<Entry, FsError> {
        if ino == ROOT_INO {
            return Ok(Entry {
                name: String::new(),
                kind: EntryKind::Dir,
                mtime: self.mounted_at,
            });
        }
        let node = self.node(ino)?;
        let listing = self.listing(node.parent).await?;
        match listing.get(&node.name) {
            Some(e) if e.is_dir() == node.is_dir => Ok(e.clone()),
            _ => Err(FsError::NotFound),
        }
    }

    /// The parent inode of `ino` (for `..`).
    pub fn parent(&self, ino: Ino) -> Result<Ino, FsError> {
        Ok(self.node(ino)?.parent)
    }
}

/// Lists a whole prefix, page by page, into a sorted [`Listing`].
async fn fetch_listing<S: ObjectStore>(
    store: Arc<S>,
    prefix: String,
    mounted_at: SystemTime,
) -> Result<Arc<Listing>, FsError> {
    let started = Instant::now();
    let mut dirs: BTreeMap<String, Entry> = BTreeMap::new();
    let mut files: BTreeMap<String, Entry> = BTreeMap::new();
    let mut token = None;
    let mut pages = 0u32;
    loop {
        let page = store
            .list_page(&prefix, Some("/"), token.take(), None)
            .await
            .map_err(|e| FsError::store(&prefix, e))?;
        pages += 1;
        for cp in &page.common_prefixes {
            let Some(name) = names::dir_name(&prefix, cp) else {
                continue;
            };
            if let Err(why) = names::check_name(name) {
                debug!(prefix = %cp, ?why, "hiding prefix that cannot be a directory name");
                continue;
            }
            dirs.insert(
                name.to_owned(),
                Entry {
                    name: name.to_owned(),
                    kind: EntryKind::Dir,
                    mtime: mounted_at,
                },
            );
        }
        for obj in page.objects {
            let Some(name) = names::file_name(&prefix, &obj.key) else {
                continue; // this directory's own marker object
            };
            if let Err(why) = names::check_name(name) {
                debug!(key = %obj.key, ?why, "hiding key that cannot be a file name");
                continue;
            }
            files.insert(
                name.to_owned(),
                Entry {
                    name: name.to_owned(),
                    kind: EntryKind::File {
                        size: obj.size,
                        etag: obj.etag,
                    },
                    mtime: obj.last_modified,
                },
            );
        }
        token = page.next;
        if token.is_none() {
            break;
        }
    }
    for (name, file) in files {
        if dirs.contains_key(&name) {
            debug!(prefix = %prefix, name = %name, "key shadowed by a prefix of the same name; the directory wins");
            continue;
        }
        dirs.insert(name, file);
    }
    let entries: Vec<Entry> = dirs.into_values().collect();
    debug!(prefix = %prefix, entries = entries.len(), pages, elapsed_ms = started.elapsed().as_millis() as u64, "listed directory");
    Ok(Arc::new(Listing {
        entries,
        listed_at: Instant::now(),
    }))
}
