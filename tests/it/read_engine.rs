//! The read engine against a real server, measured at the proxy: random
//! reads fetch little more than they read, concurrent readers share fetches,
//! a columnar reader's projection fetches a fraction of the file, memory
//! stays within `--memory-limit`, and mmap reads the same bytes.

use std::os::unix::fs::FileExt;

use crate::support::*;

#[test]
fn random_reads_fetch_close_to_what_was_read() {
    let s3 = TestS3::start();
    let b = s3.bucket("random");
    let size = 64 * 1024 * 1024;
    let data = random_bytes(size, 31);
    b.put("r.bin", data.clone());
    let (proxy, endpoint) = s3.proxied();
    let m = Mounted::start_at(&endpoint, &b.name, &[]);
    let f = std::fs::File::open(m.path().join("r.bin")).unwrap();
    let len = 64 * 1024;
    let before = proxy.response_bytes();
    let mut x: u64 = 12345;
    let reads = 100;
    for _ in 0..reads {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        // Keep clear of the tail, which is fetched whole by design.
        let off = (x >> 33) % ((size as u64 - 2 * 1024 * 1024) / len) * len;
        let mut buf = vec![0u8; len as usize];
        f.read_exact_at(&mut buf, off).unwrap();
        assert!(
            buf == data[off as usize..(off + len) as usize],
            "bytes at {off}"
        );
    }
    let fetched = proxy.response_bytes() - before;
    let read = reads * len;
    let amplification = fetched as f64 / read as f64;
    assert!(
        amplification <= 1.3,
        "random 64 KiB reads fetched {fetched} bytes for {read} read ({amplification:.2}x)"
    );
}

#[test]
fn concurrent_readers_of_one_file_share_its_fetches() {
    let s3 = TestS3::start();
    let b = s3.bucket("shared");
    let size = 48 * 1024 * 1024;
    let data = random_bytes(size, 32);
    b.put("s.bin", data.clone());
    let (proxy, endpoint) = s3.proxied();
    let m = Mounted::start_at(&endpoint, &b.name, &[]);
    let path = m.path().join("s.bin");
    let before = proxy.response_bytes();
    std::thread::scope(|s| {
        for _ in 0..3 {
            let (path, data) = (&path, &data);
            s.spawn(move || {
                // Separate opens: separate handles, one shared cache.
                let read = std::fs::read(path).unwrap();
                assert!(&read == data, "a concurrent reader got different bytes");
            });
        }
    });
    let fetched = proxy.response_bytes() - before;
    assert!(
        fetched < (size as u64) * 3 / 2,
        "3 readers of a {size}-byte file fetched {fetched} bytes"
    );
}

#[test]
fn a_parquet_projection_reads_right_and_fetches_a_fraction() {
    let s3 = TestS3::start();
    let b = s3.bucket("parquet");
    let work = TempDir::new("parquet");
    let local = work.path().join("t.parquet");
    let (code, _, err) = sh(&format!(
        "python3 - '{}' <<'PY'
import sys, random
try:
    import pyarrow as pa, pyarrow.parquet as pq
except ImportError:
    sys.exit('pyarrow is missing: run scripts/install-deps.sh')
random.seed(7)
n = 200_000
cols = {{f'c{{i}}': [random.random() for _ in range(n)] for i in range(8)}}
pq.write_table(pa.table(cols), sys.argv[1], row_group_size=50_000, compression='none')
PY",
        local.display()
    ));
    assert_eq!(code, 0, "writing the Parquet file failed: {err}");
    let bytes = std::fs::read(&local).unwrap();
    b.put("data/t.parquet", bytes.clone());
    let (proxy, endpoint) = s3.proxied();
    let m = Mounted::start_at(&endpoint, &b.name, &[]);
    let mounted = m.path().join("data/t.parquet");
    let query =
        "import sys, pyarrow.parquet as pq; t = pq.read_table(sys.argv[1], columns=['c3']); \
                 print(t.num_rows, repr(sum(t.column('c3').to_pylist())))";
    let before = proxy.response_bytes();
    let (code, through_mount, err) = sh(&format!("python3 -c \"{query}\" '{}'", mounted.display()));
    assert_eq!(code, 0, "pyarrow through the mount: {err}");
    let fetched = proxy.response_bytes() - before;
    let (code, from_local, err) = sh(&format!("python3 -c \"{query}\" '{}'", local.display()));
    assert_eq!(code, 0, "pyarrow on the local copy: {err}");
    assert_eq!(
        through_mount, from_local,
        "same result through the mount as from a local copy"
    );
    assert!(through_mount.starts_with("200000 "), "{through_mount}");
    let size = bytes.len() as u64;
    assert!(
        fetched < size / 3,
        "a one-column projection of 8 columns fetched {fetched} of {size} bytes"
    );
    // The whole table reads back identically too.
    let (code, out, err) = sh(&format!(
        "python3 -c \"import sys, pyarrow.parquet as pq; print(pq.read_table(sys.argv[1]).equals(pq.read_table(sys.argv[2])))\" '{}' '{}'",
        mounted.display(),
        local.display()
    ));
    assert_eq!((code, out.trim()), (0, "True"), "{err}");
}

#[test]
fn memory_stays_within_the_budget_with_large_files_and_many_handles() {
    let s3 = TestS3::start();
    let b = s3.bucket("budget");
    let size = 96 * 1024 * 1024;
    let files: Vec<Vec<u8>> = (0..4).map(|i| random_bytes(size, 40 + i)).collect();
    for (i, data) in files.iter().enumerate() {
        b.put(&format!("big{i}.bin"), data.clone());
    }
    let limit_mib = 64;
    let m = Mounted::start(&s3, &b.name, &["--memory-limit", "64M"]);
    let paths: Vec<_> = (0..4)
        .map(|i| m.path().join(format!("big{i}.bin")))
        .collect();
    for p in &paths {
        std::fs::metadata(p).unwrap();
    }
    let baseline = peak_rss_kib(m.pid()) / 1024;

    // 200 handles, each of which has started a sequential read (and so
    // asked for read-ahead) somewhere in one of the files, stay open.
    let mut handles = Vec::new();
    for i in 0..200u64 {
        let f = std::fs::File::open(&paths[i as usize % 4]).unwrap();
        let off = (i * 7 % 80) * 1024 * 1024;
        let mut buf = vec![0u8; 256 * 1024];
        for step in 0..4 {
            f.read_exact_at(&mut buf, off + step * 256 * 1024).unwrap();
        }
        let want = &files[i as usize % 4][(off + 768 * 1024) as usize..][..256 * 1024];
        assert!(buf == want, "handle {i}: wrong bytes at {off}");
        handles.push(f);
    }
    // Meanwhile four readers read four whole files.
    std::thread::scope(|s| {
        for (p, data) in paths.iter().zip(&files) {
            s.spawn(move || {
                let read = std::fs::read(p).unwrap();
                assert!(&read == data, "{} read back different bytes", p.display());
            });
        }
    });
    let peak = peak_rss_kib(m.pid()) / 1024;
    drop(handles);
    eprintln!("daemon RSS: {baseline} MiB after mounting, peak {peak} MiB");
    // The budget bounds the daemon's data; the allocator's slack and the
    // connections' buffers add a fixed amount on top (docs/SEMANTICS.md).
    let overhead_mib = 16;
    assert!(
        peak <= baseline + limit_mib + overhead_mib,
        "with --memory-limit {limit_mib}M the daemon grew from {baseline} MiB to a peak of {peak} MiB \
         reading 4 x {} MiB with 200 handles open (allowed: the limit + {overhead_mib} MiB)",
        size / (1024 * 1024)
    );
}

#[test]
fn mmap_reads_the_same_bytes_as_read() {
    let s3 = TestS3::start();
    let b = s3.bucket("mmap");
    let work = TempDir::new("mmap");
    let local = work.path().join("m.bin");
    let data = random_bytes(24 * 1024 * 1024 + 12345, 50);
    std::fs::write(&local, &data).unwrap();
    b.put("m.bin", data);
    let m = Mounted::start(&s3, &b.name, &[]);
    let (code, out, err) = sh(&format!(
        "python3 -c \"import sys, mmap, hashlib; f = open(sys.argv[1], 'rb'); \
         print(hashlib.sha256(mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)).hexdigest())\" '{}'",
        m.path().join("m.bin").display()
    ));
    assert_eq!(code, 0, "mmap through the mount failed: {err}");
    assert_eq!(out.trim(), sha256_of(&local), "mmap gave other bytes");
}

/// Reads `range` of `path` front to back in 1 MiB reads, pausing `pause`
/// after each; checks every byte against `data`.
fn read_region(
    path: &std::path::Path,
    data: &[u8],
    range: std::ops::Range<usize>,
    pause: std::time::Duration,
) {
    let f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = range.start;
    while at < range.end {
        let n = buf.len().min(range.end - at);
        f.read_exact_at(&mut buf[..n], at as u64).unwrap();
        assert!(buf[..n] == data[at..at + n], "bytes at {at}");
        at += n;
        std::thread::sleep(pause);
    }
}

#[test]
fn many_and_slow_readers_of_one_object_fetch_each_byte_once() {
    let s3 = TestS3::start();
    let b = s3.bucket("once");
    let size = 256 << 20;
    let data = random_bytes(size, 33);
    b.put("one.bin", data.clone());
    let (proxy, endpoint) = s3.proxied();
    let m = Mounted::start_at(&endpoint, &b.name, &[]);

    let path = m.path().join("one.bin");
    let before = proxy.response_bytes();
    std::thread::scope(|s| {
        for q in 0..4 {
            let (path, data) = (&path, &data);
            s.spawn(move || {
                let quarter = size / 4;
                read_region(
                    path,
                    data,
                    q * quarter..(q + 1) * quarter,
                    std::time::Duration::ZERO,
                )
            });
        }
    });
    let fetched = proxy.response_bytes() - before;
    assert!(
        fetched as f64 <= 1.03 * size as f64,
        "4 readers of distinct quarters fetched {fetched} bytes for {size} ({:.2}x)",
        fetched as f64 / size as f64
    );

    // A consumer slower than the network (about 100 MiB/s), on a fresh
    // mount so nothing is cached.
    drop(m);
    let m = Mounted::start_at(&endpoint, &b.name, &[]);
    let before = proxy.response_bytes();
    read_region(
        &m.path().join("one.bin"),
        &data,
        0..size,
        std::time::Duration::from_millis(10),
    );
    let fetched = proxy.response_bytes() - before;
    assert!(
        fetched as f64 <= 1.03 * size as f64,
        "a slow reader fetched {fetched} bytes for {size} ({:.2}x)",
        fetched as f64 / size as f64
    );
}
