//! Stored listings and their lifetime: each listing is written under a
//! fresh number (`lid`), becomes its prefix's listing in `dirs` only when
//! complete ([`CatalogDb::commit`]), and its rows are deleted once it is
//! replaced or forgotten and no holder ([`StoredEntries`]) reads it any more.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, OptionalExtension};
use tracing::warn;

use super::entry_rows::{entry_from_row, millis, ENTRY_COLUMNS};
use super::CatalogDb;
use crate::blocking::blocking;
use crate::catalog::Entry;

/// A listing that stays in SQLite and is read from there a page or a name
/// at a time. While some holder keeps it, its rows stay, even after a newer
/// listing of the same prefix replaced it.
pub struct StoredEntries {
    lid: i64,
    db: Arc<CatalogDb>,
    /// Whether `dirs` points at it (otherwise it is deleted when dropped).
    current: AtomicBool,
}

impl StoredEntries {
    /// Entries after position `after`, in position order, at most `limit`,
    /// each with its position.
    pub fn page(&self, after: u64, limit: usize) -> Vec<(u64, Entry)> {
        self.db.page(self.lid, after, limit)
    }

    pub fn get(&self, name: &str) -> Option<Entry> {
        self.db.get(self.lid, name)
    }

    /// Up to `limit` entries named after `name`, in name order.
    pub fn after_name(&self, name: &str, limit: usize) -> Vec<Entry> {
        self.db.after_name(self.lid, name, limit)
    }

    /// Files in the listing (directories not counted).
    pub fn count_files(&self) -> u64 {
        self.db.count_files(self.lid)
    }

    pub fn is_empty(&self) -> bool {
        self.page(0, 1).is_empty()
    }

    /// Whether it is its prefix's listing in `dirs` (not replaced, and
    /// committed).
    pub fn is_current(&self) -> bool {
        self.current.load(Ordering::Acquire)
    }

    /// Appends `entries` at positions `first..` in one transaction.
    pub fn append(&self, first: u64, entries: &[Entry]) -> bool {
        self.db.append(self.lid, first, entries)
    }

    /// Applies a change made through the mount to this listing.
    pub fn apply(&self, name: &str, entry: Option<&Entry>) {
        self.db.apply(self.lid, name, entry)
    }
}

impl Drop for StoredEntries {
    fn drop(&mut self) {
        if !self.current.load(Ordering::Acquire) {
            // Not deleted here: a drop may happen while the connection is
            // locked. The next write collects it.
            self.db.garbage.lock().push(self.lid);
        }
    }
}

/// A listing as stored, and when it was listed (wall clock, so that
/// freshness survives a restart).
pub struct StoredListing {
    pub body: StoredBody,
    pub listed_at: SystemTime,
}

pub enum StoredBody {
    /// A small listing, loaded whole, sorted by name.
    Entries(Vec<Entry>),
    /// A big one, left in SQLite.
    Stored(Arc<StoredEntries>),
}

impl CatalogDb {
    /// The stored listing of `prefix`, if a complete one exists: loaded
    /// whole when it has at most `in_memory` entries, else left in SQLite.
    pub fn load(self: &Arc<Self>, prefix: &str, in_memory: usize) -> Option<StoredListing> {
        blocking(|| {
            let result = (|| -> rusqlite::Result<Option<StoredListing>> {
                let conn = self.conn.lock();
                let row: Option<(i64, i64, i64)> = conn
                    .query_row(
                        "SELECT lid, listed_at_ms, len FROM dirs WHERE prefix = ?1",
                        [prefix],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .optional()?;
                let Some((lid, listed_at, len)) = row else {
                    return Ok(None);
                };
                let listed_at = UNIX_EPOCH + Duration::from_millis(listed_at.max(0) as u64);
                if len as usize > in_memory {
                    // Held before the lock goes, so a commit or forget in
                    // between cannot delete the rows under this holder.
                    let held = self.hold(lid, true);
                    drop(conn);
                    return Ok(Some(StoredListing {
                        body: StoredBody::Stored(held),
                        listed_at,
                    }));
                }
                let mut stmt = conn.prepare_cached(&format!(
                    "SELECT {ENTRY_COLUMNS} FROM entries WHERE lid = ?1 ORDER BY name"
                ))?;
                let entries = stmt
                    .query_map([lid], entry_from_row)?
                    .collect::<rusqlite::Result<Vec<Entry>>>()?;
                Ok(Some(StoredListing {
                    body: StoredBody::Entries(entries),
                    listed_at,
                }))
            })();
            result.unwrap_or_else(|e| {
                warn!(prefix, error = %e, "cannot read a listing from the catalog; listing S3 instead");
                None
            })
        })
    }

    /// The holder of listing `lid`: the one already held, or a new one.
    fn hold(self: &Arc<Self>, lid: i64, current: bool) -> Arc<StoredEntries> {
        let mut held = self.held.lock();
        held.retain(|_, w| w.strong_count() > 0);
        if let Some(h) = held.get(&lid).and_then(Weak::upgrade) {
            return h;
        }
        let h = Arc::new(StoredEntries {
            lid,
            db: self.clone(),
            current: AtomicBool::new(current),
        });
        held.insert(lid, Arc::downgrade(&h));
        h
    }

    /// A new, empty listing to be filled with [`StoredEntries::append`] and
    /// made a prefix's listing with [`CatalogDb::commit`]. Dropped before
    /// that, it is deleted.
    pub fn begin(self: &Arc<Self>) -> Arc<StoredEntries> {
        let lid = self.next_lid.fetch_add(1, Ordering::Relaxed);
        self.hold(lid, false)
    }

    /// Makes `stored` the listing of `prefix`, listed at `listed_at`; the
    /// listing it replaces is deleted (once nobody reads it).
    pub fn commit(&self, prefix: &str, stored: &StoredEntries, listed_at: SystemTime) {
        blocking(|| {
            let mut conn = self.conn.lock();
            let result = (|| -> rusqlite::Result<bool> {
                let tx = conn.transaction()?;
                // Saves of two listings of one directory may land in either
                // order: one listed earlier than what is stored is dropped.
                let stored_at: Option<i64> = tx
                    .query_row(
                        "SELECT listed_at_ms FROM dirs WHERE prefix = ?1",
                        [prefix],
                        |r| r.get(0),
                    )
                    .optional()?;
                if stored_at.is_some_and(|at| at > millis(listed_at)) {
                    return Ok(false);
                }
                let len: i64 = tx.query_row(
                    "SELECT count(*) FROM entries WHERE lid = ?1",
                    [stored.lid],
                    |r| r.get(0),
                )?;
                let old = self.retire(&tx, prefix)?;
                tx.execute(
                    "INSERT INTO dirs (prefix, lid, listed_at_ms, len) VALUES (?1, ?2, ?3, ?4)",
                    params![prefix, stored.lid, millis(listed_at), len],
                )?;
                tx.commit()?;
                stored.current.store(true, Ordering::Release);
                self.release_retired(old);
                Ok(true)
            })();
            match result {
                Ok(true) => {}
                Ok(false) => self.release_retired(Some(stored.lid)),
                Err(e) => self.write_failed(&format!("store the listing of {prefix}"), &e),
            }
            drop(conn);
            self.collect_garbage();
        })
    }

    /// Removes `prefix` from `dirs` inside `tx`; returns the listing number
    /// it had, to be released once the transaction has committed.
    fn retire(&self, tx: &rusqlite::Transaction, prefix: &str) -> rusqlite::Result<Option<i64>> {
        let old: Option<i64> = tx
            .query_row("SELECT lid FROM dirs WHERE prefix = ?1", [prefix], |r| {
                r.get(0)
            })
            .optional()?;
        if old.is_some() {
            tx.execute("DELETE FROM dirs WHERE prefix = ?1", [prefix])?;
        }
        Ok(old)
    }

    /// A listing no longer in `dirs` is deleted now, or by its last holder.
    fn release_retired(&self, lid: Option<i64>) {
        let Some(lid) = lid else { return };
        let holder = self.held.lock().get(&lid).and_then(Weak::upgrade);
        match holder {
            // Its drop (maybe right here) queues it as garbage.
            Some(h) => h.current.store(false, Ordering::Release),
            None => self.garbage.lock().push(lid),
        }
    }

    /// Deletes the rows of listings nobody needs any more.
    fn collect_garbage(&self) {
        let lids: Vec<i64> = std::mem::take(&mut *self.garbage.lock());
        if lids.is_empty() {
            return;
        }
        let conn = self.conn.lock();
        for lid in lids {
            if let Err(e) = conn.execute("DELETE FROM entries WHERE lid = ?1", [lid]) {
                warn!(error = %e, "cannot tidy the catalog database");
            }
        }
    }

    /// Stores a whole listing of `prefix` (small ones, and listings built in
    /// memory by tree walks).
    pub fn save(self: &Arc<Self>, prefix: &str, entries: &[Entry], listed_at: SystemTime) {
        let stored = self.begin();
        if stored.append(1, entries) {
            self.commit(prefix, &stored, listed_at);
        }
    }

    /// Forgets the stored listings of `prefix` and every prefix below it.
    pub fn forget_tree(&self, prefix: &str) {
        blocking(|| {
            let n = prefix.chars().count() as i64;
            let result = (|| -> rusqlite::Result<Vec<i64>> {
                let mut conn = self.conn.lock();
                let tx = conn.transaction()?;
                let lids = {
                    let mut stmt =
                        tx.prepare("SELECT lid FROM dirs WHERE substr(prefix, 1, ?2) = ?1")?;
                    let lids = stmt
                        .query_map(params![prefix, n], |r| r.get(0))?
                        .collect::<rusqlite::Result<Vec<i64>>>()?;
                    lids
                };
                tx.execute(
                    "DELETE FROM dirs WHERE substr(prefix, 1, ?2) = ?1",
                    params![prefix, n],
                )?;
                tx.commit()?;
                Ok(lids)
            })();
            match result {
                Ok(lids) => {
                    for lid in lids {
                        self.release_retired(Some(lid));
                    }
                    self.collect_garbage();
                }
                Err(e) => self.write_failed(&format!("update {prefix}"), &e),
            }
        })
    }

    /// Forgets the stored listing of `prefix` (a forced refresh).
    pub fn forget(&self, prefix: &str) {
        blocking(|| {
            let result = (|| -> rusqlite::Result<Option<i64>> {
                let mut conn = self.conn.lock();
                let tx = conn.transaction()?;
                let old = self.retire(&tx, prefix)?;
                tx.commit()?;
                Ok(old)
            })();
            match result {
                Ok(old) => {
                    self.release_retired(old);
                    self.collect_garbage();
                }
                Err(e) => self.write_failed(&format!("update {prefix}"), &e),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::db::tests::{numbered, tmp};

    #[test]
    fn a_replaced_listing_stays_readable_while_held_then_goes() {
        let dir = tmp("replace");
        let db = CatalogDb::open(&dir, "t").unwrap();
        db.save("p/", &numbered(50), SystemTime::now());
        let StoredBody::Stored(old) = db.load("p/", 10).unwrap().body else {
            panic!("left on disk");
        };
        db.save("p/", &numbered(20), SystemTime::now());
        assert_eq!(
            old.page(0, 100).len(),
            50,
            "a stream still reads the old one"
        );
        let rows = |db: &CatalogDb| -> i64 {
            db.conn
                .lock()
                .query_row("SELECT count(*) FROM entries", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(rows(&db), 70);
        drop(old);
        db.collect_garbage();
        assert_eq!(rows(&db), 20, "the old listing is deleted once let go");
        // An uncommitted listing is deleted too.
        let orphan = db.begin();
        orphan.append(1, &numbered(5));
        drop(orphan);
        db.collect_garbage();
        assert_eq!(rows(&db), 20);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
