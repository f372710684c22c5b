//! Times, modes, owners and symlinks on a real mount, checked in the
//! objects' headers: `rsync -a` re-runs that send nothing (also after a
//! remount and from a new machine), `chmod +x` then running the script,
//! `touch -d`, `chown`, s3fs- and rclone-style headers both ways, `tar`
//! round trips with symlinks, permissions enforced for other users, and
//! what `ls -l` of a directory written by another client costs under each
//! `--posix-metadata` setting.

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::UNIX_EPOCH;

use aws_sdk_s3::primitives::ByteStream;

use crate::support::*;

/// Runs a shell line, failing the test with its output if it fails.
fn run(script: &str) -> String {
    let (code, out, err) = sh(script);
    assert_eq!(code, 0, "`{script}` failed ({code}):\n{out}\n{err}");
    out
}

/// The user metadata of `key`, names lowercased.
fn user_metadata(b: &TestBucket, key: &str) -> HashMap<String, String> {
    b.head(key)
        .metadata()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// Stores `body` at `key` with user metadata `meta`, as s3fs or rclone would.
fn put_with(b: &TestBucket, key: &str, body: &str, meta: &[(&str, &str)]) {
    let mut req = b
        .client
        .put_object()
        .bucket(&b.name)
        .key(key)
        .body(ByteStream::from(body.as_bytes().to_vec()));
    for (k, v) in meta {
        req = req.metadata(*k, *v);
    }
    block_on(req.send())
        .unwrap_or_else(|e| panic!("put {key}: {}", aws_sdk_s3::error::DisplayErrorContext(&e)));
}

/// HEAD requests forwarded by `proxy` so far.
fn heads(proxy: &crate::support::proxy::FaultProxy) -> usize {
    proxy
        .requests()
        .iter()
        .filter(|r| r.starts_with("HEAD "))
        .count()
}

/// A tree of `files` files with set times and modes, executables, an
/// empty file, a symlink and a subdirectory.
fn make_tree(root: &Path, files: usize) {
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    for i in 0..files {
        let dir = match i % 3 {
            0 => root.to_path_buf(),
            1 => root.join("sub"),
            _ => root.join("sub/deeper"),
        };
        let path = dir.join(format!("f{i:03}"));
        let len = if i == 0 { 0 } else { 1 + (i * 37) % 3000 };
        std::fs::write(&path, random_bytes(len, i as u64)).unwrap();
        let mode = if i % 10 == 0 { 0o755 } else { 0o640 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        run(&format!(
            "touch -d @{} '{}'",
            1_500_000_000 + i * 3600,
            path.display()
        ));
    }
    std::os::unix::fs::symlink("sub/f001", root.join("link")).unwrap();
}

fn rsync_stats(src: &Path, dst: &Path) -> String {
    run(&format!(
        "rsync -a --stats '{}/' '{}/'",
        src.display(),
        dst.display()
    ))
}

fn transferred(stats: &str) -> u64 {
    stats
        .lines()
        .find_map(|l| l.strip_prefix("Number of regular files transferred: "))
        .and_then(|n| n.trim().replace(',', "").parse().ok())
        .unwrap_or_else(|| panic!("no transfer count in:\n{stats}"))
}

#[test]
fn rsync_a_twice_sends_nothing_the_second_time_also_after_a_remount_and_on_a_new_machine() {
    let s3 = TestS3::start();
    let b = s3.bucket("posix-rsync");
    let src = TempDir::new("posix-rsync-src");
    let files = env_u64("S3MOUNT_TEST_POSIX_RSYNC_FILES", 200) as usize;
    make_tree(src.path(), files);
    let cache = TempDir::new("posix-rsync-cache");
    let cache_arg = format!("--cache-dir={}", cache.path().display());
    {
        let m = Mounted::start(&s3, &b.name, &[&cache_arg]);
        let dst = m.path().join("backup");
        let first = rsync_stats(src.path(), &dst);
        assert_eq!(transferred(&first), files as u64, "{first}");
        let second = rsync_stats(src.path(), &dst);
        assert_eq!(transferred(&second), 0, "the second run:\n{second}");
        let meta = user_metadata(&b, "backup/sub/f010");
        assert_eq!(meta.get("mtime").map(String::as_str), Some("1500036000"));
        assert_eq!(
            meta.get("mode").map(String::as_str),
            Some((libc::S_IFREG | 0o755).to_string().as_str())
        );
        assert_eq!(
            user_metadata(&b, "backup/link")
                .get("mode")
                .map(String::as_str),
            Some((libc::S_IFLNK | 0o777).to_string().as_str())
        );
        assert_eq!(b.get("backup/link"), b"sub/f001");
        run(&format!(
            "diff -r '{}' '{}'",
            src.path().display(),
            dst.display()
        ));
    }
    {
        let m = Mounted::start(&s3, &b.name, &[&cache_arg]);
        let again = rsync_stats(src.path(), &m.path().join("backup"));
        assert_eq!(transferred(&again), 0, "after a remount:\n{again}");
    }
    let fresh = TempDir::new("posix-rsync-fresh");
    let m = Mounted::start(
        &s3,
        &b.name,
        &[&format!("--cache-dir={}", fresh.path().display())],
    );
    let dst = m.path().join("backup");
    let again = rsync_stats(src.path(), &dst);
    assert_eq!(transferred(&again), 0, "on a new machine:\n{again}");
    let link = std::fs::symlink_metadata(dst.join("link")).unwrap();
    assert!(link.file_type().is_symlink());
    assert_eq!(
        std::fs::read_link(dst.join("link")).unwrap(),
        Path::new("sub/f001")
    );
    let exe = std::fs::metadata(dst.join("sub/f010")).unwrap();
    assert_eq!(exe.mode() & 0o7777, 0o755);
    assert_eq!(exe.mtime(), 1_500_036_000);
}

#[test]
fn chmod_x_runs_touch_d_shows_and_chown_is_stored_in_the_headers() {
    let s3 = TestS3::start();
    let b = s3.bucket("posix-chmod");
    let m = Mounted::start(&s3, &b.name, &[]);
    let script = m.path().join("run.sh");
    std::fs::write(&script, "#!/bin/sh\necho ran from s3\n").unwrap();
    let (code, _, _) = sh(&format!("'{}'", script.display()));
    assert_ne!(code, 0, "not executable yet");
    run(&format!("chmod +x '{}'", script.display()));
    assert_eq!(run(&format!("'{}'", script.display())), "ran from s3\n");
    assert_eq!(
        user_metadata(&b, "run.sh").get("mode").map(String::as_str),
        Some((libc::S_IFREG | 0o755).to_string().as_str())
    );
    run(&format!(
        "touch -d '2020-01-02 03:04:05 UTC' '{}'",
        script.display()
    ));
    let stamp = run(&format!("stat -c %Y '{}'", script.display()));
    assert_eq!(stamp.trim(), "1577934245");
    assert_eq!(
        user_metadata(&b, "run.sh").get("mtime").map(String::as_str),
        Some("1577934245")
    );
    run(&format!("chown 1234:5678 '{}'", script.display()));
    let meta = user_metadata(&b, "run.sh");
    assert_eq!(meta.get("uid").map(String::as_str), Some("1234"));
    assert_eq!(meta.get("gid").map(String::as_str), Some("5678"));
    assert_eq!(
        run(&format!("stat -c %u:%g '{}'", script.display())).trim(),
        "1234:5678"
    );
    assert_eq!(
        b.get("run.sh"),
        b"#!/bin/sh\necho ran from s3\n",
        "the bytes are kept"
    );
}

#[test]
fn s3fs_and_rclone_headers_are_read_and_what_s3mount_writes_they_read() {
    let s3 = TestS3::start();
    let b = s3.bucket("posix-interop");
    let reg_755 = (libc::S_IFREG | 0o755).to_string();
    let link_mode = (libc::S_IFLNK | 0o777).to_string();
    put_with(
        &b,
        "s3fs/tool",
        "#!/bin/sh\n",
        &[
            ("mode", &reg_755),
            ("uid", "1000"),
            ("gid", "100"),
            ("mtime", "1577934245"),
        ],
    );
    put_with(&b, "s3fs/latest", "tool", &[("mode", &link_mode)]);
    put_with(
        &b,
        "rclone/data.csv",
        "a,b\n",
        &[("mtime", "1600000000.250000000")],
    );
    b.put("plain/x", "x");
    let m = Mounted::start(&s3, &b.name, &[]);
    let tool = std::fs::metadata(m.path().join("s3fs/tool")).unwrap();
    assert_eq!(tool.mode() & 0o7777, 0o755);
    assert_eq!((tool.uid(), tool.gid()), (1000, 100));
    assert_eq!(tool.mtime(), 1_577_934_245);
    let latest = std::fs::symlink_metadata(m.path().join("s3fs/latest")).unwrap();
    assert!(latest.file_type().is_symlink());
    assert_eq!(
        std::fs::read_link(m.path().join("s3fs/latest")).unwrap(),
        Path::new("tool")
    );
    assert_eq!(
        std::fs::read(m.path().join("s3fs/latest")).unwrap(),
        b"#!/bin/sh\n"
    );
    let csv = std::fs::metadata(m.path().join("rclone/data.csv")).unwrap();
    assert_eq!(
        (csv.mtime(), csv.mtime_nsec()),
        (1_600_000_000, 250_000_000)
    );
    // Written here: the headers s3fs and rclone read.
    std::fs::write(m.path().join("plain/new.txt"), "new").unwrap();
    let meta = user_metadata(&b, "plain/new.txt");
    let mode: u32 = meta["mode"].parse().expect("s3fs reads a decimal mode");
    assert_eq!(mode & libc::S_IFMT, libc::S_IFREG);
    let mtime: f64 = meta["mtime"]
        .parse()
        .expect("rclone reads seconds as a float");
    let now = std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap();
    assert!((now.as_secs_f64() - mtime).abs() < 60.0, "{mtime}");
    assert!(
        meta.contains_key("uid") && meta.contains_key("gid"),
        "{meta:?}"
    );
    std::os::unix::fs::symlink("new.txt", m.path().join("plain/ln")).unwrap();
    assert_eq!(user_metadata(&b, "plain/ln")["mode"], link_mode);
    assert_eq!(b.get("plain/ln"), b"new.txt");
}

#[test]
fn chmod_keeps_what_else_the_object_carries() {
    let s3 = TestS3::start();
    let b = s3.bucket("posix-keep");
    block_on(
        b.client
            .put_object()
            .bucket(&b.name)
            .key("report.csv")
            .metadata("xattr", "user.origin=cGlwZWxpbmU=")
            .cache_control("max-age=60")
            .content_type("text/csv; charset=utf-8")
            .body(ByteStream::from_static(b"a,b\n"))
            .send(),
    )
    .unwrap();
    let m = Mounted::start(&s3, &b.name, &[]);
    run(&format!(
        "chmod 640 '{}'",
        m.path().join("report.csv").display()
    ));
    let head = b.head("report.csv");
    let meta = user_metadata(&b, "report.csv");
    assert_eq!(meta["mode"], (libc::S_IFREG | 0o640).to_string());
    assert_eq!(
        meta.get("xattr").map(String::as_str),
        Some("user.origin=cGlwZWxpbmU=")
    );
    assert_eq!(head.cache_control(), Some("max-age=60"));
    assert_eq!(head.content_type(), Some("text/csv; charset=utf-8"));
    assert_eq!(b.get("report.csv"), b"a,b\n");
}

#[test]
fn tar_xp_then_tar_c_gives_back_the_same_listing() {
    let s3 = TestS3::start();
    let b = s3.bucket("posix-tar");
    let src = TempDir::new("posix-tar-src");
    make_tree(&src.path().join("t"), 30);
    let archive = src.path().join("in.tar");
    run(&format!(
        "cd '{}' && tar --owner=1000 --group=1000 --numeric-owner -cf '{}' t",
        src.path().display(),
        archive.display()
    ));
    let m = Mounted::start(&s3, &b.name, &[]);
    run(&format!(
        "cd '{}' && tar -xpf '{}'",
        m.path().display(),
        archive.display()
    ));
    let back = src.path().join("back.tar");
    run(&format!(
        "cd '{}' && tar --numeric-owner -cf '{}' t",
        m.path().display(),
        back.display()
    ));
    let list = |tar: &Path| {
        run(&format!(
            "tar --numeric-owner -tvf '{}' | sort -k6",
            tar.display()
        ))
    };
    let (want, got) = (list(&archive), list(&back));
    assert_eq!(got, want, "tar -tvf of the round trip");
    assert!(got.contains("t/link -> sub/f001"), "{got}");
}

#[test]
fn a_file_stored_0600_by_one_user_is_not_readable_by_another() {
    let s3 = TestS3::start();
    let b = s3.bucket("posix-perm");
    let m = Mounted::start(&s3, &b.name, &["--allow-other"]);
    let secret = m.path().join("secret");
    std::fs::write(&secret, "only 1000").unwrap();
    run(&format!(
        "chown 1000:1000 '{0}' && chmod 600 '{0}'",
        secret.display()
    ));
    let as_user = |uid: u32| {
        sh(&format!(
            "setpriv --reuid={uid} --regid={uid} --clear-groups cat '{}'",
            secret.display()
        ))
    };
    let (code, out, _) = as_user(1000);
    assert_eq!((code, out.as_str()), (0, "only 1000"));
    let (code, _, err) = as_user(2000);
    assert_ne!(code, 0);
    assert!(err.contains("Permission denied"), "{err}");
}

#[test]
fn ls_l_of_a_directory_another_client_wrote_costs_what_each_setting_says() {
    let s3 = TestS3::start();
    let b = s3.bucket("posix-cost");
    let n = env_u64("S3MOUNT_TEST_POSIX_LS_KEYS", 20_000) as usize;
    let keys: Vec<String> = (0..n).map(|i| format!("big/f{i:06}")).collect();
    let mode = (libc::S_IFREG | 0o600).to_string();
    // Half carry s3fs headers, so what `ls -l` shows tells the settings apart.
    b.put_many(keys.clone(), |i| vec![b'x'; i % 7]);
    for key in keys.iter().step_by(n / 10) {
        put_with(&b, key, "s3fs", &[("mode", &mode), ("mtime", "1000000000")]);
    }
    let (proxy, endpoint) = s3.proxied();
    let mut report = Vec::new();
    for setting in ["off", "lazy", "full"] {
        let cache = TempDir::new("posix-cost-cache");
        let args = [
            format!("--cache-dir={}", cache.path().display()),
            format!("--posix-metadata={setting}"),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut counts = Vec::new();
        for pass in ["cold", "remount"] {
            let m = Mounted::start_at(&endpoint, &b.name, &args);
            let before = heads(&proxy);
            let out = run(&format!(
                "ls -l '{}/big' | grep -c '^-rw-------' || true",
                m.path().display()
            ));
            let heads_used = heads(&proxy) - before;
            counts.push(heads_used);
            let private: usize = out.trim().parse().unwrap();
            let want_private = if setting == "off" { 0 } else { 10 };
            assert_eq!(private, want_private, "{setting} {pass}: files shown 0600");
            report.push(format!("{setting} {pass}: {heads_used} HEADs"));
        }
        match setting {
            "off" => assert_eq!(counts, [0, 0], "off never asks"),
            _ => {
                assert!(
                    counts[0] >= n && counts[0] <= n + n / 10,
                    "{setting} cold: one HEAD per object ({counts:?})"
                );
                assert_eq!(counts[1], 0, "{setting} after a remount: remembered");
            }
        }
    }
    eprintln!("ls -l of {n} foreign objects: {}", report.join(", "));
}
