//! `CatalogDb`: directory listings persisted in SQLite, so they survive
//! restarts.
//!
//! One database per mount target (endpoint + bucket + prefix) under the
//! cache directory, guarded by an exclusive lock file. Anything wrong with
//! the database never fails a mount or gives a wrong answer: a corrupt file
//! or one from another schema version is deleted and rebuilt (one warning);
//! a database locked by another live mount of the same target is bypassed
//! (one warning) and this mount keeps its listings in memory only.
//!
//! Each stored listing has a number (`lid`); `dirs` maps a prefix to its
//! current complete listing. A listing is written under a fresh number, page
//! by page (one transaction per page), and only becomes the prefix's listing
//! when it is complete ([`CatalogDb::commit`]), so a half-fetched listing is
//! never served and the previous one stays readable until then. Entries carry
//! `seq`, their position in the listing, so a directory stream pages through
//! a big listing with an index instead of holding it in memory. A replaced
//! listing is deleted once no open directory stream reads it any more
//! ([`StoredEntries`]).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};
use tracing::warn;

use super::{Entry, EntryKind};
use crate::blocking::blocking;
use crate::private_dir::create_private_dir;
use crate::stable_hash::stable_hash;

const SCHEMA_VERSION: &str = "2";

pub struct CatalogDb {
    conn: Mutex<Connection>,
    path: PathBuf,
    /// Held for the life of the mount: the exclusive lock on `<db>.lock`.
    _lock: File,
    next_lid: AtomicI64,
    /// Listings that directory streams or the memory layer hold, by number:
    /// a replaced one is deleted when the last holder lets go.
    held: Mutex<HashMap<i64, Weak<StoredEntries>>>,
    /// Listings no longer needed, deleted at the next write.
    garbage: Mutex<Vec<i64>>,
    /// Set once a write failed because the disk is full: new listings are
    /// then kept in memory (reads of what is stored go on).
    disk_full: AtomicBool,
}

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

/// Creates (or opens) a file readable by this user only.
fn private_file(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

impl CatalogDb {
    /// Opens (or creates) the catalog of `target` under `dir`; `None` when it
    /// cannot be used, after one warning saying why.
    pub fn open(dir: &Path, target: &str) -> Option<Arc<CatalogDb>> {
        if let Err(e) = create_private_dir(dir) {
            warn!(dir = %dir.display(), error = %e, "cannot create the cache directory; listings are kept in memory only");
            return None;
        }
        let path = dir.join(format!(
            "catalog-{:016x}.sqlite3",
            stable_hash(target.as_bytes())
        ));
        let lock = match private_file(&path.with_extension("lock")) {
            Ok(f) => f,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "cannot create the catalog lock file; listings are kept in memory only");
                return None;
            }
        };
        if lock.try_lock().is_err() {
            warn!(path = %path.display(), "the catalog is in use by another s3mount of the same target; this mount keeps listings in memory only");
            return None;
        }
        let conn = match Self::open_checked(&path, target) {
            Ok(c) => c,
            Err(why) => {
                warn!(path = %path.display(), reason = %why, "rebuilding the catalog database");
                for suffix in ["", "-wal", "-shm"] {
                    let mut p = path.clone().into_os_string();
                    p.push(suffix);
                    let _ = std::fs::remove_file(p);
                }
                match Self::open_checked(&path, target) {
                    Ok(c) => c,
                    Err(e) => {
                        warn!(path = %path.display(), error = %e, "cannot create the catalog database; listings are kept in memory only");
                        return None;
                    }
                }
            }
        };
        // It holds every object name: this user's only (SQLite gives its
        // -wal and -shm files the database file's mode).
        for suffix in ["", "-wal", "-shm"] {
            use std::os::unix::fs::PermissionsExt;
            let mut p = path.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600));
        }
        // Listings written by a mount that stopped before committing them,
        // or replaced while a stream read them, are not in `dirs`.
        let cleanup = conn.execute(
            "DELETE FROM entries WHERE lid NOT IN (SELECT lid FROM dirs)",
            [],
        );
        if let Err(e) = cleanup {
            warn!(path = %path.display(), error = %e, "cannot tidy the catalog database");
        }
        let max_lid: i64 = conn
            .query_row(
                "SELECT max(coalesce((SELECT max(lid) FROM dirs), 0), coalesce((SELECT max(lid) FROM entries), 0))",
                [],
                |r| r.get(0),
            )
            .unwrap_or(0);
        Some(Arc::new(CatalogDb {
            conn: Mutex::new(conn),
            path,
            _lock: lock,
            next_lid: AtomicI64::new(max_lid + 1),
            held: Mutex::new(HashMap::new()),
            garbage: Mutex::new(Vec::new()),
            disk_full: AtomicBool::new(false),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the database and checks that it is ours and of this schema.
    fn open_checked(path: &Path, target: &str) -> Result<Connection, String> {
        let conn = Connection::open(path).map_err(|e| e.to_string())?;
        conn.busy_timeout(Duration::from_secs(2))
            .map_err(|e| e.to_string())?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| format!("not a usable database ({e})"))?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| e.to_string())?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS dirs (
                 prefix TEXT PRIMARY KEY,
                 lid INTEGER NOT NULL,
                 listed_at_ms INTEGER NOT NULL,
                 len INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS entries (
                 lid INTEGER NOT NULL,
                 name TEXT NOT NULL,
                 seq INTEGER NOT NULL,
                 is_dir INTEGER NOT NULL,
                 size INTEGER NOT NULL,
                 mtime_ns INTEGER NOT NULL,
                 etag TEXT NOT NULL,
                 PRIMARY KEY (lid, name)) WITHOUT ROWID;
             CREATE INDEX IF NOT EXISTS entries_by_seq ON entries (lid, seq);
             CREATE INDEX IF NOT EXISTS dirs_by_lid ON dirs (lid);",
        )
        .map_err(|e| format!("unreadable ({e})"))?;
        let meta = |key: &str| -> Result<Option<String>, String> {
            conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .optional()
                .map_err(|e| format!("unreadable ({e})"))
        };
        match (meta("schema")?, meta("target")?) {
            (None, None) => {
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema', ?1), ('target', ?2)",
                    params![SCHEMA_VERSION, target],
                )
                .map_err(|e| e.to_string())?;
            }
            (Some(v), _) if v != SCHEMA_VERSION => {
                return Err(format!("schema version {v}, expected {SCHEMA_VERSION}"))
            }
            (_, Some(t)) if t != target => return Err(format!("belongs to another target ({t})")),
            (Some(_), Some(_)) => {}
            _ => return Err("incomplete metadata".into()),
        }
        Ok(conn)
    }

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
    /// Whether new listings should be written here: false once the disk
    /// was found full.
    pub fn writable(&self) -> bool {
        !self.disk_full.load(Ordering::Relaxed)
    }

    /// Reports a failed write; a full disk (or quota) stops further writes,
    /// with one warning for the life of the mount.
    fn write_failed(&self, what: &str, e: &rusqlite::Error) {
        let full = matches!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DiskFull | rusqlite::ErrorCode::SystemIoFailure)
        );
        if !full {
            warn!(error = %e, "cannot {what} in the catalog");
        } else if !self.disk_full.swap(true, Ordering::Relaxed) {
            warn!(path = %self.path.display(), error = %e, "the catalog's disk is full; new listings are kept in memory only from now on");
        }
    }

    pub fn begin(self: &Arc<Self>) -> Arc<StoredEntries> {
        let lid = self.next_lid.fetch_add(1, Ordering::Relaxed);
        self.hold(lid, false)
    }

    /// Makes `stored` the listing of `prefix`, listed at `listed_at`; the
    /// listing it replaces is deleted (once nobody reads it).
    pub fn commit(&self, prefix: &str, stored: &StoredEntries, listed_at: SystemTime) {
        blocking(|| {
            let mut conn = self.conn.lock();
            let result = (|| -> rusqlite::Result<()> {
                let tx = conn.transaction()?;
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
                Ok(())
            })();
            if let Err(e) = result {
                self.write_failed(&format!("store the listing of {prefix}"), &e);
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

    fn append(&self, lid: i64, first: u64, entries: &[Entry]) -> bool {
        blocking(|| {
            let mut conn = self.conn.lock();
            let result = (|| -> rusqlite::Result<()> {
                let tx = conn.transaction()?;
                {
                    let mut insert = tx.prepare_cached(
                        "INSERT OR REPLACE INTO entries (lid, name, seq, is_dir, size, mtime_ns, etag)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    )?;
                    for (i, e) in entries.iter().enumerate() {
                        let (is_dir, size, mtime_ns, etag) = row(e);
                        let seq = (first + i as u64) as i64;
                        insert.execute(params![lid, e.name, seq, is_dir, size, mtime_ns, etag])?;
                    }
                }
                tx.commit()
            })();
            if let Err(e) = &result {
                self.write_failed("store a listing page", e);
            }
            result.is_ok()
        })
    }

    fn page(&self, lid: i64, after: u64, limit: usize) -> Vec<(u64, Entry)> {
        blocking(|| {
            let conn = self.conn.lock();
            let result = (|| -> rusqlite::Result<Vec<(u64, Entry)>> {
                let mut stmt = conn.prepare_cached(&format!(
                    "SELECT {ENTRY_COLUMNS}, seq FROM entries WHERE lid = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
                ))?;
                let rows = stmt
                    .query_map(params![lid, after as i64, limit as i64], |r| {
                        Ok((r.get::<_, i64>(5)? as u64, entry_from_row(r)?))
                    })?
                    .collect();
                rows
            })();
            result.unwrap_or_else(|e| {
                warn!(error = %e, "cannot read a listing page from the catalog");
                Vec::new()
            })
        })
    }

    fn get(&self, lid: i64, name: &str) -> Option<Entry> {
        blocking(|| {
            let conn = self.conn.lock();
            let result = conn
                .prepare_cached(&format!(
                    "SELECT {ENTRY_COLUMNS} FROM entries WHERE lid = ?1 AND name = ?2"
                ))
                .and_then(|mut stmt| {
                    stmt.query_row(params![lid, name], entry_from_row)
                        .optional()
                });
            result.unwrap_or_else(|e| {
                warn!(name, error = %e, "cannot read an entry from the catalog");
                None
            })
        })
    }

    fn count_files(&self, lid: i64) -> u64 {
        blocking(|| {
            let conn = self.conn.lock();
            conn.query_row(
                "SELECT count(*) FROM entries WHERE lid = ?1 AND is_dir = 0",
                [lid],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .unwrap_or(0)
        })
    }

    /// When the stored listing of `prefix` was made, if there is one.
    pub fn listed_at(&self, prefix: &str) -> Option<SystemTime> {
        blocking(|| {
            let conn = self.conn.lock();
            conn.query_row(
                "SELECT listed_at_ms FROM dirs WHERE prefix = ?1",
                [prefix],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .ok()
            .flatten()
            .map(|ms| UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
        })
    }

    /// Sets (or, with `None`, removes) one entry of listing `lid`. A new
    /// name goes last, so streams reading the listing keep their places.
    fn apply(&self, lid: i64, name: &str, entry: Option<&Entry>) {
        blocking(|| {
            let conn = self.conn.lock();
            let result = (|| -> rusqlite::Result<()> {
                let delta: i64 = match entry {
                    Some(e) => {
                        let (is_dir, size, mtime_ns, etag) = row(e);
                        let updated = conn.execute(
                            "UPDATE entries SET is_dir = ?3, size = ?4, mtime_ns = ?5, etag = ?6
                             WHERE lid = ?1 AND name = ?2",
                            params![lid, name, is_dir, size, mtime_ns, etag],
                        )?;
                        if updated == 0 {
                            conn.execute(
                                "INSERT INTO entries (lid, name, seq, is_dir, size, mtime_ns, etag)
                                 SELECT ?1, ?2, coalesce(max(seq), 0) + 1, ?3, ?4, ?5, ?6
                                 FROM entries WHERE lid = ?1",
                                params![lid, name, is_dir, size, mtime_ns, etag],
                            )?;
                            1
                        } else {
                            0
                        }
                    }
                    None => {
                        -(conn.execute(
                            "DELETE FROM entries WHERE lid = ?1 AND name = ?2",
                            params![lid, name],
                        )? as i64)
                    }
                };
                if delta != 0 {
                    conn.execute(
                        "UPDATE dirs SET len = len + ?2 WHERE lid = ?1",
                        params![lid, delta],
                    )?;
                }
                Ok(())
            })();
            if let Err(e) = result {
                self.write_failed(&format!("update {name}"), &e);
            }
        })
    }

    /// Sets one entry of the stored listing of `prefix`, if there is one
    /// (a change made through the mount).
    pub fn put_entry(&self, prefix: &str, e: &Entry) {
        blocking(|| {
            if let Some(lid) = self.current_lid(prefix) {
                self.apply(lid, &e.name, Some(e));
            }
        })
    }

    /// Removes one entry of the stored listing of `prefix`.
    pub fn remove_entry(&self, prefix: &str, name: &str) {
        blocking(|| {
            if let Some(lid) = self.current_lid(prefix) {
                self.apply(lid, name, None);
            }
        })
    }

    fn current_lid(&self, prefix: &str) -> Option<i64> {
        let conn = self.conn.lock();
        conn.query_row("SELECT lid FROM dirs WHERE prefix = ?1", [prefix], |r| {
            r.get(0)
        })
        .optional()
        .ok()
        .flatten()
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

const ENTRY_COLUMNS: &str = "name, is_dir, size, mtime_ns, etag";

fn entry_from_row(r: &rusqlite::Row) -> rusqlite::Result<Entry> {
    let is_dir: bool = r.get(1)?;
    let mtime_ns: i64 = r.get(3)?;
    Ok(Entry {
        name: r.get(0)?,
        kind: if is_dir {
            EntryKind::Dir
        } else {
            EntryKind::File {
                size: r.get::<_, i64>(2)? as u64,
                etag: r.get(4)?,
            }
        },
        mtime: UNIX_EPOCH + Duration::from_nanos(mtime_ns.max(0) as u64),
    })
}

fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The stored columns of an entry: is_dir, size, mtime (ns), etag.
fn row(e: &Entry) -> (bool, i64, i64, &str) {
    let (is_dir, size, etag) = match &e.kind {
        EntryKind::Dir => (true, 0u64, ""),
        EntryKind::File { size, etag } => (false, *size, etag.as_str()),
    };
    let mtime_ns = e
        .mtime
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    (is_dir, size as i64, mtime_ns, etag)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("s3mount-db-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        p
    }

    fn entries() -> Vec<Entry> {
        vec![
            Entry {
                name: "a".into(),
                kind: EntryKind::Dir,
                mtime: UNIX_EPOCH + Duration::from_secs(5),
            },
            Entry {
                name: "b.csv".into(),
                kind: EntryKind::File {
                    size: 42,
                    etag: "\"e1\"".into(),
                },
                mtime: UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789),
            },
        ]
    }

    #[test]
    fn listings_survive_reopening() {
        let dir = tmp("reopen");
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_000);
        {
            let db = CatalogDb::open(&dir, "t").unwrap();
            assert!(db.load("p/", 100).is_none());
            db.save("p/", &entries(), at);
        }
        let db = CatalogDb::open(&dir, "t").unwrap();
        let got = db.load("p/", 100).unwrap();
        assert_eq!(loaded(got.body), entries());
        assert_eq!(got.listed_at, at);
        db.forget("p/");
        assert!(db.load("p/", 100).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_second_open_of_the_same_target_is_refused_while_the_first_lives() {
        let dir = tmp("lock");
        let first = CatalogDb::open(&dir, "t").unwrap();
        assert!(CatalogDb::open(&dir, "t").is_none());
        drop(first);
        assert!(CatalogDb::open(&dir, "t").is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn garbage_and_foreign_versions_are_rebuilt() {
        let dir = tmp("corrupt");
        let path = {
            let db = CatalogDb::open(&dir, "t").unwrap();
            db.save("p/", &entries(), SystemTime::now());
            db.path().to_owned()
        };
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let _ = std::fs::remove_file(format!("{}-wal", path.display()));
        let db = CatalogDb::open(&dir, "t").expect("rebuilt after garbage");
        assert!(
            db.load("p/", 100).is_none(),
            "nothing survives from a corrupt file"
        );
        db.save("p/", &entries(), SystemTime::now());
        db.conn
            .lock()
            .execute("UPDATE meta SET value = '999' WHERE key = 'schema'", [])
            .unwrap();
        drop(db);
        let db = CatalogDb::open(&dir, "t").expect("rebuilt after a version change");
        assert!(db.load("p/", 100).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn loaded(body: StoredBody) -> Vec<Entry> {
        match body {
            StoredBody::Entries(e) => e,
            StoredBody::Stored(s) => s.page(0, usize::MAX).into_iter().map(|(_, e)| e).collect(),
        }
    }

    fn numbered(n: usize) -> Vec<Entry> {
        (0..n)
            .map(|i| Entry::test_file(&format!("f{i:05}")))
            .collect()
    }

    #[test]
    fn big_listings_stay_on_disk_and_page_in_position_order() {
        let dir = tmp("big");
        let db = CatalogDb::open(&dir, "t").unwrap();
        let stored = db.begin();
        // Written page by page; not visible until committed.
        assert!(stored.append(1, &numbered(500)[..300]));
        assert!(db.load("big/", 10).is_none());
        assert!(stored.append(301, &numbered(500)[300..]));
        db.commit("big/", &stored, SystemTime::now());
        drop(stored);
        let StoredBody::Stored(big) = db.load("big/", 10).unwrap().body else {
            panic!("500 entries are more than 10: left on disk");
        };
        let first = big.page(0, 3);
        assert_eq!(first.iter().map(|(p, _)| *p).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(big.page(498, 10).len(), 2);
        assert_eq!(big.get("f00042").unwrap().name, "f00042");
        assert!(big.get("nope").is_none());
        // A change: an existing name keeps its place, a new one goes last.
        big.apply("f00001", Some(&Entry::test_dir("f00001")));
        big.apply("zz-new", Some(&Entry::test_file("zz-new")));
        big.apply("f00002", None);
        assert!(big.get("f00001").unwrap().is_dir());
        assert_eq!(big.page(500, 10)[0].1.name, "zz-new");
        assert_eq!(big.count_files(), 499);
        let StoredBody::Entries(small) = db.load("big/", 1000).unwrap().body else {
            panic!("500 entries fit in 1000: loaded whole");
        };
        assert_eq!(small.len(), 500);
        let _ = std::fs::remove_dir_all(&dir);
    }

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
