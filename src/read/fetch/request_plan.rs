//! Request planning: which units a requested range needs fetched (whole
//! segments where none of their blocks is cached or pending, blocks
//! elsewhere), and runs of missing units cut into parts of `part_size`.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use super::block_cache::{Unit, UnitKey};
use super::part_get::Pending;
use super::{Fetcher, ObjectVersion, SEGMENT_BLOCKS};
use crate::store::ObjectStore;

impl<S: ObjectStore> Fetcher<S> {
    pub(super) fn request_units(
        self: &Arc<Self>,
        obj: &Arc<ObjectVersion>,
        range: Range<u64>,
        ahead: bool,
    ) {
        let range = range.start..range.end.min(obj.size);
        if ahead && self.continues_on_disk(obj, range.start) {
            return self.ask_disk_ahead(obj, range);
        }
        if range.is_empty() {
            return;
        }
        let blocks_total = obj.size.div_ceil(self.block);
        let end = range.end.div_ceil(self.block);
        // Segments only pay off when a part can hold one.
        let segments = self.part_size >= self.segment();
        let mut pending = self.pending.lock();
        let mut run: Vec<Unit> = Vec::new();
        let mut b = range.start / self.block;
        while b < end {
            let seg = b / SEGMENT_BLOCKS;
            let seg_start = seg * SEGMENT_BLOCKS;
            let seg_end = (seg_start + SEGMENT_BLOCKS).min(blocks_total);
            if self.present(&Self::key(obj, Unit::Segment(seg)), &pending) {
                self.spawn_run(obj, std::mem::take(&mut run), ahead, &mut pending);
                b = seg_end;
                continue;
            }
            let whole = segments
                && b == seg_start
                && end >= seg_end
                && (seg_start..seg_end)
                    .all(|x| !self.present(&Self::key(obj, Unit::Block(x)), &pending));
            if whole {
                run.push(Unit::Segment(seg));
                b = seg_end;
                continue;
            }
            if self.present(&Self::key(obj, Unit::Block(b)), &pending) {
                self.spawn_run(obj, std::mem::take(&mut run), ahead, &mut pending);
            } else {
                run.push(Unit::Block(b));
            }
            b += 1;
        }
        self.spawn_run(obj, run, ahead, &mut pending);
    }

    /// Fetches a run of consecutive units, in parts of up to `part_size`.
    fn spawn_run(
        self: &Arc<Self>,
        obj: &Arc<ObjectVersion>,
        run: Vec<Unit>,
        ahead: bool,
        pending: &mut HashMap<UnitKey, Pending>,
    ) {
        let mut units = run.into_iter().peekable();
        while units.peek().is_some() {
            let mut part: Vec<Unit> = Vec::new();
            let mut bytes = 0;
            while let Some(&unit) = units.peek() {
                let Range { start, end } = self.bytes_of(obj, unit);
                let len = end - start;
                if !part.is_empty() && bytes + len > self.part_size {
                    break;
                }
                part.push(unit);
                bytes += len;
                units.next();
            }
            self.spawn_part(obj, part, ahead, pending);
        }
    }
}
