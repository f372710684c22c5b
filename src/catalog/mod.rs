//! The catalog: what is in each directory, and the inode numbers of names.
//!
//! A directory is an S3 prefix. Its listing (ListObjectsV2 with delimiter
//! `/`, every page) answers `lookup`, `getattr` and `readdir`, so a name
//! costs no HEAD and a path costs no LIST per component. Listings live in
//! three places, asked in order: memory (moka), the SQLite catalog on disk
//! (which survives restarts, see [`db`]), and S3. A listing of more than
//! [`IN_MEMORY_LIMIT`] entries is not held in memory at all: it is written
//! to SQLite page by page as it arrives, and lookups and directory streams
//! read it from there, so memory does not grow with directory size.
//!
//! Freshness: a listing younger than `--metadata-ttl` is served as it is.
//! An older one is served at once while one background refresh per
//! directory replaces it (stale-while-revalidate), unless that mode is off or
//! the TTL is 0, in which case the caller waits for the new listing.
//! Concurrent requests for the same listing share one fetch.
//!
//! Changes made through the mount (new files, deletes, renames, mkdir) are
//! applied to the known listing at once, and remembered for a while so a
//! listing that was already under way when the change happened does not
//! undo it when it lands (see [`Listings::install`]).
//!
//! Invariants:
//! - A path has the same inode number in every mount of the same target
//!   (see [`inodes`]); a name that changes kind gets a new one.
//! - When a key `a` and a prefix `a/` both exist, the directory wins.
//! - Names that cannot be path components (see [`crate::names`]) never
//!   appear in a listing.

pub mod db;
mod growing;
mod inodes;
mod walk;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tracing::debug;

use crate::blocking::blocking;
use crate::error::FsError;
use crate::names;
use crate::store::ObjectStore;
pub use db::CatalogDb;
use db::{StoredBody, StoredEntries};
pub use growing::GrowingListing;
use inodes::{InodeTable, Node};

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
    body: ListingBody,
}

enum ListingBody {
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

    fn stored(entries: Arc<StoredEntries>, listed_at: SystemTime) -> Listing {
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
    fn weight(&self) -> u32 {
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

/// How long listings are trusted, and what happens after that.
#[derive(Debug, Clone, Copy)]
pub struct Freshness {
    pub ttl: Duration,
    /// Serve an expired listing at once while it is refreshed in the background.
    pub serve_stale: bool,
}

/// See [`Catalog::memory_summary`].
#[derive(Debug, Default, Clone, Copy)]
pub struct ListingSummary {
    pub listings: u64,
    pub entries: u64,
    pub oldest_age: Duration,
    pub newest_age: Duration,
}

/// Counters of the catalog, for logs, tests and metrics.
#[derive(Debug, Default)]
pub struct CatalogStats {
    /// ListObjectsV2 pages requested.
    pub list_requests: AtomicU64,
    /// Listings answered from memory or disk without asking S3.
    pub hits: AtomicU64,
    /// Of those, expired ones served while a refresh ran.
    pub stale_hits: AtomicU64,
    /// Listings loaded from the on-disk catalog.
    pub disk_loads: AtomicU64,
    /// Callers that had to wait for S3.
    pub misses: AtomicU64,
    /// Complete listings fetched from S3.
    pub refreshes: AtomicU64,
    /// Tree walks started (flat listings of a parent's subtrees).
    pub walks: AtomicU64,
}

type RefreshResult = Option<Result<Arc<Listing>, FsError>>;

/// Listings by prefix: memory, disk, S3. Shared with background refreshes.
struct Listings<S> {
    store: Arc<S>,
    memory: moka::sync::Cache<String, Arc<Listing>>,
    db: Option<Arc<CatalogDb>>,
    refreshing: Mutex<HashMap<String, watch::Receiver<RefreshResult>>>,
    freshness: Freshness,
    mounted_at: SystemTime,
    stats: CatalogStats,
    /// Listings being fetched, readable as they grow.
    growing: Mutex<HashMap<String, Arc<GrowingListing>>>,
    /// Directories opened for reading recently (tree-walk detection).
    opened: Mutex<HashMap<String, Instant>>,
    /// Parents walked recently, so each is walked once per TTL.
    walked: Mutex<HashMap<String, Instant>>,
    /// Changes made through this mount, by directory prefix, kept while a
    /// listing operation that began before them is in flight.
    changes: Mutex<HashMap<String, Vec<Change>>>,
    /// Listing operations in flight: fetches, tree walks, loads from disk
    /// and background saves.
    in_flight: Arc<ListingOpsInFlight>,
    /// Size of `changes` at which changes no listing in flight needs are swept.
    sweep_changes_at: std::sync::atomic::AtomicUsize,
}

/// One change made through the mount: `name` in a directory became `entry`
/// (`None`: removed) at time `at`.
struct Change {
    at: SystemTime,
    name: String,
    entry: Option<Entry>,
}

/// Listing operations in flight, by when they began. A change made through
/// the mount is applied to the listing in memory and on disk at once; it
/// only has to be remembered (and re-applied when a listing lands) while an
/// operation that began before it may still land an older listing: a fetch
/// that began earlier, a tree walk, a load from disk, a background save.
/// Any listing that starts later contains the change already (S3 listings
/// are strongly consistent), so with nothing in flight nothing is kept.
#[derive(Default)]
struct ListingOpsInFlight {
    started: Mutex<BTreeMap<u64, SystemTime>>,
    next: AtomicU64,
}

impl ListingOpsInFlight {
    /// Registers an operation until the returned guard is dropped.
    fn begin(self: &Arc<Self>) -> ListingOp {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.started.lock().insert(id, SystemTime::now());
        ListingOp {
            ops: self.clone(),
            id,
        }
    }

    /// Changes older than this are in every listing that may still land;
    /// `None` when nothing is in flight.
    fn horizon(&self) -> Option<SystemTime> {
        let oldest = self.started.lock().values().min().copied()?;
        // Wall-clock times: allow for small steps of the clock.
        Some(oldest - CLOCK_SLACK)
    }
}

/// How far the wall clock may step back without a change being forgotten
/// too early (see [`ListingOpsInFlight::horizon`]).
const CLOCK_SLACK: Duration = Duration::from_secs(2);

/// One listing operation in flight (see [`ListingOpsInFlight`]).
struct ListingOp {
    ops: Arc<ListingOpsInFlight>,
    id: u64,
}

impl Drop for ListingOp {
    fn drop(&mut self) {
        self.ops.started.lock().remove(&self.id);
    }
}

/// Sets `name` to `entry` (or removes it) in sorted `entries`.
fn apply_change(entries: &mut Vec<Entry>, name: &str, entry: Option<Entry>) {
    match (
        entries.binary_search_by(|e| e.name.as_str().cmp(name)),
        entry,
    ) {
        (Ok(i), Some(e)) => entries[i] = e,
        (Ok(i), None) => {
            entries.remove(i);
        }
        (Err(i), Some(e)) => entries.insert(i, e),
        (Err(_), None) => {}
    }
}

impl<S: ObjectStore> Listings<S> {
    /// Puts a listing fetched from S3 into memory, with the changes made
    /// through the mount since it started re-applied; returns what was stored.
    ///
    /// The changes lock is held until the listing is in memory, here and in
    /// [`Listings::record`], so a change and a landing listing cannot
    /// overwrite each other.
    fn install(&self, prefix: &str, listing: Arc<Listing>) -> Arc<Listing> {
        let mut changes = self.changes.lock();
        // A listing that started earlier than the one in memory (a load from
        // disk racing a refresh, say) does not replace it.
        if let Some(current) = self.memory.get(prefix) {
            if current.listed_at > listing.listed_at {
                return current;
            }
        }
        let listing = {
            match changes.get_mut(prefix) {
                None => listing,
                Some(list) => {
                    list.retain(|c| c.at >= listing.listed_at);
                    if list.is_empty() {
                        changes.remove(prefix);
                        listing
                    } else {
                        match &listing.body {
                            ListingBody::Memory(entries) => {
                                let mut entries = entries.clone();
                                for c in list.iter() {
                                    apply_change(&mut entries, &c.name, c.entry.clone());
                                }
                                Arc::new(Listing::in_memory(entries, listing.listed_at))
                            }
                            ListingBody::Stored(stored) => {
                                for c in list.iter() {
                                    stored.apply(&c.name, c.entry.as_ref());
                                }
                                listing
                            }
                        }
                    }
                }
            }
        };
        self.memory.insert(prefix.to_owned(), listing.clone());
        drop(changes);
        listing
    }

    /// Applies a change made through the mount to the listing of `prefix`
    /// in memory and on disk, and remembers it for listings in flight.
    fn record(&self, prefix: &str, name: &str, entry: Option<Entry>) {
        let now = SystemTime::now();
        let mut changes = self.changes.lock();
        let horizon = self.in_flight.horizon();
        let needed = |c: &Change| horizon.is_some_and(|h| c.at >= h);
        // Directories changed once and never listed again would keep their
        // changes until the next change there; sweep the map whenever it has
        // doubled.
        if changes.len() >= self.sweep_changes_at.load(Ordering::Relaxed) {
            changes.retain(|_, list| {
                list.retain(needed);
                !list.is_empty()
            });
            self.sweep_changes_at
                .store((changes.len() * 2).max(1024), Ordering::Relaxed);
        }
        if let Some(list) = changes.get_mut(prefix) {
            list.retain(needed);
        }
        if horizon.is_some() {
            changes.entry(prefix.to_owned()).or_default().push(Change {
                at: now,
                name: name.to_owned(),
                entry: entry.clone(),
            });
        } else {
            changes.remove(prefix);
        }
        let listing = self.memory.get(prefix);
        // A stored listing in memory gets the change directly; the current
        // stored listing too, unless it is that very one.
        let current_in_memory = match listing.as_deref().map(|l| &l.body) {
            Some(ListingBody::Stored(stored)) => {
                stored.apply(name, entry.as_ref());
                stored.is_current()
            }
            _ => false,
        };
        if let (Some(db), false) = (&self.db, current_in_memory) {
            match &entry {
                Some(e) => db.put_entry(prefix, e),
                None => db.remove_entry(prefix, name),
            }
        }
        if let Some(listing) = listing {
            if let ListingBody::Memory(entries) = &listing.body {
                let mut entries = entries.clone();
                apply_change(&mut entries, name, entry);
                self.memory.insert(
                    prefix.to_owned(),
                    Arc::new(Listing::in_memory(entries, listing.listed_at)),
                );
            }
        }
        // Not in memory: a later load from disk or S3 gets the change
        // through `install`.
        drop(changes);
    }

    fn is_fresh(&self, listing: &Listing) -> bool {
        self.is_fresh_at(listing.listed_at)
    }

    fn is_fresh_at(&self, listed_at: SystemTime) -> bool {
        match SystemTime::now().duration_since(listed_at) {
            Ok(age) => age < self.freshness.ttl,
            Err(_) => true, // listed "in the future": clock moved back
        }
    }

    /// Writes listings to the on-disk catalog off the caller's path.
    fn save_in_background(self: &Arc<Self>, listings: Vec<(String, Arc<Listing>)>) {
        if !self.db.as_ref().is_some_and(|db| db.writable()) || listings.is_empty() {
            return;
        }
        let me = self.clone();
        let op = self.in_flight.begin();
        tokio::task::spawn_blocking(move || {
            let _op = op;
            if let Some(db) = &me.db {
                for (prefix, listing) in listings {
                    // A listing left on disk is stored already.
                    if let Some(entries) = listing.entries() {
                        db.save(&prefix, entries, listing.listed_at);
                        me.reapply_to_disk(db, &prefix, listing.listed_at);
                    }
                }
            }
        });
    }

    /// Writes again the changes to `prefix` made since `listed_at`: a
    /// listing saved while they were made may have overwritten them.
    fn reapply_to_disk(&self, db: &CatalogDb, prefix: &str, listed_at: SystemTime) {
        let changes = self.changes.lock();
        for c in changes.get(prefix).into_iter().flatten() {
            if c.at >= listed_at {
                match &c.entry {
                    Some(e) => db.put_entry(prefix, e),
                    None => db.remove_entry(prefix, &c.name),
                }
            }
        }
    }

    /// For a directory stream: a known listing (as `get` serves it), or the
    /// listing being fetched, readable while it grows.
    async fn open(self: &Arc<Self>, prefix: &str) -> Result<DirSource, FsError> {
        if let Some(listing) = self.known(prefix) {
            return self
                .serve(prefix, Some(listing))
                .await
                .map(DirSource::Complete);
        }
        drop(self.refresh(prefix)); // starts the listing, or joins it
        let growing = self.growing.lock().get(prefix).cloned();
        match growing {
            Some(g) => Ok(DirSource::Growing(g)),
            // A tree walk is listing it, or the listing has just ended.
            None => self.fetch_now(prefix).await.map(DirSource::Complete),
        }
    }

    /// The listing of `prefix` from memory or disk, whatever its age.
    fn known(&self, prefix: &str) -> Option<Arc<Listing>> {
        self.memory.get(prefix).or_else(|| {
            let _op = self.in_flight.begin();
            let stored = self.db.as_ref()?.load(prefix, IN_MEMORY_LIMIT)?;
            self.stats.disk_loads.fetch_add(1, Ordering::Relaxed);
            let listing = Arc::new(match stored.body {
                StoredBody::Entries(entries) => Listing::in_memory(entries, stored.listed_at),
                StoredBody::Stored(entries) => Listing::stored(entries, stored.listed_at),
            });
            // Through `install`, so changes made since the listing was
            // stored are re-applied even if a background save raced them.
            Some(self.install(prefix, listing))
        })
    }

    async fn get(self: &Arc<Self>, prefix: &str) -> Result<Arc<Listing>, FsError> {
        self.serve(prefix, self.known(prefix)).await
    }

    /// Answers with `known` if it is fresh (or may be served stale), else
    /// waits for a new listing.
    async fn serve(
        self: &Arc<Self>,
        prefix: &str,
        known: Option<Arc<Listing>>,
    ) -> Result<Arc<Listing>, FsError> {
        match known {
            Some(listing) if self.is_fresh(&listing) => {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                Ok(listing)
            }
            Some(listing) if self.freshness.serve_stale && !self.freshness.ttl.is_zero() => {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                self.stats.stale_hits.fetch_add(1, Ordering::Relaxed);
                drop(self.refresh(prefix));
                Ok(listing)
            }
            _ => {
                self.stats.misses.fetch_add(1, Ordering::Relaxed);
                self.fetch_now(prefix).await
            }
        }
    }

    /// Lists `prefix` from S3 (or waits for the listing under way).
    async fn fetch_now(self: &Arc<Self>, prefix: &str) -> Result<Arc<Listing>, FsError> {
        match wait(self.refresh(prefix)).await {
            // A tree walk that was to list this directory gave up (see
            // `walk`); list it on its own.
            Err(FsError::Abandoned) => wait(self.refresh(prefix)).await,
            other => other,
        }
    }

    /// Starts listing `prefix` from S3 unless that is already under way;
    /// either way returns a receiver of the outcome.
    fn refresh(self: &Arc<Self>, prefix: &str) -> watch::Receiver<RefreshResult> {
        let mut refreshing = self.refreshing.lock();
        if let Some(rx) = refreshing.get(prefix) {
            return rx.clone();
        }
        let (tx, rx) = watch::channel(None);
        refreshing.insert(prefix.to_owned(), rx.clone());
        let me = self.clone();
        let prefix = prefix.to_owned();
        let growing = Arc::new(GrowingListing::new(self.db.clone()));
        self.growing.lock().insert(prefix.clone(), growing.clone());
        let op = self.in_flight.begin();
        tokio::spawn(async move {
            let op = op;
            let mut guard = RefreshGuard {
                listings: &me,
                prefix: &prefix,
                growing: &growing,
                done: false,
            };
            let result =
                fetch_listing(&me.store, &prefix, me.mounted_at, &me.stats, &growing).await;
            guard.done = true;
            drop(guard);
            growing.finish(result.as_ref().map(|_| ()).map_err(Clone::clone));
            me.growing.lock().remove(&prefix);
            let result = result.map(|listing| {
                me.stats.refreshes.fetch_add(1, Ordering::Relaxed);
                me.install(&prefix, listing)
            });
            me.refreshing.lock().remove(&prefix);
            // A listing left on disk was stored page by page already.
            let saved = result
                .as_ref()
                .ok()
                .filter(|l| l.entries().is_some())
                .cloned();
            // Answer first; writing to disk is not on the caller's path.
            let _ = tx.send(Some(result));
            if let Some(listing) = saved {
                me.save_in_background(vec![(prefix, listing)]);
            }
            // Only now: the save registered itself first, so no change made
            // after the listing landed can be forgotten before the save has
            // written it again.
            drop(op);
        });
        rx
    }

    /// Drops what is known of `prefix`, in memory and on disk.
    fn forget(&self, prefix: &str) {
        self.memory.invalidate(prefix);
        if let Some(db) = &self.db {
            db.forget(prefix);
        }
    }

    /// Drops what is known of `prefix` and every directory below it.
    fn forget_tree(&self, prefix: &str) {
        let below: Vec<String> = self
            .memory
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| (*k).clone())
            .collect();
        for k in below {
            self.memory.invalidate(&k);
        }
        self.changes.lock().retain(|k, _| !k.starts_with(prefix));
        if let Some(db) = &self.db {
            db.forget_tree(prefix);
        }
    }
}

/// Cleans up after a refresh task that ended without finishing (a panic):
/// readers of its growing listing get an error instead of waiting forever,
/// and the next caller lists the directory again.
struct RefreshGuard<'a, S> {
    listings: &'a Listings<S>,
    prefix: &'a str,
    growing: &'a GrowingListing,
    done: bool,
}

impl<S> Drop for RefreshGuard<'_, S> {
    fn drop(&mut self) {
        if !self.done {
            // Runs while a panic unwinds: a poisoned lock must not abort.
            self.growing.finish(Err(FsError::Abandoned));
            let growing = &self.listings.growing;
            growing.lock().remove(self.prefix);
            let refreshing = &self.listings.refreshing;
            refreshing.lock().remove(self.prefix);
        }
    }
}

async fn wait(mut rx: watch::Receiver<RefreshResult>) -> Result<Arc<Listing>, FsError> {
    match rx.wait_for(Option::is_some).await {
        Ok(value) => value.clone().expect("waited for Some"),
        Err(_) => Err(FsError::Abandoned),
    }
}

pub struct Catalog<S> {
    listings: Arc<Listings<S>>,
    inodes: Mutex<InodeTable>,
}

impl<S: ObjectStore> Catalog<S> {
    /// `memory_entries` bounds the listing entries held in memory (about
    /// 150 bytes each); listings on disk count as one.
    pub fn new(
        store: Arc<S>,
        root_prefix: &str,
        freshness: Freshness,
        db: Option<Arc<CatalogDb>>,
        memory_entries: u64,
    ) -> Self {
        let memory = moka::sync::Cache::builder()
            .max_capacity(memory_entries)
            .weigher(|_k: &String, l: &Arc<Listing>| l.weight())
            .build();
        Catalog {
            listings: Arc::new(Listings {
                store,
                memory,
                db,
                refreshing: Mutex::new(HashMap::new()),
                freshness,
                mounted_at: SystemTime::now(),
                stats: CatalogStats::default(),
                growing: Mutex::new(HashMap::new()),
                opened: Mutex::new(HashMap::new()),
                walked: Mutex::new(HashMap::new()),
                changes: Mutex::new(HashMap::new()),
                sweep_changes_at: std::sync::atomic::AtomicUsize::new(1024),
                in_flight: Arc::default(),
            }),
            inodes: Mutex::new(InodeTable::new(root_prefix)),
        }
    }

    pub fn mounted_at(&self) -> SystemTime {
        self.listings.mounted_at
    }

    pub fn stats(&self) -> &CatalogStats {
        &self.listings.stats
    }

    /// The listings held in memory: how many, their entries, and the ages
    /// of the oldest and newest.
    pub fn memory_summary(&self) -> ListingSummary {
        let now = SystemTime::now();
        let mut summary = ListingSummary::default();
        let mut newest: Option<Duration> = None;
        for (_, listing) in self.listings.memory.iter() {
            let age = now.duration_since(listing.listed_at).unwrap_or_default();
            summary.listings += 1;
            summary.entries += listing.entries().map_or(0, |e| e.len() as u64);
            summary.oldest_age = summary.oldest_age.max(age);
            newest = Some(newest.map_or(age, |n| n.min(age)));
        }
        summary.newest_age = newest.unwrap_or_default();
        summary
    }

    /// Files directly in the directory at `path` (relative to the mount
    /// root), from its listing under the usual freshness rules.
    pub async fn count_files(&self, path: &str) -> Result<u64, FsError> {
        let mut ino = ROOT_INO;
        for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
            ino = self.lookup(ino, part).await?.0;
        }
        let listing = self.listing(ino).await?;
        Ok(listing.count_files())
    }

    fn node(&self, ino: Ino) -> Result<Node, FsError> {
        self.inodes
            .lock()
            .get(ino)
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

    /// The listing of directory `ino`.
    pub async fn listing(&self, ino: Ino) -> Result<Arc<Listing>, FsError> {
        let node = self.node(ino)?;
        if !node.is_dir {
            return Err(FsError::NotADirectory);
        }
        self.listings.get(&node.key).await
    }

    /// What a new stream of directory `ino` reads (see [`DirSource`]).
    pub async fn open_dir(&self, ino: Ino) -> Result<DirSource, FsError> {
        let node = self.node(ino)?;
        if !node.is_dir {
            return Err(FsError::NotADirectory);
        }
        self.listings.open(&node.key).await
    }

    /// Notes that directory `ino` is being read (tree-walk detection).
    pub fn note_opendir(&self, ino: Ino) {
        if let Ok(node) = self.node(ino) {
            self.listings.note_opendir(&node.key);
        }
    }

    /// Lists directory `ino` (or the directory of file `ino`) from S3 now,
    /// whatever its age, and waits for the new listing.
    pub async fn refresh(&self, ino: Ino) -> Result<(), FsError> {
        let node = self.node(ino)?;
        let dir = if node.is_dir {
            node
        } else {
            self.node(node.parent)?
        };
        self.listings.forget(&dir.key);
        self.listings.fetch_now(&dir.key).await.map(|_| ())
    }

    /// Resolves `name` in directory `parent` to an inode and its entry.
    pub async fn lookup(&self, parent: Ino, name: &str) -> Result<(Ino, Entry), FsError> {
        let listing = self.listing(parent).await?;
        let entry = listing.get(name).ok_or(FsError::NotFound)?;
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
        let mut table = self.inodes.lock();
        Ok(entries
            .map(|e| table.resolve(parent, &parent_prefix, e))
            .collect())
    }

    /// The inode of `entry` in directory `parent`, numbered on first sight.
    pub fn resolve(&self, parent: Ino, entry: &Entry) -> Result<Ino, FsError> {
        let parent_prefix = self.node(parent)?.key;
        Ok(self.inodes.lock().resolve(parent, &parent_prefix, entry))
    }

    /// Counts a lookup of `entry` (numbered `ino`) in `parent` that the
    /// kernel is sent (an entry reply, or a readdirplus entry).
    pub fn remember(&self, parent: Ino, entry: &Entry, ino: Ino) {
        let Ok(parent_prefix) = self.dir_prefix(parent) else {
            return;
        };
        self.inodes
            .lock()
            .remember(parent, &parent_prefix, entry, ino);
    }

    /// The kernel dropped `n` lookups of `ino`.
    pub fn forget(&self, ino: Ino, n: u64) {
        self.inodes.lock().forget(ino, n);
    }

    /// Forgets the numbers given to readdir rows that were not sent as
    /// entries the kernel holds.
    pub fn drop_unsent(&self, inos: impl Iterator<Item = Ino>) {
        let mut table = self.inodes.lock();
        for ino in inos {
            table.drop_unsent(ino);
        }
    }

    /// Inodes the table holds now.
    pub fn inode_count(&self) -> usize {
        self.inodes.lock().len()
    }

    /// The current entry of inode `ino`, answered from its parent's listing.
    pub async fn entry(&self, ino: Ino) -> Result<Entry, FsError> {
        if ino == ROOT_INO {
            return Ok(Entry {
                name: String::new(),
                kind: EntryKind::Dir,
                mtime: self.mounted_at(),
            });
        }
        let node = self.node(ino)?;
        let listing = self.listing(node.parent).await?;
        match listing.get(&node.name) {
            Some(e) if e.is_dir() == node.is_dir => Ok(e),
            _ => Err(FsError::NotFound),
        }
    }

    /// The key prefix of directory `ino`.
    pub fn dir_prefix(&self, ino: Ino) -> Result<String, FsError> {
        let node = self.node(ino)?;
        if !node.is_dir {
            return Err(FsError::NotADirectory);
        }
        Ok(node.key)
    }

    /// The parent, name and key of `ino`.
    pub fn location(&self, ino: Ino) -> Result<(Ino, String, String), FsError> {
        let node = self.node(ino)?;
        Ok((node.parent, node.name, node.key))
    }

    /// Records that `name` in directory `parent` is now `entry` (or gone),
    /// after a change made through the mount.
    pub fn record(&self, parent: Ino, name: &str, entry: Option<Entry>) -> Result<(), FsError> {
        let prefix = self.dir_prefix(parent)?;
        if entry.is_none() {
            self.inodes.lock().unlink(parent, name);
        }
        self.listings.record(&prefix, name, entry);
        Ok(())
    }

    /// Records a directory just created through the mount: it is empty, so
    /// reading it needs no LIST.
    pub fn record_new_dir(&self, prefix: &str) {
        self.listings.install(
            prefix,
            Arc::new(Listing::in_memory(Vec::new(), SystemTime::now())),
        );
    }

    /// Whether directory `ino` is known (from a listing in memory or on
    /// disk) to have no entries.
    pub fn known_empty(&self, ino: Ino) -> bool {
        let Ok(prefix) = self.dir_prefix(ino) else {
            return false;
        };
        self.listings.known(&prefix).is_some_and(|l| l.is_empty())
    }

    /// Forgets the listings of directory prefix `prefix` and everything
    /// below it, so they are listed again when next needed.
    pub fn forget_tree(&self, prefix: &str) {
        self.listings.forget_tree(prefix);
    }

    /// Moves inode `ino` to `new_name` in `new_parent` after a rename, with
    /// everything below it when it is a directory, so open handles and the
    /// kernel's cached inodes keep working under the new name.
    pub fn moved(&self, ino: Ino, new_parent: Ino, new_name: &str) -> Result<(), FsError> {
        let parent_prefix = self.dir_prefix(new_parent)?;
        let mut table = self.inodes.lock();
        let is_dir = table.get(ino).ok_or(FsError::NotFound)?.is_dir;
        let key = if is_dir {
            names::child_dir_prefix(&parent_prefix, new_name)
        } else {
            names::child_key(&parent_prefix, new_name)
        };
        table.moved(ino, new_parent, new_name, key);
        Ok(())
    }

    /// The parent inode of `ino` (for `..`).
    pub fn parent(&self, ino: Ino) -> Result<Ino, FsError> {
        Ok(self.node(ino)?.parent)
    }
}

/// Lists a whole prefix, page by page, into `growing` (where directory
/// streams read it as it arrives) and returns the complete [`Listing`].
/// The next page is requested before the current one is processed, so
/// storing a page costs no time on the request path.
async fn fetch_listing<S: ObjectStore>(
    store: &Arc<S>,
    prefix: &str,
    dir_mtime: SystemTime,
    stats: &CatalogStats,
    growing: &GrowingListing,
) -> Result<Arc<Listing>, FsError> {
    let started = Instant::now();
    let listed_at = SystemTime::now();
    let request = |token: Option<String>| {
        stats.list_requests.fetch_add(1, Ordering::Relaxed);
        let (store, prefix) = (store.clone(), prefix.to_owned());
        // Dropped (and so cancelled) if this listing is abandoned.
        AbortOnDrop(tokio::spawn(async move {
            store.list_page(&prefix, Some("/"), token, None).await
        }))
    };
    let mut in_flight = request(None);
    let mut pages = 0u32;
    loop {
        let page = (&mut in_flight.0)
            .await
            .map_err(|e| FsError::store(prefix, crate::store::StoreError::Other(e.to_string())))?
            .map_err(|e| FsError::store(prefix, e))?;
        pages += 1;
        let last = page.next.is_none();
        if let Some(token) = page.next.clone() {
            in_flight = request(Some(token));
        }
        let mut page_dirs = Vec::with_capacity(page.common_prefixes.len());
        let mut page_files = Vec::with_capacity(page.objects.len());
        for cp in &page.common_prefixes {
            let Some(name) = names::dir_name(prefix, cp) else {
                continue;
            };
            match names::check_name(name) {
                Ok(()) => page_dirs.push((cp.clone(), Entry::of_prefix(name, dir_mtime))),
                Err(why) => {
                    debug!(prefix = %cp, ?why, "hiding prefix that cannot be a directory name")
                }
            }
        }
        for obj in &page.objects {
            let Some(name) = names::file_name(prefix, &obj.key) else {
                continue; // this directory's own marker object
            };
            match names::check_name(name) {
                Ok(()) => page_files.push((obj.key.clone(), Entry::of_object(name, obj))),
                Err(why) => debug!(key = %obj.key, ?why, "hiding key that cannot be a file name"),
            }
        }
        let page_end = page
            .objects
            .last()
            .map(|o| o.key.as_str())
            .max(page.common_prefixes.last().map(String::as_str))
            .unwrap_or("");
        let (dirs, files) = (page_dirs, page_files);
        blocking(|| growing.add_page(dirs, files, page_end));
        if last {
            break;
        }
    }
    let listing = blocking(|| growing.complete(prefix, listed_at))?;
    debug!(prefix = %prefix, entries = growing.released(), on_disk = listing.entries().is_none(), pages, elapsed_ms = started.elapsed().as_millis() as u64, "listed directory");
    Ok(Arc::new(listing))
}

/// A spawned task that is cancelled when its handle is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
