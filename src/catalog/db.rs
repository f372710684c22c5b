//! `CatalogDb`: directory listings persisted in SQLite, so they survive
//! restarts.
//!
//! One database per mount target (endpoint + bucket + prefix) under the
//! cache directory, guarded by an exclusive lock file. Anything wrong with
//! the database never fails a mount or gives a wrong answer: a corrupt file
//! or one from another schema version is deleted and rebuilt (one warning);
//! a database locked by another live mount of the same target is bypassed
//! (one warning) and this mount keeps its listings in memory only.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};
use tracing::warn;

use super::{Entry, EntryKind};

const SCHEMA_VERSION: &str = "1";

pub struct CatalogDb {
    conn: Mutex<Connection>,
    path: PathBuf,
    /// Held for the life of the mount: the exclusive lock on `<db>.lock`.
    _lock: File,
}

/// A listing as stored: its entries and when it was listed (wall clock, so
/// that freshness survives a restart).
pub struct StoredListing {
    pub entries: Vec<Entry>,
    pub listed_at: SystemTime,
}

/// A stable 64-bit FNV-1a hash: names database files and inode numbers, so
/// it must not change between runs (unlike the std hasher).
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl CatalogDb {
    /// Opens (or creates) the catalog of `target` under `dir`; `None` when it
    /// cannot be used, after one warning saying why.
    pub fn open(dir: &Path, target: &str) -> Option<CatalogDb> {
        if let Err(e) = std::fs::create_dir_all(dir) {
            warn!(dir = %dir.display(), error = %e, "cannot create the cache directory; listings are kept in memory only");
            return None;
        }
        let path = dir.join(format!(
            "catalog-{:016x}.sqlite3",
            stable_hash(target.as_bytes())
        ));
        let lock = match File::create(path.with_extension("lock")) {
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
        Some(CatalogDb {
            conn: Mutex::new(conn),
            path,
            _lock: lock,
        })
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
                 listed_at_ms INTEGER NOT NULL,
                 complete INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS entries (
                 prefix TEXT NOT NULL,
                 name TEXT NOT NULL,
                 is_dir INTEGER NOT NULL,
                 size INTEGER NOT NULL,
                 mtime_ns INTEGER NOT NULL,
                 etag TEXT NOT NULL,
                 PRIMARY KEY (prefix, name)) WITHOUT ROWID;",
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

    /// The stored listing of `prefix`, if a complete one exists.
    pub fn load(&self, prefix: &str) -> Option<StoredListing> {
        let conn = self.conn.lock().unwrap();
        let result = (|| -> rusqlite::Result<Option<StoredListing>> {
            let listed_at: Option<i64> = conn
                .query_row(
                    "SELECT listed_at_ms FROM dirs WHERE prefix = ?1 AND complete = 1",
                    [prefix],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(listed_at) = listed_at else {
                return Ok(None);
            };
            let mut stmt = conn.prepare_cached(
                "SELECT name, is_dir, size, mtime_ns, etag FROM entries WHERE prefix = ?1 ORDER BY name",
            )?;
            let entries = stmt
                .query_map([prefix], |r| {
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
                })?
                .collect::<rusqlite::Result<Vec<Entry>>>()?;
            Ok(Some(StoredListing {
                entries,
                listed_at: UNIX_EPOCH + Duration::from_millis(listed_at.max(0) as u64),
            }))
        })();
        result.unwrap_or_else(|e| {
            warn!(prefix, error = %e, "cannot read a listing from the catalog; listing S3 instead");
            None
        })
    }

    /// Replaces the stored listing of `prefix` in one transaction.
    pub fn save(&self, prefix: &str, entries: &[Entry], listed_at: SystemTime) {
        let mut conn = self.conn.lock().unwrap();
        let result = (|| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            tx.execute("DELETE FROM entries WHERE prefix = ?1", [prefix])?;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT OR REPLACE INTO entries (prefix, name, is_dir, size, mtime_ns, etag)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?;
                for e in entries {
                    let (is_dir, size, mtime_ns, etag) = row(e);
                    insert.execute(params![prefix, e.name, is_dir, size, mtime_ns, etag])?;
                }
            }
            let ms = listed_at
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            tx.execute(
                "INSERT OR REPLACE INTO dirs (prefix, listed_at_ms, complete) VALUES (?1, ?2, 1)",
                params![prefix, ms],
            )?;
            tx.commit()
        })();
        if let Err(e) = result {
            warn!(prefix, error = %e, "cannot store a listing in the catalog");
        }
    }

    /// When the stored listing of `prefix` was made, if there is a complete one.
    pub fn listed_at(&self, prefix: &str) -> Option<SystemTime> {
        let conn = self.conn.lock().unwrap();
        conn.query_row(
            "SELECT listed_at_ms FROM dirs WHERE prefix = ?1 AND complete = 1",
            [prefix],
            |r| r.get::<_, i64>(0),
        )
        .optional()
        .ok()
        .flatten()
        .map(|ms| UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
    }

    /// Sets one entry of a stored listing (a change made through the mount).
    pub fn put_entry(&self, prefix: &str, e: &Entry) {
        let conn = self.conn.lock().unwrap();
        let (is_dir, size, mtime_ns, etag) = row(e);
        let result = conn.execute(
            "INSERT OR REPLACE INTO entries (prefix, name, is_dir, size, mtime_ns, etag)
             SELECT ?1, ?2, ?3, ?4, ?5, ?6 WHERE EXISTS (SELECT 1 FROM dirs WHERE prefix = ?1)",
            params![prefix, e.name, is_dir, size, mtime_ns, etag],
        );
        if let Err(err) = result {
            warn!(prefix, error = %err, "cannot update the catalog");
        }
    }

    /// Removes one entry of a stored listing.
    pub fn remove_entry(&self, prefix: &str, name: &str) {
        let conn = self.conn.lock().unwrap();
        if let Err(e) = conn.execute(
            "DELETE FROM entries WHERE prefix = ?1 AND name = ?2",
            params![prefix, name],
        ) {
            warn!(prefix, error = %e, "cannot update the catalog");
        }
    }

    /// Forgets the stored listings of `prefix` and every prefix below it.
    pub fn forget_tree(&self, prefix: &str) {
        let conn = self.conn.lock().unwrap();
        let n = prefix.chars().count() as i64;
        let result = conn
            .execute(
                "DELETE FROM dirs WHERE substr(prefix, 1, ?2) = ?1",
                params![prefix, n],
            )
            .and_then(|_| {
                conn.execute(
                    "DELETE FROM entries WHERE substr(prefix, 1, ?2) = ?1",
                    params![prefix, n],
                )
            });
        if let Err(e) = result {
            warn!(prefix, error = %e, "cannot update the catalog");
        }
    }

    /// Forgets the stored listing of `prefix` (a forced refresh).
    pub fn forget(&self, prefix: &str) {
        let conn = self.conn.lock().unwrap();
        if let Err(e) = conn.execute("DELETE FROM dirs WHERE prefix = ?1", [prefix]) {
            warn!(prefix, error = %e, "cannot update the catalog");
        }
    }
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
            assert!(db.load("p/").is_none());
            db.save("p/", &entries(), at);
        }
        let db = CatalogDb::open(&dir, "t").unwrap();
        let got = db.load("p/").unwrap();
        assert_eq!(got.entries, entries());
        assert_eq!(got.listed_at, at);
        db.forget("p/");
        assert!(db.load("p/").is_none());
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
            db.load("p/").is_none(),
            "nothing survives from a corrupt file"
        );
        db.save("p/", &entries(), SystemTime::now());
        db.conn
            .lock()
            .unwrap()
            .execute("UPDATE meta SET value = '999' WHERE key = 'schema'", [])
            .unwrap();
        drop(db);
        let db = CatalogDb::open(&dir, "t").expect("rebuilt after a version change");
        assert!(db.load("p/").is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn stable_hash_does_not_change() {
        assert_eq!(stable_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
