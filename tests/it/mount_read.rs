//! End-to-end: a real S3 server, the built binary, real FUSE, ordinary tools.

use std::io::{Read, Seek, SeekFrom};
use std::time::{Duration, UNIX_EPOCH};

use crate::support::*;

#[test]
fn shows_the_tree_and_reads_every_file_byte_identical() {
    let s3 = TestS3::start();
    let b = s3.bucket("tree");
    let big = random_bytes(9 * 1024 * 1024 + 12345, 1);
    let csv = b"id,name\n1,alpha\n2,beta\n".to_vec();
    b.put("top.txt", b"hello from s3mount\n".to_vec());
    b.put("data/big.bin", big.clone());
    b.put("data/nested/deeper/table.csv", csv.clone());
    b.put("data/nested/zero", Vec::new());
    b.put("empty-dir/", Vec::new());

    let m = Mounted::start(&s3, &b.name, &[]);
    let root = m.path();
    assert_eq!(names(&root), ["data", "empty-dir", "top.txt"]);
    assert_eq!(names(&root.join("data")), ["big.bin", "nested"]);
    assert_eq!(names(&root.join("data/nested")), ["deeper", "zero"]);
    assert_eq!(names(&root.join("data/nested/deeper")), ["table.csv"]);
    assert!(names(&root.join("empty-dir")).is_empty());
    assert!(root.join("empty-dir").is_dir());

    // stat: sizes, kinds, and mtime from LastModified.
    let meta = std::fs::metadata(root.join("data/big.bin")).unwrap();
    assert!(meta.is_file());
    assert_eq!(meta.len(), big.len() as u64);
    let head = b.head("data/big.bin");
    let s3_mtime = head.last_modified().unwrap().secs();
    let fs_mtime = meta
        .modified()
        .unwrap()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert_eq!(
        fs_mtime, s3_mtime,
        "mtime should be the object's LastModified"
    );
    assert_eq!(
        std::fs::metadata(root.join("data/nested/zero"))
            .unwrap()
            .len(),
        0
    );
    assert!(std::fs::metadata(root.join("data/nested"))
        .unwrap()
        .is_dir());

    // Full-file equality through std::fs, cat, cp, Python and sha256sum.
    assert_eq!(std::fs::read(root.join("data/big.bin")).unwrap(), big);
    assert_eq!(
        std::fs::read(root.join("data/nested/deeper/table.csv")).unwrap(),
        csv
    );
    assert_eq!(
        std::fs::read(root.join("data/nested/zero")).unwrap(),
        Vec::<u8>::new()
    );
    let local = m.dir.path().join("big.local");
    std::fs::write(&local, &big).unwrap();
    assert_eq!(sha256_of(&root.join("data/big.bin")), sha256_of(&local));
    let copy = m.dir.path().join("big.cp");
    let (code, _, err) = sh(&format!(
        "cp '{}' '{}'",
        root.join("data/big.bin").display(),
        copy.display()
    ));
    assert_eq!(code, 0, "cp: {err}");
    assert_eq!(std::fs::read(&copy).unwrap(), big);
    let (code, out, err) = sh(&format!("cat '{}'", root.join("top.txt").display()));
    assert_eq!(
        (code, out.as_str()),
        (0, "hello from s3mount\n"),
        "cat: {err}"
    );
    let (code, out, err) = sh(&format!(
        "python3 -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],\"rb\").read()).hexdigest())' '{}'",
        root.join("data/big.bin").display()
    ));
    assert_eq!(code, 0, "python: {err}");
    assert_eq!(out.trim(), sha256_of(&local));

    // Reads at arbitrary offsets: dd skip=, tail -c, and seeks.
    let (code, out, err) = sh(&format!(
        "dd if='{}' bs=4096 skip=1001 count=3 status=none | sha256sum",
        root.join("data/big.bin").display()
    ));
    assert_eq!(code, 0, "dd: {err}");
    let expect = &big[1001 * 4096..1004 * 4096];
    let expect_file = m.dir.path().join("dd.expect");
    std::fs::write(&expect_file, expect).unwrap();
    assert_eq!(
        out.split_whitespace().next().unwrap(),
        sha256_of(&expect_file)
    );
    let (code, out, _) = sh(&format!(
        "tail -c 100 '{}' | od -An -tx1 | tr -d ' \\n'",
        root.join("data/big.bin").display()
    ));
    assert_eq!(code, 0);
    let tail_hex: String = big[big.len() - 100..]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(out, tail_hex);
    let mut f = std::fs::File::open(root.join("data/big.bin")).unwrap();
    for &off in &[7u64, 5 * 1024 * 1024 + 3, big.len() as u64 - 10, 1] {
        f.seek(SeekFrom::Start(off)).unwrap();
        let mut buf = vec![0; 10];
        f.read_exact(&mut buf).unwrap();
        assert_eq!(
            buf,
            big[off as usize..off as usize + 10],
            "bytes at offset {off}"
        );
    }
    // Reading past the end returns nothing.
    f.seek(SeekFrom::Start(big.len() as u64 + 100)).unwrap();
    let mut rest = Vec::new();
    assert_eq!(f.read_to_end(&mut rest).unwrap(), 0);

    // A missing name is ENOENT.
    let err = std::fs::metadata(root.join("data/nope")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
}

#[test]
fn mounts_a_sub_prefix_only() {
    let s3 = TestS3::start();
    let b = s3.bucket("sub");
    b.put("outside.txt", b"no".to_vec());
    b.put("team/a/report.txt", b"inside".to_vec());
    b.put("team/b.txt", b"b".to_vec());
    b.put("teammate.txt", b"not under team/".to_vec());
    for target in [format!("{}/team", b.name), format!("s3://{}/team/", b.name)] {
        let m = Mounted::start(&s3, &target, &[]);
        assert_eq!(names(&m.path()), ["a", "b.txt"], "mounting {target}");
        assert_eq!(
            std::fs::read_to_string(m.path().join("a/report.txt")).unwrap(),
            "inside"
        );
    }
}

#[test]
fn odd_keys_show_up_or_are_hidden_as_documented() {
    let s3 = TestS3::start();
    let b = s3.bucket("odd");
    let long = "L".repeat(300);
    for key in [
        "with space.txt",
        "ünïcödé-日本.txt",
        "percent%41.txt",
        "plus+sign.txt",
        "dup", // a key next to a same-named prefix: the directory wins
        "dup/inner.txt",
        "double//slash.txt", // empty component: hidden
        "dot/./x.txt",       // '.' component: hidden
        "dotdot/../y.txt",   // '..' component: hidden
        "marker-only/",
    ] {
        b.put(key, format!("content of {key}").into_bytes());
    }
    // Longer than most local file systems allow, but a valid FUSE name.
    b.put(&format!("{long}.txt"), b"long name".to_vec());

    let m = Mounted::start(&s3, &b.name, &[]);
    let root = m.path();
    assert_eq!(
        names(&root),
        [
            format!("{long}.txt").as_str(),
            "dot",
            "dotdot",
            "double",
            "dup",
            "marker-only",
            "percent%41.txt",
            "plus+sign.txt",
            "with space.txt",
            "ünïcödé-日本.txt"
        ]
    );
    for key in [
        "with space.txt",
        "ünïcödé-日本.txt",
        "percent%41.txt",
        "plus+sign.txt",
        "dup/inner.txt",
    ] {
        assert_eq!(
            std::fs::read_to_string(root.join(key)).unwrap(),
            format!("content of {key}"),
            "reading {key}"
        );
    }
    assert!(
        root.join("dup").is_dir(),
        "the directory wins over the key 'dup'"
    );
    assert!(
        names(&root.join("double")).is_empty(),
        "the '//' key is hidden"
    );
    assert!(
        names(&root.join("dot")).is_empty(),
        "the '.' component is hidden"
    );
    assert!(
        names(&root.join("dotdot")).is_empty(),
        "the '..' component is hidden"
    );
    assert!(root.join("marker-only").is_dir());
    assert!(names(&root.join("marker-only")).is_empty());
    assert_eq!(
        std::fs::read(root.join(format!("{long}.txt"))).unwrap(),
        b"long name"
    );
}

#[test]
fn empty_bucket_mounts_as_empty_directory() {
    let s3 = TestS3::start();
    let b = s3.bucket("empty");
    let m = Mounted::start(&s3, &b.name, &[]);
    assert!(names(&m.path()).is_empty());
    let (code, out, _) = sh(&format!("ls -la '{}' | wc -l", m.path().display()));
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "3", "total line plus . and ..");
}

#[test]
fn large_directory_lists_every_page() {
    let s3 = TestS3::start();
    let b = s3.bucket("pages");
    // More than one ListObjectsV2 page (1000 keys) in one directory.
    b.put_many((0..1100).map(|i| format!("many/f{i:05}")).collect(), |i| {
        vec![b'x'; i % 7]
    });
    let m = Mounted::start(&s3, &b.name, &[]);
    let listed = names(&m.path().join("many"));
    assert_eq!(listed.len(), 1100);
    assert_eq!(listed[0], "f00000");
    assert_eq!(listed[1099], "f01099");
    assert_eq!(
        std::fs::metadata(m.path().join("many/f00013"))
            .unwrap()
            .len(),
        13 % 7
    );
}

#[test]
fn a_reader_never_mixes_two_versions_of_an_object() {
    let s3 = TestS3::start();
    let b = s3.bucket("pin");
    let v1 = random_bytes(4 * 1024 * 1024, 11);
    b.put("obj.bin", v1.clone());
    let m = Mounted::start(&s3, &b.name, &[]);
    let path = m.path().join("obj.bin");
    let mut f = std::fs::File::open(&path).unwrap();
    let mut first = vec![0; 64 * 1024];
    f.read_exact(&mut first).unwrap();
    assert_eq!(first, v1[..64 * 1024]);
    // Replace the object behind the open handle.
    b.put("obj.bin", random_bytes(4 * 1024 * 1024, 12));
    f.seek(SeekFrom::Start(3 * 1024 * 1024)).unwrap();
    let mut later = vec![0; 64 * 1024];
    match f.read_exact(&mut later) {
        Ok(()) => assert_eq!(
            later,
            v1[3 * 1024 * 1024..3 * 1024 * 1024 + 64 * 1024],
            "a read after the overwrite returned bytes of another version"
        ),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "unexpected error {e}"),
    }
}

#[test]
fn sigterm_unmounts_and_exits_zero() {
    let s3 = TestS3::start();
    let b = s3.bucket("sigterm");
    b.put("f", b"x".to_vec());
    let mut m = Mounted::start(&s3, &b.name, &[]);
    assert_eq!(names(&m.path()), ["f"]);
    let (code, _, _) = sh(&format!("kill -TERM {}", m.pid()));
    assert_eq!(code, 0);
    assert_eq!(
        m.wait_exit(Duration::from_secs(15)),
        Some(0),
        "log:\n{}",
        m.log_text()
    );
    assert!(!is_mounted(&m.path()));
}

#[test]
fn external_umount_ends_the_daemon_with_exit_zero() {
    let s3 = TestS3::start();
    let b = s3.bucket("umount");
    let mut m = Mounted::start(&s3, &b.name, &[]);
    let (code, _, err) = sh(&format!("umount '{}'", m.path().display()));
    assert_eq!(code, 0, "umount: {err}");
    assert_eq!(
        m.wait_exit(Duration::from_secs(15)),
        Some(0),
        "log:\n{}",
        m.log_text()
    );
}

#[test]
fn mount_options_in_dash_o_form_work() {
    let s3 = TestS3::start();
    let b = s3.bucket("dasho");
    b.put("f.txt", b"x".to_vec());
    let m = Mounted::start(
        &s3,
        &b.name,
        &[
            "-o",
            "file_mode=600,dir_mode=700,uid=1234,gid=4321,metadata_ttl=5,_netdev,nofail",
        ],
    );
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(m.path().join("f.txt")).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o600);
    assert_eq!((meta.uid(), meta.gid()), (1234, 4321));
    let dmeta = std::fs::metadata(m.path()).unwrap();
    assert_eq!(dmeta.mode() & 0o7777, 0o700);
}
