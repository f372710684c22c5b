//! Files through an in-process mount: what close stores, appends,
//! truncates, changes in place, conflicts with other clients, and reads.

use super::*;

fn bytes_of(store: &MemoryStore, key: &str) -> Vec<u8> {
    store.bytes(key).map(|b| b.to_vec()).unwrap_or_default()
}

/// `n` bytes that differ at every offset modulo 251, so a misplaced range
/// shows in a comparison.
fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8 ^ seed).collect()
}

#[test]
fn a_new_file_is_stored_whole_on_close() {
    run(async {
        let m = TestMount::new();
        m.write_file("f", b"hello").await.unwrap();
        assert_eq!(m.store().contents(), [("f".into(), "hello".into())]);
    })
}

#[test]
fn an_empty_new_file_is_stored_as_an_empty_object() {
    run(async {
        let m = TestMount::new();
        m.write_file("empty", b"").await.unwrap();
        assert_eq!(m.store().bytes("empty").unwrap().len(), 0);
        assert_eq!(m.resolve("empty").await.unwrap().size, 0);
    })
}

#[test]
fn an_object_reads_back_as_its_bytes() {
    run(async {
        let m = TestMount::new();
        let data = pattern(300_000, 7);
        m.store().insert("dir/f", data.clone());
        assert_eq!(m.read_file("dir/f").await.unwrap(), data);
        assert_eq!(m.resolve("dir/f").await.unwrap().size, 300_000);
    })
}

#[test]
fn a_file_larger_than_a_part_is_uploaded_in_parts_and_reads_back() {
    run(async {
        let m = TestMount::new();
        let data = pattern(12 * 1024 * 1024 + 5, 1);
        m.write_file("big", &data).await.unwrap();
        assert_eq!(bytes_of(m.store(), "big"), data);
        assert_eq!(m.read_file("big").await.unwrap(), data);
    })
}

#[test]
fn reads_at_any_offset_give_the_bytes_there() {
    run(async {
        let m = TestMount::new();
        let data = pattern(1_000_000, 3);
        m.store().insert("f", data.clone());
        let (fh, ino) = m.open("f", libc::O_RDONLY).await.unwrap();
        for (offset, len) in [
            (0, 10),
            (999_990, 10),
            (500_000, 131_072),
            (7, 1),
            (123_457, 300_001),
        ] {
            let got = m.read_at(fh, ino, offset, len).await.unwrap();
            assert_eq!(
                got,
                data[offset as usize..(offset + len) as usize],
                "at {offset}"
            );
        }
        m.close(fh, ino).await.unwrap();
    })
}

#[test]
fn a_read_at_or_past_the_end_is_empty() {
    run(async {
        let m = TestMount::new();
        m.store().insert("f", "abc");
        let (fh, ino) = m.open("f", libc::O_RDONLY).await.unwrap();
        assert_eq!(m.read_at(fh, ino, 3, 10).await.unwrap(), b"");
        assert_eq!(m.read_at(fh, ino, 100, 10).await.unwrap(), b"");
        assert_eq!(m.read_at(fh, ino, 1, 10).await.unwrap(), b"bc");
        m.close(fh, ino).await.unwrap();
    })
}

#[test]
fn a_sequential_read_fetches_each_byte_about_once() {
    run(async {
        let m = TestMount::new();
        let data = pattern(40 * 1024 * 1024, 9);
        m.store().insert("f", data.clone());
        assert_eq!(m.read_file("f").await.unwrap().len(), data.len());
        let fetched = m.fs().read_stats().fetched_bytes.load(Ordering::Relaxed);
        assert!(
            fetched >= data.len() as u64 && fetched <= data.len() as u64 * 11 / 10,
            "fetched {fetched} for {}",
            data.len()
        );
    })
}

#[test]
fn a_second_read_of_a_small_file_is_served_from_memory() {
    run(async {
        let m = TestMount::new();
        m.store().insert("f", pattern(100_000, 2));
        m.read_file("f").await.unwrap();
        let before = m.store().requests();
        m.read_file("f").await.unwrap();
        assert_eq!(m.store().requests(), before, "the second read went to S3");
    })
}

#[test]
fn appending_keeps_the_old_bytes_and_adds_the_new() {
    run(async {
        let m = TestMount::new();
        m.store().insert("log", "one\n");
        m.append("log", b"two\n").await.unwrap();
        m.append("log", b"three\n").await.unwrap();
        assert_eq!(
            m.store().contents(),
            [("log".into(), "one\ntwo\nthree\n".into())]
        );
        assert_eq!(m.read_file("log").await.unwrap(), b"one\ntwo\nthree\n");
    })
}

#[test]
fn appending_to_a_large_object_keeps_every_byte() {
    run(async {
        let m = TestMount::new();
        let mut data = pattern(11 * 1024 * 1024, 4);
        m.store().insert("big", data.clone());
        m.append("big", b"tail").await.unwrap();
        data.extend_from_slice(b"tail");
        assert_eq!(bytes_of(m.store(), "big"), data);
    })
}

#[test]
fn truncating_to_zero_stores_an_empty_object() {
    run(async {
        let m = TestMount::new();
        m.store().insert("f", "content");
        m.truncate("f", 0).await.unwrap();
        assert_eq!(m.store().bytes("f").unwrap().len(), 0);
        assert_eq!(m.resolve("f").await.unwrap().size, 0);
    })
}

#[test]
fn truncating_shorter_keeps_the_start() {
    run(async {
        let m = TestMount::new();
        m.store().insert("f", "0123456789");
        m.truncate("f", 4).await.unwrap();
        assert_eq!(m.store().contents(), [("f".into(), "0123".into())]);
    })
}

#[test]
fn truncating_longer_pads_with_zeros() {
    run(async {
        let m = TestMount::new();
        m.store().insert("f", "ab");
        m.truncate("f", 5).await.unwrap();
        assert_eq!(bytes_of(m.store(), "f"), b"ab\0\0\0");
        assert_eq!(m.read_file("f").await.unwrap(), b"ab\0\0\0");
    })
}

#[test]
fn a_write_in_the_middle_changes_only_those_bytes() {
    run(async {
        let m = TestMount::new();
        m.store().insert("f", "0123456789");
        m.overwrite_at("f", 3, b"abc").await.unwrap();
        assert_eq!(m.store().contents(), [("f".into(), "012abc6789".into())]);
    })
}

#[test]
fn a_write_past_the_end_leaves_a_zero_filled_hole() {
    run(async {
        let m = TestMount::new();
        m.store().insert("f", "ab");
        m.overwrite_at("f", 4, b"z").await.unwrap();
        assert_eq!(bytes_of(m.store(), "f"), b"ab\0\0z");
    })
}

#[test]
fn a_changed_large_file_keeps_its_unchanged_parts() {
    run(async {
        let m = TestMount::new();
        let mut data = pattern(13 * 1024 * 1024, 5);
        m.store().insert("big", data.clone());
        m.overwrite_at("big", 6 * 1024 * 1024, b"XYZ")
            .await
            .unwrap();
        data[6 * 1024 * 1024..6 * 1024 * 1024 + 3].copy_from_slice(b"XYZ");
        assert_eq!(bytes_of(m.store(), "big"), data);
    })
}

#[test]
fn a_write_to_a_file_replaced_by_another_client_fails_on_close_and_keeps_theirs() {
    run(async {
        let m = TestMount::new();
        m.store().insert("f", "mine");
        let (fh, ino) = m.open("f", libc::O_RDWR).await.unwrap();
        m.write_at(fh, 0, b"MINE").await.unwrap();
        m.store().insert("f", "theirs");
        assert_eq!(errno_of(m.close(fh, ino).await), libc::EIO);
        assert_eq!(m.store().contents(), [("f".into(), "theirs".into())]);
    })
}

#[test]
fn an_append_to_a_file_deleted_by_another_client_does_not_recreate_it() {
    run(async {
        let m = TestMount::new();
        m.store().insert("f", "mine");
        let (fh, ino) = m.open("f", libc::O_WRONLY | libc::O_APPEND).await.unwrap();
        m.write_at(fh, 4, b"+").await.unwrap();
        run_delete(m.store(), "f").await;
        assert!(m.close(fh, ino).await.is_err());
        assert!(m.store().keys().is_empty(), "{:?}", m.store().keys());
    })
}

async fn run_delete(store: &MemoryStore, key: &str) {
    store.delete(key, None).await.unwrap();
}

#[test]
fn a_plain_overwrite_replaces_the_file() {
    run(async {
        let m = TestMount::new();
        m.store().insert("f", "old contents");
        m.write_file("f", b"new").await.unwrap();
        assert_eq!(m.store().contents(), [("f".into(), "new".into())]);
    })
}

#[test]
fn fsync_stores_the_file_before_close() {
    run(async {
        let m = TestMount::new();
        let (fh, ino) = m.open("f", libc::O_WRONLY | libc::O_CREAT).await.unwrap();
        m.write_at(fh, 0, b"durable").await.unwrap();
        m.fs().fsync(fh).await.unwrap();
        assert_eq!(m.store().contents(), [("f".into(), "durable".into())]);
        m.close(fh, ino).await.unwrap();
        assert_eq!(m.store().contents(), [("f".into(), "durable".into())]);
    })
}

#[test]
fn a_file_being_written_has_its_current_size_but_is_listed_only_once_stored() {
    run(async {
        let m = TestMount::new();
        let (fh, ino) = m.open("new", libc::O_WRONLY | libc::O_CREAT).await.unwrap();
        m.write_at(fh, 0, &[1; 1000]).await.unwrap();
        assert_eq!(m.resolve("new").await.unwrap().size, 1000);
        assert_eq!(m.list("").await.unwrap(), Vec::<String>::new());
        m.close(fh, ino).await.unwrap();
        assert_eq!(m.list("").await.unwrap(), ["new"]);
    })
}

#[test]
fn o_excl_on_an_existing_name_is_eexist() {
    run(async {
        let m = TestMount::new();
        m.store().insert("lock", "held");
        assert_eq!(errno_of(m.create_new("lock", b"me").await), libc::EEXIST);
        assert_eq!(m.store().contents(), [("lock".into(), "held".into())]);
    })
}

#[test]
fn o_excl_loses_on_close_to_a_file_another_mount_created_meanwhile() {
    run(async {
        let a = TestMount::new();
        let b = a.another();
        let (fh, ino) = a
            .open("lock", libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL)
            .await
            .unwrap();
        a.write_at(fh, 0, b"a").await.unwrap();
        b.create_new("lock", b"b").await.unwrap();
        assert_eq!(errno_of(a.close(fh, ino).await), libc::EEXIST);
        assert_eq!(a.store().contents(), [("lock".into(), "b".into())]);
    })
}

#[test]
fn of_mounts_creating_one_name_with_o_excl_at_once_exactly_one_wins() {
    run(async {
        let a = TestMount::new();
        let mounts: Vec<_> = (0..5).map(|_| a.another()).collect();
        let outcomes =
            join_all(mounts.iter().enumerate().map(|(i, m)| async move {
                m.create_new("lock", format!("{i}").as_bytes()).await
            }))
            .await;
        let won: Vec<_> = outcomes
            .iter()
            .enumerate()
            .filter(|(_, r)| r.is_ok())
            .collect();
        assert_eq!(won.len(), 1, "{outcomes:?}");
        for r in outcomes.iter().filter(|r| r.is_err()) {
            assert_eq!(
                r.as_ref().unwrap_err().errno(),
                libc::EEXIST,
                "{outcomes:?}"
            );
        }
        assert_eq!(
            a.store().contents(),
            [("lock".into(), format!("{}", won[0].0))]
        );
    })
}

#[test]
fn on_a_read_only_mount_every_change_is_erofs() {
    run(async {
        let store = Arc::new(MemoryStore::new(true));
        store.insert("d/f", "x");
        let policy = WritePolicy {
            read_only: true,
            ..WritePolicy::default()
        };
        let m = TestMount::over(store.clone(), Settings::policy(policy));
        assert_eq!(errno_of(m.write_file("g", b"y").await), libc::EROFS);
        assert_eq!(errno_of(m.append("d/f", b"y").await), libc::EROFS);
        assert_eq!(errno_of(m.unlink("d/f").await), libc::EROFS);
        assert_eq!(errno_of(m.mkdir("e").await), libc::EROFS);
        assert_eq!(errno_of(m.rename("d/f", "d/g", false).await), libc::EROFS);
        assert_eq!(m.read_file("d/f").await.unwrap(), b"x");
        assert_eq!(store.contents(), [("d/f".into(), "x".into())]);
    })
}

#[test]
fn with_no_overwrite_existing_files_stay_as_they_are() {
    run(async {
        let store = Arc::new(MemoryStore::new(true));
        store.insert("f", "kept");
        store.insert("g", "other");
        let policy = WritePolicy {
            no_overwrite: true,
            ..WritePolicy::default()
        };
        let m = TestMount::over(store.clone(), Settings::policy(policy));
        assert_eq!(errno_of(m.write_file("f", b"new").await), libc::EPERM);
        assert_eq!(errno_of(m.append("f", b"+").await), libc::EPERM);
        assert!(m.rename("g", "f", false).await.is_err());
        m.write_file("new", b"fresh").await.unwrap();
        assert_eq!(
            store.contents(),
            [
                ("f".into(), "kept".into()),
                ("g".into(), "other".into()),
                ("new".into(), "fresh".into())
            ]
        );
    })
}

#[test]
fn a_change_to_a_file_above_the_modify_limit_is_efbig() {
    run(async {
        let store = Arc::new(MemoryStore::new(true));
        let data = pattern(3 * 1024 * 1024, 6);
        store.insert("f", data.clone());
        let settings = Settings {
            max_modify_size: 1024 * 1024,
            ..Settings::default()
        };
        let m = TestMount::over(store.clone(), settings);
        assert_eq!(errno_of(m.overwrite_at("f", 10, b"x").await), libc::EFBIG);
        assert_eq!(bytes_of(&store, "f"), data);
        // Replacing it whole needs no staging and stays allowed.
        m.write_file("f", b"small").await.unwrap();
        assert_eq!(bytes_of(&store, "f"), b"small");
    })
}

#[test]
fn a_name_longer_than_an_s3_key_may_be_is_enametoolong() {
    run(async {
        let m = TestMount::new();
        let name = "n".repeat(1025);
        assert_eq!(
            errno_of(m.write_file(&name, b"x").await),
            libc::ENAMETOOLONG
        );
        assert!(m.store().keys().is_empty());
        m.mkdir("d").await.unwrap();
        let name = "n".repeat(1023);
        assert_eq!(
            errno_of(m.write_file(&format!("d/{name}"), b"x").await),
            libc::ENAMETOOLONG
        );
        assert_eq!(m.store().keys(), ["d/"]);
    })
}

#[test]
fn a_reader_gets_the_version_it_opened_or_an_error_never_a_mix() {
    run(async {
        let m = TestMount::new();
        let old = pattern(30 * 1024 * 1024, 1);
        m.store().insert("f", old.clone());
        let (fh, ino) = m.open("f", libc::O_RDONLY).await.unwrap();
        let head = m.read_at(fh, ino, 0, 1024).await.unwrap();
        m.store().insert("f", pattern(30 * 1024 * 1024, 2));
        match m.read_at(fh, ino, 1024, old.len() as u64).await {
            Ok(rest) => assert_eq!([head, rest].concat(), old, "a mix of versions"),
            Err(e) => assert_eq!(e.errno(), libc::EIO),
        }
        m.close(fh, ino).await.unwrap();
    })
}

#[test]
fn a_file_replaced_before_its_first_read_is_read_as_the_new_version() {
    run(async {
        let m = TestMount::new();
        m.store().insert("f", "short");
        let (fh, ino) = m.open("f", libc::O_RDONLY).await.unwrap();
        m.store().insert("f", "a longer version");
        let (bytes, change) = m.fs().read(ino, fh, 0, 4096).await.unwrap();
        assert_eq!(&bytes[..], b"a longer version");
        assert_eq!(change, crate::fs::AttrsAfterRead::Grew);
        assert_eq!(m.fs().getattr(ino, None).await.unwrap().size, 16);
        m.close(fh, ino).await.unwrap();
    })
}

#[test]
fn a_file_deleted_by_another_client_reads_as_an_error() {
    run(async {
        let m = TestMount::new();
        m.store().insert("f", "gone soon");
        let (fh, ino) = m.open("f", libc::O_RDONLY).await.unwrap();
        run_delete(m.store(), "f").await;
        assert!(m.fs().read(ino, fh, 0, 4096).await.is_err());
        m.close(fh, ino).await.unwrap();
    })
}

#[test]
fn a_file_can_be_read_while_open_for_writing_through_the_same_handle() {
    run(async {
        let m = TestMount::new();
        let (fh, ino) = m.open("f", libc::O_RDWR | libc::O_CREAT).await.unwrap();
        m.write_at(fh, 0, b"written so far").await.unwrap();
        assert_eq!(m.read_at(fh, ino, 8, 100).await.unwrap(), b"so far");
        m.close(fh, ino).await.unwrap();
    })
}

#[test]
fn opening_a_missing_file_without_o_creat_is_enoent() {
    run(async {
        let m = TestMount::new();
        assert_eq!(errno_of(m.open("nope", libc::O_RDONLY).await), libc::ENOENT);
        assert_eq!(errno_of(m.read_file("d/nope").await), libc::ENOENT);
    })
}

#[test]
fn creating_in_a_missing_directory_is_enoent() {
    run(async {
        let m = TestMount::new();
        assert_eq!(
            errno_of(m.write_file("no/such/f", b"x").await),
            libc::ENOENT
        );
        assert!(m.store().keys().is_empty());
    })
}

#[test]
fn many_files_open_for_writing_at_once_are_each_stored() {
    run(async {
        let m = TestMount::new();
        let mut handles = Vec::new();
        for i in 0..20 {
            let (fh, ino) = m
                .open(&format!("f{i:02}"), libc::O_WRONLY | libc::O_CREAT)
                .await
                .unwrap();
            m.write_at(fh, 0, format!("file {i}").as_bytes())
                .await
                .unwrap();
            handles.push((fh, ino));
        }
        for (fh, ino) in handles {
            m.close(fh, ino).await.unwrap();
        }
        let contents = m.store().contents();
        assert_eq!(contents.len(), 20);
        for (i, (key, text)) in contents.iter().enumerate() {
            assert_eq!(
                (key.as_str(), text.as_str()),
                (format!("f{i:02}").as_str(), format!("file {i}").as_str())
            );
        }
    })
}
