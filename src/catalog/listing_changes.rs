//! Changes made through the mount, kept until no listing can undo them.
//!
//! A change is applied at once to the listing known in memory and on disk.
//! A listing operation that began before it (a fetch, a tree walk, a load
//! from disk, a background save) may still land an older listing, so the
//! change is remembered while such an operation is in flight
//! ([`ListingOpsInFlight`]) and re-applied when its listing lands
//! ([`Listings::install`]). One lock orders changes and landing listings, so
//! neither overwrites the other.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;

use super::db::CatalogDb;
use super::listing::{Entry, Listing, ListingBody};
use super::listing_cache::Listings;
use crate::store::ObjectStore;

/// One change made through the mount: `name` in a directory became `entry`
/// (`None`: removed) at time `at`.
pub(super) struct Change {
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
pub(super) struct ListingOpsInFlight {
    started: Mutex<BTreeMap<u64, SystemTime>>,
    next: AtomicU64,
}

impl ListingOpsInFlight {
    /// Registers an operation until the returned guard is dropped.
    pub(super) fn begin(self: &Arc<Self>) -> ListingOp {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.started.lock().insert(id, SystemTime::now());
        ListingOp {
            ops: self.clone(),
            id,
        }
    }

    /// Changes older than this are in every listing that may still land;
    /// `None` when nothing is in flight.
    pub(super) fn horizon(&self) -> Option<SystemTime> {
        let oldest = self.started.lock().values().min().copied()?;
        // Wall-clock times: allow for small steps of the clock.
        Some(oldest - CLOCK_SLACK)
    }
}

/// How far the wall clock may step back without a change being forgotten
/// too early (see [`ListingOpsInFlight::horizon`]).
const CLOCK_SLACK: Duration = Duration::from_secs(2);

/// One listing operation in flight (see [`ListingOpsInFlight`]).
pub(super) struct ListingOp {
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
    pub(super) fn install(&self, prefix: &str, listing: Arc<Listing>) -> Arc<Listing> {
        let mut changes = self.changes.lock();
        // Of a directory renamed away since: served to its caller, not kept.
        if self.forgotten_since(prefix, listing.listed_at) {
            return listing;
        }
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
    pub(super) fn record(&self, prefix: &str, name: &str, entry: Option<Entry>) {
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

    /// Writes again the changes to `prefix` made since `listed_at`: a
    /// listing saved while they were made may have overwritten them.
    pub(super) fn reapply_to_disk(&self, db: &CatalogDb, prefix: &str, listed_at: SystemTime) {
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
}
