//! Eviction from the data cache: one pass over its directory that deletes
//! the least recently used objects, whole, until the cache is back under
//! its size and the disk keeps its minimum free space (the rule is in the
//! doc of [`super`]).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use tracing::{debug, info};

use super::DiskCacheStats;

/// One eviction pass over the directory.
pub(super) struct Sweep {
    pub dir: PathBuf,
    pub limit: u64,
    pub min_free: u64,
    pub stats: Arc<DiskCacheStats>,
    pub sweeping: Arc<AtomicBool>,
}

/// One object's files as a sweep sees them.
#[derive(Default)]
struct SweptObject {
    used: Option<SystemTime>,
    bytes: u64,
    /// Map first: without it the data is not used, whatever is left.
    paths: Vec<PathBuf>,
}

impl Sweep {
    pub fn run(self) {
        let mut objects: HashMap<String, SweptObject> = HashMap::new();
        let mut old_layout = 0u64;
        if let Ok(subdirs) = std::fs::read_dir(&self.dir) {
            for sub in subdirs.flatten() {
                let Ok(entries) = std::fs::read_dir(sub.path()) else {
                    continue;
                };
                for e in entries.flatten() {
                    let Ok(meta) = e.metadata() else { continue };
                    if !meta.is_file() {
                        continue;
                    }
                    let path = e.path();
                    let name = e.file_name().to_string_lossy().into_owned();
                    let (stem, is_map) = match name.rsplit_once('.') {
                        Some((stem, "map")) => (stem.to_owned(), true),
                        Some((stem, "data")) => (stem.to_owned(), false),
                        _ => {
                            // A unit file of the older layout (or its
                            // temporary): never read by this version.
                            if std::fs::remove_file(&path).is_ok() {
                                old_layout += 1;
                            }
                            continue;
                        }
                    };
                    let obj = objects.entry(stem).or_default();
                    let used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    obj.used = Some(obj.used.map_or(used, |u| u.max(used)));
                    // Data files are sparse: what they hold on disk counts.
                    obj.bytes += if is_map {
                        meta.len()
                    } else {
                        meta.blocks() * 512
                    };
                    match is_map {
                        true => obj.paths.insert(0, path),
                        false => obj.paths.push(path),
                    }
                }
            }
        }
        if old_layout > 0 {
            info!(
                files = old_layout,
                "data cache: deleted the files of the older one-file-per-unit layout"
            );
        }
        let mut objects: Vec<SweptObject> = objects.into_values().collect();
        let mut total: u64 = objects.iter().map(|o| o.bytes).sum();
        let free = free_space(&self.dir).map(|(f, _)| f).unwrap_or(u64::MAX);
        // Over the limit: down to 90% of it. Disk short of its minimum
        // free space: give back what is missing, as far as the cache can.
        let mut to_free = total.saturating_sub(self.limit * 9 / 10);
        if total > self.limit || free < self.min_free {
            to_free = to_free.max(self.min_free.saturating_sub(free));
        } else {
            to_free = 0;
        }
        if to_free > 0 {
            objects.sort_unstable_by_key(|o| o.used);
            let mut freed = 0;
            for obj in &objects {
                if freed >= to_free {
                    break;
                }
                for path in &obj.paths {
                    match std::fs::remove_file(path) {
                        Ok(()) => {}
                        // Another sweep (or mount) freed it already.
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(_) => continue,
                    }
                }
                freed += obj.bytes;
                self.stats.evictions.fetch_add(1, Ordering::Relaxed);
            }
            total = total.saturating_sub(freed);
            debug!(freed, total, "data cache swept");
        }
        self.stats.size.store(total, Ordering::Relaxed);
        self.sweeping.store(false, Ordering::Release);
    }
}

/// Free and total bytes of the filesystem holding `dir`.
pub(super) fn free_space(dir: &Path) -> std::io::Result<(u64, u64)> {
    let st = nix::sys::statvfs::statvfs(dir)?;
    let frsize = st.fragment_size() as u64;
    Ok((
        st.blocks_available() as u64 * frsize,
        st.blocks() as u64 * frsize,
    ))
}
