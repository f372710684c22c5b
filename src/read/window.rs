//! `ReadWindow`: turns one handle's stream of `read(offset, len)` calls into
//! what to fetch now (the demand) and what to fetch ahead (the read-ahead).
//!
//! Pure logic, no I/O, so the policy can be tested exactly:
//! - Small objects are fetched whole on the first read.
//! - A read that does not continue the previous ones is *random*: fetch
//!   only what was asked, rounded out to the block size. A random read in
//!   the last part of the file fetches the whole tail in one request
//!   (columnar footers are read several times, in small pieces).
//! - Once a run of contiguous reads passes `sequential_after` bytes the
//!   handle is *sequential*: a window starting at `initial_window` is
//!   requested ahead of the reader and doubles, up to `max_window`, each
//!   time the reader gets within one window of the end of what is requested.
//!   Windows end on segment boundaries, so after the first one they fetch
//!   whole segments.
//! - Small backward re-reads and forward jumps inside the requested window
//!   (the kernel's own readahead reorders requests) keep the stream going;
//!   anything else is a seek and starts over with a random read.
//! - A *direct* handle (a columnar file, opened without the kernel's page
//!   cache, so its reads are exactly the engine's, split in pieces of at
//!   most 1 MiB) turns sequential only after two reads of its run each
//!   arrived with no other read of the handle in flight: the pieces of one
//!   large read arrive together and are fetched together, with nothing
//!   ahead (an engine reading a column chunk wants that chunk, not what
//!   follows it), while a reader reading on in turn gets read-ahead. Its
//!   tail is one block: a footer read is the engine's, not the kernel's.

use std::ops::Range;

use super::fetch::SEGMENT_BLOCKS;

/// Tunables of the read-ahead policy.
#[derive(Debug, Clone, Copy)]
pub struct WindowConfig {
    /// Unit of fetching and caching; demand ranges are rounded to it.
    pub block: u64,
    pub initial_window: u64,
    pub max_window: u64,
    /// Objects up to this size are fetched whole on the first read.
    pub small_object: u64,
    /// Random reads within this distance of the end fetch the whole tail.
    pub tail: u64,
    /// Contiguous bytes read before read-ahead starts.
    pub sequential_after: u64,
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig {
            block: 64 * 1024,
            initial_window: 1024 * 1024,
            max_window: 64 * 1024 * 1024,
            small_object: 2 * 1024 * 1024,
            tail: 1024 * 1024,
            sequential_after: 512 * 1024,
        }
    }
}

/// What to fetch for one read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadPlan {
    /// Needed to answer this read; block-aligned (the end may be the file size).
    pub demand: Range<u64>,
    /// To request ahead of the reader, if anything.
    pub ahead: Option<Range<u64>>,
}

/// Backward distance a read may jump and still count as continuing the
/// stream: the kernel issues readahead requests slightly out of order.
const BACKWARD_SLACK: u64 = 8 * 1024 * 1024;

/// How far behind the furthest read a stream may still have reads in
/// flight (the kernel keeps several readahead requests going at once); read-
/// ahead there is still wanted.
const REORDER_SLACK: u64 = 8 * 1024 * 1024;

/// How far past another reader's start a stream that ran into it goes
/// without read-ahead (see [`ahead_limit`]).
const CROSSING_GRACE: u64 = 4 * 1024 * 1024;

/// Where read-ahead of a sequential stream that began at `start` and has
/// read up to `position` must stop, given where the other sequential
/// readers of the same object began (`others`, open or closed).
///
/// Readers splitting an object into ranges each stop at the next one's
/// start, so read-ahead stops there: the bytes after it are that reader's
/// (read already, or about to be), and fetching them again for this one is
/// waste when it stops at the boundary. The kernel's own readahead still
/// carries a stream a little past its boundary; a stream that has just run
/// into another's range therefore gets no read-ahead at all until it is
/// [`CROSSING_GRACE`] past that start, which only a reader that really goes
/// on reaches. Readers that began at or after another's start (the same
/// region read twice, a reader that trails another) are not limited.
pub fn ahead_limit(start: u64, position: u64, others: &[u64]) -> u64 {
    others
        .iter()
        .filter_map(|&other| {
            if other > position {
                Some(other)
            } else if start < other && position < other + CROSSING_GRACE {
                Some(position)
            } else {
                None
            }
        })
        .min()
        .unwrap_or(u64::MAX)
}

#[derive(Debug, Clone)]
pub struct ReadWindow {
    cfg: WindowConfig,
    size: u64,
    /// End of the furthest read so far in the current run.
    next: Option<u64>,
    /// Where the current run of contiguous reads began.
    run_start: u64,
    window: u64,
    /// End of what has been requested ahead of the reader.
    ahead_to: u64,
    /// Read-ahead does not go past this (see [`ReadWindow::limit_ahead`]).
    ahead_limit: u64,
    /// A direct handle (see the module docs).
    direct: bool,
    /// Reads of the current run that arrived with none other in flight.
    serial_reads: u32,
}

impl ReadWindow {
    pub fn new(cfg: WindowConfig, size: u64) -> Self {
        ReadWindow {
            cfg,
            size,
            next: None,
            run_start: 0,
            window: cfg.initial_window,
            ahead_to: 0,
            ahead_limit: u64::MAX,
            direct: false,
            serial_reads: 0,
        }
    }

    /// A window for a direct handle (see the module docs).
    pub fn direct(cfg: WindowConfig, size: u64) -> Self {
        ReadWindow {
            direct: true,
            ..ReadWindow::new(cfg, size)
        }
    }

    /// Where the current run of contiguous reads began.
    pub fn run_start(&self) -> u64 {
        self.run_start
    }

    /// Keeps read-ahead from going past `end`: another reader of the same
    /// object started there, so the bytes after it are that reader's (it
    /// has read them already, or will), and fetching them for this one
    /// would fetch them twice when this reader stops at the boundary, as
    /// readers of one object split into ranges do.
    pub fn limit_ahead(&mut self, end: u64) {
        self.ahead_limit = end;
    }

    pub fn is_sequential(&self) -> bool {
        self.next
            .is_some_and(|next| next.saturating_sub(self.run_start) >= self.cfg.sequential_after)
            && (!self.direct || self.serial_reads >= 2)
    }

    /// Bytes requested ahead of the reader's furthest position.
    pub fn ahead_bytes(&self) -> u64 {
        self.ahead_to.saturating_sub(self.next.unwrap_or(0))
    }

    /// The bytes this stream still wants of what it requested ahead: from
    /// the reader's position to the end of its read-ahead.
    pub fn wanted(&self) -> Option<Range<u64>> {
        let next = self.next?;
        // Reads reach the daemon out of order (the kernel's readahead has
        // several in flight), so bytes a little behind the furthest read may
        // still be waited for.
        let from = self.align_down(next.saturating_sub(REORDER_SLACK));
        Some(from..self.ahead_to.max(next))
    }

    /// Halves the window (not below the initial one): memory is short.
    pub fn shrink(&mut self) {
        self.window = (self.window / 2).max(self.cfg.initial_window);
    }

    /// Plans one read. `ahead_room` is how many bytes the memory budget
    /// still allows to be requested ahead; a window that does not fit is
    /// trimmed and the stream's window shrinks.
    pub fn plan(&mut self, offset: u64, len: u64, ahead_room: u64) -> ReadPlan {
        self.plan_read(offset, len, ahead_room, false)
    }

    /// [`ReadWindow::plan`] of a read that arrived while another read of the
    /// handle was in flight (`overlapping`), or not.
    pub fn plan_read(
        &mut self,
        offset: u64,
        len: u64,
        ahead_room: u64,
        overlapping: bool,
    ) -> ReadPlan {
        let end = offset.saturating_add(len).min(self.size);
        if offset >= self.size {
            return ReadPlan {
                demand: self.size..self.size,
                ahead: None,
            };
        }
        if self.size <= self.cfg.small_object {
            self.next = Some(end);
            return ReadPlan {
                demand: 0..self.size,
                ahead: None,
            };
        }

        let continues = match self.next {
            None => false,
            Some(next) => offset + BACKWARD_SLACK >= next && offset <= next.max(self.ahead_to),
        };
        if continues {
            self.next = Some(self.next.unwrap_or(0).max(end));
            self.serial_reads += u32::from(!overlapping);
        } else {
            // A seek: start over.
            self.run_start = offset;
            self.next = Some(end);
            self.window = self.cfg.initial_window;
            self.ahead_to = 0;
            self.serial_reads = u32::from(!overlapping);
        }

        let mut demand = self.align_down(offset)..self.align_up(end);
        if !self.is_sequential() {
            let tail_start = self.align_down(self.size.saturating_sub(self.tail()));
            if offset >= tail_start {
                demand = tail_start..self.size;
            }
            return ReadPlan {
                demand,
                ahead: None,
            };
        }

        // Sequential: keep the next window in flight before the reader gets there.
        self.ahead_to = self.ahead_to.max(demand.end);
        let mut ahead = None;
        let limit = self.size.min(self.ahead_limit.max(demand.end));
        if end + self.window > self.ahead_to && self.ahead_to < limit {
            let start = self.ahead_to;
            let room = ahead_room - ahead_room % self.cfg.block;
            let mut stop = (start + self.window.min(room)).min(limit);
            // End windows on segment boundaries, so later windows fetch
            // whole segments (which kernel reads are aligned to). Round up
            // when the budget allows: cutting a first window back would cost
            // one more round trip before the stream is ahead of the reader.
            let segment = self.cfg.block * SEGMENT_BLOCKS;
            if stop < limit && !stop.is_multiple_of(segment) {
                let up = (stop - stop % segment + segment).min(limit);
                if up - start <= room {
                    stop = up;
                } else if stop - stop % segment > start {
                    stop -= stop % segment;
                }
            }
            if room < self.window {
                // Memory is short: shrink instead of growing.
                self.shrink();
            } else {
                self.window = (self.window * 2).min(self.cfg.max_window);
            }
            if stop > start {
                ahead = Some(start..stop);
                self.ahead_to = stop;
            }
        }
        ReadPlan { demand, ahead }
    }

    fn tail(&self) -> u64 {
        match self.direct {
            true => self.cfg.block,
            false => self.cfg.tail.min(self.size / 8).max(self.cfg.block),
        }
    }

    fn align_down(&self, x: u64) -> u64 {
        x - x % self.cfg.block
    }

    fn align_up(&self, x: u64) -> u64 {
        x.div_ceil(self.cfg.block)
            .saturating_mul(self.cfg.block)
            .min(self.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: u64 = 1024;
    const M: u64 = 1024 * 1024;

    fn window(size: u64) -> ReadWindow {
        ReadWindow::new(WindowConfig::default(), size)
    }

    impl ReadWindow {
        /// Plans with no memory pressure.
        fn plan_all(&mut self, offset: u64, len: u64) -> ReadPlan {
            self.plan(offset, len, u64::MAX)
        }
    }

    #[test]
    fn a_direct_handle_reads_ahead_only_for_reads_made_in_turn() {
        let size = 64 * M;
        // One column chunk of 8 MiB read at once: its 1 MiB pieces arrive
        // together; nothing is fetched past them.
        let mut w = ReadWindow::direct(WindowConfig::default(), size);
        for i in 0..8 {
            let p = w.plan_read(10 * M + i * M, M, u64::MAX, i > 0);
            assert_eq!(p.ahead, None, "piece {i}");
        }
        // A lone 528 KiB chunk: no read-ahead either.
        let p = w.plan_read(30 * M, 528 * K, u64::MAX, false);
        assert_eq!(p.ahead, None);
        assert_eq!(p.demand, 30 * M..30 * M + 576 * K);
        // A reader reading on, one read after another, gets read-ahead.
        let p = w.plan_read(30 * M + 528 * K, 528 * K, u64::MAX, false);
        assert!(p.ahead.is_some(), "{p:?}");
        // A footer read fetches one block of tail, not a megabyte.
        let p = w.plan_read(size - 8, 8, u64::MAX, false);
        assert_eq!(p.demand, size - 64 * K..size);
        // An ordinary handle's tail is bigger.
        let mut w = window(size);
        assert_eq!(w.plan_all(size - 8, 8).demand, size - M..size);
    }

    #[test]
    fn read_ahead_stops_where_another_reader_of_the_object_started() {
        let mut w = ReadWindow::new(WindowConfig::default(), 1 << 30);
        w.limit_ahead(40 * M);
        let mut furthest = 0;
        let mut off = 32 * M;
        // A reader of the range [32M, 40M) and on past it.
        while off < 48 * M {
            let p = w.plan_all(off, 128 * K);
            if let Some(a) = p.ahead {
                furthest = furthest.max(a.end);
            }
            off += 128 * K;
        }
        assert_eq!(
            furthest,
            40 * M,
            "no read-ahead past the other reader's start"
        );
    }

    #[test]
    fn a_stream_that_runs_into_another_readers_range_reads_ahead_only_once_well_past_it() {
        // Readers of [0, 64M) and [64M, 128M); the first is near its end.
        assert_eq!(ahead_limit(0, 60 * M, &[64 * M]), 64 * M);
        // The kernel's readahead carries it 1 MiB past: no read-ahead there.
        assert_eq!(ahead_limit(0, 65 * M, &[64 * M]), 65 * M);
        // Well past the other's start, it is a reader that goes on.
        assert_eq!(ahead_limit(0, 70 * M, &[64 * M]), u64::MAX);
        assert_eq!(ahead_limit(0, 70 * M, &[64 * M, 128 * M]), 128 * M);
        // A reader of the same region, or one trailing another, is free.
        assert_eq!(ahead_limit(64 * M, 65 * M, &[64 * M]), u64::MAX);
        assert_eq!(ahead_limit(80 * M, 81 * M, &[64 * M]), u64::MAX);
        assert_eq!(ahead_limit(0, 10 * M, &[]), u64::MAX);
    }

    #[test]
    fn memory_pressure_trims_read_ahead_and_shrinks_the_window() {
        let mut w = window(1024 * M);
        let mut off = 0;
        while w.window < 16 * M {
            w.plan_all(off, 128 * K);
            off += 128 * K;
        }
        // Keep reading with only 2 MiB of room: requests fit the room,
        // and everything requested is contiguous with what came before.
        let mut last_end = w.ahead_to;
        for _ in 0..200 {
            let p = w.plan(off, 128 * K, 2 * M);
            if let Some(a) = p.ahead {
                assert!(a.end - a.start <= 2 * M);
                assert_eq!(a.start, last_end, "nothing may be skipped");
                last_end = a.end;
            }
            off += 128 * K;
        }
        assert!(
            w.window <= 4 * M,
            "the window shrank from 16 MiB to {}",
            w.window
        );
        // No room at all: no read-ahead, and nothing beyond the demand is
        // marked as requested.
        let before = w.ahead_to;
        let p = w.plan(off, 128 * K, 0);
        assert_eq!(p.ahead, None);
        assert_eq!(w.ahead_to, before.max(p.demand.end));
    }

    #[test]
    fn small_objects_are_fetched_whole() {
        let mut w = window(300 * K);
        assert_eq!(w.plan_all(100 * K, 4 * K).demand, 0..300 * K);
    }

    #[test]
    fn random_reads_fetch_only_what_was_asked_rounded_to_blocks() {
        let mut w = window(1024 * M);
        let p = w.plan_all(10 * M + 5, 256 * K);
        assert_eq!(p.demand, 10 * M..10 * M + 320 * K);
        assert_eq!(p.ahead, None);
        // An aligned random read is fetched exactly.
        let p = w.plan_all(500 * M, 256 * K);
        assert_eq!(p.demand, 500 * M..500 * M + 256 * K);
        assert_eq!(p.ahead, None);
    }

    #[test]
    fn a_random_read_split_in_two_by_the_kernel_does_not_start_read_ahead() {
        let mut w = window(1024 * M);
        assert_eq!(w.plan_all(300 * M, 128 * K).ahead, None);
        assert_eq!(w.plan_all(300 * M + 128 * K, 128 * K).ahead, None);
        assert!(!w.is_sequential());
    }

    #[test]
    fn reads_near_the_end_fetch_the_whole_tail_once() {
        let mut w = window(64 * M);
        let p = w.plan_all(64 * M - 8, 8);
        assert_eq!(p.demand, 63 * M..64 * M);
        // Tail of a mid-sized file is at most an eighth of it.
        let mut w = window(4 * M);
        assert_eq!(w.plan_all(4 * M - 100, 100).demand, 4 * M - 512 * K..4 * M);
    }

    #[test]
    fn sequential_reads_start_read_ahead_and_double_the_window() {
        let mut w = window(1024 * M);
        let mut aheads = Vec::new();
        let mut off = 0;
        while off < 200 * M {
            let p = w.plan_all(off, 128 * K);
            assert!(p.demand.start <= off && p.demand.end >= off + 128 * K);
            if let Some(a) = p.ahead {
                aheads.push(a);
            }
            off += 128 * K;
        }
        assert!(!aheads.is_empty());
        // Contiguous, non-overlapping windows that grow to the maximum.
        for pair in aheads.windows(2) {
            assert_eq!(pair[0].end, pair[1].start);
        }
        // The first window is stretched to the next segment boundary; the
        // next ones are whole segments.
        let sizes: Vec<u64> = aheads.iter().map(|r| r.end - r.start).collect();
        assert_eq!(aheads[0], 512 * K..2 * M);
        assert_eq!(sizes[1], 2 * M);
        assert_eq!(sizes[2], 4 * M);
        assert!(aheads.iter().all(|r| r.end % M == 0));
        assert_eq!(*sizes.iter().max().unwrap(), 64 * M);
        // The requested window is always ahead of the reader.
        assert!(aheads.last().unwrap().end > 200 * M);
    }

    #[test]
    fn small_reorderings_do_not_reset_the_stream() {
        let mut w = window(1024 * M);
        for i in 0..8 {
            w.plan_all(i * 128 * K, 128 * K);
        }
        assert!(w.is_sequential());
        // The kernel delivers a later block first, then an earlier one.
        w.plan_all(9 * 128 * K, 128 * K);
        w.plan_all(8 * 128 * K, 128 * K);
        assert!(w.is_sequential());
        // A jump forward inside the requested window is fine too.
        w.plan_all(w.ahead_to - 256 * K, 128 * K);
        assert!(w.is_sequential());
    }

    #[test]
    fn a_real_seek_resets_to_a_random_read_and_the_small_window() {
        let mut w = window(1024 * M);
        let mut off = 0;
        while off < 40 * M {
            w.plan_all(off, 128 * K);
            off += 128 * K;
        }
        assert!(w.is_sequential());
        let p = w.plan_all(900 * M, 128 * K);
        assert_eq!(p.ahead, None);
        assert!(!w.is_sequential());
        // Reading on from there ramps up again from the initial window.
        let mut first = None;
        let mut off = 900 * M + 128 * K;
        while first.is_none() {
            first = w.plan_all(off, 128 * K).ahead;
            off += 128 * K;
        }
        // A window of the initial size (stretched to the segment boundary),
        // doubled once.
        let first = first.unwrap();
        assert_eq!(first, 900 * M + 512 * K..902 * M);
        assert_eq!(w.window, 2 * M);
    }

    #[test]
    fn shrinking_halves_the_window_but_not_below_the_initial_one() {
        let mut w = window(1024 * M);
        w.window = 16 * M;
        w.shrink();
        assert_eq!(w.window, 8 * M);
        for _ in 0..10 {
            w.shrink();
        }
        assert_eq!(w.window, M);
    }

    #[test]
    fn reads_past_the_end_fetch_nothing() {
        let mut w = window(10 * M);
        assert_eq!(w.plan_all(20 * M, 4 * K).demand, 10 * M..10 * M);
    }
}
