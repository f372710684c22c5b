//! Everyday tools writing through the mount as they would to a disk: git,
//! rsync, sqlite3, loggers appending with `>>`, the atomic drop-folder
//! producer, tar, unzip, sed -i and Python's shutil; plus the rules behind
//! them (empty files right after close, read-write descriptors, appends by
//! server-side copy, in-place changes, the conflict rule, unlink of open
//! files, mknod, long names, Content-Type). Each result is checked in S3.

use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::IntoRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::drop_folder::{DropFolder, Names, Publish};
use crate::support::*;

/// Fails the test, saying what to install, when a tool is missing.
fn need(tool: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{tool} is missing; run scripts/install-deps.sh (it installs git, rsync, sqlite3, zip, unzip)"
    );
}

/// Runs a shell line, failing the test with its output if it fails.
fn run(script: &str) -> String {
    let (code, out, err) = sh(script);
    assert_eq!(code, 0, "`{script}` failed ({code}):\n{out}\n{err}");
    out
}

/// close(2) with its result: std's File ignores errors on drop.
fn close(file: std::fs::File) -> std::io::Result<()> {
    let fd = file.into_raw_fd();
    // SAFETY: `fd` was just taken out of the File, so nothing else owns or
    // closes it.
    if unsafe { libc::close(fd) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn git(dir: &Path, args: &str) -> String {
    run(&format!(
        "cd '{}' && git -c user.name=tester -c user.email=t@example.com {args}",
        dir.display()
    ))
}

#[test]
fn git_clone_commit_log_and_fsck_after_a_remount() {
    need("git");
    let s3 = TestS3::start();
    let b = s3.bucket("git");
    let src = TempDir::new("git-src");
    let repo = src.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    git(&repo, "init -q");
    for i in 0..20 {
        std::fs::write(repo.join(format!("f{i}.txt")), format!("file {i}\n")).unwrap();
    }
    std::fs::create_dir(repo.join("sub")).unwrap();
    std::fs::write(repo.join("sub/empty"), "").unwrap();
    std::fs::write(repo.join("sub/data.bin"), random_bytes(300_000, 1)).unwrap();
    git(
        &repo,
        "add -A && git -c user.name=t -c user.email=t@e commit -qm first",
    );
    std::fs::write(repo.join("f1.txt"), "changed\n").unwrap();
    git(&repo, "commit -qam second");

    {
        let m = Mounted::start(&s3, &b.name, &[]);
        let clone = m.path().join("clone");
        run(&format!(
            "git clone -q '{}' '{}'",
            repo.display(),
            clone.display()
        ));
        assert_eq!(
            git(&clone, "status --porcelain"),
            "",
            "a fresh clone is clean"
        );
        std::fs::write(clone.join("f2.txt"), "edited in the mount\n").unwrap();
        std::fs::write(clone.join("new.txt"), "new\n").unwrap();
        git(&clone, "add -A");
        git(&clone, "commit -qm third");
        let log = git(&clone, "log --format=%s");
        assert_eq!(log, "third\nsecond\nfirst\n");
        assert_eq!(git(&clone, "status --porcelain"), "");
    }
    assert_eq!(b.get("clone/f2.txt"), b"edited in the mount\n");
    assert_eq!(b.get("clone/sub/empty"), b"");
    let m = Mounted::start(&s3, &b.name, &[]);
    let clone = m.path().join("clone");
    git(&clone, "fsck --full --strict");
    assert_eq!(git(&clone, "log --format=%s"), "third\nsecond\nfirst\n");
    assert_eq!(
        git(&clone, "status --porcelain"),
        "",
        "clean after a remount"
    );
}

#[test]
fn rsync_copies_a_tree_with_empty_files_and_a_second_run_sends_nothing() {
    need("rsync");
    let s3 = TestS3::start();
    let b = s3.bucket("rsync");
    let m = Mounted::start(&s3, &b.name, &[]);
    let src = TempDir::new("rsync-src");
    let mut expected = BTreeSet::new();
    for d in 0..4 {
        let dir = src.path().join(format!("d{d}/inner"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..10 {
            let len = [0, 0, 1, 4096, 70_000, 1 << 20][(d + f) % 6];
            std::fs::write(
                dir.join(format!("f{f}")),
                random_bytes(len, (d * 10 + f) as u64),
            )
            .unwrap();
            expected.insert(format!("tree/d{d}/inner/f{f}"));
        }
    }
    let dst = m.path().join("tree");
    run(&format!(
        "rsync -a '{}/' '{}/'",
        src.path().display(),
        dst.display()
    ));
    run(&format!(
        "diff -r '{}' '{}'",
        src.path().display(),
        dst.display()
    ));
    let keys: BTreeSet<String> = b.keys().into_iter().filter(|k| !k.ends_with('/')).collect();
    assert_eq!(keys, expected, "every file, empty ones too, is an object");
    for key in &expected {
        let local = src.path().join(key.strip_prefix("tree/").unwrap());
        assert!(
            b.get(key) == std::fs::read(&local).unwrap(),
            "{key} differs in S3"
        );
    }
    let stats = run(&format!(
        "rsync -a --size-only --stats '{}/' '{}/'",
        src.path().display(),
        dst.display()
    ));
    assert!(
        stats.contains("Number of regular files transferred: 0"),
        "a second rsync sends nothing:\n{stats}"
    );
}

#[test]
fn sqlite_inserts_in_transactions_and_another_process_reads_them_after_a_remount() {
    need("sqlite3");
    let s3 = TestS3::start();
    let b = s3.bucket("sqlite");
    let rows = env_u64("S3MOUNT_TEST_SQLITE_ROWS", 10_000);
    {
        let m = Mounted::start(&s3, &b.name, &[]);
        let db = m.path().join("app.db");
        let mut sql = String::from("create table t(id integer primary key, v text);\n");
        for tx in 0..100 {
            sql.push_str("begin;\n");
            for i in 0..rows / 100 {
                let id = tx * (rows / 100) + i;
                sql.push_str(&format!("insert into t values({id}, 'row {id}');\n"));
            }
            sql.push_str("commit;\n");
        }
        let script = TempDir::new("sqlite-sql");
        std::fs::write(script.path().join("load.sql"), sql).unwrap();
        run(&format!(
            "sqlite3 '{}' < '{}'",
            db.display(),
            script.path().join("load.sql").display()
        ));
        // A second process, while the mount is live.
        let count = run(&format!(
            "sqlite3 '{}' 'select count(*) from t'",
            db.display()
        ));
        assert_eq!(count.trim(), rows.to_string());
        let readonly = run(&format!(
            "sqlite3 'file:{}?immutable=1' 'select max(id) from t'",
            db.display()
        ));
        assert_eq!(readonly.trim(), (rows - 1).to_string());
    }
    assert!(
        !b.keys().iter().any(|k| k.ends_with("-journal")),
        "the rollback journal is gone: {:?}",
        b.keys()
    );
    let m = Mounted::start(&s3, &b.name, &[]);
    let db = m.path().join("app.db");
    let check = run(&format!(
        "sqlite3 '{}' 'pragma integrity_check; select count(*), sum(id) from t'",
        db.display()
    ));
    assert_eq!(
        check.trim(),
        format!("ok\n{rows}|{}", rows * (rows - 1) / 2),
        "after a remount"
    );
    // The object in S3 is the database itself.
    let local = TempDir::new("sqlite-copy");
    std::fs::write(local.path().join("copy.db"), b.get("app.db")).unwrap();
    let direct = run(&format!(
        "sqlite3 '{}' 'select count(*) from t'",
        local.path().join("copy.db").display()
    ));
    assert_eq!(direct.trim(), rows.to_string());
}

/// A logger that opens, appends one line and closes, `lines` times.
fn append_lines(path: &Path, lines: usize) -> Vec<u8> {
    let mut written = Vec::new();
    for i in 0..lines {
        let line = format!("{i:05} appended by the logger\n");
        let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(line.as_bytes()).unwrap();
        close(f).unwrap_or_else(|e| panic!("close after append {i}: {e}"));
        written.extend_from_slice(line.as_bytes());
    }
    written
}

#[test]
fn a_logger_appends_to_large_and_small_files_and_every_line_lands_in_order() {
    let s3 = TestS3::start();
    let b = s3.bucket("append");
    let large = random_bytes(6 << 20, 3);
    b.put("logs/large.log", large.clone());
    b.put("logs/small.log", b"first line\n".to_vec());
    let m = Mounted::start(&s3, &b.name, &[]);
    let lines = env_u64("S3MOUNT_TEST_APPEND_LINES", 200) as usize;

    let mut want = large;
    want.extend(append_lines(&m.path().join("logs/large.log"), lines));
    assert!(b.get("logs/large.log") == want, "large log in S3");
    assert_eq!(
        std::fs::metadata(m.path().join("logs/large.log"))
            .unwrap()
            .len(),
        want.len() as u64
    );
    let etag = b
        .head("logs/large.log")
        .e_tag()
        .unwrap_or_default()
        .to_owned();
    assert!(
        etag.contains('-'),
        "appends to a large object are multipart uploads (copy + new bytes): {etag}"
    );

    let mut want = b"first line\n".to_vec();
    want.extend(append_lines(&m.path().join("logs/small.log"), lines));
    assert_eq!(b.get("logs/small.log"), want);

    // The shell's >> does the same.
    run(&format!(
        "echo one >> '{p}' && echo two >> '{p}'",
        p = m.path().join("logs/shell.log").display()
    ));
    assert_eq!(b.get("logs/shell.log"), b"one\ntwo\n");
    assert_eq!(
        std::fs::read(m.path().join("logs/small.log")).unwrap(),
        want,
        "readers on the mount see the new content"
    );
}

#[test]
fn appending_to_an_object_replaced_by_another_client_fails_at_close() {
    let s3 = TestS3::start();
    let b = s3.bucket("conflict");
    b.put("small.txt", b"original\n".to_vec());
    b.put("large.bin", random_bytes(6 << 20, 4));
    let m = Mounted::start(&s3, &b.name, &[]);
    for key in ["small.txt", "large.bin"] {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(m.path().join(key))
            .unwrap();
        f.write_all(b"appended\n").unwrap();
        b.put(key, format!("replaced {key}\n"));
        let closed = close(f);
        assert_eq!(
            closed.map_err(|e| e.raw_os_error()),
            Err(Some(libc::EIO)),
            "{key}: close reports the conflict"
        );
        assert_eq!(
            b.get(key),
            format!("replaced {key}\n").into_bytes(),
            "{key}: the other client's object is intact"
        );
    }
    assert!(b.open_multipart_uploads().is_empty(), "nothing left behind");
}

#[test]
fn empty_files_can_be_unlinked_renamed_or_truncated_right_after_close() {
    let s3 = TestS3::start();
    let b = s3.bucket("empty-race");
    let m = Mounted::start(&s3, &b.name, &[]);
    let root = m.path();
    let rounds = env_u64("S3MOUNT_TEST_EMPTY_ROUNDS", 200) as usize;
    let mut failures = Vec::new();
    for i in 0..rounds {
        let p = root.join(format!("e{i}"));
        std::fs::File::create(&p).unwrap();
        let outcome = match i % 3 {
            0 => std::fs::remove_file(&p),
            1 => std::fs::rename(&p, root.join(format!("r{i}"))),
            _ => std::fs::write(&p, b"x"),
        };
        if let Err(e) = outcome {
            failures.push(format!("round {i}: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures: {failures:?}",
        failures.len()
    );
    let keys: BTreeSet<String> = b.keys().into_iter().collect();
    for i in 0..rounds {
        match i % 3 {
            0 => assert!(!keys.contains(&format!("e{i}"))),
            1 => {
                assert!(keys.contains(&format!("r{i}")) && !keys.contains(&format!("e{i}")));
                assert_eq!(b.get(&format!("r{i}")), b"");
            }
            _ => assert_eq!(b.get(&format!("e{i}")), b"x"),
        }
    }
}

#[test]
fn atomic_producers_and_a_loader_lose_nothing_and_leave_nothing() {
    let s3 = TestS3::start();
    let b = s3.bucket("atomic");
    let m = Mounted::start(&s3, &b.name, &[]);
    let producers = 4;
    let per = env_u64("S3MOUNT_TEST_ATOMIC_FILES", 125) as usize;
    let size = |p: usize, j: usize| [0, 0, 10, 5000, 100_000][(p + j) % 5];
    let body = |name: &str| {
        let (p, j) = name
            .strip_prefix('p')?
            .strip_suffix(".dat")?
            .split_once('-')?;
        let (p, j): (usize, usize) = (p.parse().ok()?, j.parse().ok()?);
        (p < producers && j < per).then(|| random_bytes(size(p, j), (p * per + j) as u64))
    };
    let folder = DropFolder::new(&m.path(), &body, &DropFolder::strict);
    // Four producer processes, each publishing its files the atomic way:
    // cp to a hidden temporary name, then mv to the real one.
    let names: Vec<Names> = (0..producers)
        .map(|p| Box::new((0..per).map(move |j| format!("p{p}-{j:04}.dat"))) as Names)
        .collect();
    let outcome = folder.run(Publish::CpThenMv, names, Duration::from_secs(300));
    assert_eq!(
        outcome.produced.len(),
        producers * per,
        "every file loaded once"
    );
    folder.check(&b, &outcome);
}

#[test]
fn tar_unzip_sed_and_copytree_round_trip_byte_identical() {
    need("tar");
    need("zip");
    need("unzip");
    need("sed");
    let s3 = TestS3::start();
    let b = s3.bucket("tools");
    let m = Mounted::start(&s3, &b.name, &[]);
    let src = TempDir::new("tools-src");
    let tree = src.path().join("tree");
    std::fs::create_dir_all(tree.join("a/b")).unwrap();
    for (i, len) in [0usize, 1, 5000, 3 << 20, 12 << 20].into_iter().enumerate() {
        std::fs::write(tree.join(format!("a/b/f{i}")), random_bytes(len, i as u64)).unwrap();
    }
    std::fs::write(tree.join("a/config.ini"), "name=old\nkeep=1\n").unwrap();
    let mnt = m.path();
    let back = TempDir::new("tools-back");
    run(&format!(
        "tar -C '{src}' -cf - tree | tar -C '{mnt}' -xf - && mkdir '{mnt}/untar' && tar -C '{mnt}' -cf '{mnt}/t.tar' tree && tar -C '{back}' -xf '{mnt}/t.tar' && diff -r '{src}/tree' '{back}/tree'",
        src = src.path().display(),
        mnt = mnt.display(),
        back = back.path().display()
    ));
    run(&format!(
        "cd '{src}' && zip -qr '{mnt}/t.zip' tree && cd '{mnt}/untar' && unzip -q '{mnt}/t.zip' && diff -r '{src}/tree' '{mnt}/untar/tree'",
        src = src.path().display(),
        mnt = mnt.display()
    ));
    run(&format!(
        "sed -i 's/old/new/' '{}/tree/a/config.ini'",
        mnt.display()
    ));
    assert_eq!(b.get("tree/a/config.ini"), b"name=new\nkeep=1\n");
    run(&format!(
        "python3 -c 'import shutil,sys; shutil.copytree(sys.argv[1], sys.argv[2]); shutil.copytree(sys.argv[2], sys.argv[3])' '{src}/tree' '{mnt}/py' '{back}/py' && diff -r '{src}/tree' '{back}/py'",
        src = src.path().display(),
        mnt = mnt.display(),
        back = back.path().display()
    ));
    assert!(b.get("py/a/b/f4") == random_bytes(12 << 20, 4));
}

#[test]
fn read_write_descriptors_read_edit_truncate_and_grow_files_in_place() {
    let s3 = TestS3::start();
    let b = s3.bucket("rdwr");
    let original = random_bytes(20 << 20, 9);
    b.put("big.bin", original.clone());
    b.put("small.txt", b"0123456789".to_vec());
    let m = Mounted::start(&s3, &b.name, &["--max-modify-size", "64M"]);
    let root = m.path();

    // Read-write descriptor: reads the object, then its own writes.
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(root.join("big.bin"))
        .unwrap();
    let mut head = vec![0; 4096];
    f.read_exact(&mut head).unwrap();
    assert!(head == original[..4096]);
    f.write_all_at(b"PATCHED-IN-THE-MIDDLE", 10 << 20).unwrap();
    let mut check = vec![0; 21];
    f.read_exact_at(&mut check, 10 << 20).unwrap();
    assert_eq!(&check, b"PATCHED-IN-THE-MIDDLE");
    // Another descriptor sees the change before close, as on a disk.
    let mut seen = vec![0; 21];
    std::fs::File::open(root.join("big.bin"))
        .unwrap()
        .read_exact_at(&mut seen, 10 << 20)
        .unwrap();
    assert_eq!(&seen, b"PATCHED-IN-THE-MIDDLE");
    f.sync_all().unwrap();
    let mut want = original.clone();
    want[10 << 20..(10 << 20) + 21].copy_from_slice(b"PATCHED-IN-THE-MIDDLE");
    assert!(b.get("big.bin") == want, "fsync stores the change");
    // Shrink and grow through the same descriptor.
    f.set_len(15 << 20).unwrap();
    f.set_len(16 << 20).unwrap();
    f.seek(SeekFrom::End(0)).unwrap();
    f.write_all(b"end").unwrap();
    close(f).unwrap();
    want.truncate(15 << 20);
    want.resize(16 << 20, 0);
    want.extend_from_slice(b"end");
    assert!(b.get("big.bin") == want, "truncate, grow and write stored");
    assert_eq!(
        std::fs::read(root.join("big.bin")).unwrap().len(),
        want.len()
    );

    // truncate(1) on a file nobody has open.
    run(&format!(
        "truncate -s 4 '{}'",
        root.join("small.txt").display()
    ));
    assert_eq!(b.get("small.txt"), b"0123");
    run(&format!(
        "truncate -s 6 '{}'",
        root.join("small.txt").display()
    ));
    assert_eq!(b.get("small.txt"), b"0123\0\0");

    // A file created read-write, read back before close.
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(root.join("scratch.bin"))
        .unwrap();
    f.write_all(b"hello").unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "hello");
    close(f).unwrap();
    assert_eq!(b.get("scratch.bin"), b"hello");
}

#[test]
fn limits_refuse_large_in_place_changes_and_a_full_spool_clearly() {
    let s3 = TestS3::start();
    let b = s3.bucket("limits");
    b.put("big.bin", random_bytes(12 << 20, 5));
    let m = Mounted::start(
        &s3,
        &b.name,
        &["--max-modify-size", "8M", "--spool-limit", "2M"],
    );
    let root = m.path();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(root.join("big.bin"))
        .unwrap();
    let e = f.write_all_at(b"x", 0).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EFBIG), "{e}");
    // Appending to it is allowed at any size.
    f.write_all_at(b"tail", 12 << 20).unwrap();
    close(f).unwrap();
    assert_eq!(b.get("big.bin").len(), (12 << 20) + 4);
    assert!(
        m.log_text().contains("--max-modify-size"),
        "the refusal is logged"
    );

    // One budget for every open file: the second file finds it full.
    let mut a = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(root.join("a.bin"))
        .unwrap();
    a.write_all(&vec![1; 1536 << 10]).unwrap();
    let mut c = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(root.join("c.bin"))
        .unwrap();
    let e = c.write_all(&vec![2; 1 << 20]).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    close(a).unwrap();
    drop(c);
    assert_eq!(b.get("a.bin").len(), 1536 << 10);
    // Space comes back once a file is stored and released (the release
    // runs just after close returns, so give it a moment).
    eventually(
        "the spool to get its space back",
        Duration::from_secs(5),
        || match std::fs::write(root.join("d.bin"), vec![3; 1 << 20]) {
            Ok(()) => true,
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
                false
            }
        },
    );
    assert_eq!(b.get("d.bin").len(), 1 << 20);
}

#[test]
fn unlinked_open_files_stay_readable_and_go_when_closed() {
    let s3 = TestS3::start();
    let b = s3.bucket("unlink-open");
    let data = random_bytes(5 << 20, 6);
    b.put("r.bin", data.clone());
    let m = Mounted::start(&s3, &b.name, &[]);
    let root = m.path();
    let mut r = std::fs::File::open(root.join("r.bin")).unwrap();
    let mut first = vec![0; 1000];
    r.read_exact(&mut first).unwrap();
    std::fs::remove_file(root.join("r.bin")).unwrap();
    assert!(!root.join("r.bin").exists(), "the name is gone at once");
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    first.extend(rest);
    assert!(first == data, "an open descriptor reads the whole file");
    drop(r);
    eventually(
        "r.bin to be deleted after the last close",
        Duration::from_secs(5),
        || !b.keys().contains(&"r.bin".to_string()),
    );

    // A file being written and unlinked is never stored.
    let mut w = std::fs::File::create(root.join("w.bin")).unwrap();
    w.write_all(b"scratch").unwrap();
    std::fs::remove_file(root.join("w.bin")).unwrap();
    w.write_all(b" more").unwrap();
    close(w).unwrap();
    assert!(!b.keys().contains(&"w.bin".to_string()));
}

#[test]
fn mknod_long_names_and_content_types() {
    let s3 = TestS3::start();
    let b = s3.bucket("names");
    let m = Mounted::start(&s3, &b.name, &[]);
    let root = m.path();
    let node = std::ffi::CString::new(root.join("node.txt").to_str().unwrap()).unwrap();
    // SAFETY: `node` is a valid NUL-terminated path that outlives the call.
    let rc = unsafe { libc::mknod(node.as_ptr(), libc::S_IFREG | 0o644, 0) };
    assert_eq!(rc, 0, "mknod: {}", std::io::Error::last_os_error());
    assert_eq!(b.get("node.txt"), b"");

    let long = format!("{}.csv", "n".repeat(300));
    std::fs::write(root.join(&long), "a,b\n").unwrap();
    assert_eq!(b.get(&long), b"a,b\n");
    assert!(names(&root).contains(&long), "listed");
    let too_long = "t".repeat(1100);
    let e = std::fs::write(root.join(too_long), "x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENAMETOOLONG));

    std::fs::write(root.join("page.html"), "<p>hi</p>").unwrap();
    std::fs::write(root.join("big.json"), random_bytes(20 << 20, 7)).unwrap();
    std::fs::write(root.join("blob"), "x").unwrap();
    let ct = |k: &str| b.head(k).content_type().unwrap_or_default().to_owned();
    assert_eq!(ct("page.html"), "text/html");
    assert_eq!(ct("big.json"), "application/json", "multipart uploads too");
    assert_eq!(ct("blob"), "application/octet-stream");
    std::fs::rename(root.join("blob"), root.join("blob.csv")).unwrap();
    assert_eq!(
        ct("blob.csv"),
        "text/csv",
        "a renamed object follows its name"
    );
}

#[test]
fn renamed_and_replaced_open_files_behave_as_on_a_disk() {
    let s3 = TestS3::start();
    let b = s3.bucket("rotate");
    let m = Mounted::start(&s3, &b.name, &[]);
    let root = m.path();

    // logrotate: the application keeps appending through its descriptor
    // after the file was renamed; everything lands under the new name.
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(root.join("app.log"))
        .unwrap();
    log.write_all(b"before rotation\n").unwrap();
    std::fs::rename(root.join("app.log"), root.join("app.log.1")).unwrap();
    log.write_all(b"after rotation\n").unwrap();
    close(log).unwrap();
    assert_eq!(b.get("app.log.1"), b"before rotation\nafter rotation\n");
    assert!(!b.keys().contains(&"app.log".to_string()));

    // A file open for writing replaced by a rename onto its name: what its
    // descriptor does afterwards never reaches the new file.
    let mut old = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(root.join("target.txt"))
        .unwrap();
    old.write_all(b"old contents").unwrap();
    std::fs::write(root.join("new.txt"), b"new contents").unwrap();
    std::fs::rename(root.join("new.txt"), root.join("target.txt")).unwrap();
    old.write_all(b" and more").unwrap();
    old.set_len(3).unwrap();
    close(old).unwrap();
    assert_eq!(b.get("target.txt"), b"new contents");
    assert_eq!(
        std::fs::read(root.join("target.txt")).unwrap(),
        b"new contents"
    );
}
