//! The disk cache of object data (`--data-cache`): reads after a remount
//! come from disk with no GET; damaged files are dropped and fetched again;
//! a replaced object is never served from the old version's blocks; the
//! cache keeps to its size; two mounts share one directory.

use std::path::Path;
use std::time::Duration;

use crate::support::*;

/// Object GETs (not listings) the proxy has forwarded so far.
pub(crate) fn object_gets(proxy: &crate::support::proxy::FaultProxy) -> usize {
    proxy
        .requests()
        .iter()
        .filter(|r| r.starts_with("GET ") && !r.contains("list-type"))
        .count()
}

/// Waits until the mount has written `bytes` to its disk cache.
pub(crate) fn wait_written(addr: &str, bytes: u64) {
    eventually_ok(
        format_args!("{bytes} bytes to reach the disk cache"),
        Duration::from_secs(30),
        || {
            let written = value(&scrape(addr), "s3mount_data_cache_written_bytes_total").unwrap();
            if written >= bytes as f64 {
                Ok(())
            } else {
                Err(format!(
                    "only {written} of {bytes} bytes reached the disk cache"
                ))
            }
        },
    );
}

fn cache_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for sub in std::fs::read_dir(dir).unwrap().flatten() {
        if sub.path().is_dir() {
            for f in std::fs::read_dir(sub.path()).unwrap().flatten() {
                files.push(f.path());
            }
        }
    }
    files
}

/// Fields drop in order: the bucket is emptied before its server stops.
pub(crate) struct Fixture {
    pub b: TestBucket,
    pub s3: TestS3,
    pub files: Vec<(String, Vec<u8>)>,
    pub dirs: TempDir,
}

pub(crate) fn fixture(tag: &str) -> Fixture {
    let s3 = TestS3::start();
    let b = s3.bucket(tag);
    let files = vec![
        ("big.bin".to_owned(), random_bytes(20 << 20, 1)),
        ("mid.bin".to_owned(), random_bytes(3 << 20, 2)),
        ("small.txt".to_owned(), random_bytes(100_000, 3)),
    ];
    for (k, v) in &files {
        b.put(k, v.clone());
    }
    Fixture {
        b,
        s3,
        files,
        dirs: TempDir::new(&format!("dc-{tag}")),
    }
}

impl Fixture {
    pub fn total(&self) -> u64 {
        self.files.iter().map(|f| f.1.len() as u64).sum()
    }

    pub fn mount(&self, endpoint: &Endpoint, addr: &str, extra: &[&str]) -> Mounted {
        let data = format!("--data-cache={}", self.dirs.path().join("data").display());
        let listings = format!(
            "--cache-dir={}",
            self.dirs.path().join("listings").display()
        );
        let mut args = vec![data.as_str(), listings.as_str(), "--metrics-addr", addr];
        args.extend_from_slice(extra);
        Mounted::start_at(endpoint, &self.b.name, &args)
    }

    /// A first mount that reads every file and unmounts once all of it is
    /// in the disk cache.
    pub fn fill_cache(&self, endpoint: &Endpoint, addr: &str) {
        let m = self.mount(endpoint, addr, &[]);
        self.read_all(&m);
        wait_written(addr, self.total());
    }

    /// Reads every file through `m`, which must fetch damaged cached data
    /// again, and say so in its log.
    pub fn read_all_refetching(&self, m: &Mounted, proxy: &crate::support::proxy::FaultProxy) {
        let before = object_gets(proxy);
        self.read_all(m);
        assert!(
            object_gets(proxy) > before,
            "damaged data was not fetched again"
        );
        // A big file is checked whole in the background, beside the read
        // that found it not ready: its warning may come a moment later.
        eventually(
            format_args!("the log to name the damaged file:\n{}", m.log()),
            std::time::Duration::from_secs(10),
            || m.log_text().contains("dropping a damaged data cache file"),
        );
    }

    pub fn read_all(&self, m: &Mounted) {
        for (k, v) in &self.files {
            let got = std::fs::read(m.path().join(k)).unwrap();
            assert!(got == *v, "{k} read back different bytes");
        }
    }
}

#[test]
fn a_remount_reads_from_the_disk_cache_with_no_get() {
    let f = fixture("remount");
    let (proxy, endpoint) = f.s3.proxied();
    let addr = format!("127.0.0.1:{}", free_port());
    f.fill_cache(&endpoint, &addr);

    // Through the daemon, whose reads from disk are counted (the kernel's
    // own reads of whole files are passthrough.rs's).
    let m = f.mount(&endpoint, &addr, &["--no-passthrough"]);
    let before = object_gets(&proxy);
    f.read_all(&m);
    assert_eq!(
        object_gets(&proxy) - before,
        0,
        "reads after a remount went to S3"
    );
    let metrics = scrape(&addr);
    assert!(value(&metrics, "s3mount_data_cache_read_bytes_total").unwrap() >= f.total() as f64);
    let cache = f.dirs.path().join("data");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777,
        0o700,
        "the data cache holds object data: private directory"
    );
    for file in cache_files(&cache) {
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} is mode {mode:o}", file.display());
    }
}

#[test]
fn damaged_cache_files_are_dropped_and_fetched_again() {
    let f = fixture("corrupt");
    let (proxy, endpoint) = f.s3.proxied();
    let addr = format!("127.0.0.1:{}", free_port());
    f.fill_cache(&endpoint, &addr);

    // Flip a byte in every other file, truncate the rest.
    for (i, file) in cache_files(&f.dirs.path().join("data")).iter().enumerate() {
        let mut raw = std::fs::read(file).unwrap();
        if i % 2 == 0 {
            let at = raw.len() - 1 - i % 100;
            raw[at] ^= 0x40;
        } else {
            raw.truncate(raw.len() / 2);
        }
        std::fs::write(file, raw).unwrap();
    }
    let m = f.mount(&endpoint, &addr, &[]);
    f.read_all_refetching(&m, &proxy);
}

#[test]
fn a_replaced_object_is_never_served_from_the_old_blocks() {
    let f = fixture("replace");
    let (_proxy, endpoint) = f.s3.proxied();
    let addr = format!("127.0.0.1:{}", free_port());
    let m = f.mount(&endpoint, &addr, &["--metadata-ttl", "3600"]);
    f.read_all(&m);
    wait_written(&addr, f.total());
    let new = random_bytes(3 << 20, 99);
    f.b.put("mid.bin", new.clone());
    let out = refresh(&m.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::read(m.path().join("mid.bin")).unwrap() == new,
        "old bytes served"
    );
    drop(m);
    // After a remount too (the listing on disk was refreshed).
    let m = f.mount(&endpoint, &addr, &["--metadata-ttl", "3600"]);
    assert!(
        std::fs::read(m.path().join("mid.bin")).unwrap() == new,
        "old bytes after remount"
    );
}

#[test]
fn the_cache_keeps_to_its_size_under_a_larger_working_set() {
    let mut f = fixture("size");
    // Eight more objects of 2 MiB: 39 MiB in all.
    for i in 0..8 {
        let (k, v) = (format!("more-{i}.bin"), random_bytes(2 << 20, 10 + i));
        f.b.put(&k, v.clone());
        f.files.push((k, v));
    }
    let (_proxy, endpoint) = f.s3.proxied();
    let addr = format!("127.0.0.1:{}", free_port());
    // 8 MiB for 39 MiB of objects, read twice. An object bigger than half
    // the cache (big.bin, 20 MiB) keeps only its first 4 MiB there.
    let m = f.mount(&endpoint, &addr, &["--data-cache-size", "8M"]);
    f.read_all(&m);
    f.read_all(&m);
    let cache = f.dirs.path().join("data");
    let limit = 8u64 << 20;
    eventually_ok(
        "the cache to keep to its size",
        Duration::from_secs(20),
        || {
            use std::os::unix::fs::MetadataExt;
            // Data files are sparse: what they hold on disk counts.
            let held: u64 = cache_files(&cache)
                .iter()
                .filter_map(|p| std::fs::metadata(p).ok())
                .map(|m| m.blocks() * 512)
                .sum();
            // One object (2 MiB) may land while the sweep runs.
            if held <= limit + (2 << 20) {
                Ok(())
            } else {
                Err(format!(
                    "the cache holds {held} bytes over its {limit}-byte limit"
                ))
            }
        },
    );
    assert!(value(&scrape(&addr), "s3mount_data_cache_evictions_total").unwrap() > 0.0);
}

#[test]
fn two_mounts_share_one_cache_directory() {
    let f = fixture("shared");
    let (proxy, endpoint) = f.s3.proxied();
    let (addr_a, addr_b) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let a = f.mount(&endpoint, &addr_a, &[]);
    let data = format!("--data-cache={}", f.dirs.path().join("data").display());
    let b = Mounted::start_at(
        &endpoint,
        &f.b.name,
        &[data.as_str(), "--metrics-addr", &addr_b],
    );
    f.read_all(&a);
    wait_written(&addr_a, f.total());
    let before = object_gets(&proxy);
    f.read_all(&b);
    assert_eq!(
        object_gets(&proxy) - before,
        0,
        "the second mount fetched what the first had cached"
    );
}

#[test]
fn a_file_just_written_reads_back_from_the_disk_cache() {
    let f = fixture("written");
    let (proxy, endpoint) = f.s3.proxied();
    let addr = format!("127.0.0.1:{}", free_port());
    let m = f.mount(&endpoint, &addr, &[]);
    let written: Vec<(String, Vec<u8>)> = [("new/a.csv", 70_000), ("new/b.bin", 3 << 20)]
        .iter()
        .enumerate()
        .map(|(i, (k, len))| (k.to_string(), random_bytes(*len, 50 + i as u64)))
        .collect();
    std::fs::create_dir(m.path().join("new")).unwrap();
    let total: u64 = written.iter().map(|w| w.1.len() as u64).sum();
    for (k, v) in &written {
        std::fs::write(m.path().join(k), v).unwrap();
    }
    wait_written(&addr, total);
    drop(m);

    let m = f.mount(&endpoint, &addr, &[]);
    let before = object_gets(&proxy);
    for (k, v) in &written {
        assert!(
            std::fs::read(m.path().join(k)).unwrap() == *v,
            "{k} read back different bytes"
        );
    }
    assert_eq!(
        object_gets(&proxy) - before,
        0,
        "files written through the mount were fetched from S3 again"
    );
}

/// Reads `len` bytes at `offset` with O_DIRECT, so the kernel's page cache
/// and its readahead add no read of their own: the mount sees exactly this.
pub(crate) fn read_direct(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .expect("O_DIRECT open through the mount");
    // O_DIRECT wants an aligned buffer: a page-aligned slice of a bigger one.
    let mut raw = vec![0u8; len + 4096];
    let skip = raw.as_ptr().align_offset(4096);
    let buf = &mut raw[skip..skip + len];
    f.read_exact_at(buf, offset).unwrap();
    buf.to_vec()
}

#[test]
fn a_query_run_again_after_a_remount_fetches_nothing_it_did_not_read() {
    let f = fixture("rerun");
    let (proxy, endpoint) = f.s3.proxied();
    let addr = format!("127.0.0.1:{}", free_port());
    let path = |m: &Mounted| m.path().join("big.bin");
    let data = &f.files[0].1;
    const M: u64 = 1 << 20;
    // A first run reads [4 MiB, 5 MiB) in random 64 KiB pieces: fetched on
    // demand, block by block, nothing ahead.
    let m = f.mount(&endpoint, &addr, &[]);
    for i in (0..16u64).rev() {
        let at = 4 * M + i * 64 * 1024;
        let got = read_direct(&path(&m), at, 64 * 1024);
        assert!(got[..] == data[at as usize..at as usize + 64 * 1024]);
    }
    wait_written(&addr, M);
    drop(m);
    // The second run reads the same bytes in one go, which reads ahead: the
    // read-ahead past the cached bytes would be a guess the first run never
    // needed, and goes nowhere.
    let m = f.mount(&endpoint, &addr, &[]);
    let before = object_gets(&proxy);
    let got = read_direct(&path(&m), 4 * M, M as usize);
    assert!(got[..] == data[4 * M as usize..5 * M as usize]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        object_gets(&proxy) - before,
        0,
        "the same read after a remount went to S3: {:?}",
        proxy.requests()
    );
    // A reader going on past the cached bytes gets them from S3.
    let got = read_direct(&path(&m), 5 * M, 3 * M as usize);
    assert!(got[..] == data[5 * M as usize..8 * M as usize]);
    assert!(object_gets(&proxy) > before);
}

#[test]
fn reads_across_segment_and_block_files_come_whole_from_disk() {
    let f = fixture("across");
    let (proxy, endpoint) = f.s3.proxied();
    let addr = format!("127.0.0.1:{}", free_port());
    let path = |m: &Mounted| m.path().join("big.bin");
    let data = &f.files[0].1;
    const M: u64 = 1 << 20;
    const K: u64 = 1 << 10;
    // A first run caches [0, 2 MiB) as two segment files (whole aligned
    // reads) and [2 MiB, 3 MiB) as block files (64 KiB random reads).
    let m = f.mount(&endpoint, &addr, &[]);
    for at in [0, M] {
        let got = read_direct(&path(&m), at, M as usize);
        assert!(got[..] == data[at as usize..(at + M) as usize]);
    }
    for i in (0..16u64).rev() {
        let at = 2 * M + i * 64 * K;
        let got = read_direct(&path(&m), at, 64 * K as usize);
        assert!(got[..] == data[at as usize..(at + 64 * K) as usize]);
    }
    wait_written(&addr, 3 * M);
    drop(m);
    // After a remount, reads across those files, at offsets inside blocks
    // and chunks, come from disk in one piece each and are right.
    let m = f.mount(&endpoint, &addr, &[]);
    let before = object_gets(&proxy);
    // Nor does the read-ahead of the long read, which stays within the
    // cached bytes: it reads what the first run read.
    for (at, len) in [
        (M - 12 * K, 256 * K),      // segment 0 into segment 1
        (2 * M - 20 * K, 300 * K),  // segment 1 into block files
        (M + 4 * K, 2 * M - 8 * K), // segment 1 through all the blocks
        (2 * M + 100 * K, 128 * K), // block files only
    ] {
        let got = read_direct(&path(&m), at, len as usize);
        assert!(
            got[..] == data[at as usize..(at + len) as usize],
            "{len} bytes at {at} differ from the object"
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let log = m.log_text();
    assert_eq!(
        object_gets(&proxy) - before,
        0,
        "cached bytes were fetched again: {:?}",
        log.lines()
            .filter(|l| l.contains("ranged GET"))
            .collect::<Vec<_>>()
    );
}
