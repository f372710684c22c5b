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
//!
//! Here: opening the database (file, lock, schema check, rebuild) and the
//! switch to memory only when its disk is full. A listing's lifetime is in
//! `stored_listings`, the SQL of its entries in `entry_rows`. Attributes
//! learned from object metadata (`attrs`, by key) are in `attr_rows`.

mod attr_rows;
mod entry_rows;
mod stored_listings;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use tracing::warn;

use crate::private_dir::create_private_dir;
use crate::stable_hash::stable_hash;
pub use stored_listings::{StoredBody, StoredEntries, StoredListing};

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
        let path = Self::file_of(dir, target);
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

    /// Opens the catalog of `target` under `dir` for reading only, beside
    /// the mount that may hold it (SQLite lets readers share a database in
    /// WAL mode); nothing is ever written through it. `None` when there is
    /// none, or it is of another target or schema.
    pub fn open_read_only(dir: &Path, target: &str) -> Option<Arc<CatalogDb>> {
        use rusqlite::OpenFlags;
        let path = Self::file_of(dir, target);
        let lock = File::open(path.with_extension("lock")).ok()?;
        let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
        conn.busy_timeout(Duration::from_secs(5)).ok()?;
        let meta = |key: &str| -> Option<String> {
            conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .ok()
        };
        if meta("schema")? != SCHEMA_VERSION || meta("target")? != target {
            return None;
        }
        Some(Arc::new(CatalogDb {
            conn: Mutex::new(conn),
            path,
            _lock: lock,
            next_lid: AtomicI64::new(i64::MAX / 2),
            held: Mutex::new(HashMap::new()),
            garbage: Mutex::new(Vec::new()),
            // Never written: as if its disk were full.
            disk_full: AtomicBool::new(true),
        }))
    }

    /// Notes (`on`) or clears that a snapshot import is under way: one a
    /// mount finds still noted was cut short, and is started over.
    pub fn note_snapshot_import(&self, on: bool) -> bool {
        let conn = self.conn.lock();
        let done = if on {
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('snapshot_import', 'pending')",
                [],
            )
        } else {
            conn.execute("DELETE FROM meta WHERE key = 'snapshot_import'", [])
        };
        done.is_ok()
    }

    /// Whether a snapshot import was begun and never finished.
    pub fn snapshot_import_cut_short(&self) -> bool {
        let conn = self.conn.lock();
        conn.query_row(
            "SELECT 1 FROM meta WHERE key = 'snapshot_import'",
            [],
            |_| Ok(()),
        )
        .optional()
        .ok()
        .flatten()
        .is_some()
    }

    /// Whether no directory listing is stored.
    pub fn is_empty(&self) -> bool {
        let conn = self.conn.lock();
        conn.query_row(
            "SELECT count(*) FROM (SELECT 1 FROM dirs LIMIT 1)",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map_or(true, |n| n == 0)
    }

    /// The database file of `target` under `dir`.
    fn file_of(dir: &Path, target: &str) -> PathBuf {
        dir.join(format!(
            "catalog-{:016x}.sqlite3",
            stable_hash(target.as_bytes())
        ))
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
        .and_then(|()| conn.execute_batch(attr_rows::ATTRS_TABLE))
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
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::catalog::{Entry, EntryKind};
    use std::time::{SystemTime, UNIX_EPOCH};

    pub(super) fn tmp(tag: &str) -> PathBuf {
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
    fn a_save_of_a_listing_older_than_the_stored_one_is_dropped() {
        let dir = tmp("order");
        let db = CatalogDb::open(&dir, "t").unwrap();
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_000);
        db.save("p/", &entries(), at);
        db.save("p/", &numbered(3), at - Duration::from_secs(1));
        assert_eq!(loaded(db.load("p/", 100).unwrap().body), entries());
        db.save("p/", &numbered(3), at + Duration::from_secs(1));
        assert_eq!(loaded(db.load("p/", 100).unwrap().body), numbered(3));
        drop(db);
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

    pub(super) fn numbered(n: usize) -> Vec<Entry> {
        (0..n)
            .map(|i| Entry::test_file(&format!("f{i:05}")))
            .collect()
    }
}
