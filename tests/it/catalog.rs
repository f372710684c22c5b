//! The listing catalog against a real server: warm remounts answer from
//! SQLite without listing, changes made in S3 show after the TTL or a forced
//! refresh, a broken database is rebuilt, and a stale directory is
//! refreshed once however many readers ask.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::*;

fn populate(b: &TestBucket) {
    for d in 0..5 {
        for f in 0..6 {
            b.put(&format!("d{d}/f{f}.txt"), vec![b'x'; d * 10 + f]);
        }
    }
    b.put("d0/sub/deep.txt", b"deep".to_vec());
    b.put("top.txt", b"top".to_vec());
}

fn catalog_files(cache: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "sqlite3"))
        .collect()
}

#[test]
fn a_remount_answers_ls_find_and_du_without_listing() {
    let s3 = TestS3::start();
    let b = s3.bucket("warm");
    populate(&b);
    let (proxy, endpoint) = s3.proxied();
    let cache = TempDir::new("cache");
    let cache_arg = format!("--cache-dir={}", cache.path().display());
    let walk = |root: &Path| {
        let (code, out, err) = sh(&format!(
            "cd '{}' && ls -lR --time-style=+%s . && find . | sort && du -s --apparent-size .",
            root.display()
        ));
        assert_eq!(code, 0, "{err}");
        out
    };
    let (first, ino_first) = {
        let m = Mounted::start_at(&endpoint, &b.name, &[&cache_arg]);
        let out = walk(&m.path());
        (
            out,
            std::fs::metadata(m.path().join("d3/f2.txt")).unwrap().ino(),
        )
    };
    assert!(
        first.contains("deep.txt") && first.contains("f5.txt"),
        "{first}"
    );

    let m = Mounted::start_at(&endpoint, &b.name, &[&cache_arg]);
    let before = proxy.list_requests();
    let second = walk(&m.path());
    assert_eq!(
        proxy.list_requests() - before,
        0,
        "a warm remount listed S3: {:?}",
        proxy.requests()
    );
    assert_eq!(second, first, "the warm remount shows the same tree");
    let ino_second = std::fs::metadata(m.path().join("d3/f2.txt")).unwrap().ino();
    assert_eq!(ino_first, ino_second, "inode numbers survive a remount");
    // Reading still works (and is the only kind of request made).
    assert_eq!(
        std::fs::read(m.path().join("d0/sub/deep.txt")).unwrap(),
        b"deep"
    );
}

#[test]
fn changes_in_s3_show_after_the_ttl_and_after_a_forced_refresh() {
    let s3 = TestS3::start();
    let b = s3.bucket("fresh");
    b.put("dir/a", b"a".to_vec());

    // Within the TTL the listing is trusted; after it the change shows.
    let m = Mounted::start(&s3, &b.name, &["--metadata-ttl", "2"]);
    let dir = m.path().join("dir");
    assert_eq!(names(&dir), ["a"]);
    b.put("dir/b", b"b".to_vec());
    assert_eq!(
        names(&dir),
        ["a"],
        "a fresh listing is served without asking S3"
    );
    std::thread::sleep(Duration::from_millis(2200));
    eventually(
        "the new object to show after the TTL",
        Duration::from_secs(10),
        || names(&dir) == ["a", "b"],
    );
    drop(m);

    // A long TTL, then a forced refresh of one directory.
    let m = Mounted::start(&s3, &b.name, &["--metadata-ttl", "3600"]);
    let dir = m.path().join("dir");
    assert_eq!(names(&dir), ["a", "b"]);
    b.put("dir/c", b"c".to_vec());
    assert_eq!(names(&dir), ["a", "b"]);
    let out = refresh(&dir);
    assert!(
        out.status.success(),
        "refresh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        names(&dir),
        ["a", "b", "c"],
        "visible right after `s3mount refresh`"
    );
    // Refreshing through a file refreshes its directory.
    b.put("dir/d", b"d".to_vec());
    let out = refresh(&dir.join("a"));
    assert!(out.status.success());
    assert_eq!(names(&dir), ["a", "b", "c", "d"]);

    // A path outside any mount gets a clear error.
    let outside = TempDir::new("outside");
    let out = refresh(outside.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not inside an s3mount mount"));
}

#[test]
fn a_corrupt_or_foreign_catalog_is_rebuilt_with_one_warning() {
    let s3 = TestS3::start();
    let b = s3.bucket("corrupt");
    populate(&b);
    let cache = TempDir::new("cache");
    let cache_arg = format!("--cache-dir={}", cache.path().display());
    {
        let m = Mounted::start(&s3, &b.name, &[&cache_arg]);
        assert_eq!(names(&m.path()).len(), 6);
    }
    let files = catalog_files(cache.path());
    assert_eq!(files.len(), 1, "one catalog per target: {files:?}");
    let db = &files[0];

    // Garbage in place of the database.
    std::fs::write(db, vec![0xA5; 64 * 1024]).unwrap();
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    {
        let m = Mounted::start(&s3, &b.name, &[&cache_arg]);
        assert_eq!(names(&m.path()), ["d0", "d1", "d2", "d3", "d4", "top.txt"]);
        assert_eq!(names(&m.path().join("d2")).len(), 6);
        let log = m.log_text();
        assert_eq!(
            log.matches("rebuilding the catalog database").count(),
            1,
            "{log}"
        );
    }

    // A database of another schema version.
    {
        let conn = rusqlite::Connection::open(db).unwrap();
        conn.execute("UPDATE meta SET value = '999' WHERE key = 'schema'", [])
            .unwrap();
    }
    let m = Mounted::start(&s3, &b.name, &[&cache_arg]);
    assert_eq!(names(&m.path().join("d4")).len(), 6);
    let log = m.log_text();
    assert_eq!(
        log.matches("rebuilding the catalog database").count(),
        1,
        "{log}"
    );
    assert!(log.contains("schema version 999"), "{log}");
}

#[test]
fn a_second_mount_of_the_same_target_bypasses_the_locked_catalog() {
    let s3 = TestS3::start();
    let b = s3.bucket("locked");
    populate(&b);
    let cache = TempDir::new("cache");
    let cache_arg = format!("--cache-dir={}", cache.path().display());
    let first = Mounted::start(&s3, &b.name, &[&cache_arg]);
    let second = Mounted::start(&s3, &b.name, &[&cache_arg]);
    assert_eq!(names(&first.path()), names(&second.path()));
    assert!(
        second.log_text().contains("in use by another s3mount"),
        "{}",
        second.log_text()
    );
}

#[test]
fn concurrent_readers_of_a_stale_directory_cause_one_refresh() {
    let s3 = TestS3::start();
    let b = s3.bucket("stale");
    populate(&b);
    let (proxy, endpoint) = s3.proxied();
    let m = Mounted::start_at(&endpoint, &b.name, &["--metadata-ttl", "1"]);
    let dir = m.path().join("d1");
    assert_eq!(names(&dir).len(), 6);
    std::thread::sleep(Duration::from_millis(1300));
    // Listings of d1/ only (the root is stale too, and refreshed once itself).
    let lists_of_d1 = || {
        proxy
            .requests()
            .iter()
            .filter(|r| r.contains("list-type=2") && r.contains("prefix=d1%2F"))
            .count()
    };
    let before = lists_of_d1();
    std::thread::scope(|s| {
        for _ in 0..8 {
            let dir = &dir;
            s.spawn(move || assert_eq!(names(dir).len(), 6));
        }
    });
    // Let the background refresh finish.
    std::thread::sleep(Duration::from_millis(500));
    let lists = lists_of_d1() - before;
    assert_eq!(
        lists,
        1,
        "8 readers of one stale directory caused {lists} listings: {:?}",
        proxy.requests()
    );
}

#[test]
fn a_tree_walk_lists_flat_instead_of_once_per_directory() {
    let s3 = TestS3::start();
    let b = s3.bucket("walk");
    let keys: Vec<String> = (0..30)
        .flat_map(|d| (0..40).map(move |f| format!("tree/d{d:02}/f{f:02}")))
        .collect();
    let mut expected: Vec<String> = keys
        .iter()
        .map(|k| format!("./{}", k.trim_start_matches("tree/")))
        .collect();
    b.put_many(keys, |_| vec![b'x'; 3]);
    b.put("tree/d05/deeper/leaf", b"leaf".to_vec());
    // A key shadowed by a prefix of the same name: the directory wins.
    b.put("tree/d05/deeper", b"shadowed".to_vec());
    b.put("tree/d07/empty-marker/", Vec::new());
    expected.push("./d05/deeper/leaf".into());
    expected.push("./d05/deeper".into());
    expected.push("./d07/empty-marker".into());
    for d in 0..30 {
        expected.push(format!("./d{d:02}"));
    }
    expected.push(".".into());
    expected.sort();

    let (proxy, endpoint) = s3.proxied();
    let m = Mounted::start_at(&endpoint, &b.name, &[]);
    let before = proxy.list_requests();
    let (code, out, err) = sh(&format!(
        "cd '{}' && find . | sort",
        m.path().join("tree").display()
    ));
    assert_eq!(code, 0, "{err}");
    let found: Vec<&str> = out.lines().collect();
    assert_eq!(found, expected, "find lists the whole tree exactly");
    let lists = proxy.list_requests() - before;
    // Per-directory listing would need 30+ requests; a flat walk needs the
    // first directories on their own plus 2 flat pages.
    assert!(
        lists <= 8,
        "find over 30 directories made {lists} listings: {:?}",
        proxy.requests()
    );
    assert!(m.path().join("tree/d05/deeper").is_dir());
    // Sizes come through the walk too.
    assert_eq!(
        std::fs::metadata(m.path().join("tree/d29/f39"))
            .unwrap()
            .len(),
        3
    );
}

#[test]
fn a_directory_of_100k_keys_lists_correctly_with_bounded_memory() {
    let s3 = TestS3::start();
    let b = s3.bucket("huge");
    let count = 100_000;
    b.put_many((0..count).map(|i| format!("huge/k{i:06}")).collect(), |i| {
        vec![b'x'; i % 13]
    });
    let (proxy, endpoint) = s3.proxied();
    let cache = TempDir::new("huge-cache");
    let cache_arg = cache.path().to_string_lossy().into_owned();
    let addr = format!("127.0.0.1:{}", free_port());
    let m = Mounted::start_at(
        &endpoint,
        &b.name,
        &["--cache-dir", &cache_arg, "--metrics-addr", &addr],
    );
    let dir = m.path().join("huge");
    let (code, out, err) = sh(&format!("ls -f '{}' | grep -c '^k'", dir.display()));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), count.to_string());
    let (code, out, _) = sh(&format!(
        "ls '{}' | sed -n '1p;99999p;100000p'",
        dir.display()
    ));
    assert_eq!(code, 0);
    assert_eq!(out, "k000000\nk099998\nk099999\n");
    assert_eq!(
        std::fs::metadata(dir.join("k012345")).unwrap().len(),
        12345 % 13
    );
    // The listing went to SQLite page by page and is read from there: the
    // entries held in memory are a small fraction of it.
    let metrics = scrape(&addr);
    let in_memory = value(&metrics, "s3mount_catalog_entries").unwrap();
    assert!(
        in_memory < 20_000.0,
        "{in_memory} listing entries held in memory for a 100k-key directory"
    );
    // The inode table follows the kernel: after it drops its caches, the
    // 100k inodes that readdirplus handed out are forgotten.
    let held = value(&metrics, "s3mount_inodes").unwrap();
    assert!(held >= count as f64, "only {held} inodes after listing");
    drop_inodes_and_wait(&addr, 1000.0);
    let peak_mib = peak_rss_kib(m.pid()) / 1024;
    assert!(peak_mib < 160, "listing 100k keys peaked at {peak_mib} MiB");
    drop(m);

    // A remount reads the stored listing: no LIST (after the preflight's
    // bucket check), same answer.
    let m = Mounted::start_at(&endpoint, &b.name, &["--cache-dir", &cache_arg]);
    let lists_before = proxy.list_requests();
    let (code, out, err) = sh(&format!(
        "ls -f '{}' | grep -c '^k'",
        m.path().join("huge").display()
    ));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), count.to_string());
    assert_eq!(
        proxy.list_requests() - lists_before,
        0,
        "the remount listed S3: {:?}",
        proxy.requests()
    );
}

#[test]
fn the_first_readdir_of_a_big_directory_starts_before_its_listing_ends() {
    let s3 = TestS3::start();
    let b = s3.bucket("stream");
    b.put_many((0..4000).map(|i| format!("big/f{i:05}")).collect(), |_| {
        Vec::new()
    });
    let (proxy, endpoint) = s3.proxied();
    let m = Mounted::start_at(&endpoint, &b.name, &[]);
    // Resolve `big` first, then slow every response down: 4 pages of 1,000.
    assert!(m.path().join("big").is_dir());
    proxy.set(crate::support::proxy::Faults {
        first_byte_delay: Duration::from_millis(300),
        ..Default::default()
    });
    let (code, out, err) = sh(&format!(
        "python3 -c \"import os, sys, time
t = time.time(); it = os.scandir(sys.argv[1]); next(it); first = time.time() - t
n = 1 + sum(1 for _ in it); print(first, time.time() - t, n)\" '{}'",
        m.path().join("big").display()
    ));
    assert_eq!(code, 0, "{err}");
    let v: Vec<f64> = out.split_whitespace().map(|x| x.parse().unwrap()).collect();
    let (first, total, count) = (v[0], v[1], v[2] as usize);
    assert_eq!(count, 4000);
    assert!(total >= 1.1, "4 slow pages took only {total:.2}s");
    assert!(
        first < total / 2.0,
        "the first entry came after {first:.2}s of {total:.2}s"
    );
}

#[test]
fn a_directory_stream_given_up_early_leaves_no_inodes_behind() {
    let s3 = TestS3::start();
    let b = s3.bucket("partial");
    b.put_many((0..2000).map(|i| format!("d/k{i:04}")).collect(), |_| {
        b"x".to_vec()
    });
    let addr = format!("127.0.0.1:{}", free_port());
    let m = Mounted::start(&s3, &b.name, &["--metrics-addr", &addr]);
    // Read the first entries of several streams, then give each up (like
    // `ls | head` or `find -quit`): rows numbered for the rest of a reply
    // buffer were never sent, and the kernel will never forget them.
    for _ in 0..20 {
        let first: Vec<_> = std::fs::read_dir(m.path().join("d"))
            .unwrap()
            .take(5)
            .collect();
        assert_eq!(first.len(), 5);
    }
    drop_inodes_and_wait(&addr, 10.0);
}

/// Lists each directory `dirs` of the mount and makes a subdirectory in it
/// (a listing, a marker PUT and a catalog change each), 4 at a time.
fn list_and_change(root: &Path, dirs: std::ops::Range<usize>) {
    let (code, _, err) = sh(&format!(
        "python3 - '{}' {} {} <<'PY'
import os, sys
from concurrent.futures import ThreadPoolExecutor
root, lo, hi = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def one(i):
    d = os.path.join(root, 'd%05d' % i)
    assert os.listdir(d) == ['f'], d
    os.mkdir(os.path.join(d, 'sub'))
with ThreadPoolExecutor(4) as pool:
    list(pool.map(one, range(lo, hi)))
PY",
        root.display(),
        dirs.start,
        dirs.end
    ));
    assert_eq!(code, 0, "listing and changing {dirs:?} failed: {err}");
}

/// Drops the kernel's dentries and inodes, and waits (up to 30 s) until the
/// daemon holds fewer than `below` inodes: the kernel forgot what it held.
fn drop_inodes_and_wait(addr: &str, below: f64) {
    std::fs::write("/proc/sys/vm/drop_caches", "2").expect("drop the kernel's inode cache");
    eventually_ok(
        format_args!("the daemon to hold fewer than {below} inodes"),
        Duration::from_secs(30),
        || {
            let held = value(&scrape(addr), "s3mount_inodes").unwrap();
            if held < below {
                Ok(())
            } else {
                Err(format!(
                    "{held} inodes still held after the kernel dropped its caches"
                ))
            }
        },
    );
}

/// The daemon's RSS in KiB once the kernel has forgotten (almost) every
/// inode.
fn settled_rss_kib(m: &Mounted, addr: &str) -> u64 {
    drop_inodes_and_wait(addr, 50.0);
    rss_kib(m.pid())
}

#[test]
fn listing_and_changing_many_directories_leaves_inodes_and_memory_flat() {
    // The warm-up fills the listing cache (a sixteenth of the 64 MiB
    // budget); from then on memory must stay flat.
    const WARM: usize = 6_000;
    const DIRS: usize = 16_000;
    let s3 = TestS3::start();
    let b = s3.bucket("manydirs");
    b.put_many((0..DIRS).map(|i| format!("d{i:05}/f")).collect(), |_| {
        b"x".to_vec()
    });
    let addr = format!("127.0.0.1:{}", free_port());
    let m = Mounted::start(
        &s3,
        &b.name,
        &["--metrics-addr", &addr, "--memory-limit", "64M"],
    );
    list_and_change(&m.path(), 0..WARM);
    let warm = settled_rss_kib(&m, &addr);
    list_and_change(&m.path(), WARM..DIRS);
    let after = settled_rss_kib(&m, &addr);
    // Each directory left a listing, a change and an inode behind; none of
    // them may stay for good.
    assert!(
        after <= warm + 16 * 1024,
        "RSS grew from {} MiB after {WARM} directories to {} MiB after {DIRS}",
        warm / 1024,
        after / 1024
    );
    let markers = b.keys().iter().filter(|k| k.ends_with("/sub/")).count();
    assert_eq!(markers, DIRS, "every mkdir is a marker object in S3");
    eprintln!(
        "RSS {} MiB after {WARM} directories, {} MiB after {DIRS}",
        warm / 1024,
        after / 1024
    );
}
