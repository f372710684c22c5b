//! Files the disk cache holds whole are read by the kernel itself (FUSE
//! passthrough): no READ request reaches the daemon and no GET goes to S3;
//! a damaged cache file is never handed to the kernel; a handle keeps
//! reading the version it opened; `--no-passthrough` reads them through
//! the daemon, as does every file the cache holds only in part, until a
//! file left mostly cached is completed after its last close.

use std::io::Read;
use std::time::Duration;

use crate::data_cache::{fixture, object_gets, read_direct, wait_written};
use crate::support::*;

fn counter(addr: &str, name: &str) -> f64 {
    value(&scrape(addr), name).unwrap_or_else(|| panic!("no {name} in the metrics"))
}

fn data_files(dir: &std::path::Path) -> Vec<(u64, std::path::PathBuf)> {
    let mut files = Vec::new();
    for sub in std::fs::read_dir(dir).unwrap().flatten() {
        for f in std::fs::read_dir(sub.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if f.path().extension().is_some_and(|e| e == "data") {
                files.push((f.metadata().unwrap().len(), f.path()));
            }
        }
    }
    files.sort();
    files
}

#[test]
fn a_wholly_cached_object_is_read_by_the_kernel_with_no_read_request_and_no_get() {
    let f = fixture("pt-whole");
    let (proxy, endpoint) = f.s3.proxied();
    let addr = format!("127.0.0.1:{}", free_port());
    f.fill_cache(&endpoint, &addr);

    let m = f.mount(&endpoint, &addr, &[]);
    assert!(m.log_text().contains("passthrough on"), "{}", m.log_text());
    let gets = object_gets(&proxy);
    let reads = counter(&addr, "s3mount_kernel_read_requests_total");
    f.read_all(&m);
    // Several readers of one file at once share its backing file.
    let big = m.path().join("big.bin");
    let want = &f.files[0].1;
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                assert!(
                    std::fs::read(&big).unwrap() == *want,
                    "a concurrent reader read different bytes"
                )
            });
        }
    });
    assert_eq!(object_gets(&proxy) - gets, 0, "GETs for cached objects");
    assert_eq!(
        counter(&addr, "s3mount_kernel_read_requests_total") - reads,
        0.0,
        "READ requests reached the daemon"
    );
    assert_eq!(counter(&addr, "s3mount_passthrough_opens_total"), 7.0);
    assert_eq!(
        counter(&addr, "s3mount_data_cache_files_checked_total"),
        3.0,
        "each file is checked once by a mount"
    );
}

#[test]
fn without_passthrough_cached_files_are_read_through_the_daemon() {
    let f = fixture("pt-off");
    let (proxy, endpoint) = f.s3.proxied();
    let addr = format!("127.0.0.1:{}", free_port());
    f.fill_cache(&endpoint, &addr);

    let m = f.mount(&endpoint, &addr, &["--no-passthrough"]);
    let gets = object_gets(&proxy);
    f.read_all(&m);
    assert_eq!(object_gets(&proxy) - gets, 0, "GETs for cached objects");
    assert!(counter(&addr, "s3mount_kernel_read_requests_total") > 0.0);
    assert_eq!(counter(&addr, "s3mount_passthrough_opens_total"), 0.0);
    assert!(!m.log_text().contains("passthrough on"), "{}", m.log_text());
}

#[test]
fn a_damaged_or_truncated_cache_file_is_never_handed_to_the_kernel() {
    let f = fixture("pt-damaged");
    let (proxy, endpoint) = f.s3.proxied();
    let addr = format!("127.0.0.1:{}", free_port());
    f.fill_cache(&endpoint, &addr);
    // big.bin's data file gets one byte flipped, mid.bin's loses its end.
    let files = data_files(&f.dirs.path().join("data"));
    assert_eq!(files.len(), 3, "{files:?}");
    let (_, big) = &files[2];
    let mut raw = std::fs::read(big).unwrap();
    raw[7 << 20] ^= 0x01;
    std::fs::write(big, raw).unwrap();
    let (mid_len, mid) = &files[1];
    let cut = std::fs::OpenOptions::new().write(true).open(mid).unwrap();
    cut.set_len(mid_len - 1000).unwrap();
    drop(cut);

    let m = f.mount(&endpoint, &addr, &[]);
    f.read_all_refetching(&m, &proxy);
    // What was fetched again makes both files whole again.
    wait_written(&addr, 2 * 64 * 1024);
    drop(m);

    let m = f.mount(&endpoint, &addr, &[]);
    let gets = object_gets(&proxy);
    f.read_all(&m);
    assert_eq!(object_gets(&proxy) - gets, 0, "GETs once repaired");
    assert_eq!(counter(&addr, "s3mount_kernel_read_requests_total"), 0.0);
}

#[test]
fn a_handle_keeps_reading_the_version_it_opened_after_the_object_is_replaced() {
    let f = fixture("pt-replaced");
    let (_proxy, endpoint) = f.s3.proxied();
    let addr = format!("127.0.0.1:{}", free_port());
    f.fill_cache(&endpoint, &addr);
    let m = f.mount(&endpoint, &addr, &["--metadata-ttl", "3600"]);
    let path = m.path().join("mid.bin");
    let old = f.files[1].1.clone();
    let mut handle = std::fs::File::open(&path).unwrap();
    let mut head = vec![0u8; 1000];
    handle.read_exact(&mut head).unwrap();
    assert_eq!(counter(&addr, "s3mount_passthrough_opens_total"), 1.0);

    let new = random_bytes((3 << 20) + 5, 77);
    f.b.put("mid.bin", new.clone());
    let out = refresh(&m.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut rest = Vec::new();
    handle.read_to_end(&mut rest).unwrap();
    head.extend(rest);
    assert!(head == old, "the open handle read bytes of another version");
    // The kernel reads one inode through one backing file at a time: the
    // new version cannot be opened while the old one is read so.
    let err = std::fs::File::open(&path).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ETXTBSY), "{err}");
    drop(handle);
    eventually_ok("the new version to open", Duration::from_secs(5), || {
        let got = std::fs::read(&path).map_err(|e| e.to_string())?;
        match got == new {
            true => Ok(()),
            false => Err(format!("read {} bytes, not the new version", got.len())),
        }
    });
}

#[test]
fn a_file_read_then_unmounted_at_once_is_whole_after_the_remount() {
    let f = fixture("pt-quick");
    let (proxy, endpoint) = f.s3.proxied();
    let addr = format!("127.0.0.1:{}", free_port());
    let m = f.mount(&endpoint, &addr, &[]);
    f.read_all(&m);
    drop(m);

    let m = f.mount(&endpoint, &addr, &[]);
    let gets = object_gets(&proxy);
    f.read_all(&m);
    assert_eq!(object_gets(&proxy) - gets, 0, "GETs after the remount");
    assert_eq!(counter(&addr, "s3mount_passthrough_opens_total"), 3.0);
}

#[test]
fn a_file_left_mostly_cached_is_completed_and_then_read_by_the_kernel() {
    let f = fixture("pt-complete");
    let (proxy, endpoint) = f.s3.proxied();
    let addr = format!("127.0.0.1:{}", free_port());
    let (name, data) = &f.files[0];
    assert_eq!(data.len(), 20 << 20);
    const M: u64 = 1 << 20;
    let m = f.mount(&endpoint, &addr, &[]);
    let path = m.path().join(name);
    // 12 of its 20 MiB in 64 KiB direct reads, last first: fetched block by
    // block, nothing ahead.
    for i in (0..192u64).rev() {
        let at = i * 64 * 1024;
        let got = read_direct(&path, at, 64 * 1024);
        assert!(got[..] == data[at as usize..at as usize + 64 * 1024]);
    }
    eventually_ok(
        "the rest of the file to be fetched",
        Duration::from_secs(30),
        || match counter(&addr, "s3mount_data_cache_completion_bytes_total") {
            n if n >= (8 * M) as f64 => Ok(()),
            n => Err(format!("{n} bytes completed")),
        },
    );
    assert_eq!(counter(&addr, "s3mount_data_cache_completions_total"), 1.0);
    wait_written(&addr, 20 * M);
    drop(m);

    let m = f.mount(&endpoint, &addr, &[]);
    let gets = object_gets(&proxy);
    let path = m.path().join(name);
    // Checked whole at its first open, then read by the kernel.
    assert!(std::fs::read(&path).unwrap() == *data);
    assert_eq!(object_gets(&proxy) - gets, 0, "GETs for a completed file");
    assert_eq!(counter(&addr, "s3mount_passthrough_opens_total"), 1.0);
    assert_eq!(counter(&addr, "s3mount_kernel_read_requests_total"), 0.0);
}
