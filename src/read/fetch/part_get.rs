//! Part GETs: one task per part. Its units are *pending* until each
//! arrives (from the disk cache, or from one ranged GET per run of units
//! not on disk, within the global request limit), enters the cache or the
//! held units, and wakes the readers waiting for it; however the task ends,
//! the units it did not deliver stop being pending.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;

use super::block_cache::{Unit, UnitKey};
use super::disk_tier::disk_io;
use super::{Fetcher, ObjectVersion};
use crate::store::{ObjectStore, StoreError};

/// How far one ranged GET has got. Arrived units are in the cache; they are
/// not kept here too, so units the cache evicts while the GET runs are
/// freed at once (a waiter that finds its unit evicted fetches it again).
#[derive(Default)]
pub(super) struct PartProgress {
    /// Units that have arrived (and entered the cache), in order.
    pub(super) arrived: usize,
    /// Set when the GET has ended; with `error` if it failed.
    pub(super) ended: bool,
    pub(super) error: Option<StoreError>,
}

/// A unit being fetched: the part that brings it, and where it is in it.
#[derive(Clone)]
pub(super) struct Pending {
    pub(super) progress: watch::Receiver<PartProgress>,
    /// Position of the unit among the part's units.
    pub(super) index: usize,
    /// The part's task, to cancel read-ahead no reader wants any more.
    pub(super) part: Arc<PartTask>,
}

/// A running ranged GET.
pub(super) struct PartTask {
    /// Set right after the task is spawned.
    pub(super) abort: std::sync::OnceLock<tokio::task::AbortHandle>,
    /// Fetched ahead of a reader (may be cancelled when unwanted).
    pub(super) ahead: bool,
}

impl<S: ObjectStore> Fetcher<S> {
    pub(super) fn spawn_part(
        self: &Arc<Self>,
        obj: &Arc<ObjectVersion>,
        units: Vec<Unit>,
        ahead: bool,
        pending: &mut HashMap<UnitKey, Pending>,
    ) {
        let (tx, rx) = watch::channel(PartProgress::default());
        let ranges: Vec<Range<u64>> = units.iter().map(|&u| self.bytes_of(obj, u)).collect();
        let pieces: Vec<u64> = ranges.iter().map(|r| r.end - r.start).collect();
        let me = self.clone();
        let task_obj = obj.clone();
        let task_units = units.clone();
        let part = Arc::new(PartTask {
            abort: std::sync::OnceLock::new(),
            ahead,
        });
        let task_part = part.clone();
        // Spawned while `pending` is locked: the task cannot unregister its
        // units (which needs that lock) before they are registered below.
        let task = tokio::spawn(async move {
            let (obj, units, part) = (task_obj, task_units, task_part);
            // Unregisters the pending units however the task ends, so a
            // failed or panicked fetch is retried by the next reader
            // instead of being waited on forever.
            let delivered = AtomicUsize::new(0);
            let clear = ClearPending {
                fetcher: &me,
                obj: &obj,
                units: &units,
                part: &part,
                delivered: &delivered,
            };
            let result = {
                // Places one arrived unit (from the disk cache or S3).
                let mut place = |data: Bytes| {
                    let next = delivered.load(Ordering::Relaxed);
                    // Into the cache before the unit stops being pending and
                    // before the waiters wake: a reader always finds it in
                    // one place or the other. Once it is no longer pending,
                    // a reader that finds it evicted fetches it again.
                    let key = Self::key(&obj, units[next]);
                    if ahead {
                        me.hold(key, data);
                    } else {
                        me.insert(key, data);
                    }
                    me.unregister(&obj, &units[next..next + 1], &part);
                    delivered.store(next + 1, Ordering::Relaxed);
                    tx.send_modify(|p| p.arrived += 1);
                };
                me.fetch_part(&obj, &units, &ranges, &pieces, ahead, &mut place)
                    .await
            };
            drop(clear);
            tx.send_modify(|p| {
                p.ended = true;
                p.error = result.err();
            });
        });
        let _ = part.abort.set(task.abort_handle());
        for (index, &unit) in units.iter().enumerate() {
            pending.insert(
                Self::key(obj, unit),
                Pending {
                    progress: rx.clone(),
                    index,
                    part: part.clone(),
                },
            );
        }
    }

    /// Fetches `units` (of byte ranges `ranges`, lengths `pieces`) in order:
    /// each from the disk cache if it holds it, runs of the others with one
    /// ranged GET each (stored on disk as they arrive).
    async fn fetch_part(
        self: &Arc<Self>,
        obj: &ObjectVersion,
        units: &[Unit],
        ranges: &[Range<u64>],
        pieces: &[u64],
        ahead: bool,
        place: &mut (dyn FnMut(Bytes) + Send),
    ) -> Result<(), StoreError> {
        let mut i = 0;
        let mut hinted = false;
        while i < units.len() {
            let from_segment = self.blocks_from_disk_segment(obj, &units[i..], &ranges[i..], ahead);
            if !from_segment.is_empty() {
                i += from_segment.len();
                from_segment.into_iter().for_each(&mut *place);
                continue;
            }
            if let Some(data) = self.read_from_disk(obj, units[i], pieces[i], ahead) {
                // Blocks cached on their own: the next ones likely are too.
                if !hinted && matches!(units[i], Unit::Block(_)) {
                    hinted = true;
                    disk_io(ahead, || self.will_need(obj, &units[i + 1..]));
                }
                place(data);
                i += 1;
                continue;
            }
            let mut end = i + 1;
            while end < units.len() && !self.on_disk(obj, units[end]) {
                end += 1;
            }
            let queued = Counted::new(&self.stats.gets_queued);
            let _permit = self.permits.acquire().await;
            drop(queued);
            let _running = Counted::new(&self.stats.gets_running);
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            tracing::trace!(key = %obj.key, start = ranges[i].start, end = ranges[end - 1].end, ahead, "GET");
            let mut at = i;
            let mut deliver = |data: Bytes| {
                self.stats
                    .fetched_bytes
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                self.store_on_disk(obj, units[at], &data);
                at += 1;
                place(data);
            };
            self.store
                .get_range(
                    &obj.key,
                    &obj.etag,
                    ranges[i].start..ranges[end - 1].end,
                    &pieces[i..end],
                    &mut deliver,
                )
                .await?;
            i = end;
        }
        Ok(())
    }

    /// Unregisters `units` as pending in `part` (not in a later part that
    /// fetches them again).
    fn unregister(&self, obj: &ObjectVersion, units: &[Unit], part: &Arc<PartTask>) {
        // Also runs while a panic unwinds: a poisoned lock must not abort.
        let mut pending = self.pending.lock();
        for &unit in units {
            let key = Self::key(obj, unit);
            if pending
                .get(&key)
                .is_some_and(|p| Arc::ptr_eq(&p.part, part))
            {
                pending.remove(&key);
            }
        }
    }
}

struct ClearPending<'a, S: ObjectStore> {
    fetcher: &'a Fetcher<S>,
    obj: &'a ObjectVersion,
    units: &'a [Unit],
    part: &'a Arc<PartTask>,
    /// Units delivered (and unregistered) already.
    delivered: &'a AtomicUsize,
}

impl<S: ObjectStore> Drop for ClearPending<'_, S> {
    fn drop(&mut self) {
        let delivered = self.delivered.load(Ordering::Relaxed);
        self.fetcher
            .unregister(self.obj, &self.units[delivered..], self.part);
    }
}

/// Counts itself in a gauge while it lives.
struct Counted<'a>(&'a AtomicU64);

impl<'a> Counted<'a> {
    fn new(gauge: &'a AtomicU64) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Counted(gauge)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
