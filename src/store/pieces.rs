//! How a GET body becomes the separately freeable pieces the block cache
//! keeps, and the pool that recycles their memory.
//!
//! The cache frees pieces one by one in LRU order, all day long. Handed
//! back to malloc, a freed 1 MiB piece is soon split by small allocations,
//! the next piece grows the heap instead, and the process ends up holding
//! far more than the cache: that showed as about 180 MiB of heap beyond a
//! 256 MiB cache. So pieces of the common sizes (powers of two: whole
//! segments and blocks) go back to a pool when their last reference is
//! dropped and are reused for the next piece of the same size.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use parking_lot::Mutex;

use bytes::Bytes;

/// Free buffers the pool keeps at most until [`limit_pool`] says otherwise;
/// more are given back to malloc.
const DEFAULT_POOL_LIMIT: usize = 32 * 1024 * 1024;

static POOL_LIMIT: AtomicUsize = AtomicUsize::new(DEFAULT_POOL_LIMIT);

/// Sets how many bytes of free buffers the pool may keep: a small share of
/// the memory budget, so a small `--memory-limit` is not exceeded by it.
pub fn limit_pool(bytes: usize) {
    POOL_LIMIT.store(bytes, Ordering::Relaxed);
}

/// Sizes worth pooling: the cache's units (blocks and segments).
fn poolable(capacity: usize) -> bool {
    capacity.is_power_of_two() && (4096..=8 * 1024 * 1024).contains(&capacity)
}

#[derive(Default)]
struct Pool {
    free: Mutex<HashMap<usize, Vec<Vec<u8>>>>,
    free_bytes: AtomicUsize,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(Pool::default)
}

impl Pool {
    /// An empty buffer with room for exactly `len` bytes.
    fn take(&self, len: usize) -> Vec<u8> {
        if poolable(len) {
            let reused = self.free.lock().get_mut(&len).and_then(Vec::pop);
            if let Some(buf) = reused {
                self.free_bytes.fetch_sub(len, Ordering::Relaxed);
                return buf;
            }
        }
        Vec::with_capacity(len)
    }

    fn give_back(&self, mut buf: Vec<u8>) {
        let capacity = buf.capacity();
        if !poolable(capacity) {
            return;
        }
        let limit = POOL_LIMIT.load(Ordering::Relaxed);
        if self.free_bytes.fetch_add(capacity, Ordering::Relaxed) + capacity > limit {
            self.free_bytes.fetch_sub(capacity, Ordering::Relaxed);
            return;
        }
        buf.clear();
        // A panic elsewhere must not stop memory from being freed.
        let mut free = self.free.lock();
        free.entry(capacity).or_default().push(buf);
    }
}

/// A full piece; its buffer returns to the pool when the last `Bytes`
/// referring to it is dropped.
struct Pooled(Vec<u8>);

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        pool().give_back(std::mem::take(&mut self.0));
    }
}

/// Cuts a body into pieces of the asked lengths and hands each on as soon
/// as it is whole. The bytes received so far survive a broken connection:
/// a resumed GET continues filling the same piece.
pub(crate) struct PieceSink<'a> {
    pieces: &'a [u64],
    /// Index of the piece being filled.
    next: usize,
    pub(crate) received: u64,
    current: Vec<u8>,
    deliver: &'a mut (dyn FnMut(Bytes) + Send),
}

impl<'a> PieceSink<'a> {
    pub(crate) fn new(pieces: &'a [u64], deliver: &'a mut (dyn FnMut(Bytes) + Send)) -> Self {
        PieceSink {
            pieces,
            next: 0,
            received: 0,
            current: Vec::new(),
            deliver,
        }
    }

    /// Takes as much of `data` as is still expected.
    pub(crate) fn push(&mut self, mut data: &[u8]) {
        while !data.is_empty() && self.next < self.pieces.len() {
            let want = self.pieces[self.next] as usize;
            if self.current.capacity() == 0 {
                self.current = pool().take(want);
            }
            let n = (want - self.current.len()).min(data.len());
            self.current.extend_from_slice(&data[..n]);
            data = &data[n..];
            self.received += n as u64;
            if self.current.len() == want {
                let full = std::mem::take(&mut self.current);
                (self.deliver)(Bytes::from_owner(Pooled(full)));
                self.next += 1;
            }
        }
    }
}

impl Drop for PieceSink<'_> {
    fn drop(&mut self) {
        // A piece left unfinished by a failed GET.
        if self.current.capacity() > 0 {
            pool().give_back(std::mem::take(&mut self.current));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_cut_into_the_asked_pieces_whatever_the_chunks() {
        let body: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let pieces = [4096, 800, 104];
        let mut got: Vec<Bytes> = Vec::new();
        let mut deliver = |b: Bytes| got.push(b);
        let mut sink = PieceSink::new(&pieces, &mut deliver);
        // Chunks that straddle piece boundaries, then bytes past the end.
        for chunk in body.chunks(700) {
            sink.push(chunk);
        }
        sink.push(b"extra bytes are ignored");
        assert_eq!(sink.received, 5000);
        drop(sink);
        let lens: Vec<usize> = got.iter().map(Bytes::len).collect();
        assert_eq!(lens, [4096, 800, 104]);
        assert_eq!(got.concat(), body);
    }

    #[test]
    fn a_piece_is_delivered_as_soon_as_it_is_whole() {
        let pieces = [4096, 4096];
        let mut delivered = 0;
        let mut deliver = |_: Bytes| delivered += 1;
        let mut sink = PieceSink::new(&pieces, &mut deliver);
        sink.push(&[1u8; 4095]);
        sink.push(&[2u8; 2]);
        drop(sink);
        assert_eq!(delivered, 1, "the first piece once its last byte came");
    }

    #[test]
    fn freed_pieces_are_reused_for_the_next_piece_of_their_size() {
        // A size no other test uses, so tests running at once do not meet.
        let size = 2 * 1024 * 1024;
        let first = {
            let buf = pool().take(size);
            let ptr = buf.as_ptr();
            drop(Bytes::from_owner(Pooled(buf)));
            ptr
        };
        let again = pool().take(size);
        assert_eq!(again.as_ptr(), first);
        assert_eq!((again.len(), again.capacity()), (0, size));
        // Odd sizes are not kept.
        assert!(!poolable(5000) && poolable(64 * 1024));
    }
}
