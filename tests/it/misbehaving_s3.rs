//! The mount when S3 misbehaves at the HTTP level, through an HTTP-aware
//! fault proxy: 503 SlowDown, 500, 429, cut and stalled bodies, malformed
//! listing pages, and the server down for a while. Programs see either the
//! right bytes (after retries) or, past --retry-timeout, EIO; never a wrong
//! byte, a lost file, or a hang. Also full disks under the spool and the
//! catalog.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::drop_folder::{DropFolder, Names, Publish};
use crate::support::http_proxy::{Fault, Kind, Rule};
use crate::support::*;

/// About 10% of every request type fails: SlowDown (some with
/// Retry-After), 500, 429, and bodies cut short.
fn ten_percent_faults() -> Vec<Rule> {
    vec![
        Rule::new(Fault::SlowDown { retry_after: None }, 0.03, &[]),
        Rule::new(
            Fault::SlowDown {
                retry_after: Some(1),
            },
            0.01,
            &[],
        ),
        Rule::new(Fault::Internal, 0.03, &[]),
        Rule::new(Fault::TooMany, 0.01, &[]),
        Rule::new(Fault::CutBody, 0.02, &[Kind::Get, Kind::List]),
        // Every request type gets its share for sure (a listing of 20,000
        // keys is only some 20 requests: at 10%, one run in ten would see
        // no fault at all; 60 PUTs, copies or deletes one run in 150).
        Rule::every(Fault::Internal, 5, &[Kind::Post]),
        Rule::every(Fault::SlowDown { retry_after: None }, 7, &[Kind::Part]),
        Rule::every(Fault::Internal, 9, &[Kind::List]),
        Rule::every(Fault::Internal, 11, &[Kind::Put]),
        Rule::every(Fault::Internal, 11, &[Kind::Copy]),
        Rule::every(Fault::Internal, 11, &[Kind::Delete]),
    ]
}

#[test]
fn ten_percent_errors_on_every_request_type_lose_and_corrupt_nothing() {
    let s3 = TestS3::start();
    let b = s3.bucket("flaky");
    b.put_many(
        (0..20_000).map(|i| format!("many/f{i:05}.txt")).collect(),
        |i| format!("{i}\n").into_bytes(),
    );
    let big = random_bytes(1 << 30, 31);
    b.put("big.bin", big.clone());
    let (proxy, endpoint) = s3.http_proxied();
    let m = Mounted::start_at(&endpoint, &b.name, &[]);
    proxy.set_rules(ten_percent_faults());
    let mnt = m.path();

    std::thread::scope(|scope| {
        let reader = scope.spawn(|| std::fs::read(mnt.join("big.bin")).expect("read big.bin"));
        let lister = scope.spawn(|| {
            let out = std::process::Command::new("ls")
                .arg("-l")
                .arg(mnt.join("many"))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "ls -l many: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.starts_with('-'))
                .count()
        });
        // 60 files, every tenth large enough to be a multipart upload,
        // published atomically by two producers.
        let files = 60;
        let body = |name: &str| {
            let i: usize = name.strip_prefix('f')?.strip_suffix(".csv")?.parse().ok()?;
            let len = if i % 10 == 3 { 40 << 20 } else { 1000 + i * 37 };
            (i < files).then(|| random_bytes(len, 100 + i as u64))
        };
        let folder = DropFolder::new(&mnt, &body, &DropFolder::strict);
        let names: Vec<Names> = (0..2)
            .map(|p| Box::new((p..files).step_by(2).map(|i| format!("f{i:04}.csv"))) as Names)
            .collect();
        let outcome = folder.run(Publish::WriteThenRename, names, Duration::from_secs(600));
        let read = reader.join().expect("reader");
        assert!(
            read == big,
            "big.bin read through the faults differs from the object"
        );
        assert_eq!(
            lister.join().expect("lister"),
            20_000,
            "ls -l many/ missed entries"
        );
        proxy.clear();
        assert_eq!(outcome.produced.len(), files);
        folder.check(&b, &outcome);
    });
    for kind in [
        Kind::Get,
        Kind::List,
        Kind::Put,
        Kind::Part,
        Kind::Post,
        Kind::Copy,
        Kind::Delete,
    ] {
        assert!(
            proxy.injected(kind) > 0,
            "no fault was injected into {kind:?} requests ({} seen)",
            proxy.seen(kind)
        );
    }
}

#[test]
fn a_short_outage_is_invisible_to_a_read_a_listing_and_an_upload() {
    let s3 = TestS3::start();
    let b = s3.bucket("outage");
    let data = random_bytes(256 << 20, 41);
    b.put("big.bin", data.clone());
    b.put_many((0..1500).map(|i| format!("cold/k{i:04}")).collect(), |_| {
        b"x".to_vec()
    });
    let (proxy, endpoint) = s3.http_proxied();
    let m = Mounted::start_at(&endpoint, &b.name, &[]);
    let mnt = m.path();
    assert!(std::fs::metadata(mnt.join("cold")).unwrap().is_dir());

    use std::io::{Read, Write};
    let mut reader = std::fs::File::open(mnt.join("big.bin")).unwrap();
    let mut read = vec![0u8; 64 << 20];
    reader.read_exact(&mut read).unwrap();
    let upload = random_bytes(24 << 20, 42);
    let mut writer = std::fs::File::create(mnt.join("up.bin")).unwrap();
    writer.write_all(&upload[..12 << 20]).unwrap();

    let outage = Duration::from_secs(30);
    proxy.down_for(outage);
    let started = Instant::now();
    std::thread::scope(|scope| {
        let lister = scope.spawn(|| {
            let names = names(&mnt.join("cold"));
            (names.len(), started.elapsed())
        });
        let rest = scope.spawn(move || {
            reader
                .read_to_end(&mut read)
                .expect("read through the outage");
            read
        });
        writer
            .write_all(&upload[12 << 20..])
            .expect("write during the outage");
        writer.sync_all().expect("fsync after the outage");
        drop(writer);
        let (listed, took) = lister.join().expect("lister");
        assert_eq!(listed, 1500, "the listing after the outage missed entries");
        assert!(
            took >= outage - Duration::from_secs(5),
            "a cold listing finished in {took:?}, during a {outage:?} outage"
        );
        let read = rest.join().expect("reader");
        assert!(read == data, "bytes read across the outage differ");
    });
    assert!(
        started.elapsed() < outage + Duration::from_secs(20),
        "recovering took {:?}",
        started.elapsed()
    );
    assert!(
        b.get("up.bin") == upload,
        "the upload across the outage differs in S3"
    );
}

/// Closes `path` after writing to it with Python, reporting close(2)'s
/// error as a program sees it.
fn write_and_close(path: &Path, len: usize) -> (bool, String) {
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import sys\nf = open(sys.argv[1], 'wb')\nf.write(b'x' * {len})\ntry:\n    f.close()\nexcept OSError as e:\n    print(e.strerror)\n    sys.exit(3)\n"
        ))
        .arg(path)
        .output()
        .expect("python3 (install it with scripts/install-deps.sh)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    )
}

#[test]
fn an_outage_beyond_the_retry_timeout_gives_eio_and_the_mount_serves_again() {
    let s3 = TestS3::start();
    let b = s3.bucket("longout");
    let data = random_bytes(16 << 20, 51);
    b.put("f.bin", data.clone());
    b.put("cold/a", b"a".to_vec());
    let (proxy, endpoint) = s3.http_proxied();
    let bound = Duration::from_secs(5);
    let m = Mounted::start_at(&endpoint, &b.name, &["--retry-timeout", "5"]);
    let mnt = m.path();
    // The root listing is cached; f.bin's data and cold/'s listing are not.
    assert_eq!(names(&mnt), ["cold", "f.bin"]);

    proxy.down_for(Duration::from_secs(25));
    let margin = Duration::from_secs(8);
    std::thread::scope(|scope| {
        let read = scope.spawn(|| {
            let started = Instant::now();
            (std::fs::read(mnt.join("f.bin")), started.elapsed())
        });
        let list = scope.spawn(|| {
            let started = Instant::now();
            let listed =
                std::fs::read_dir(mnt.join("cold")).and_then(|d| d.collect::<Result<Vec<_>, _>>());
            (listed, started.elapsed())
        });
        let started = Instant::now();
        let (ok, why) = write_and_close(&mnt.join("new.bin"), 1 << 20);
        let took = started.elapsed();
        assert!(
            !ok && why == "Input/output error",
            "close during the outage: ok={ok} {why:?}"
        );
        assert!(took < bound + margin, "close failed only after {took:?}");

        let (result, took) = read.join().unwrap();
        let err = result.expect_err("a read during a long outage must fail");
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "read: {err}");
        assert!(took < bound + margin, "the read failed only after {took:?}");
        let (result, took) = list.join().unwrap();
        let err = result.expect_err("a cold listing during a long outage must fail");
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "listing: {err}");
        assert!(
            took < bound + margin,
            "the listing failed only after {took:?}"
        );
    });
    assert!(
        m.log_text().contains("beyond --retry-timeout"),
        "no log line says why the operations failed:\n{}",
        m.log_text()
    );
    eventually("the outage to end", Duration::from_secs(60), || {
        !proxy.is_down()
    });
    assert!(
        std::fs::read(mnt.join("f.bin")).unwrap() == data,
        "read after the outage"
    );
    assert_eq!(names(&mnt.join("cold")), ["a"]);
    let keys = b.keys();
    assert!(
        !keys.iter().any(|k| k.starts_with("new.bin")),
        "the failed upload left an object: {keys:?}"
    );
    assert!(b.open_multipart_uploads().is_empty());
}

#[test]
fn throttling_lowers_requests_in_flight_and_calm_raises_them_again() {
    let s3 = TestS3::start();
    let b = s3.bucket("throttle");
    for i in 0..4 {
        b.put(&format!("f{i}.bin"), random_bytes(48 << 20, 60 + i));
    }
    let (proxy, endpoint) = s3.http_proxied();
    let addr = format!("127.0.0.1:{}", free_port());
    let m = Mounted::start_at(&endpoint, &b.name, &["--metrics-addr", &addr]);
    let mnt = &m.path();
    let limit = || value(&scrape(&addr), "s3mount_s3_request_limit").unwrap();
    let ceiling = limit();

    proxy.set_rules(vec![Rule::new(
        Fault::SlowDown { retry_after: None },
        0.7,
        &[Kind::Get],
    )]);
    std::thread::scope(|scope| {
        let readers: Vec<_> = (0..2)
            .map(|i| scope.spawn(move || std::fs::read(mnt.join(format!("f{i}.bin"))).unwrap()))
            .collect();
        eventually(
            format_args!("the request limit to drop below {ceiling} under throttling"),
            Duration::from_secs(20),
            || limit() < ceiling,
        );
        proxy.clear();
        for r in readers {
            assert_eq!(r.join().unwrap().len(), 48 << 20);
        }
        let low = limit();
        // The limit rises at most once a second, as requests go out.
        for i in 2..4 {
            std::thread::sleep(Duration::from_millis(1100));
            assert_eq!(
                std::fs::read(mnt.join(format!("f{i}.bin"))).unwrap().len(),
                48 << 20
            );
        }
        let raised = limit();
        assert!(
            raised > low || raised >= ceiling,
            "the request limit did not rise again after throttling stopped ({low} -> {raised})"
        );
    });
    let metrics = scrape(&addr);
    assert!(value(&metrics, "s3mount_s3_throttled_total").unwrap() > 0.0);
    assert!(value(&metrics, "s3mount_s3_retries_total").unwrap() > 0.0);
}

#[test]
fn malformed_listings_and_stalled_bodies_are_retried_then_reported() {
    let s3 = TestS3::start();
    let b = s3.bucket("malformed");
    b.put_many((0..2500).map(|i| format!("d1/k{i:04}")).collect(), |_| {
        b"y".to_vec()
    });
    b.put("d2/only", b"z".to_vec());
    let data = random_bytes(64 << 20, 71);
    b.put("f.bin", data.clone());
    let (proxy, endpoint) = s3.http_proxied();
    let m = Mounted::start_at(
        &endpoint,
        &b.name,
        &["--retry-timeout", "4", "--read-stall-timeout", "1"],
    );
    let mnt = m.path();

    // Nothing is listed yet: with every page malformed, listing fails.
    proxy.set_rules(vec![Rule::new(Fault::MalformedListing, 1.0, &[Kind::List])]);
    let started = Instant::now();
    let err = std::fs::read_dir(&mnt)
        .and_then(|d| d.collect::<Result<Vec<_>, _>>())
        .expect_err("every page malformed");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );

    // Every other page malformed (at random, a listing of a few pages
    // could see none).
    proxy.set_rules(vec![Rule::every(Fault::MalformedListing, 2, &[Kind::List])]);
    let before = proxy.injected(Kind::List);
    assert_eq!(
        names(&mnt.join("d1")).len(),
        2500,
        "listing through malformed pages"
    );
    assert!(
        proxy.injected(Kind::List) > before,
        "no malformed page was sent"
    );

    proxy.set_rules(vec![Rule::every(Fault::StallBody, 3, &[Kind::Get])]);
    let read = std::fs::read(mnt.join("f.bin")).expect("read through stalled bodies");
    assert!(read == data, "bytes read through stalls differ");
    assert!(proxy.injected(Kind::Get) > 0, "no body was stalled");

    proxy.clear();
    assert_eq!(names(&mnt.join("d2")), ["only"], "the mount lists again");
}

/// Mounts a small tmpfs at `path`, unmounted on drop.
fn mount_tmpfs(path: std::path::PathBuf, size: &str) -> UnmountOnDrop {
    std::fs::create_dir_all(&path).unwrap();
    let out = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0700"),
            "tmpfs",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cannot mount a tmpfs (needs root): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    UnmountOnDrop(path)
}

#[test]
fn a_full_spool_disk_gives_enospc_and_a_full_catalog_disk_falls_back_to_memory() {
    let s3 = TestS3::start();
    let b = s3.bucket("fulldisk");
    b.put_many(
        (0..12_000).map(|i| format!("big/k{i:05}")).collect(),
        |_| b"k".to_vec(),
    );
    b.put("f.txt", b"still readable".to_vec());
    let dirs = TempDir::new("fulldisk");
    let spool = mount_tmpfs(dirs.path().join("spool"), "4m");
    let cache = mount_tmpfs(dirs.path().join("cache"), "2m");
    let m = Mounted::start(
        &s3,
        &b.name,
        &[
            "--spool-dir",
            spool.0.to_str().unwrap(),
            &format!("--cache-dir={}", cache.0.display()),
        ],
    );
    let mnt = m.path();
    // Fill what the catalog's disk has left.
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", cache.0.join("filler").display()))
        .output();

    assert_eq!(
        names(&mnt.join("big")).len(),
        12_000,
        "a listing too big for memory is served from memory when the catalog's disk is full"
    );
    assert!(
        m.log_text().contains("disk is full"),
        "no warning about the full catalog disk:\n{}",
        m.log_text()
    );

    let out = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "count=16", "conv=fsync"])
        .arg(format!("of={}", mnt.join("large.bin").display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("No space left on device"),
        "writing 16 MiB through a 4 MiB spool: {stderr}"
    );
    assert_eq!(std::fs::read(mnt.join("f.txt")).unwrap(), b"still readable");
    let keys = b.keys();
    if keys.contains(&"large.bin".to_owned()) {
        panic!(
            "a partial object was stored: large.bin of {} bytes",
            b.get("large.bin").len()
        );
    }
    drop(m);
}
