//! `GrowingListing`: a directory listing readable while it is being fetched.
//!
//! The first `readdir` of a directory nobody has listed yet should not wait
//! for every page of a big listing. While a listing is fetched, its entries
//! are appended here page by page, and directory streams read them as they
//! arrive. The order is arrival order, not sorted (readdir promises no order);
//! it only ever grows, so a stream's offsets stay valid.
//!
//! One subtlety is kept exact: when a key `a` and a prefix `a/` both exist,
//! the directory wins. S3 returns `a` before `a/`, possibly on an earlier
//! page, so a file is held back until the listing has moved past `a/`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tokio::sync::watch;

use super::Entry;
use crate::error::FsError;

#[derive(Debug, Clone, Default)]
struct Progress {
    len: usize,
    /// Set when the listing has ended, with its outcome.
    done: Option<Result<(), FsError>>,
}

pub struct GrowingListing {
    entries: Mutex<Vec<Entry>>,
    progress: watch::Sender<Progress>,
    /// Files not yet released, by their full key.
    held: Mutex<BTreeMap<String, Entry>>,
}

impl Default for GrowingListing {
    fn default() -> Self {
        GrowingListing {
            entries: Mutex::new(Vec::new()),
            progress: watch::Sender::new(Progress::default()),
            held: Mutex::new(BTreeMap::new()),
        }
    }
}

impl GrowingListing {
    /// Adds one page: its directories (with their full prefixes) and files
    /// (with their full keys). `page_end` is the greatest key or prefix the
    /// listing has returned so far.
    pub fn add_page(
        &self,
        dirs: Vec<(String, Entry)>,
        files: Vec<(String, Entry)>,
        page_end: &str,
    ) {
        let mut held = self.held.lock().unwrap();
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
        let rest: Vec<Entry> = std::mem::take(&mut *self.held.lock().unwrap())
            .into_values()
            .collect();
        if outcome.is_ok() {
            self.append(rest);
        }
        self.progress.send_modify(|p| p.done = Some(outcome));
    }

    fn append(&self, new: Vec<Entry>) {
        if new.is_empty() {
            return;
        }
        let len = {
            let mut entries = self.entries.lock().unwrap();
            entries.extend(new);
            entries.len()
        };
        self.progress.send_modify(|p| p.len = len);
    }

    /// Entries from index `start`, at most `limit`, waiting until at least
    /// one is there or the listing has ended. Empty means the end.
    pub async fn read(&self, start: usize, limit: usize) -> Result<Vec<Entry>, FsError> {
        let mut rx = self.progress.subscribe();
        let progress = rx
            .wait_for(|p| p.len > start || p.done.is_some())
            .await
            .map(|p| p.clone())
            .unwrap_or_else(|_| Progress {
                len: 0,
                done: Some(Err(FsError::Abandoned)),
            });
        if progress.len <= start {
            if let Some(Err(e)) = progress.done {
                return Err(e);
            }
        }
        let entries = self.entries.lock().unwrap();
        Ok(entries.iter().skip(start).take(limit).cloned().collect())
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

    fn names(v: &[Entry]) -> Vec<&str> {
        v.iter().map(|e| e.name.as_str()).collect()
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
        assert!(all[1].is_dir());
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
        assert!(all[0].is_dir());
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
