//! Background completion: an object the disk cache holds mostly, fetched
//! whole after its last handle closes, so that its next open is handed to
//! the kernel (passthrough) instead of going through the daemon.
//!
//! The rule: when the last handle of an object version closes and the disk
//! cache holds at least half of its bytes, and what it lacks is at most
//! `--data-cache-complete` (a size; zero turns this off), the missing
//! ranges are fetched one ranged GET at a time, each within the global
//! request limit, and written to the disk cache. No reader waits for them:
//! they start after the last close, take one request slot at a time, and
//! never enter the memory cache. One object is completed at a time; up to
//! 64 more wait their turn (one left out comes back at its next close).

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use tracing::debug;

use super::{Fetcher, ObjectVersion, DISK_WRITE_BACKLOG, SEGMENT_BLOCKS};
use crate::read::disk_cache::{UnitId, CHUNK};
use crate::store::ObjectStore;

/// Object versions waiting to be looked at, at most.
const COMPLETION_QUEUE: usize = 64;

/// Clears the completion task's flag when dropped.
struct Running<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Bytes one completion GET fetches at most (and holds until written).
const COMPLETION_GET: u64 = 8 << 20;

/// Whether an object with `missing` of its `size` bytes absent from the
/// disk cache is completed, with at most `limit` bytes to fetch.
pub(crate) fn worth_completing(size: u64, missing: u64, limit: u64) -> bool {
    missing > 0 && missing <= limit && missing * 2 <= size
}

impl<S: ObjectStore> Fetcher<S> {
    /// Queues `obj` to be completed in the disk cache when the rule above
    /// says so; returns at once. Must run inside the tokio runtime.
    pub fn complete_in_background(self: &Arc<Self>, obj: &Arc<ObjectVersion>) {
        if self.disk.is_none() || self.complete_limit == 0 {
            return;
        }
        {
            let mut queue = self.completion_queue.lock();
            let queued = queue.iter().any(|v| v.key == obj.key && v.etag == obj.etag);
            // A version left out comes back at its next close.
            if queued || queue.len() >= COMPLETION_QUEUE {
                return;
            }
            queue.push_back(obj.clone());
        }
        if self.completing.swap(true, Ordering::AcqRel) {
            return; // the running task takes it
        }
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                {
                    // Cleared however this ends, a panic included.
                    let _running = Running(&me.completing);
                    loop {
                        let next = me.completion_queue.lock().pop_front();
                        let Some(obj) = next else { break };
                        me.complete_one(&obj).await;
                    }
                }
                // One queued after the queue was found empty, but before
                // the flag was cleared, would wait for its next close.
                if me.completion_queue.lock().is_empty()
                    || me.completing.swap(true, Ordering::AcqRel)
                {
                    break;
                }
            }
        });
    }

    /// Completes `obj` if the rule says so.
    async fn complete_one(&self, obj: &Arc<ObjectVersion>) {
        let Some(disk) = self.disk.clone() else {
            return;
        };
        self.disk_writes_settled().await;
        let missing = {
            let obj = obj.clone();
            tokio::task::spawn_blocking(move || disk.missing_ranges(&obj.key, &obj.etag, obj.size))
                .await
                .ok()
                .flatten()
        };
        let Some(missing) = missing else { return };
        let bytes: u64 = missing.iter().map(|r| r.end - r.start).sum();
        if !worth_completing(obj.size, bytes, self.complete_limit) {
            return;
        }
        if let Some(stats) = self.data_cache_stats() {
            stats.completions.fetch_add(1, Ordering::Relaxed);
        }
        if let Err(e) = self.fetch_to_disk(obj, missing).await {
            debug!(key = %obj.key, error = %e, "completing a cached object stopped");
        }
    }

    /// Waits (a few seconds at most) until the units readers fetched have
    /// reached the disk: until then they look missing, and would be
    /// fetched twice.
    async fn disk_writes_settled(&self) {
        for _ in 0..250 {
            if self.disk_writes.available_permits() == DISK_WRITE_BACKLOG as usize {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Fetches `ranges` of `obj` and writes them to the disk cache.
    async fn fetch_to_disk(
        &self,
        obj: &ObjectVersion,
        ranges: Vec<Range<u64>>,
    ) -> Result<(), crate::store::StoreError> {
        let disk = self.disk.clone().expect("completion needs the disk cache");
        for range in ranges {
            let mut at = range.start;
            while at < range.end {
                let end = (at + COMPLETION_GET).min(range.end);
                // Pieces of a segment: whole chunks, the last one maybe cut
                // at the object's end.
                let piece = SEGMENT_BLOCKS * CHUNK;
                let pieces: Vec<u64> = (at..end)
                    .step_by(piece as usize)
                    .map(|c| piece.min(end - c))
                    .collect();
                let mut got: Vec<Bytes> = Vec::with_capacity(pieces.len());
                {
                    let _permit = self.permits.acquire().await;
                    self.stats.requests.fetch_add(1, Ordering::Relaxed);
                    let mut deliver = |data: Bytes| got.push(data);
                    self.store
                        .get_range(&obj.key, &obj.etag, at..end, &pieces, &mut deliver)
                        .await?;
                }
                let fetched: u64 = got.iter().map(|b| b.len() as u64).sum();
                self.stats
                    .fetched_bytes
                    .fetch_add(fetched, Ordering::Relaxed);
                disk.stats
                    .completion_bytes
                    .fetch_add(fetched, Ordering::Relaxed);
                let (disk, key, etag) = (disk.clone(), obj.key.clone(), obj.etag.clone());
                let start = at;
                tokio::task::spawn_blocking(move || {
                    let mut offset = start;
                    for data in got {
                        let id = UnitId {
                            key: &key,
                            etag: &etag,
                            offset,
                            len: data.len() as u64,
                        };
                        disk.write(&id, &data);
                        offset += data.len() as u64;
                    }
                })
                .await
                .map_err(|e| crate::store::StoreError::Other(e.to_string()))?;
                at = end;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::worth_completing;

    #[test]
    fn only_objects_mostly_cached_and_missing_little_are_completed() {
        const M: u64 = 1 << 20;
        assert!(worth_completing(100 * M, 40 * M, 256 * M));
        assert!(worth_completing(100 * M, 50 * M, 256 * M));
        assert!(
            !worth_completing(100 * M, 51 * M, 256 * M),
            "less than half cached"
        );
        assert!(!worth_completing(100 * M, 0, 256 * M), "whole already");
        assert!(
            !worth_completing(2000 * M, 300 * M, 256 * M),
            "too much to fetch"
        );
        assert!(!worth_completing(100 * M, 10 * M, 0), "turned off");
    }
}
