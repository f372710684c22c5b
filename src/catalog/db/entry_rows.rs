//! The entries of a stored listing, row by row: appending a page, reading a
//! page by position or one name, counting files, applying a change made
//! through the mount; and how an entry is encoded in a row.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, OptionalExtension};
use tracing::warn;

use super::CatalogDb;
use crate::blocking::blocking;
use crate::catalog::{Entry, EntryKind};

impl CatalogDb {
    pub(super) fn append(&self, lid: i64, first: u64, entries: &[Entry]) -> bool {
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

    pub(super) fn page(&self, lid: i64, after: u64, limit: usize) -> Vec<(u64, Entry)> {
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

    pub(super) fn get(&self, lid: i64, name: &str) -> Option<Entry> {
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

    /// Up to `limit` entries named after `name`, in name order.
    pub(super) fn after_name(&self, lid: i64, name: &str, limit: usize) -> Vec<Entry> {
        blocking(|| {
            let conn = self.conn.lock();
            let result = conn
                .prepare_cached(&format!(
                    "SELECT {ENTRY_COLUMNS} FROM entries WHERE lid = ?1 AND name > ?2 ORDER BY name LIMIT ?3"
                ))
                .and_then(|mut stmt| {
                    stmt.query_map(params![lid, name, limit as i64], entry_from_row)?
                        .collect()
                });
            result.unwrap_or_else(|e| {
                warn!(name, error = %e, "cannot read entries from the catalog");
                Vec::new()
            })
        })
    }

    pub(super) fn count_files(&self, lid: i64) -> u64 {
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
    pub(super) fn apply(&self, lid: i64, name: &str, entry: Option<&Entry>) {
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
}

pub(super) const ENTRY_COLUMNS: &str = "name, is_dir, size, mtime_ns, etag";

pub(super) fn entry_from_row(r: &rusqlite::Row) -> rusqlite::Result<Entry> {
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

pub(super) fn millis(t: SystemTime) -> i64 {
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
    use crate::catalog::db::tests::{numbered, tmp};
    use crate::catalog::db::StoredBody;

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
}
