//! Modes, owners, times and symlinks through an in-process mount: what is
//! stored in object metadata, what `stat` shows, and what it costs in
//! requests under each `--posix-metadata` setting.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;
use crate::store::PosixMeta;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn chmod(mode: u32) -> AttrChange {
    AttrChange {
        mode: Some(mode),
        ..AttrChange::default()
    }
}

fn touch(t: SystemTime) -> AttrChange {
    AttrChange {
        mtime: Some(t),
        atime: true,
        ..AttrChange::default()
    }
}

/// What s3fs writes on a script: mode 0755, uid 7, gid 8, an old mtime.
fn s3fs_script() -> PosixMeta {
    PosixMeta {
        mode: Some(libc::S_IFREG | 0o755),
        uid: Some(7),
        gid: Some(8),
        mtime: Some(at(1_577_934_245)),
    }
}

fn with_posix(posix: PosixMetadata) -> Settings {
    Settings {
        posix,
        ..Settings::default()
    }
}

#[test]
fn a_new_file_carries_its_creator_mode_and_time_and_stat_shows_them() {
    run(async {
        let mut m = TestMount::new();
        let before = SystemTime::now();
        m.write_file("f", b"x").await.unwrap();
        let stored = m.store().posix("f").unwrap();
        assert_eq!(stored.mode, Some(libc::S_IFREG | 0o644));
        assert_eq!((stored.uid, stored.gid), (Some(1000), Some(1000)));
        assert!(stored.mtime.unwrap() >= before);
        m.remount().await;
        let requests = m.store().requests();
        let attr = m.resolve("f").await.unwrap();
        assert_eq!(attr.mtime, stored.mtime.unwrap());
        assert!(!attr.provisional);
        assert_eq!(m.store().requests(), requests, "known without asking");
    })
}

#[test]
fn chmod_and_touch_are_stored_on_the_object_and_keep_its_bytes() {
    run(async {
        let mut m = TestMount::new();
        m.write_file("run.sh", b"#!/bin/sh\n").await.unwrap();
        let attr = m.set_attrs("run.sh", chmod(0o755)).await.unwrap();
        assert_eq!(attr.perm, 0o755);
        let shown_before = attr.mtime;
        assert_eq!(
            m.store().posix("run.sh").unwrap().mode,
            Some(libc::S_IFREG | 0o755)
        );
        // chmod keeps the time shown, though the copy is a new object.
        assert_eq!(m.store().posix("run.sh").unwrap().mtime, Some(shown_before));
        let attr = m
            .set_attrs("run.sh", touch(at(1_000_000_000)))
            .await
            .unwrap();
        assert_eq!(attr.mtime, at(1_000_000_000));
        assert_eq!(attr.perm, 0o755);
        assert_eq!(m.store().bytes("run.sh").unwrap(), "#!/bin/sh\n");
        m.remount().await;
        let attr = m.resolve("run.sh").await.unwrap();
        assert_eq!((attr.perm, attr.mtime), (0o755, at(1_000_000_000)));
    })
}

#[test]
fn chown_is_stored() {
    run(async {
        let m = TestMount::new();
        m.write_file("f", b"x").await.unwrap();
        let change = AttrChange {
            uid: Some(0),
            gid: Some(65534),
            ..AttrChange::default()
        };
        let attr = m.set_attrs("f", change).await.unwrap();
        assert_eq!((attr.uid, attr.gid), (0, 65534));
        let stored = m.store().posix("f").unwrap();
        assert_eq!((stored.uid, stored.gid), (Some(0), Some(65534)));
    })
}

#[test]
fn a_change_over_a_version_replaced_meanwhile_fails_and_changes_nothing() {
    run(async {
        let m = TestMount::new();
        m.write_file("f", b"old").await.unwrap();
        m.resolve("f").await.unwrap();
        m.store().insert("f", "new by another client");
        let changed = m.set_attrs("f", chmod(0o700)).await;
        assert!(changed.is_err(), "{changed:?}");
        assert_eq!(m.store().bytes("f").unwrap(), "new by another client");
        assert_eq!(m.store().posix("f").unwrap(), PosixMeta::NONE);
    })
}

#[test]
fn attributes_set_while_a_file_is_open_are_stored_with_its_data_in_one_request() {
    run(async {
        let m = TestMount::new();
        let (fh, ino) = m
            .open("out", libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC)
            .await
            .unwrap();
        m.write_at(fh, 0, b"data").await.unwrap();
        m.set_attrs("out", chmod(0o600)).await.unwrap();
        let requests = m.store().requests();
        m.close(fh, ino).await.unwrap();
        assert_eq!(m.store().requests() - requests, 1, "one PUT, no copy");
        assert_eq!(
            m.store().posix("out").unwrap().mode,
            Some(libc::S_IFREG | 0o600)
        );
        // Set after the data was stored (fchmod on a file with nothing
        // more to write): stored at its last close.
        let (fh, ino) = m.open("out", libc::O_RDWR).await.unwrap();
        m.set_attrs("out", chmod(0o640)).await.unwrap();
        m.close(fh, ino).await.unwrap();
        assert_eq!(
            m.store().posix("out").unwrap().mode,
            Some(libc::S_IFREG | 0o640)
        );
        assert_eq!(m.store().bytes("out").unwrap(), "data");
    })
}

#[test]
fn an_edit_or_a_rename_keeps_the_mode_and_owner() {
    run(async {
        let m = TestMount::new();
        m.store().insert_with("bin/tool", "v1", s3fs_script());
        m.append("bin/tool", b"+v2").await.unwrap();
        let stored = m.store().posix("bin/tool").unwrap();
        assert_eq!(stored.mode, s3fs_script().mode);
        assert_eq!((stored.uid, stored.gid), (Some(7), Some(8)));
        assert!(
            stored.mtime.unwrap() > at(1_577_934_245),
            "an edit moves mtime"
        );
        m.rename("bin/tool", "bin/tool2", false).await.unwrap();
        assert_eq!(m.store().posix("bin/tool2").unwrap(), stored);
        m.mkdir("lib").await.unwrap();
        m.rename("bin", "lib/bin", false).await.unwrap();
        assert_eq!(m.store().posix("lib/bin/tool2").unwrap(), stored);
    })
}

#[test]
fn foreign_metadata_is_learned_once_per_version_and_remembered_across_remounts() {
    run(async {
        let mut m = TestMount::new();
        m.store()
            .insert_with("s3fs/run.sh", "#!/bin/sh", s3fs_script());
        m.store().insert("plain/data.csv", "a,b");
        m.list("s3fs").await.unwrap();
        let rows = m.list_attrs("s3fs").await.unwrap();
        assert!(rows[0].1.provisional, "lazy: listed, not learned");
        let requests = m.store().requests();
        let attr = m.resolve("s3fs/run.sh").await.unwrap();
        assert_eq!(m.store().requests() - requests, 1, "one HEAD");
        assert_eq!((attr.perm, attr.uid, attr.gid), (0o755, 7, 8));
        assert_eq!(attr.mtime, at(1_577_934_245));
        // An object without metadata shows the mount's defaults.
        let plain = m.resolve("plain/data.csv").await.unwrap();
        assert_eq!((plain.perm, plain.uid), (0o644, 1000));
        m.remount().await;
        let requests = m.store().requests();
        let rows = m.list_attrs("s3fs").await.unwrap();
        assert_eq!(rows[0].1.perm, 0o755);
        assert!(!rows[0].1.provisional);
        m.resolve("plain/data.csv").await.unwrap();
        assert_eq!(m.store().requests(), requests, "nothing asked again");
        // A new version is unknown until learned.
        m.store().insert("s3fs/run.sh", "replaced");
        m.fs()
            .refresh(m.resolve("s3fs").await.unwrap().ino)
            .await
            .unwrap();
        assert_eq!(m.resolve("s3fs/run.sh").await.unwrap().perm, 0o644);
    })
}

#[test]
fn full_learns_a_directory_page_before_answering() {
    run(async {
        let m = TestMount::with(with_posix(PosixMetadata::Full));
        for i in 0..10 {
            m.store()
                .insert_with(&format!("d/f{i}"), "x", s3fs_script());
        }
        let rows = m.list_attrs("d").await.unwrap();
        assert_eq!(rows.len(), 10);
        assert!(rows.iter().all(|(_, a)| a.perm == 0o755 && !a.provisional));
    })
}

#[test]
fn off_stores_nothing_and_refuses_changes_it_cannot_keep() {
    run(async {
        let m = TestMount::with(with_posix(PosixMetadata::Off));
        m.store()
            .insert_with("s3fs/run.sh", "#!/bin/sh", s3fs_script());
        m.resolve("s3fs").await.unwrap();
        let requests = m.store().requests();
        let attr = m.resolve("s3fs/run.sh").await.unwrap();
        assert_eq!(attr.perm, 0o644, "off shows the mount's modes");
        assert_eq!(m.store().requests() - requests, 1, "the listing, no HEAD");
        m.write_file("f", b"x").await.unwrap();
        assert_eq!(m.store().posix("f").unwrap(), PosixMeta::NONE);
        for change in [chmod(0o755), touch(at(5))] {
            let refused = m.set_attrs("f", change).await;
            assert!(
                matches!(refused, Err(FsError::NotPermitted(_))),
                "{refused:?}"
            );
        }
        // An access time alone is not kept anywhere: nothing to refuse.
        let atime_only = AttrChange {
            atime: true,
            ..AttrChange::default()
        };
        m.set_attrs("f", atime_only).await.unwrap();
        assert!(matches!(
            m.symlink("f", "link").await,
            Err(FsError::NotPermitted(_))
        ));
    })
}

#[test]
fn a_symlink_is_an_object_holding_its_target_and_reads_back_as_a_link() {
    run(async {
        let mut m = TestMount::new();
        m.mkdir("data").await.unwrap();
        m.write_file("data/v1.bin", b"x").await.unwrap();
        let attr = m.symlink("v1.bin", "data/current").await.unwrap();
        assert!(attr.is_symlink);
        assert_eq!(attr.size, 6);
        assert_eq!(m.store().bytes("data/current").unwrap(), "v1.bin");
        assert_eq!(
            m.store().posix("data/current").unwrap().mode,
            Some(libc::S_IFLNK | 0o777)
        );
        assert_eq!(m.readlink("data/current").await.unwrap(), "v1.bin");
        assert!(matches!(
            m.symlink("elsewhere", "data/current").await,
            Err(FsError::Exists)
        ));
        m.rename("data/current", "data/latest", false)
            .await
            .unwrap();
        m.remount().await;
        let requests = m.store().requests();
        let rows = m.list_attrs("data").await.unwrap();
        let latest = &rows.iter().find(|(n, _)| n == "latest").unwrap().1;
        assert!(latest.is_symlink);
        assert_eq!(m.readlink("data/latest").await.unwrap(), "v1.bin");
        assert_eq!(
            m.store().requests() - requests,
            1,
            "the listing; the target is remembered"
        );
    })
}

#[test]
fn an_s3fs_symlink_is_read_with_one_get_then_remembered() {
    run(async {
        let mut m = TestMount::new();
        let link = PosixMeta {
            mode: Some(libc::S_IFLNK | 0o777),
            ..PosixMeta::NONE
        };
        m.store()
            .insert_with("hub/snapshots/main/model.bin", "../../blobs/abc", link);
        let attr = m.resolve("hub/snapshots/main/model.bin").await.unwrap();
        assert!(attr.is_symlink);
        let requests = m.store().requests();
        assert_eq!(
            m.readlink("hub/snapshots/main/model.bin").await.unwrap(),
            "../../blobs/abc"
        );
        assert_eq!(m.store().requests() - requests, 1, "one GET");
        m.remount().await;
        let requests = m.store().requests();
        m.resolve("hub/snapshots/main").await.unwrap();
        let before_link = m.store().requests();
        assert_eq!(
            m.readlink("hub/snapshots/main/model.bin").await.unwrap(),
            "../../blobs/abc"
        );
        assert_eq!(m.store().requests(), before_link, "remembered");
        assert!(before_link >= requests);
    })
}

#[test]
fn a_directory_keeps_its_mode_and_time_on_its_marker() {
    run(async {
        let mut m = TestMount::new();
        m.mkdir("d").await.unwrap();
        assert_eq!(
            m.store().posix("d/").unwrap().mode,
            Some(libc::S_IFDIR | 0o755)
        );
        let attr = m
            .set_attrs(
                "d",
                AttrChange {
                    mode: Some(0o700),
                    mtime: Some(at(86_400)),
                    ..AttrChange::default()
                },
            )
            .await
            .unwrap();
        assert_eq!((attr.perm, attr.mtime), (0o700, at(86_400)));
        assert!(attr.is_dir);
        m.remount().await;
        let attr = m.resolve("d").await.unwrap();
        assert_eq!((attr.perm, attr.mtime), (0o700, at(86_400)));
    })
}

#[test]
fn another_clients_chmod_keeps_the_etag_and_is_noticed_by_its_new_time() {
    run(async {
        let m = TestMount::new();
        let etag = m.store().insert_with("tool", "#!/bin/sh", s3fs_script());
        assert_eq!(m.resolve("tool").await.unwrap().perm, 0o755);
        // Listings and HEAD give whole seconds: the change lands in the next.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let private = PosixMeta {
            mode: Some(libc::S_IFREG | 0o700),
            ..s3fs_script()
        };
        let copied = m
            .store()
            .copy(
                "tool",
                &etag,
                9,
                "tool",
                crate::store::WriteCondition::Always,
                &private,
            )
            .await
            .unwrap();
        assert_eq!(copied, etag, "a copy keeps its source's ETag, as on S3");
        m.fs().refresh(ROOT_INO).await.unwrap();
        assert_eq!(m.resolve("tool").await.unwrap().perm, 0o700);
    })
}

#[test]
fn a_deleted_files_attributes_do_not_pass_to_a_new_file_of_the_same_name() {
    run(async {
        let m = TestMount::new();
        m.write_file("f", b"x").await.unwrap();
        m.set_attrs("f", chmod(0o700)).await.unwrap();
        m.unlink("f").await.unwrap();
        m.store().insert("f", "x");
        m.fs().refresh(ROOT_INO).await.unwrap();
        assert_eq!(m.resolve("f").await.unwrap().perm, 0o644);
    })
}
