//! The SQL of remembered object attributes: per key, the ETag of the
//! version they were learned for (or written with), its POSIX attributes
//! and, for a symlink, its target. A row for another ETag than the one a
//! listing shows is stale and ignored; it is replaced when the new version
//! is learned.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, OptionalExtension};
use tracing::warn;

use super::CatalogDb;
use crate::blocking::blocking;
use crate::catalog::{ObjectAttrs, VersionTime};
use crate::store::PosixMeta;

pub(super) const ATTRS_TABLE: &str = "CREATE TABLE IF NOT EXISTS attrs (
    key TEXT PRIMARY KEY,
    etag TEXT NOT NULL,
    mode INTEGER,
    uid INTEGER,
    gid INTEGER,
    mtime_ns INTEGER,
    link TEXT,
    written_ns INTEGER NOT NULL,
    written_how INTEGER NOT NULL) WITHOUT ROWID;";

impl CatalogDb {
    /// The attributes remembered for `key`, of whatever version.
    pub fn object_attrs(&self, key: &str) -> Option<ObjectAttrs> {
        blocking(|| {
            let conn = self.conn.lock();
            let result = conn
                .prepare_cached(
                    "SELECT etag, mode, uid, gid, mtime_ns, link, written_ns, written_how FROM attrs WHERE key = ?1",
                )
                .and_then(|mut stmt| {
                    stmt.query_row([key], |r| {
                        Ok(ObjectAttrs {
                            etag: r.get(0)?,
                            written: match r.get::<_, i64>(7)? {
                                0 => VersionTime::Exact(from_nanos(r.get(6)?)),
                                1 => VersionTime::WrittenHere(from_nanos(r.get(6)?)),
                                _ => VersionTime::Listed(from_nanos(r.get(6)?)),
                            },
                            posix: PosixMeta {
                                mode: r.get(1)?,
                                uid: r.get(2)?,
                                gid: r.get(3)?,
                                mtime: r.get::<_, Option<i64>>(4)?.map(from_nanos),
                            },
                            link: r.get(5)?,
                        })
                    })
                    .optional()
                });
            result.unwrap_or_else(|e| {
                warn!(key, error = %e, "cannot read attributes from the catalog");
                None
            })
        })
    }

    /// Remembers the attributes of `key`, replacing those of any version.
    pub fn put_object_attrs(&self, key: &str, attrs: &ObjectAttrs) {
        self.put_object_attrs_batch(&[(key.to_owned(), attrs.clone())]);
    }

    /// Remembers the attributes of many keys in one transaction.
    pub fn put_object_attrs_batch(&self, rows: &[(String, ObjectAttrs)]) {
        if !self.writable() || rows.is_empty() {
            return;
        }
        blocking(|| {
            let mut conn = self.conn.lock();
            let result = (|| -> rusqlite::Result<()> {
                let tx = conn.transaction()?;
                {
                    let mut insert = tx.prepare_cached(
                        "INSERT OR REPLACE INTO attrs
                             (key, etag, mode, uid, gid, mtime_ns, link, written_ns, written_how)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    )?;
                    for (key, attrs) in rows {
                        let p = &attrs.posix;
                        let (written, how) = match attrs.written {
                            VersionTime::Exact(t) => (t, 0),
                            VersionTime::WrittenHere(t) => (t, 1),
                            VersionTime::Listed(t) => (t, 2),
                        };
                        insert.execute(params![
                            key,
                            attrs.etag,
                            p.mode,
                            p.uid,
                            p.gid,
                            p.mtime.map(to_nanos),
                            attrs.link,
                            to_nanos(written),
                            how
                        ])?;
                    }
                }
                tx.commit()
            })();
            if let Err(e) = result {
                self.write_failed("store attributes", &e);
            }
        })
    }

    /// Forgets the attributes of `key` (deleted, or moved away).
    pub fn remove_object_attrs(&self, key: &str) {
        blocking(|| {
            let conn = self.conn.lock();
            if let Err(e) = conn.execute("DELETE FROM attrs WHERE key = ?1", [key]) {
                self.write_failed("forget attributes", &e);
            }
        })
    }
}

fn to_nanos(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos().min(i64::MAX as u128) as i64,
        Err(e) => -(e.duration().as_nanos().min(i64::MAX as u128) as i64),
    }
}

fn from_nanos(ns: i64) -> SystemTime {
    match ns >= 0 {
        true => UNIX_EPOCH + Duration::from_nanos(ns as u64),
        false => UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs()),
    }
}
