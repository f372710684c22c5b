//! `Listings`: the listings of directories by prefix, asked of memory
//! (moka), then of the on-disk catalog, then of S3. A listing younger than
//! the TTL is served as it is, an older one while it is refreshed in the
//! background (or after, without stale-while-revalidate); one refresh per
//! directory at a time, shared by every caller, readable while it grows.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use parking_lot::Mutex;
use tokio::sync::watch;
use tracing::debug;

use super::db::{CatalogDb, StoredBody};
use super::listing::{DirSource, Entry, Listing};
use super::listing_changes::{Change, ListingOpsInFlight};
use super::{CatalogStats, Freshness, GrowingListing, IN_MEMORY_LIMIT};
use crate::blocking::blocking;
use crate::error::FsError;
use crate::names;
use crate::store::ObjectStore;

pub(super) type RefreshResult = Option<Result<Arc<Listing>, FsError>>;

/// Listings by prefix: memory, disk, S3. Shared with background refreshes.
pub(super) struct Listings<S> {
    pub(super) store: Arc<S>,
    pub(super) memory: moka::sync::Cache<String, Arc<Listing>>,
    pub(super) db: Option<Arc<CatalogDb>>,
    pub(super) refreshing: Mutex<HashMap<String, watch::Receiver<RefreshResult>>>,
    pub(super) freshness: Freshness,
    pub(super) mounted_at: SystemTime,
    pub(super) stats: CatalogStats,
    /// Listings being fetched, readable as they grow.
    pub(super) growing: Mutex<HashMap<String, Arc<GrowingListing>>>,
    /// Directories opened for reading recently (tree-walk detection).
    pub(super) opened: Mutex<HashMap<String, Instant>>,
    /// Parents walked recently, so each is walked once per TTL.
    pub(super) walked: Mutex<HashMap<String, Instant>>,
    /// Changes made through this mount, by directory prefix, kept while a
    /// listing operation that began before them is in flight.
    pub(super) changes: Mutex<HashMap<String, Vec<Change>>>,
    /// Listing operations in flight: fetches, tree walks, loads from disk
    /// and background saves.
    pub(super) in_flight: Arc<ListingOpsInFlight>,
    /// Size of `changes` at which changes no listing in flight needs are swept.
    pub(super) sweep_changes_at: std::sync::atomic::AtomicUsize,
    /// Trees forgotten (a directory renamed away) while a listing operation
    /// was in flight, and when: a listing of them begun earlier is stale
    /// and must not land in memory or on disk.
    pub(super) forgotten: Mutex<Vec<(String, SystemTime)>>,
    /// Held by a background save from its check to its write.
    pub(super) one_save: Mutex<()>,
}

impl<S: ObjectStore> Listings<S> {
    pub(super) fn is_fresh(&self, listing: &Listing) -> bool {
        self.is_fresh_at(listing.listed_at)
    }

    pub(super) fn is_fresh_at(&self, listed_at: SystemTime) -> bool {
        match SystemTime::now().duration_since(listed_at) {
            Ok(age) => age < self.freshness.ttl,
            Err(_) => true, // listed "in the future": clock moved back
        }
    }

    /// Writes listings to the on-disk catalog off the caller's path.
    pub(super) fn save_in_background(self: &Arc<Self>, listings: Vec<(String, Arc<Listing>)>) {
        if !self.db.as_ref().is_some_and(|db| db.writable()) || listings.is_empty() {
            return;
        }
        let me = self.clone();
        let op = self.in_flight.begin();
        tokio::task::spawn_blocking(move || {
            let _op = op;
            if let Some(db) = &me.db {
                for (prefix, listing) in listings {
                    // Saves of two listings of one directory run in either
                    // order: one replaced in memory meanwhile is not saved.
                    // The check and the save are one step for every saver.
                    let _one_save = me.one_save.lock();
                    let replaced = me.memory.get(&prefix).is_some_and(|now| {
                        !Arc::ptr_eq(&now, &listing) && now.listed_at > listing.listed_at
                    });
                    if replaced || me.forgotten_since(&prefix, listing.listed_at) {
                        continue;
                    }
                    // A listing left on disk is stored already.
                    if let Some(entries) = listing.entries() {
                        db.save(&prefix, entries, listing.listed_at);
                        me.reapply_to_disk(db, &prefix, listing.listed_at);
                        // Forgotten while it was written: undone. (A forget
                        // noted after this check deletes it on disk itself.)
                        if me.forgotten_since(&prefix, listing.listed_at) {
                            db.forget_tree(&prefix);
                        }
                    }
                }
            }
        });
    }

    /// For a directory stream: a known listing (as `get` serves it), or the
    /// listing being fetched, readable while it grows.
    pub(super) async fn open(self: &Arc<Self>, prefix: &str) -> Result<DirSource, FsError> {
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
    pub(super) fn known(&self, prefix: &str) -> Option<Arc<Listing>> {
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

    pub(super) async fn get(self: &Arc<Self>, prefix: &str) -> Result<Arc<Listing>, FsError> {
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
    pub(super) async fn fetch_now(self: &Arc<Self>, prefix: &str) -> Result<Arc<Listing>, FsError> {
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
        let registered = rx.clone();
        tokio::spawn(async move {
            let op = op;
            let mut guard = RefreshGuard {
                listings: &me,
                prefix: &prefix,
                growing: &growing,
                registered: &registered,
                done: false,
            };
            let result =
                fetch_listing(&me.store, &prefix, me.mounted_at, &me.stats, &growing).await;
            guard.done = true;
            drop(guard);
            // Installed before its readers see the end: a reader that reaches
            // the end of the stream and at once looks the listing up (a tree
            // walk starting at the next opendir) finds it in memory.
            let result = result.map(|listing| {
                me.stats.refreshes.fetch_add(1, Ordering::Relaxed);
                me.install(&prefix, listing)
            });
            growing.finish(result.as_ref().map(|_| ()).map_err(Clone::clone));
            me.end_refresh(&prefix, &registered, Some(&growing));
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
    pub(super) fn forget(&self, prefix: &str) {
        self.memory.invalidate(prefix);
        if let Some(db) = &self.db {
            db.forget(prefix);
        }
    }

    /// Drops what is known of `prefix` and every directory below it.
    pub(super) fn forget_tree(&self, prefix: &str) {
        {
            // Under the changes lock, which `install` holds while it checks
            // and lands a listing: none begun earlier lands after this.
            let mut changes = self.changes.lock();
            let mut forgotten = self.forgotten.lock();
            let horizon = self.in_flight.horizon();
            forgotten.retain(|(_, at)| horizon.is_some_and(|h| *at >= h));
            if horizon.is_some() {
                forgotten.push((prefix.to_owned(), SystemTime::now()));
            }
            drop(forgotten);
            let below: Vec<String> = self
                .memory
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(k, _)| (*k).clone())
                .collect();
            for k in below {
                self.memory.invalidate(&k);
            }
            changes.retain(|k, _| !k.starts_with(prefix));
        }
        // Listings of it under way began before: who asks from now on
        // gets a new one.
        self.refreshing.lock().retain(|k, _| !k.starts_with(prefix));
        self.growing.lock().retain(|k, _| !k.starts_with(prefix));
        if let Some(db) = &self.db {
            db.forget_tree(prefix);
        }
    }

    /// Whether the tree holding `prefix` was forgotten after a listing of
    /// it listed at `listed_at` began.
    pub(super) fn forgotten_since(&self, prefix: &str, listed_at: SystemTime) -> bool {
        self.forgotten
            .lock()
            .iter()
            .any(|(tree, at)| prefix.starts_with(tree.as_str()) && *at >= listed_at)
    }
}

/// Cleans up after a refresh task that ended without finishing (a panic):
/// readers of its growing listing get an error instead of waiting forever,
/// and the next caller lists the directory again.
impl<S> Listings<S> {
    /// Ends the refresh of `prefix` registered as `registered` (and its
    /// growing listing), unless a forget has made way for a newer one.
    pub(super) fn end_refresh(
        &self,
        prefix: &str,
        registered: &watch::Receiver<RefreshResult>,
        growing: Option<&Arc<GrowingListing>>,
    ) {
        if let Some(growing) = growing {
            let mut all = self.growing.lock();
            if all.get(prefix).is_some_and(|g| Arc::ptr_eq(g, growing)) {
                all.remove(prefix);
            }
        }
        let mut refreshing = self.refreshing.lock();
        if refreshing
            .get(prefix)
            .is_some_and(|r| r.same_channel(registered))
        {
            refreshing.remove(prefix);
        }
    }
}

struct RefreshGuard<'a, S> {
    listings: &'a Listings<S>,
    prefix: &'a str,
    growing: &'a Arc<GrowingListing>,
    registered: &'a watch::Receiver<RefreshResult>,
    done: bool,
}

impl<S> Drop for RefreshGuard<'_, S> {
    fn drop(&mut self) {
        if !self.done {
            // Runs while a panic unwinds: a poisoned lock must not abort.
            self.growing.finish(Err(FsError::Abandoned));
            self.listings
                .end_refresh(self.prefix, self.registered, Some(self.growing));
        }
    }
}

async fn wait(mut rx: watch::Receiver<RefreshResult>) -> Result<Arc<Listing>, FsError> {
    match rx.wait_for(Option::is_some).await {
        Ok(value) => value.clone().expect("waited for Some"),
        Err(_) => Err(FsError::Abandoned),
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
