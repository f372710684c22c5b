//! Tree walks: fill whole subtrees with flat listings.
//!
//! `find`, `du` and recursive copies read every directory of a tree. Listing
//! each with a delimiter costs at least one request per directory; a flat
//! listing of the parent (no delimiter) returns up to 1,000 keys of any
//! depth per request, so it never needs more requests than the per-directory
//! listings it replaces, and far fewer when directories are small (10,000
//! files in 100 directories: 10 requests instead of 100).
//!
//! It lists keys nobody may look at, though, so it starts only when a walk
//! is evident: a directory is opened for reading while its parent was opened
//! shortly before. Then every subdirectory of that parent whose listing is
//! not already known is registered as being listed, the parent is listed
//! flat, and each subtree's listings are published the moment the flat
//! listing has moved past it (keys arrive sorted, so a subtree's keys are
//! contiguous). Readers of a registered directory wait for the walk instead
//! of listing it themselves. A walk gives up (and readers list on their own)
//! after `MAX_PAGES` pages or a subtree of more than `MAX_SUBTREE_KEYS` keys,
//! and stops once nobody waits for it and no directory below the parent
//! has been opened for `WALK_WINDOW` (the walker has gone).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tracing::debug;

use super::growing::GrowingListing;
use super::listing_cache::{Listings, RefreshResult};
use super::{Entry, Listing};
use crate::blocking::blocking;
use crate::error::FsError;
use crate::names;
use crate::store::{ObjectMeta, ObjectStore};

/// Walk a parent only when it has at least this many subdirectories.
const MIN_SUBDIRS: usize = 2;
/// A parent opened at most this long before its child counts as being walked.
const WALK_WINDOW: Duration = Duration::from_secs(10);
/// Flat pages one walk may request (1,000 keys each).
const MAX_PAGES: u32 = 200;
/// Keys one subtree may hold before the walk gives up on it.
const MAX_SUBTREE_KEYS: usize = 100_000;

impl<S: ObjectStore> Listings<S> {
    /// Notes that directory `prefix` was opened for reading, and starts a
    /// walk of its parent if the parent was opened just before.
    pub(super) fn note_opendir(self: &Arc<Self>, prefix: &str) {
        let now = Instant::now();
        let Some(parent) = names::parent_prefix(prefix) else {
            return;
        };
        let walk = {
            let mut opened = self.opened.lock();
            opened.retain(|_, at| now.duration_since(*at) < WALK_WINDOW);
            opened.insert(prefix.to_owned(), now);
            let mut walked = self.walked.lock();
            walked.retain(|_, at| now.duration_since(*at) < self.freshness.ttl.max(WALK_WINDOW));
            let walk = opened.contains_key(parent) && !walked.contains_key(parent);
            if walk {
                walked.insert(parent.to_owned(), now);
            }
            walk
        };
        if walk {
            self.start_walk(parent);
        }
    }

    fn start_walk(self: &Arc<Self>, parent: &str) {
        let Some(listing) = self.memory.get(parent) else {
            // Not listed yet (or evicted): a later sibling may walk it.
            self.walked.lock().remove(parent);
            return;
        };
        // A parent left on disk is too big to be walked.
        let Some(entries) = listing.entries() else {
            return;
        };
        let subdirs: Vec<String> = entries
            .iter()
            .filter(|e| e.is_dir())
            .map(|e| names::child_dir_prefix(parent, &e.name))
            .collect();
        if subdirs.len() < MIN_SUBDIRS {
            return;
        }
        let mut waiting = HashMap::new();
        {
            let mut refreshing = self.refreshing.lock();
            for sub in subdirs {
                let known = refreshing.contains_key(&sub)
                    || self.memory.get(&sub).is_some_and(|l| self.is_fresh(&l))
                    || self.db.as_ref().is_some_and(|db| {
                        db.listed_at(&sub).is_some_and(|at| self.is_fresh_at(at))
                    });
                if !known {
                    let (tx, rx) = watch::channel(None);
                    refreshing.insert(sub.clone(), rx);
                    waiting.insert(sub, tx);
                }
            }
        }
        if waiting.len() < MIN_SUBDIRS {
            self.release(waiting);
            return;
        }
        self.stats.walks.fetch_add(1, Ordering::Relaxed);
        // Registered for as long as the walk may land listings.
        let op = self.in_flight.begin();
        let me = self.clone();
        let parent = parent.to_owned();
        tokio::spawn(async move {
            let _op = op;
            walk(me, parent, waiting).await
        });
    }

    /// Whether a directory below `parent` was opened within [`WALK_WINDOW`].
    fn walked_recently(&self, parent: &str) -> bool {
        let now = Instant::now();
        self.opened
            .lock()
            .iter()
            .any(|(k, at)| k.starts_with(parent) && now.duration_since(*at) < WALK_WINDOW)
    }

    /// Hands registered directories back to ordinary listing: their readers
    /// see the channel close and list on their own.
    fn release(&self, waiting: HashMap<String, watch::Sender<RefreshResult>>) {
        for (prefix, tx) in &waiting {
            self.end_refresh(prefix, &tx.subscribe(), None);
        }
    }

    /// Builds and publishes the listings of every directory in one subtree.
    fn publish_subtree(
        self: &Arc<Self>,
        sub: &str,
        objects: Vec<ObjectMeta>,
        listed_at: SystemTime,
        waiting: &mut HashMap<String, watch::Sender<RefreshResult>>,
    ) {
        let mut builders: BTreeMap<String, WalkedDirectory> = BTreeMap::new();
        let fresh = || WalkedDirectory::new(self.mounted_at);
        builders.insert(sub.to_owned(), fresh());
        for obj in &objects {
            let mut dir = sub.to_owned();
            // A store that answers keys outside the prefix asked for is
            // ignored for those keys, not a panic.
            let Some(mut rest) = obj.key.strip_prefix(sub) else {
                continue;
            };
            while let Some((component, tail)) = rest.split_once('/') {
                if names::check_name(component).is_err() {
                    break; // hidden, with everything below it
                }
                let child = names::child_dir_prefix(&dir, component);
                builders
                    .entry(dir.clone())
                    .or_insert_with(fresh)
                    .add_dir(&child, component);
                dir = child;
                builders.entry(dir.clone()).or_insert_with(fresh);
                rest = tail;
            }
            // `rest` is now a file name, or empty for a directory marker.
            if !rest.is_empty() && !rest.contains('/') && names::check_name(rest).is_ok() {
                builders
                    .entry(dir)
                    .or_insert_with(fresh)
                    .add_file(rest, obj);
            }
        }
        let mut published = Vec::with_capacity(builders.len());
        for (prefix, builder) in builders {
            let finished = blocking(|| builder.finish(&prefix, self.db.clone(), listed_at));
            let built = match finished {
                Ok(built) => Arc::new(built),
                Err(e) => {
                    // Its readers list it on their own.
                    debug!(prefix = %prefix, error = %e, "walked directory not published");
                    continue;
                }
            };
            let listing = self.install(&prefix, built);
            if let Some(tx) = waiting.remove(&prefix) {
                self.end_refresh(&prefix, &tx.subscribe(), None);
                let _ = tx.send(Some(Ok(listing.clone())));
            }
            published.push((prefix, listing));
        }
        self.save_in_background(published);
    }
}

/// The names of one directory found by a walk. The naming rules (a
/// directory wins over a file of the same name) are applied by
/// [`GrowingListing`], as for a listing fetched directory by directory.
struct WalkedDirectory {
    /// Subdirectories by full prefix (each is seen once per key below it).
    dirs: BTreeMap<String, Entry>,
    /// Files with their full keys.
    files: Vec<(String, Entry)>,
    dir_mtime: SystemTime,
}

impl WalkedDirectory {
    fn new(dir_mtime: SystemTime) -> Self {
        WalkedDirectory {
            dirs: BTreeMap::new(),
            files: Vec::new(),
            dir_mtime,
        }
    }

    fn add_dir(&mut self, prefix: &str, name: &str) {
        if !self.dirs.contains_key(prefix) {
            self.dirs
                .insert(prefix.to_owned(), Entry::of_prefix(name, self.dir_mtime));
        }
    }

    fn add_file(&mut self, name: &str, obj: &ObjectMeta) {
        self.files
            .push((obj.key.clone(), Entry::of_object(name, obj)));
    }

    /// The listing of `prefix`: in memory, or stored in `db` when large.
    /// Blocks on SQLite.
    fn finish(
        self,
        prefix: &str,
        db: Option<Arc<super::db::CatalogDb>>,
        listed_at: SystemTime,
    ) -> Result<Listing, FsError> {
        let growing = GrowingListing::new(db);
        // One page holding everything, past every key.
        growing.add_page(self.dirs.into_iter().collect(), self.files, "\u{10FFFF}");
        growing.complete(prefix, listed_at)
    }
}

async fn walk<S: ObjectStore>(
    me: Arc<Listings<S>>,
    parent: String,
    mut waiting: HashMap<String, watch::Sender<RefreshResult>>,
) {
    let started = Instant::now();
    let listed_at = SystemTime::now();
    let mut token = None;
    let mut pages = 0u32;
    let mut current: Option<(String, Vec<ObjectMeta>)> = None;
    let outcome = loop {
        if pages == MAX_PAGES {
            break "too many keys";
        }
        if waiting.is_empty() && !me.walked_recently(&parent) {
            // Whoever walked the tree has stopped (`find` was interrupted,
            // `ls -R` ended): the rest would be listed for nobody.
            break "nobody is walking any more";
        }
        pages += 1;
        me.stats.list_requests.fetch_add(1, Ordering::Relaxed);
        let page = match me.store.list_page(&parent, None, token.take(), None).await {
            Ok(page) => page,
            Err(_) => break "a listing request failed",
        };
        let mut too_big = false;
        for obj in page.objects {
            let rel = &obj.key[parent.len().min(obj.key.len())..];
            let Some((first, _)) = rel.split_once('/') else {
                continue; // a file directly in the parent: already listed
            };
            let sub = names::child_dir_prefix(&parent, first);
            if current.as_ref().is_none_or(|(p, _)| *p != sub) {
                if let Some((done, keys)) = current.take() {
                    me.publish_subtree(&done, keys, listed_at, &mut waiting);
                }
                current = Some((sub, Vec::new()));
            }
            let keys = &mut current.as_mut().expect("set above").1;
            keys.push(obj);
            too_big |= keys.len() > MAX_SUBTREE_KEYS;
        }
        if too_big {
            break "a subtree is too large";
        }
        token = page.next;
        if token.is_none() {
            if let Some((done, keys)) = current.take() {
                me.publish_subtree(&done, keys, listed_at, &mut waiting);
            }
            break "complete";
        }
    };
    debug!(prefix = %parent, pages, outcome, unfinished = waiting.len(), elapsed_ms = started.elapsed().as_millis() as u64, "tree walk");
    me.release(waiting);
}
