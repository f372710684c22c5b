//! Listings through an in-process mount: what S3 keys look like as a tree,
//! paging, how long a listing is trusted, what a remount keeps, and how
//! the mount's own changes and other clients' show.

use std::time::Duration;

use super::*;

fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names
}

#[test]
fn keys_appear_as_files_and_prefixes_as_directories() {
    run(async {
        let m = TestMount::new();
        for key in ["a", "d/b", "d/e/f", "g/"] {
            m.store().insert(key, "x");
        }
        assert_eq!(sorted(m.list("").await.unwrap()), ["a", "d", "g"]);
        assert_eq!(sorted(m.list("d").await.unwrap()), ["b", "e"]);
        assert!(!m.resolve("a").await.unwrap().is_dir);
        assert!(m.resolve("d/e").await.unwrap().is_dir);
        assert!(
            m.resolve("g").await.unwrap().is_dir,
            "a marker is a directory"
        );
        assert_eq!(m.list("g").await.unwrap(), Vec::<String>::new());
    })
}

#[test]
fn a_directory_with_a_marker_and_files_is_listed_once() {
    run(async {
        let m = TestMount::new();
        for key in ["d/", "d/x", "d/y"] {
            m.store().insert(key, "");
        }
        assert_eq!(m.list("").await.unwrap(), ["d"]);
        assert_eq!(sorted(m.list("d").await.unwrap()), ["x", "y"]);
    })
}

#[test]
fn a_directory_of_thousands_read_in_small_pages_lists_each_name_once() {
    run(async {
        let m = TestMount::new();
        let names: Vec<String> = (0..2500).map(|i| format!("f{i:05}")).collect();
        for name in &names {
            m.store().insert(&format!("big/{name}"), "");
        }
        let listed = m.list_paged("big", 7).await.unwrap();
        assert_eq!(sorted(listed.clone()), names);
        assert_eq!(listed.len(), 2500, "a name was listed twice");
    })
}

#[test]
fn a_fresh_listing_is_answered_without_asking_s3() {
    run(async {
        let m = TestMount::new();
        m.store().insert("d/a", "x");
        assert_eq!(m.list("d").await.unwrap(), ["a"]);
        let before = m.store().requests();
        m.store().insert("d/b", "x");
        assert_eq!(
            m.list("d").await.unwrap(),
            ["a"],
            "listed again within the TTL"
        );
        assert_eq!(m.store().requests(), before);
    })
}

#[test]
fn an_expired_listing_is_listed_again() {
    run(async {
        let settings = Settings {
            ttl: Duration::from_millis(50),
            ..Settings::default()
        };
        let m = TestMount::with(settings);
        m.store().insert("d/a", "x");
        assert_eq!(m.list("d").await.unwrap(), ["a"]);
        m.store().insert("d/b", "x");
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(sorted(m.list("d").await.unwrap()), ["a", "b"]);
    })
}

#[test]
fn a_refresh_shows_what_other_clients_changed() {
    run(async {
        let m = TestMount::new();
        m.store().insert("d/a", "x");
        m.store().insert("d/gone", "x");
        assert_eq!(sorted(m.list("d").await.unwrap()), ["a", "gone"]);
        m.store().insert("d/b", "x");
        m.store().remove("d/gone");
        let dir = m.resolve("d").await.unwrap();
        m.fs().refresh(dir.ino).await.unwrap();
        assert_eq!(sorted(m.list("d").await.unwrap()), ["a", "b"]);
        assert_eq!(errno_of(m.resolve("d/gone").await), libc::ENOENT);
    })
}

#[test]
fn a_remount_answers_known_listings_with_no_request() {
    run(async {
        let mut m = TestMount::new();
        for i in 0..50 {
            m.store().insert(&format!("d/sub{}/f{i}", i % 5), "x");
        }
        assert_eq!(m.list("d").await.unwrap().len(), 5);
        for i in 0..5 {
            assert_eq!(m.list(&format!("d/sub{i}")).await.unwrap().len(), 10);
        }
        m.remount().await;
        let before = m.store().requests();
        assert_eq!(m.list("d").await.unwrap().len(), 5);
        for i in 0..5 {
            assert_eq!(m.list(&format!("d/sub{i}")).await.unwrap().len(), 10);
        }
        assert_eq!(m.store().requests(), before, "the remount listed again");
    })
}

#[test]
fn files_written_before_a_remount_are_listed_and_read_after_it() {
    run(async {
        let mut m = TestMount::new();
        m.mkdir("d").await.unwrap();
        m.write_file("d/f", b"kept").await.unwrap();
        m.remount().await;
        assert_eq!(m.list("d").await.unwrap(), ["f"]);
        assert_eq!(m.read_file("d/f").await.unwrap(), b"kept");
    })
}

#[test]
fn the_mounts_own_changes_are_listed_without_listing_again() {
    run(async {
        let m = TestMount::new();
        m.store().insert("d/a", "x");
        assert_eq!(m.list("d").await.unwrap(), ["a"]);
        m.write_file("d/b", b"y").await.unwrap();
        m.rename("d/a", "d/c", false).await.unwrap();
        let before = m.store().requests();
        assert_eq!(sorted(m.list("d").await.unwrap()), ["b", "c"]);
        assert_eq!(m.store().requests(), before);
    })
}

#[test]
fn another_mount_sees_a_new_file_once_its_listing_expires() {
    run(async {
        let settings = Settings {
            ttl: Duration::from_millis(50),
            ..Settings::default()
        };
        let a = TestMount::with(settings);
        let b = a.another();
        assert_eq!(b.list("").await.unwrap(), Vec::<String>::new());
        a.write_file("f", b"from a").await.unwrap();
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(b.list("").await.unwrap(), ["f"]);
        assert_eq!(b.read_file("f").await.unwrap(), b"from a");
    })
}

#[test]
fn a_mount_of_a_prefix_shows_and_writes_only_under_it() {
    run(async {
        let store = Arc::new(MemoryStore::new(true));
        store.insert("team/a", "1");
        store.insert("team/d/b", "2");
        store.insert("other/c", "3");
        store.insert("teammate", "4");
        let settings = Settings {
            prefix: "team/".into(),
            ..Settings::default()
        };
        let m = TestMount::over(store.clone(), settings);
        assert_eq!(sorted(m.list("").await.unwrap()), ["a", "d"]);
        assert_eq!(m.read_file("d/b").await.unwrap(), b"2");
        m.write_file("new", b"5").await.unwrap();
        assert_eq!(store.bytes("team/new").unwrap(), "5");
        m.rename("a", "d/a", false).await.unwrap();
        assert_eq!(
            store.keys(),
            ["other/c", "team/d/a", "team/d/b", "team/new", "teammate"]
        );
    })
}

#[test]
fn names_with_spaces_and_non_ascii_letters_round_trip() {
    run(async {
        let m = TestMount::new();
        for name in ["with space", "ünïcödé", "日本語", "semi;colon", "a+b=c"] {
            m.write_file(name, name.as_bytes()).await.unwrap();
            assert_eq!(m.read_file(name).await.unwrap(), name.as_bytes());
            assert_eq!(m.store().bytes(name).unwrap(), name.as_bytes());
        }
        assert_eq!(m.list("").await.unwrap().len(), 5);
    })
}

/// The catalog assumes listings are strongly consistent (S3's are since
/// 2020): what the mount changed is kept only while a listing begun
/// earlier may land. Until a listing is asked for again, a lagging store
/// cannot hide the mount's own changes.
#[test]
fn while_listings_lag_the_mounts_own_changes_are_listed() {
    run(async {
        let m = TestMount::new();
        m.store().insert("d/old", "x");
        assert_eq!(m.list("d").await.unwrap(), ["old"]);
        m.store().set_listing_lag(Duration::from_secs(60));
        m.write_file("d/mine", b"x").await.unwrap();
        m.unlink("d/old").await.unwrap();
        assert_eq!(m.list("d").await.unwrap(), ["mine"]);
        assert_eq!(m.read_file("d/mine").await.unwrap(), b"x");
    })
}

#[test]
fn while_listings_lag_another_clients_file_appears_when_listed() {
    run(async {
        let m = TestMount::new();
        m.store().insert("d/", "");
        assert_eq!(m.list("d").await.unwrap(), Vec::<String>::new());
        m.store().set_listing_lag(Duration::from_millis(100));
        m.store().insert("d/theirs", "x");
        let dir = m.resolve("d").await.unwrap();
        m.fs().refresh(dir.ino).await.unwrap();
        assert_eq!(m.list("d").await.unwrap(), Vec::<String>::new());
        tokio::time::sleep(Duration::from_millis(150)).await;
        m.fs().refresh(dir.ino).await.unwrap();
        assert_eq!(m.list("d").await.unwrap(), ["theirs"]);
    })
}

#[test]
fn a_deleted_directory_marker_with_no_files_makes_the_directory_go() {
    run(async {
        let m = TestMount::new();
        m.store().insert("d/", "");
        assert_eq!(m.list("").await.unwrap(), ["d"]);
        m.store().remove("d/");
        m.fs().refresh(crate::catalog::ROOT_INO).await.unwrap();
        assert_eq!(m.list("").await.unwrap(), Vec::<String>::new());
    })
}

#[test]
fn file_sizes_in_a_listing_are_the_objects_sizes() {
    run(async {
        let m = TestMount::new();
        m.store().insert("a", vec![0u8; 1234]);
        m.store().insert("b", Vec::new());
        m.list("").await.unwrap();
        assert_eq!(m.resolve("a").await.unwrap().size, 1234);
        assert_eq!(m.resolve("b").await.unwrap().size, 0);
    })
}

#[test]
fn a_directory_renamed_away_and_made_again_is_empty_after_a_remount() {
    run(async {
        let mut m = TestMount::new();
        m.mkdir("b").await.unwrap();
        m.write_file("b/x", b"").await.unwrap();
        m.remount().await;
        m.rename("b", "a", false).await.unwrap();
        m.mkdir("b").await.unwrap();
        assert_eq!(m.list("b").await.unwrap(), Vec::<String>::new());
        m.remount().await;
        assert_eq!(m.list("b").await.unwrap(), Vec::<String>::new());
        assert_eq!(m.list("a").await.unwrap(), ["x"]);
    })
}
