//! The drop-folder claims of docs/SEMANTICS.md ("Claims"), on many
//! in-process mounts of one store: a rename that exactly one mount wins,
//! also when answers are lost.

use super::*;

/// `n` mounts of one store that enforces write conditions, with
/// `incoming/` holding `files` dropped files.
fn fleet(n: usize, files: usize) -> (Arc<MemoryStore>, Vec<TestMount<MemoryStore>>) {
    let store = Arc::new(MemoryStore::new(true));
    store.insert("processing/", "");
    for i in 0..files {
        store.insert(&format!("incoming/f{i:03}"), format!("file {i}"));
    }
    let mounts = (0..n)
        .map(|_| TestMount::over(store.clone(), Settings::default()))
        .collect();
    (store, mounts)
}

fn oks<T>(outcomes: &[Result<T, FsError>]) -> usize {
    outcomes.iter().filter(|r| r.is_ok()).count()
}

#[test]
fn of_loaders_on_many_mounts_moving_one_file_exactly_one_wins() {
    run(async {
        let (store, mounts) = fleet(5, 1);
        let outcomes = join_all(
            mounts
                .iter()
                .map(|m| m.rename("incoming/f000", "processing/f000", false)),
        )
        .await;
        assert_eq!(oks(&outcomes), 1, "{outcomes:?}");
        for r in outcomes.iter().filter(|r| r.is_err()) {
            assert_eq!(
                r.as_ref().unwrap_err().errno(),
                libc::ENOENT,
                "{outcomes:?}"
            );
        }
        assert_eq!(
            store.contents(),
            [
                ("incoming/".into(), "".into()),
                ("processing/".into(), "".into()),
                ("processing/f000".into(), "file 0".into())
            ]
        );
    })
}

#[test]
fn of_loaders_moving_one_file_to_different_names_exactly_one_keeps_it() {
    run(async {
        let (store, mounts) = fleet(4, 1);
        let targets: Vec<String> = (0..4).map(|i| format!("processing/by-{i}")).collect();
        let outcomes = join_all(
            mounts
                .iter()
                .zip(&targets)
                .map(|(m, to)| m.rename("incoming/f000", to, false)),
        )
        .await;
        assert_eq!(oks(&outcomes), 1, "{outcomes:?}");
        let files: Vec<_> = store
            .keys()
            .into_iter()
            .filter(|k| !k.ends_with('/'))
            .collect();
        assert_eq!(files.len(), 1, "copies left behind: {files:?}");
        assert_eq!(store.bytes(&files[0]).unwrap(), "file 0");
    })
}

#[test]
fn of_loaders_using_mv_n_exactly_one_wins_and_the_others_see_enoent_or_eexist() {
    run(async {
        let (store, mounts) = fleet(4, 1);
        let outcomes = join_all(
            mounts
                .iter()
                .map(|m| m.rename("incoming/f000", "processing/f000", true)),
        )
        .await;
        assert_eq!(oks(&outcomes), 1, "{outcomes:?}");
        for r in outcomes.iter().filter(|r| r.is_err()) {
            let errno = r.as_ref().unwrap_err().errno();
            assert!(
                errno == libc::ENOENT || errno == libc::EEXIST,
                "{outcomes:?}"
            );
        }
        assert_eq!(store.bytes("processing/f000").unwrap(), "file 0");
        assert!(store.bytes("incoming/f000").is_none());
    })
}

/// The double claim that copy-then-delete alone allows: two mounts move
/// one file to different names, and the first one's delete of the source
/// is in doubt (lost before it reached the store, then sent again); the
/// other's delete removes the source meanwhile, and the retry, finding it
/// gone, counts it as its own. The claim lock lets only one of them copy.
#[test]
fn of_claims_to_different_names_whose_deletes_are_in_doubt_exactly_one_wins() {
    run(async {
        let memory = Arc::new(MemoryStore::new(true));
        memory.insert("incoming/f", "the file");
        memory.insert("processing/", "");
        let plan = FaultPlan {
            delete_in_doubt: Some(Duration::from_millis(50)),
            ..FaultPlan::default()
        };
        let doubtful = TestMount::faulty(memory.clone(), plan, Settings::default());
        let plain = TestMount::over(memory.clone(), Settings::default());
        // Both have listed the drop folder, as loaders that found the file.
        for dir in ["incoming", "processing"] {
            doubtful.list(dir).await.unwrap();
            plain.list(dir).await.unwrap();
        }
        let (a, b) = tokio::join!(
            doubtful.rename("incoming/f", "processing/by-a", false),
            plain.rename("incoming/f", "processing/by-b", false),
        );
        let outcomes = [a, b];
        assert_eq!(oks(&outcomes), 1, "{outcomes:?}");
        let loser = outcomes.iter().find(|r| r.is_err()).unwrap();
        assert_eq!(loser.as_ref().unwrap_err().errno(), libc::ENOENT);
        let files: Vec<_> = memory
            .keys()
            .into_iter()
            .filter(|k| !k.ends_with('/'))
            .collect();
        assert_eq!(files.len(), 1, "copies left behind: {files:?}");
        assert_eq!(memory.bytes(&files[0]).unwrap(), "the file");
    })
}

/// A mount over `store` that deletes the locks of its won claims after
/// the rename returns, as the daemon does.
fn releasing_in_background(store: &Arc<MemoryStore>) -> TestMount<MemoryStore> {
    TestMount::over(
        store.clone(),
        Settings::policy(WritePolicy {
            release_claim_locks_in_background: true,
            ..WritePolicy::default()
        }),
    )
}

fn claim_locks(store: &MemoryStore) -> Vec<String> {
    let dir = format!("{}/", crate::names::CLAIM_DIR_NAME);
    store
        .keys()
        .into_iter()
        .filter(|k| k.starts_with(&dir))
        .collect()
}

/// A store with `incoming/f` moved to `processing/f` (and `incoming/other`
/// left, so no directory marker is written after it), by the mount
/// returned.
async fn one_claim_won_by_a_mount_releasing_in_background(
) -> (Arc<MemoryStore>, TestMount<MemoryStore>) {
    let store = Arc::new(MemoryStore::new(true));
    store.insert("incoming/f", "x");
    store.insert("incoming/other", "y");
    store.insert("processing/", "");
    let m = releasing_in_background(&store);
    m.rename("incoming/f", "processing/f", false).await.unwrap();
    (store, m)
}

#[test]
fn a_winners_lock_is_never_listed_and_goes_right_after_the_rename() {
    run(async {
        let (store, m) = one_claim_won_by_a_mount_releasing_in_background().await;
        assert_eq!(claim_locks(&store).len(), 1, "{:?}", store.keys());
        assert_eq!(m.list("").await.unwrap(), ["incoming", "processing"]);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(claim_locks(&store), Vec::<String>::new());
        assert_eq!(m.fs().claims.won_count(), 0);
    })
}

#[test]
fn a_file_moved_away_and_back_moves_again_on_this_mount_and_another() {
    run(async {
        let store = Arc::new(MemoryStore::new(true));
        store.insert("a/f", "x");
        store.insert("b/", "");
        let (m, inline) = (
            releasing_in_background(&store),
            TestMount::over(store.clone(), Settings::default()),
        );
        // Each copy keeps the ETag, so the same version is claimed again
        // under the same name: its lock must be free or this mount's own.
        for round in 0..3 {
            m.rename("a/f", "b/f", false)
                .await
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            m.rename("b/f", "a/f", false)
                .await
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        for dir in ["a", "b"] {
            let attr = inline.resolve(dir).await.unwrap();
            inline.fs().refresh(attr.ino).await.unwrap();
        }
        inline.rename("a/f", "b/f", false).await.unwrap();
        inline.rename("b/f", "a/f", false).await.unwrap();
        assert_eq!(store.bytes("a/f").unwrap(), "x");
        assert_eq!(claim_locks(&store), Vec::<String>::new());
    })
}

#[test]
fn at_shutdown_a_mount_deletes_the_locks_not_yet_deleted() {
    run(async {
        let (store, m) = one_claim_won_by_a_mount_releasing_in_background().await;
        assert_eq!(m.fs().claims.won_count(), 1);
        m.fs().drop_claim_locks().await;
        assert_eq!(claim_locks(&store), Vec::<String>::new());
        assert_eq!(m.fs().claims.won_count(), 0);
    })
}

/// What one mount's loaders got: files they won, and files whose claim
/// failed with EIO (in doubt).
#[derive(Default)]
struct Claimed {
    won: Vec<String>,
    in_doubt: Vec<String>,
}

/// Every mount lists `incoming/` and claims what it finds, `loaders` at a
/// time, as cron loaders on several hosts do.
async fn load_all<S: ObjectStore>(mounts: &[TestMount<S>], loaders: usize) -> Claimed {
    let per_mount = join_all(mounts.iter().enumerate().map(|(i, m)| async move {
        let mut names = m.list("incoming").await.unwrap();
        // Each mount takes the files in its own order, so claims collide
        // at different points.
        let start = i * names.len() / mounts.len().max(1);
        names.rotate_left(start);
        let mut claimed = Claimed::default();
        for batch in names.chunks(loaders) {
            let tries = join_all(batch.iter().map(|name| async move {
                let moved = m
                    .rename(
                        &format!("incoming/{name}"),
                        &format!("processing/{name}"),
                        false,
                    )
                    .await;
                (name.clone(), moved)
            }))
            .await;
            for (name, moved) in tries {
                match moved.map_err(|e| e.errno()) {
                    Ok(()) => claimed.won.push(name),
                    Err(libc::ENOENT) => {}
                    Err(libc::EIO) => claimed.in_doubt.push(name),
                    Err(errno) => panic!("claim of {name}: errno {errno}"),
                }
            }
        }
        claimed
    }))
    .await;
    let mut all = Claimed::default();
    for claimed in per_mount {
        all.won.extend(claimed.won);
        all.in_doubt.extend(claimed.in_doubt);
    }
    all.won.sort();
    all
}

#[test]
fn a_drop_folder_emptied_by_loaders_on_three_mounts_loads_each_file_once() {
    run(async {
        let (store, mounts) = fleet(3, 60);
        let claimed = load_all(&mounts, 2).await;
        let expected: Vec<String> = (0..60).map(|i| format!("f{i:03}")).collect();
        assert_eq!(
            claimed.won, expected,
            "a file was claimed twice or not at all"
        );
        assert!(claimed.in_doubt.is_empty());
        for name in &expected {
            assert!(
                store.bytes(&format!("incoming/{name}")).is_none(),
                "{name} left behind"
            );
            assert!(
                store.bytes(&format!("processing/{name}")).is_some(),
                "{name} lost"
            );
        }
    })
}

#[test]
fn a_loser_no_longer_lists_the_file_it_lost() {
    run(async {
        let (_store, mounts) = fleet(2, 1);
        assert_eq!(mounts[1].list("incoming").await.unwrap(), ["f000"]);
        mounts[0]
            .rename("incoming/f000", "processing/f000", false)
            .await
            .unwrap();
        assert_eq!(
            errno_of(
                mounts[1]
                    .rename("incoming/f000", "processing/f000", false)
                    .await
            ),
            libc::ENOENT
        );
        assert_eq!(
            mounts[1].list("incoming").await.unwrap(),
            Vec::<String>::new()
        );
    })
}

#[test]
fn a_file_dropped_again_under_a_claimed_name_is_a_new_claim() {
    run(async {
        let (store, mounts) = fleet(2, 1);
        mounts[0]
            .rename("incoming/f000", "processing/f000", false)
            .await
            .unwrap();
        store.insert("incoming/f000", "second drop");
        let dir = mounts[1].resolve("incoming").await.unwrap();
        mounts[1].fs().refresh(dir.ino).await.unwrap();
        mounts[1]
            .rename("incoming/f000", "processing/again", false)
            .await
            .unwrap();
        assert_eq!(store.bytes("processing/f000").unwrap(), "file 0");
        assert_eq!(store.bytes("processing/again").unwrap(), "second drop");
        assert!(store.bytes("incoming/f000").is_none());
    })
}

/// Claims whose answers are lost for good (every retry exhausted) fail
/// with EIO and may leave their copy beside the source (docs/SEMANTICS.md,
/// "Rename"); a later claim of such a file sees its version at the target,
/// cannot tell it from a claim in progress, and loses. What must hold: no
/// file is claimed twice, none is lost, and a file under two names is one
/// whose claim was in doubt, with the same bytes under both. (The retry
/// that recognises a lost answer by its write token lives in the S3
/// client, and is shown against real servers in tests/it.)
#[test]
fn with_lost_answers_no_file_is_claimed_twice_or_lost() {
    for seed in 0..8 {
        run(async {
            let memory = Arc::new(MemoryStore::new(true));
            memory.insert("processing/", "");
            for i in 0..20 {
                memory.insert(&format!("incoming/f{i:03}"), format!("file {i}"));
            }
            let plan = |n: u64| FaultPlan {
                seed: seed * 10 + n,
                lose_answer: 0.15,
                ..FaultPlan::default()
            };
            let mounts: Vec<_> = (0..3)
                .map(|n| TestMount::faulty(memory.clone(), plan(n), Settings::default()))
                .collect();
            for m in &mounts {
                m.store().set_enabled(false);
                m.list("incoming").await.unwrap();
                m.store().set_enabled(true);
            }
            let mut claimed = load_all(&mounts, 2).await;
            assert!(
                mounts.iter().any(|m| m.store().counts().answers_lost > 0),
                "seed {seed}: no answer was lost"
            );
            // The loaders run again without faults and claim what is left
            // (a mount whose take of a lock was in doubt finds its own).
            for m in &mounts {
                m.store().set_enabled(false);
                let dir = m.resolve("incoming").await.unwrap();
                m.fs().refresh(dir.ino).await.unwrap();
            }
            let swept = load_all(&mounts, 1).await;
            claimed.won.extend(swept.won);
            claimed.won.sort();
            let twice: Vec<_> = claimed.won.windows(2).filter(|w| w[0] == w[1]).collect();
            assert!(twice.is_empty(), "seed {seed}: claimed twice: {twice:?}");
            for i in 0..20 {
                let name = format!("f{i:03}");
                let places: Vec<String> = memory
                    .keys()
                    .into_iter()
                    .filter(|k| k.ends_with(&name))
                    .collect();
                let processed = format!("processing/{name}");
                match places.len() {
                    1 => assert_eq!(places[0], processed, "seed {seed}"),
                    2 => assert!(
                        claimed.in_doubt.contains(&name) && !claimed.won.contains(&name),
                        "seed {seed}: {name} under {places:?} but no claim of it was in doubt"
                    ),
                    _ => panic!("seed {seed}: {name} is under {places:?}"),
                }
                for place in places {
                    assert_eq!(memory.bytes(&place).unwrap(), format!("file {i}"));
                }
            }
        })
    }
}

#[test]
fn a_lock_taken_with_a_lost_answer_goes_to_one_later_take_of_this_mount() {
    run(async {
        let memory = Arc::new(MemoryStore::new(true));
        let etag = memory.insert("incoming/f", "x");
        let plan = FaultPlan {
            lose_answer: 1.0,
            ..FaultPlan::default()
        };
        let m = TestMount::faulty(memory.clone(), plan, Settings::default());
        let claims = &m.fs().claims;
        // The PUT creates the lock but its answer is lost, and so is the
        // HEAD that would tell: the take fails, the lock stays.
        let first = claims.take(&**m.store(), "incoming/f", &etag).await;
        assert!(first.is_err());
        assert_eq!(claim_locks(&memory).len(), 1);
        m.store().set_enabled(false);
        let (a, b) = tokio::join!(
            claims.take(&**m.store(), "incoming/f", &etag),
            claims.take(&**m.store(), "incoming/f", &etag),
        );
        let held: Vec<_> = [a.unwrap(), b.unwrap()].into_iter().flatten().collect();
        assert_eq!(held.len(), 1, "both takes got the lock");
        for lock in held {
            claims.release(&**m.store(), lock).await;
        }
        assert_eq!(claim_locks(&memory), Vec::<String>::new());
    })
}
