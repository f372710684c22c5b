//! Where fetched units are kept in memory: the block cache (LRU, weighted
//! by bytes) and the units *held* for readers ahead of them, outside the LRU
//! order until they are read or no reader wants them (see [`super`]); and
//! which bytes of an object each unit covers.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use super::part_get::{PartTask, Pending};
use super::{Fetcher, ObjectVersion, SEGMENT_BLOCKS};
use crate::store::ObjectStore;

/// What is cached under one key: a block or a whole segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Unit {
    Block(u64),
    Segment(u64),
}

pub(super) type UnitKey = (Arc<str>, Arc<str>, Unit);

/// Where [`Fetcher::find`] found the unit holding a byte.
pub(super) enum Found {
    Cached(Unit, Bytes),
    Pending(Unit, Pending),
    Missing,
}

impl<S: ObjectStore> Fetcher<S> {
    pub(super) fn insert(&self, key: UnitKey, data: Bytes) {
        let len = data.len() as u64;
        self.cache.insert(key, data);
        let unevicted = self.unevicted.fetch_add(len, Ordering::Relaxed) + len;
        if unevicted >= self.evict_every {
            self.unevicted.store(0, Ordering::Relaxed);
            self.cache.run_pending_tasks();
        }
    }

    /// Keeps a unit fetched ahead of a reader until it is read; into the
    /// cache at once if the held units already fill their budget.
    pub(super) fn hold(&self, key: UnitKey, data: Bytes) {
        let len = data.len() as u64;
        let fits = self
            .held_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                (held + len <= self.held_limit).then_some(held + len)
            })
            .is_ok();
        if !fits {
            self.insert(key, data);
            return;
        }
        if let Some(old) = self.held.lock().insert(key, data) {
            self.held_bytes
                .fetch_sub(old.len() as u64, Ordering::Relaxed);
        }
    }

    /// The unit under `key` if cached or held. A held unit that a read
    /// ending at `until` consumes to its end moves into the cache; one read
    /// only partly (the kernel reads a segment in several pieces) stays
    /// held for the rest.
    pub(super) fn lookup(&self, key: &UnitKey, until: u64) -> Option<Bytes> {
        if let Some(data) = self.cache.get(key) {
            return Some(data);
        }
        let mut held = self.held.lock();
        if until < self.unit_range(key.2).end {
            return held.get(key).cloned();
        }
        let data = held.remove(key)?;
        drop(held);
        self.held_bytes
            .fetch_sub(data.len() as u64, Ordering::Relaxed);
        self.insert(key.clone(), data.clone());
        Some(data)
    }

    /// Moves the held units that `wanted` (given the unit's object key, ETag
    /// and byte range) no longer wants into the cache: their reader seeked
    /// away, went idle or closed.
    pub fn release_ahead(&self, wanted: impl Fn(&str, &str, Range<u64>) -> bool) {
        let released: Vec<(UnitKey, Bytes)> = {
            let mut held = self.held.lock();
            let gone: Vec<UnitKey> = held
                .keys()
                .filter(|k| {
                    let range = self.unit_range(k.2);
                    !wanted(&k.0, &k.1, range)
                })
                .cloned()
                .collect();
            gone.into_iter()
                .filter_map(|k| held.remove(&k).map(|d| (k, d)))
                .collect()
        };
        for (key, data) in released {
            self.held_bytes
                .fetch_sub(data.len() as u64, Ordering::Relaxed);
            self.insert(key, data);
        }
        // Read-ahead still in flight that nobody wants: stop fetching it.
        // Its units stop being pending at once (a reader that looks for one
        // fetches it anew; one already waiting is woken and looks again).
        let mut pending = self.pending.lock();
        let mut parts: HashMap<*const PartTask, (Arc<PartTask>, bool)> = HashMap::new();
        for (k, p) in pending.iter() {
            if p.part.ahead {
                let wanted_now = wanted(&k.0, &k.1, self.unit_range(k.2));
                let entry = parts
                    .entry(Arc::as_ptr(&p.part))
                    .or_insert_with(|| (p.part.clone(), false));
                entry.1 |= wanted_now;
            }
        }
        let cancel: Vec<Arc<PartTask>> = parts
            .into_values()
            .filter(|(_, wanted_now)| !wanted_now)
            .map(|(part, _)| part)
            .collect();
        if cancel.is_empty() {
            return;
        }
        pending.retain(|_, p| !cancel.iter().any(|c| Arc::ptr_eq(c, &p.part)));
        drop(pending);
        for part in cancel {
            if let Some(abort) = part.abort.get() {
                abort.abort();
            }
            self.stats.cancelled_gets.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The bytes a unit covers, without clipping to an object's size.
    fn unit_range(&self, unit: Unit) -> Range<u64> {
        match unit {
            Unit::Block(b) => b * self.block..(b + 1) * self.block,
            Unit::Segment(s) => s * self.segment()..(s + 1) * self.segment(),
        }
    }

    pub(super) fn segment(&self) -> u64 {
        self.block * SEGMENT_BLOCKS
    }

    pub(super) fn key(obj: &ObjectVersion, unit: Unit) -> UnitKey {
        (obj.key.clone(), obj.etag.clone(), unit)
    }

    /// The bytes of `obj` that `unit` holds.
    pub(super) fn bytes_of(&self, obj: &ObjectVersion, unit: Unit) -> Range<u64> {
        let (start, len) = match unit {
            Unit::Block(b) => (b * self.block, self.block),
            Unit::Segment(s) => (s * self.segment(), self.segment()),
        };
        start..(start + len).min(obj.size)
    }

    pub(super) fn present(&self, key: &UnitKey, pending: &HashMap<UnitKey, Pending>) -> bool {
        pending.contains_key(key)
            || self.cache.contains_key(key)
            || self.held.lock().contains_key(key)
    }

    /// The cached or pending unit holding byte `at` of `obj`, if any:
    /// its segment if that is there, else its block.
    pub(super) fn find(&self, obj: &ObjectVersion, at: u64, until: u64) -> Found {
        let seg = Unit::Segment(at / self.segment());
        let block = Unit::Block(at / self.block);
        for unit in [seg, block] {
            if let Some(data) = self.lookup(&Self::key(obj, unit), until) {
                return Found::Cached(unit, data);
            }
        }
        {
            let pending = self.pending.lock();
            for unit in [seg, block] {
                if let Some(p) = pending.get(&Self::key(obj, unit)) {
                    return Found::Pending(unit, p.clone());
                }
            }
        }
        // A unit may have arrived between the two looks (it enters the
        // cache or the held units before it stops being pending).
        for unit in [seg, block] {
            if let Some(data) = self.lookup(&Self::key(obj, unit), until) {
                return Found::Cached(unit, data);
            }
        }
        Found::Missing
    }
}
