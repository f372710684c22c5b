//! Writes against a real server: the drop-folder pipeline end to end, a
//! crash during an upload, a failing upload, directory renames, the
//! everyday operations (rm, mkdir, rmdir, overwrite), the cautious-mode
//! options and read-only mode.

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::drop_folder::{DropFolder, Names, Problem, Publish};
use crate::support::proxy::Faults;
use crate::support::*;

/// Size of file `j` of a producer: mostly small, some of several MiB, one
/// large one per run.
fn pipeline_size(producer: usize, j: usize) -> usize {
    const SIZES: [usize; 8] = [0, 1, 100, 4096, 65_536, 1 << 20, 3 << 20, (17 << 20) + 3];
    if producer == 0 && j == 0 {
        return 200 << 20;
    }
    SIZES[(j * 7 + producer) % SIZES.len()]
}

#[test]
fn drop_folder_pipeline_moves_every_file_exactly_once() {
    let s3 = TestS3::start();
    let b = s3.bucket("pipeline");
    let m = Mounted::start(&s3, &b.name, &[]);
    let producers = 3;
    let per_producer = env_u64("S3MOUNT_TEST_PIPELINE_FILES", 70) as usize;
    // File p{p}-f{j}.bin of producer p.
    let body = |name: &str| {
        let (p, j) = name
            .strip_prefix('p')?
            .strip_suffix(".bin")?
            .split_once("-f")?;
        let (p, j): (usize, usize) = (p.parse().ok()?, j.parse().ok()?);
        (p < producers && j < per_producer)
            .then(|| random_bytes(pipeline_size(p, j), (p * 1000 + j) as u64))
    };
    let report = |problem: Problem| panic!("{problem}\n{}", m.log());
    let folder = DropFolder::new(&m.path(), &body, &report);
    // Three `cp` processes, each copying its files straight into incoming/.
    let names: Vec<Names> = (0..producers)
        .map(|p| Box::new((0..per_producer).map(move |j| format!("p{p}-f{j:03}.bin"))) as Names)
        .collect();
    let outcome = folder.run(Publish::Cp, names, Duration::from_secs(600));
    assert_eq!(outcome.produced.len(), producers * per_producer);
    folder.check(&b, &outcome);
}

#[test]
fn a_crash_during_a_large_upload_leaves_no_partial_object_and_deletes_nothing() {
    let s3 = TestS3::start();
    let b = s3.bucket("crash");
    let keep = random_bytes(100_000, 7);
    b.put("keep/src.bin", keep.clone());
    let mut m = Mounted::start(&s3, &b.name, &[]);
    let target = m.path().join("big.bin");
    let mut writer = Command::new("dd")
        .arg("if=/dev/urandom")
        .arg(format!("of={}", target.display()))
        .arg("bs=1M")
        .arg("count=2000")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start dd");
    // Wait until parts are on their way: the multipart upload exists.
    eventually_ok(
        "the multipart upload of big.bin to start",
        Duration::from_secs(60),
        || {
            assert!(
                writer.try_wait().unwrap().is_none(),
                "dd ended before the crash"
            );
            if b.open_multipart_uploads().iter().any(|k| k == "big.bin") {
                Ok(())
            } else {
                Err(m.log())
            }
        },
    );
    m.kill();
    let _ = writer.kill();
    let _ = writer.wait();

    let keys = b.keys();
    assert!(
        !keys.iter().any(|k| k == "big.bin"),
        "a partial object appeared: {keys:?}"
    );
    assert_eq!(b.get("keep/src.bin"), keep, "an unrelated object changed");
    let m2 = Mounted::start(&s3, &b.name, &[]);
    assert_eq!(names(&m2.path()), vec!["keep".to_string()]);
}

#[test]
fn a_failing_upload_is_reported_at_close_and_leaves_nothing() {
    let s3 = TestS3::start();
    let b = s3.bucket("failput");
    let (proxy, endpoint) = s3.proxied();
    // Uploads are retried for --retry-timeout before close reports EIO.
    let m = Mounted::start_at(&endpoint, &b.name, &["--retry-timeout", "3"]);
    let src = TempDir::new("failput-src");
    let small = src.path().join("small.bin");
    let large = src.path().join("large.bin");
    std::fs::write(&small, random_bytes(300_000, 1)).unwrap();
    std::fs::write(&large, random_bytes(40 << 20, 2)).unwrap();

    proxy.set(Faults {
        fail_uploads: true,
        ..Faults::default()
    });
    for f in [&small, &large] {
        let (code, _, err) = sh(&format!("cp '{}' '{}/'", f.display(), m.path().display()));
        assert_ne!(
            code,
            0,
            "cp of {} succeeded although every upload failed",
            f.display()
        );
        assert!(
            err.contains("Input/output error"),
            "cp reports an I/O error: {err}"
        );
    }
    proxy.set(Faults::default());
    assert!(b.keys().is_empty(), "nothing stored: {:?}", b.keys());
    assert!(
        names(&m.path()).is_empty(),
        "nothing listed: {:?}",
        names(&m.path())
    );

    // With the network back, the same copies work.
    let (code, _, err) = sh(&format!(
        "cp '{}' '{}' '{}/'",
        small.display(),
        large.display(),
        m.path().display()
    ));
    assert_eq!(code, 0, "{err}");
    assert!(b.get("large.bin") == std::fs::read(&large).unwrap());
    assert!(
        b.open_multipart_uploads().is_empty(),
        "failed uploads were aborted"
    );
}

#[test]
fn renaming_a_directory_of_1000_files_moves_every_object() {
    let s3 = TestS3::start();
    let b = s3.bucket("mvdir");
    let keys: Vec<String> = (0..1000).map(|i| format!("src/f{i:04}.txt")).collect();
    b.put_many(keys, |i| format!("file {i}\n").into_bytes());
    b.put("src/sub/deep.txt", b"deep".to_vec());
    let m = Mounted::start(&s3, &b.name, &[]);
    let started = Instant::now();
    std::fs::rename(m.path().join("src"), m.path().join("dst")).unwrap();
    eprintln!(
        "renamed 1001 objects in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        errno_of(std::fs::metadata(m.path().join("src"))),
        libc::ENOENT
    );
    assert_eq!(
        names(&m.path().join("dst")).len(),
        1001,
        "1000 files and sub/"
    );
    assert_eq!(
        std::fs::read_to_string(m.path().join("dst/f0420.txt")).unwrap(),
        "file 420\n"
    );
    assert_eq!(
        std::fs::read_to_string(m.path().join("dst/sub/deep.txt")).unwrap(),
        "deep"
    );
    let keys = b.keys();
    assert_eq!(keys.iter().filter(|k| k.starts_with("dst/")).count(), 1001);
    assert_eq!(
        keys.iter().filter(|k| k.starts_with("src/")).count(),
        0,
        "sources deleted"
    );
}

#[test]
fn renaming_a_large_file_copies_it_in_parts() {
    let s3 = TestS3::start();
    let b = s3.bucket("mvbig");
    let body = random_bytes((12 << 20) + 5, 9);
    b.put("one.bin", body.clone());
    let m = Mounted::start(&s3, &b.name, &["--multipart-copy-threshold", "5M"]);
    std::fs::rename(m.path().join("one.bin"), m.path().join("two.bin")).unwrap();
    assert!(b.get("two.bin") == body, "copied bytes differ");
    assert!(!b.keys().contains(&"one.bin".to_string()));
    assert!(std::fs::read(m.path().join("two.bin")).unwrap() == body);
}

// The everyday operations, each as it changes the bucket.

/// A fresh bucket, mounted, with `newdir/` made through the mount and
/// `files` (name, contents) written into it. Fields drop in order: the
/// mount goes before the bucket, the bucket before its server.
struct NewDir {
    m: Mounted,
    b: TestBucket,
    _s3: TestS3,
}

fn newdir(tag: &str, files: &[(&str, &str)]) -> NewDir {
    let s3 = TestS3::start();
    let b = s3.bucket(tag);
    let m = Mounted::start(&s3, &b.name, &[]);
    std::fs::create_dir(m.path().join("newdir")).unwrap();
    for (name, contents) in files {
        std::fs::write(m.path().join("newdir").join(name), contents).unwrap();
    }
    NewDir { m, b, _s3: s3 }
}

impl NewDir {
    /// `newdir/NAME` through the mount.
    fn path(&self, name: &str) -> PathBuf {
        self.m.path().join("newdir").join(name)
    }
}

#[test]
fn mkdir_stores_a_marker_and_a_second_mkdir_is_eexist() {
    let d = newdir("mkdir", &[]);
    assert!(
        d.b.keys().contains(&"newdir/".to_string()),
        "mkdir stores a marker"
    );
    assert_eq!(
        errno_of(std::fs::create_dir(d.m.path().join("newdir"))),
        libc::EEXIST
    );
}

#[test]
fn overwriting_a_file_stores_the_new_bytes() {
    let d = newdir("overwrite", &[("a.txt", "one")]);
    std::fs::write(d.path("a.txt"), "two!").unwrap();
    assert_eq!(std::fs::read_to_string(d.path("a.txt")).unwrap(), "two!");
    assert_eq!(d.b.get("newdir/a.txt"), b"two!");
}

#[test]
fn a_hard_link_is_refused_with_eperm_and_stores_nothing() {
    let d = newdir("hardlink", &[("a.txt", "one")]);
    assert_eq!(
        errno_of(std::fs::hard_link(d.path("a.txt"), d.path("b.txt"))),
        libc::EPERM
    );
    let (code, _, err) = sh(&format!(
        "ln '{}' '{}'",
        d.path("a.txt").display(),
        d.path("c.txt").display()
    ));
    assert_ne!(code, 0);
    assert!(err.contains("Operation not permitted"), "{err}");
    assert_eq!(d.b.names_under("newdir"), ["a.txt".to_string()].into());
    assert!(
        !d.m.log_text().contains("Not Implemented"),
        "{}",
        d.m.log_text()
    );
}

#[test]
fn rmdir_of_a_directory_with_files_is_enotempty() {
    let d = newdir("notempty", &[("a.txt", "two!")]);
    assert_eq!(
        errno_of(std::fs::remove_dir(d.m.path().join("newdir"))),
        libc::ENOTEMPTY
    );
    assert_eq!(d.b.get("newdir/a.txt"), b"two!");
}

#[test]
fn a_rename_onto_an_existing_file_replaces_it() {
    let d = newdir("replace", &[("a.txt", "two!"), ("b.txt", "bee")]);
    std::fs::rename(d.path("b.txt"), d.path("a.txt")).unwrap();
    assert_eq!(std::fs::read_to_string(d.path("a.txt")).unwrap(), "bee");
    assert_eq!(d.b.get("newdir/a.txt"), b"bee");
    assert!(!d.b.keys().contains(&"newdir/b.txt".to_string()));
}

#[test]
fn rename_noreplace_onto_an_existing_name_is_eexist() {
    let d = newdir("noreplace", &[("a.txt", "bee"), ("c.txt", "sea")]);
    assert_eq!(
        rename_noreplace(&d.path("c.txt"), &d.path("a.txt")),
        libc::EEXIST
    );
    assert_eq!(d.b.get("newdir/a.txt"), b"bee");
    assert_eq!(d.b.get("newdir/c.txt"), b"sea");
}

#[test]
fn appending_stores_the_object_again_with_the_new_bytes_at_its_end() {
    let d = newdir("append", &[("a.txt", "bee")]);
    let mut f = OpenOptions::new()
        .append(true)
        .open(d.path("a.txt"))
        .unwrap();
    f.write_all(b"more").unwrap();
    drop(f);
    assert_eq!(d.b.get("newdir/a.txt"), b"beemore");
}

#[test]
fn tools_that_set_modes_and_times_after_copying_succeed() {
    let d = newdir("modes", &[]);
    let local = TempDir::new("everyday-src");
    std::fs::write(local.path().join("p.txt"), "preserved").unwrap();
    let (code, _, err) = sh(&format!(
        "cp -p '{}' '{}/' && touch '{}' && chmod 600 '{}'",
        local.path().join("p.txt").display(),
        d.m.path().join("newdir").display(),
        d.path("p.txt").display(),
        d.path("p.txt").display()
    ));
    assert_eq!(code, 0, "cp -p, touch, chmod: {err}");
    assert_eq!(d.b.get("newdir/p.txt"), b"preserved");
}

#[test]
fn an_emptied_directory_keeps_its_marker_until_rmdir() {
    let files = [("a.txt", "bee"), ("c.txt", "sea"), ("p.txt", "preserved")];
    let d = newdir("rmdir", &files);
    for (name, _) in files {
        std::fs::remove_file(d.path(name)).unwrap();
    }
    let root = d.m.path();
    assert!(names(&root.join("newdir")).is_empty());
    assert_eq!(
        d.b.keys(),
        vec!["newdir/".to_string()],
        "the emptied directory stays"
    );
    std::fs::remove_dir(root.join("newdir")).unwrap();
    assert!(
        d.b.keys().is_empty(),
        "rmdir removes the marker: {:?}",
        d.b.keys()
    );
    assert!(names(&root).is_empty());
}

#[test]
fn writes_into_the_part_not_yet_sent_and_holes_arrive_as_written() {
    let d = newdir("patched", &[]);
    let mut f = std::fs::File::create(d.path("patched.bin")).unwrap();
    f.write_all(&vec![b'a'; 1 << 20]).unwrap();
    f.write_all_at(b"HEADER", 0).unwrap();
    f.seek(SeekFrom::Start(3 << 20)).unwrap();
    f.write_all(b"tail").unwrap();
    f.sync_all().unwrap();
    drop(f);
    let mut want = vec![b'a'; 1 << 20];
    want[..6].copy_from_slice(b"HEADER");
    want.resize(3 << 20, 0);
    want.extend_from_slice(b"tail");
    assert!(
        d.b.get("newdir/patched.bin") == want,
        "patched and sparse writes arrive as written"
    );
}

#[test]
fn a_write_into_a_part_already_uploaded_is_eopnotsupp() {
    let d = newdir("uploaded", &[]);
    let mut f = std::fs::File::create(d.path("long.bin")).unwrap();
    f.write_all(&random_bytes(40 << 20, 3)).unwrap();
    assert_eq!(errno_of(f.write_all_at(b"late", 0)), libc::EOPNOTSUPP);
}

#[test]
fn cautious_options_refuse_deletes_and_overwrites() {
    let s3 = TestS3::start();
    let b = s3.bucket("cautious");
    b.put("keep.txt", b"keep".to_vec());
    b.put("other.txt", b"other".to_vec());
    let m = Mounted::start(&s3, &b.name, &["--no-delete", "--no-overwrite"]);
    let root = m.path();
    assert_eq!(
        errno_of(std::fs::remove_file(root.join("keep.txt"))),
        libc::EPERM
    );
    assert_eq!(
        errno_of(std::fs::write(root.join("keep.txt"), "x")),
        libc::EPERM
    );
    assert_eq!(
        errno_of(std::fs::rename(
            root.join("other.txt"),
            root.join("keep.txt")
        )),
        libc::EEXIST
    );
    std::fs::write(root.join("new.txt"), "new").unwrap();
    std::fs::rename(root.join("new.txt"), root.join("moved.txt")).unwrap();
    assert_eq!(b.get("keep.txt"), b"keep");
    assert_eq!(b.get("other.txt"), b"other");
    assert_eq!(b.get("moved.txt"), b"new");
}

#[test]
fn read_only_mode_refuses_every_change_with_erofs() {
    let s3 = TestS3::start();
    let b = s3.bucket("readonly");
    b.put("d/f.txt", b"data".to_vec());
    let m = Mounted::start(&s3, &b.name, &["--read-only"]);
    let root = m.path();
    let erofs = libc::EROFS;
    assert_eq!(
        errno_of(std::fs::write(root.join("new.txt"), "x")),
        erofs,
        "create"
    );
    assert_eq!(
        errno_of(OpenOptions::new().write(true).open(root.join("d/f.txt"))),
        erofs,
        "open for writing"
    );
    assert_eq!(
        errno_of(std::fs::remove_file(root.join("d/f.txt"))),
        erofs,
        "unlink"
    );
    assert_eq!(
        errno_of(std::fs::create_dir(root.join("e"))),
        erofs,
        "mkdir"
    );
    assert_eq!(
        errno_of(std::fs::remove_dir(root.join("d"))),
        erofs,
        "rmdir"
    );
    assert_eq!(
        errno_of(std::fs::rename(root.join("d/f.txt"), root.join("d/g.txt"))),
        erofs,
        "rename"
    );
    for tool in ["truncate -s 0", "touch"] {
        let (code, _, err) = sh(&format!("{tool} '{}'", root.join("d/f.txt").display()));
        assert!(
            code != 0 && err.contains("Read-only file system"),
            "{tool}: {err}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(root.join("d/f.txt")).unwrap(),
        "data"
    );
    assert_eq!(b.keys(), vec!["d/f.txt".to_string()]);
}

#[test]
fn moves_into_a_large_directory_show_at_once_and_after_a_remount() {
    let s3 = TestS3::start();
    let b = s3.bucket("bigdest");
    // More entries than the catalog copies in memory per change.
    let count = 10_050;
    b.put_many(
        (0..count).map(|i| format!("processed/f{i:05}")).collect(),
        |_| b"x".to_vec(),
    );
    b.put("incoming/new.txt", b"new".to_vec());
    let cache = TempDir::new("bigdest-cache");
    let cache_arg = format!("--cache-dir={}", cache.path().display());
    {
        let m = Mounted::start(&s3, &b.name, &[&cache_arg]);
        assert_eq!(names(&m.path().join("processed")).len(), count);
        std::fs::rename(
            m.path().join("incoming/new.txt"),
            m.path().join("processed/new.txt"),
        )
        .unwrap();
        std::fs::remove_file(m.path().join("processed/f00007")).unwrap();
        let listed = names(&m.path().join("processed"));
        assert_eq!(listed.len(), count, "one in, one out");
        assert!(listed.contains(&"new.txt".to_string()) && !listed.contains(&"f00007".to_string()));
        assert_eq!(
            std::fs::read_to_string(m.path().join("processed/new.txt")).unwrap(),
            "new"
        );
    }
    // The on-disk catalog has the changes too.
    let m = Mounted::start(&s3, &b.name, &[&cache_arg]);
    let listed = names(&m.path().join("processed"));
    assert!(listed.contains(&"new.txt".to_string()) && !listed.contains(&"f00007".to_string()));
}
