//! Directories and names through an in-process mount: mkdir, rmdir,
//! unlink and rename, with the errors programs rely on.

use super::*;

fn keys(m: &TestMount<MemoryStore>) -> Vec<String> {
    m.store().keys()
}

#[test]
fn mkdir_stores_a_directory_marker() {
    run(async {
        let m = TestMount::new();
        m.mkdir("d").await.unwrap();
        assert_eq!(keys(&m), ["d/"]);
        assert!(m.resolve("d").await.unwrap().is_dir);
        assert_eq!(m.list("").await.unwrap(), ["d"]);
    })
}

#[test]
fn mkdir_of_an_existing_name_is_eexist() {
    run(async {
        let m = TestMount::new();
        m.store().insert("d/f", "x");
        m.store().insert("g", "x");
        assert_eq!(errno_of(m.mkdir("d").await), libc::EEXIST);
        assert_eq!(errno_of(m.mkdir("g").await), libc::EEXIST);
        assert_eq!(keys(&m), ["d/f", "g"]);
    })
}

#[test]
fn nested_directories_can_be_made_and_used() {
    run(async {
        let m = TestMount::new();
        m.mkdir("a").await.unwrap();
        m.mkdir("a/b").await.unwrap();
        m.write_file("a/b/f", b"deep").await.unwrap();
        assert_eq!(m.read_file("a/b/f").await.unwrap(), b"deep");
        assert_eq!(m.list("a").await.unwrap(), ["b"]);
        assert!(keys(&m).contains(&"a/b/f".to_string()));
    })
}

#[test]
fn rmdir_of_an_empty_directory_removes_its_marker() {
    run(async {
        let m = TestMount::new();
        m.mkdir("d").await.unwrap();
        m.rmdir("d").await.unwrap();
        assert!(keys(&m).is_empty());
        assert_eq!(errno_of(m.resolve("d").await), libc::ENOENT);
    })
}

#[test]
fn rmdir_of_a_directory_with_files_is_enotempty() {
    run(async {
        let m = TestMount::new();
        m.store().insert("d/f", "x");
        assert_eq!(errno_of(m.rmdir("d").await), libc::ENOTEMPTY);
        assert_eq!(keys(&m), ["d/f"]);
    })
}

#[test]
fn rmdir_of_a_file_is_enotdir_and_unlink_of_a_directory_is_eisdir() {
    run(async {
        let m = TestMount::new();
        m.store().insert("f", "x");
        m.store().insert("d/", "");
        assert_eq!(errno_of(m.rmdir("f").await), libc::ENOTDIR);
        assert_eq!(errno_of(m.unlink("d").await), libc::EISDIR);
        assert_eq!(keys(&m), ["d/", "f"]);
    })
}

#[test]
fn rmdir_and_unlink_of_missing_names_are_enoent() {
    run(async {
        let m = TestMount::new();
        assert_eq!(errno_of(m.rmdir("d").await), libc::ENOENT);
        assert_eq!(errno_of(m.unlink("f").await), libc::ENOENT);
    })
}

#[test]
fn unlink_deletes_the_object_and_the_name() {
    run(async {
        let m = TestMount::new();
        m.store().insert("f", "x");
        m.store().insert("g", "y");
        m.unlink("f").await.unwrap();
        assert_eq!(keys(&m), ["g"]);
        assert_eq!(m.list("").await.unwrap(), ["g"]);
        assert_eq!(errno_of(m.resolve("f").await), libc::ENOENT);
    })
}

#[test]
fn a_directory_emptied_by_unlink_stays_a_directory() {
    run(async {
        let m = TestMount::new();
        m.store().insert("d/f", "x");
        m.unlink("d/f").await.unwrap();
        assert_eq!(m.list("").await.unwrap(), ["d"]);
        assert_eq!(m.list("d").await.unwrap(), Vec::<String>::new());
        assert_eq!(keys(&m), ["d/"], "the emptied directory keeps a marker");
        m.rmdir("d").await.unwrap();
        assert!(keys(&m).is_empty());
    })
}

#[test]
fn lookups_through_a_file_are_enotdir() {
    run(async {
        let m = TestMount::new();
        m.store().insert("f", "x");
        assert_eq!(errno_of(m.resolve("f/g").await), libc::ENOTDIR);
        assert_eq!(errno_of(m.write_file("f/g", b"x").await), libc::ENOTDIR);
    })
}

#[test]
fn rename_moves_the_object_to_the_new_key() {
    run(async {
        let m = TestMount::new();
        m.store().insert("a", "data");
        m.rename("a", "b", false).await.unwrap();
        assert_eq!(m.store().contents(), [("b".into(), "data".into())]);
        assert_eq!(m.read_file("b").await.unwrap(), b"data");
        assert_eq!(errno_of(m.resolve("a").await), libc::ENOENT);
    })
}

#[test]
fn rename_across_directories_updates_both_listings() {
    run(async {
        let m = TestMount::new();
        m.store().insert("in/x", "data");
        m.store().insert("out/", "");
        assert_eq!(m.list("in").await.unwrap(), ["x"]);
        assert_eq!(m.list("out").await.unwrap(), Vec::<String>::new());
        m.rename("in/x", "out/x", false).await.unwrap();
        assert_eq!(m.list("in").await.unwrap(), Vec::<String>::new());
        assert_eq!(m.list("out").await.unwrap(), ["x"]);
        assert_eq!(m.store().bytes("out/x").unwrap(), "data");
    })
}

#[test]
fn rename_onto_an_existing_file_replaces_it() {
    run(async {
        let m = TestMount::new();
        m.store().insert("a", "new");
        m.store().insert("b", "old");
        m.rename("a", "b", false).await.unwrap();
        assert_eq!(m.store().contents(), [("b".into(), "new".into())]);
    })
}

#[test]
fn rename_noreplace_onto_an_existing_file_is_eexist_and_changes_nothing() {
    run(async {
        let m = TestMount::new();
        m.store().insert("a", "new");
        m.store().insert("b", "old");
        assert_eq!(errno_of(m.rename("a", "b", true).await), libc::EEXIST);
        assert_eq!(
            m.store().contents(),
            [("a".into(), "new".into()), ("b".into(), "old".into())]
        );
    })
}

#[test]
fn rename_noreplace_to_a_free_name_moves_the_file() {
    run(async {
        let m = TestMount::new();
        m.store().insert("a", "x");
        m.rename("a", "b", true).await.unwrap();
        assert_eq!(keys(&m), ["b"]);
    })
}

#[test]
fn rename_of_a_file_onto_a_directory_is_eisdir() {
    run(async {
        let m = TestMount::new();
        m.store().insert("f", "x");
        m.store().insert("d/", "");
        assert_eq!(errno_of(m.rename("f", "d", false).await), libc::EISDIR);
        assert_eq!(keys(&m), ["d/", "f"]);
    })
}

#[test]
fn rename_of_a_directory_onto_a_file_is_enotdir() {
    run(async {
        let m = TestMount::new();
        m.store().insert("f", "x");
        m.store().insert("d/g", "y");
        assert_eq!(errno_of(m.rename("d", "f", false).await), libc::ENOTDIR);
        assert_eq!(keys(&m), ["d/g", "f"]);
    })
}

#[test]
fn rename_of_a_directory_onto_a_non_empty_one_is_enotempty() {
    run(async {
        let m = TestMount::new();
        m.store().insert("a/x", "1");
        m.store().insert("b/y", "2");
        assert_eq!(errno_of(m.rename("a", "b", false).await), libc::ENOTEMPTY);
        assert_eq!(keys(&m), ["a/x", "b/y"]);
    })
}

#[test]
fn rename_of_a_directory_moves_every_key_under_it() {
    run(async {
        let m = TestMount::new();
        for key in ["src/a", "src/sub/b", "src/sub/deeper/c", "srcx"] {
            m.store().insert(key, key.to_owned());
        }
        m.rename("src", "dst", false).await.unwrap();
        assert_eq!(
            m.store().contents(),
            [
                ("dst/a".into(), "src/a".into()),
                ("dst/sub/b".into(), "src/sub/b".into()),
                ("dst/sub/deeper/c".into(), "src/sub/deeper/c".into()),
                ("srcx".into(), "srcx".into())
            ]
        );
        assert_eq!(
            m.read_file("dst/sub/deeper/c").await.unwrap(),
            b"src/sub/deeper/c"
        );
        assert_eq!(errno_of(m.resolve("src").await), libc::ENOENT);
    })
}

#[test]
fn rename_of_a_directory_into_itself_is_einval() {
    run(async {
        let m = TestMount::new();
        m.store().insert("a/b/", "");
        assert_eq!(errno_of(m.rename("a", "a/b/c", false).await), libc::EINVAL);
        assert_eq!(keys(&m), ["a/b/"]);
    })
}

#[test]
fn rename_of_a_missing_name_is_enoent() {
    run(async {
        let m = TestMount::new();
        assert_eq!(errno_of(m.rename("nope", "b", false).await), libc::ENOENT);
        m.store().insert("a", "x");
        assert_eq!(errno_of(m.rename("a", "no/b", false).await), libc::ENOENT);
        assert_eq!(keys(&m), ["a"]);
    })
}

#[test]
fn rename_of_a_file_deleted_by_another_client_is_enoent_and_creates_nothing() {
    run(async {
        let m = TestMount::new();
        m.store().insert("a", "x");
        m.resolve("a").await.unwrap();
        m.store().delete("a", None).await.unwrap();
        assert_eq!(errno_of(m.rename("a", "b", false).await), libc::ENOENT);
        assert!(keys(&m).is_empty(), "{:?}", keys(&m));
    })
}

#[test]
fn with_no_delete_unlink_and_rmdir_are_eperm_but_renames_work() {
    run(async {
        let store = Arc::new(MemoryStore::new(true));
        store.insert("f", "x");
        store.insert("d/", "");
        let policy = WritePolicy {
            no_delete: true,
            ..WritePolicy::default()
        };
        let m = TestMount::over(store.clone(), Settings::policy(policy));
        assert_eq!(errno_of(m.unlink("f").await), libc::EPERM);
        assert_eq!(errno_of(m.rmdir("d").await), libc::EPERM);
        m.rename("f", "d/f", false).await.unwrap();
        assert_eq!(store.keys(), ["d/", "d/f"]);
    })
}

#[test]
fn a_renamed_file_keeps_its_bytes_when_large() {
    run(async {
        let m = TestMount::new();
        let data: Vec<u8> = (0..12 * 1024 * 1024).map(|i| (i % 253) as u8).collect();
        m.store().insert("big", data.clone());
        m.rename("big", "moved", false).await.unwrap();
        assert_eq!(m.store().keys(), ["moved"]);
        assert_eq!(m.store().bytes("moved").unwrap().to_vec(), data);
    })
}
