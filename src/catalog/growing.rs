//! `GrowingListing`: a directory listing readable while it is being fetched.
//!
//! The first `readdir` of a directory nobody has listed yet should not wait
//! for every page of a big listing. While a listing is fetched, its entries
//! are appended here page by page, and directory streams read them as they
//! arrive. The order is arrival order, not sorted (readdir promises no order);
//! it only ever grows, so a stream's offsets stay valid.
//!
//! Entries are kept in memory up to [`IN_MEMORY_LIMIT`]; a bigger listing
//! moves to the on-disk catalog at that point and continues there page by
//! page (one transaction each), so memory does not grow with its size.
//!
//! One subtlety is kept exact: when a key `a` and a prefix `a/` both exist,
//! the directory wins. S3 returns `a` before `a/`, possibly on an earlier
//! page, so a file is held back until the listing has moved past `a/`.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::SystemTime;

use tokio::sync::watch;

use super::db::{CatalogDb, StoredEntries};
use super::{Entry, Listing, IN_MEMORY_LIMIT};
use crate::blocking::blocking;
use crate::error::FsError;

/// How far a growing listing has got; directory streams wait on it.
#[derive(Debug, Clone, Default)]
struct GrowthProgress {
    /// Entries released.
    len: usize,
    /// Set when the listing has ended, with its outcome.
    done: Option<Result<(), FsError>>,
}

/// Where the released entries are, in release order (position = index + 1).
enum Released {
    Memory(Vec<Entry>),
    Stored(Arc<StoredEntries>, usize),
}

pub struct GrowingListing {
    released: Mutex<Released>,
    progress: watch::Sender<GrowthProgress>,
    /// Files not yet released, by their full key.
    held: Mutex<BTreeMap<String, Entry>>,
    db: Option<Arc<CatalogDb>>,
    /// Set when a page could not be written to the on-disk catalog.
    store_failed: std::sync::atomic::AtomicBool,
}

impl Default for GrowingListing {
    fn default() -> Self {
        GrowingListing::new(None)
    }
}

impl GrowingListing {
    /// A listing that moves to `db` once it grows past [`IN_MEMORY_LIMIT`].
    pub fn new(db: Option<Arc<CatalogDb>>) -> Self {
        GrowingListing {
            released: Mutex::new(Released::Memory(Vec::new())),
            progress: watch::Sender::new(GrowthProgress::default()),
            held: Mutex::new(BTreeMap::new()),
            db,
            store_failed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Entries released so far.
    pub fn released(&self) -> usize {
        self.progress.borrow().len
    }

    /// Releases what is still held and returns the complete listing: in
    /// memory (sorted by name), or committed as `prefix`'s listing on disk.
    /// A listing that could not be written whole is not committed. Blocks
    /// on SQLite.
    pub fn complete(&self, prefix: &str, listed_at: SystemTime) -> Result<Listing, FsError> {
        let rest: Vec<Entry> = std::mem::take(&mut *self.held.lock())
            .into_values()
            .collect();
        self.append(rest);
        let released = self.released.lock();
        if self.store_failed.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(FsError::Catalog(format!(
                "the listing of {prefix} could not be stored whole (see the warnings above)"
            )));
        }
        match &*released {
            Released::Memory(entries) => {
                let mut entries = entries.clone();
                entries.sort_unstable_by(|a, b| a.name.cmp(&b.name));
                // Some servers repeat a common prefix on a later page.
                entries.dedup_by(|a, b| a.name == b.name);
                Ok(Listing::in_memory(entries, listed_at))
            }
            Released::Stored(stored, _) => {
                if let Some(db) = &self.db {
                    db.commit(prefix, stored, listed_at);
                }
                Ok(Listing::stored(stored.clone(), listed_at))
            }
        }
    }

    /// Adds one page: its directories (with their full prefixes) and files
    /// (with their full keys). `page_end` is the greatest key or prefix the
    /// listing has returned so far.
    pub fn add_page(
        &self,
        dirs: Vec<(String, Entry)>,
        files: Vec<(String, Entry)>,
        page_end: &str,
    ) {
        let mut held = self.held.lock();
        let mut released = Vec::with_capacity(dirs.len() + files.len());
        // Files first: a directory on the same page must still win.
        for (key, file) in files {
            held.insert(key, file);
        }
        for (prefix, dir) in dirs {
            // `prefix` is `key/`: a held file `key` loses to this directory.
            held.remove(prefix.trim_end_matches('/'));
            released.push(dir);
        }
        // A file `k` is safe once the listing is past `k/`.
        let safe: Vec<String> = held
            .keys()
            .filter(|k| format!("{k}/").as_str() <= page_end)
            .cloned()
            .collect();
        for k in safe {
            released.extend(held.remove(&k));
        }
        drop(held);
        self.append(released);
    }

    /// Ends the listing with `outcome`, releasing whatever is still held.
    pub fn finish(&self, outcome: Result<(), FsError>) {
        let rest: Vec<Entry> = std::mem::take(&mut *self.held.lock())
            .into_values()
            .collect();
        if outcome.is_ok() {
            self.append(rest);
        }
        self.progress.send_modify(|p| p.done = Some(outcome));
    }

    /// Adds released entries; may block on SQLite.
    fn append(&self, new: Vec<Entry>) {
        if new.is_empty() {
            return;
        }
        let len = {
            let mut released = self.released.lock();
            match &mut *released {
                Released::Memory(entries) => match &self.db {
                    Some(db) if db.writable() && entries.len() + new.len() > IN_MEMORY_LIMIT => {
                        let stored = db.begin();
                        if stored.append(1, entries)
                            && stored.append(entries.len() as u64 + 1, &new)
                        {
                            let len = entries.len() + new.len();
                            *released = Released::Stored(stored, len);
                            len
                        } else {
                            // The disk cannot take it: the listing stays in
                            // memory.
                            entries.extend(new);
                            entries.len()
                        }
                    }
                    _ => {
                        entries.extend(new);
                        entries.len()
                    }
                },
                Released::Stored(stored, len) => {
                    if stored.append(*len as u64 + 1, &new) {
                        *len += new.len();
                        *len
                    } else {
                        // The disk filled up mid-listing: carry on in memory
                        // from what was stored (each page is one
                        // transaction, so the stored ones are whole).
                        let mut entries: Vec<Entry> =
                            stored.page(0, *len).into_iter().map(|(_, e)| e).collect();
                        if entries.len() != *len {
                            self.note_stored(false);
                        }
                        entries.extend(new);
                        let len = entries.len();
                        *released = Released::Memory(entries);
                        len
                    }
                }
            }
        };
        self.progress.send_modify(|p| p.len = len);
    }

    fn note_stored(&self, ok: bool) {
        if !ok {
            self.store_failed
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Entries after position `start`, at most `limit`, each with its
    /// position, waiting until at least one is there or the listing has
    /// ended. Empty means the end.
    pub async fn read(&self, start: usize, limit: usize) -> Result<Vec<(u64, Entry)>, FsError> {
        let mut rx = self.progress.subscribe();
        let progress = rx
            .wait_for(|p| p.len > start || p.done.is_some())
            .await
            .map(|p| p.clone())
            .unwrap_or_else(|_| GrowthProgress {
                len: 0,
                done: Some(Err(FsError::Abandoned)),
            });
        if progress.len <= start {
            if let Some(Err(e)) = progress.done {
                return Err(e);
            }
        }
        let stored = match &*self.released.lock() {
            Released::Memory(entries) => {
                return Ok(entries
                    .iter()
                    .enumerate()
                    .skip(start)
                    .take(limit)
                    .map(|(i, e)| (i as u64 + 1, e.clone()))
                    .collect())
            }
            Released::Stored(stored, _) => stored.clone(),
        };
        Ok(blocking(|| stored.page(start as u64, limit)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str) -> (String, Entry) {
        (format!("p/{name}"), Entry::test_file(name))
    }

    fn dir(name: &str) -> (String, Entry) {
        (format!("p/{name}/"), Entry::test_dir(name))
    }

    fn names(v: &[(u64, Entry)]) -> Vec<&str> {
        v.iter().map(|(_, e)| e.name.as_str()).collect()
    }

    #[tokio::test]
    async fn entries_are_readable_page_by_page_and_the_directory_wins() {
        let g = GrowingListing::default();
        // Page 1 ends between the file `a` and the prefix `a/`.
        g.add_page(vec![], vec![file("0"), file("a"), file("a.txt")], "p/a.txt");
        assert_eq!(
            names(&g.read(0, 10).await.unwrap()),
            ["0"],
            "`a` and `a.txt` are held: `a/` may follow"
        );
        g.add_page(vec![dir("a")], vec![file("b")], "p/b");
        let all = g.read(0, 10).await.unwrap();
        assert_eq!(
            names(&all),
            ["0", "a", "a.txt"],
            "the directory `a` replaced the file `a`"
        );
        assert!(all[1].1.is_dir());
        g.finish(Ok(()));
        assert_eq!(names(&g.read(3, 10).await.unwrap()), ["b"]);
        assert!(g.read(4, 10).await.unwrap().is_empty(), "the end");
    }

    #[tokio::test]
    async fn the_directory_wins_on_the_same_page_too() {
        let g = GrowingListing::default();
        g.add_page(vec![dir("dup")], vec![file("dup"), file("z")], "p/z");
        g.finish(Ok(()));
        let all = g.read(0, 10).await.unwrap();
        assert_eq!(names(&all), ["dup", "z"]);
        assert!(all[0].1.is_dir());
    }

    #[tokio::test]
    async fn a_reader_waits_for_the_next_page() {
        let g = std::sync::Arc::new(GrowingListing::default());
        let reader = {
            let g = g.clone();
            tokio::spawn(async move { g.read(0, 10).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!reader.is_finished());
        g.add_page(vec![dir("x")], vec![], "p/x/");
        assert_eq!(names(&reader.await.unwrap().unwrap()), ["x"]);
    }

    #[tokio::test]
    async fn a_failed_listing_fails_readers_past_what_arrived() {
        let g = GrowingListing::default();
        g.add_page(vec![dir("x")], vec![], "p/x/");
        g.finish(Err(FsError::NotFound));
        assert_eq!(g.read(0, 10).await.unwrap().len(), 1);
        assert!(g.read(1, 10).await.is_err());
    }
}
