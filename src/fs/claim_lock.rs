//! Claim locks: the one object that decides which mount moves a file when
//! several rename the same version at once (docs/SEMANTICS.md, "Claims").
//!
//! A rename's copy-then-delete alone cannot tell its winner in every case:
//! when two mounts copy one file to *different* names and the winner's
//! delete of the source is in doubt (its answer lost), the retry finds the
//! source gone and cannot know whose delete removed it. So before it copies,
//! a rename takes the lock of the version it moves: a create-only PUT of a
//! small object named after the source key and ETag, holding a random
//! owner id. Exactly one mount
//! creates it (a retry after a lost answer recognises its own write by the
//! store's marks); the others lose at once, before they write anything.
//! Only the holder ever deletes the source at that version, so a delete in
//! doubt that finds it gone was the holder's own.
//!
//! A winner deletes its lock once its rename has returned (in the
//! background, unless told to before), and a mount that stops deletes the
//! ones it has not yet. A lock this mount could not delete, or took without
//! learning so, stays its own: its next take of that version finds it by
//! its owner id. A lock older than [`LOCK_LEASE`] is one a mount left when
//! it died mid-claim, and the next claimer breaks it. Locks are taken only
//! where the store enforces write conditions: elsewhere they would not be
//! exclusive.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use parking_lot::Mutex;
use tracing::{debug, warn};

use crate::error::FsError;
use crate::names::CLAIM_DIR_NAME;
use crate::stable_hash::stable_hash;
use crate::store::{Body, ObjectMeta, ObjectStore, PosixMeta, StoreError, WriteCondition};

/// Age past which a lock is taken to be left by a mount that stopped
/// mid-claim, and may be broken. Longer than any claim takes: a claim is a
/// server-side copy, and even one of several GiB is done well within it.
pub const LOCK_LEASE: Duration = Duration::from_secs(15 * 60);

/// The locks a mount holds, is deleting, or may hold after a lost answer
/// (clones share them).
#[derive(Clone)]
pub struct ClaimLocks {
    root_prefix: String,
    /// Whether a winner's lock is deleted after its rename returns rather
    /// than before.
    release_in_background: bool,
    /// Locks won and not yet deleted, by key.
    won: Arc<Mutex<HashMap<String, WonLock>>>,
    /// Locks this mount may hold without knowing it (a take whose answer
    /// was lost, a delete that failed), by key, with the owner id written.
    in_doubt: Arc<Mutex<HashMap<String, Bytes>>>,
}

/// A lock whose claim won, until its delete is done.
struct WonLock {
    etag: String,
    owner: Bytes,
    /// Its delete has been sent: a take of it waits for the outcome.
    deleting: bool,
}

/// A lock this mount holds on one version of one key.
///
/// The lock object's body is a random owner id, so a take whose answer
/// was lost can tell its own lock from another mount's.
#[must_use = "a lock is released or retired"]
pub struct HeldLock {
    key: String,
    etag: String,
    owner: Bytes,
}

impl ClaimLocks {
    /// Locks under the mount's `root_prefix`, a won one deleted after the
    /// rename returns when `release_in_background`, else before.
    pub fn new(root_prefix: &str, release_in_background: bool) -> Self {
        ClaimLocks {
            root_prefix: root_prefix.to_owned(),
            release_in_background,
            won: Arc::default(),
            in_doubt: Arc::default(),
        }
    }

    /// The lock's key for version `etag` of `key`: flat and short whatever
    /// the source key, under a directory listings never show.
    fn lock_key(&self, key: &str, etag: &str) -> String {
        let id = stable_hash(format!("{key}\n{}", etag.trim_matches('"')).as_bytes());
        format!("{}{CLAIM_DIR_NAME}/{id:016x}", self.root_prefix)
    }

    /// Takes the lock of version `etag` of `key`: `Some` for the one mount
    /// that gets it, `None` when another mount claims that version now (or
    /// has just moved it).
    pub async fn take<S: ObjectStore>(
        &self,
        store: &S,
        key: &str,
        etag: &str,
    ) -> Result<Option<HeldLock>, FsError> {
        let lock_key = self.lock_key(key, etag);
        // A lock this mount won with a claim of this very version (a file
        // moved away and back) and has not deleted yet is taken over; one
        // being deleted is waited for.
        loop {
            let deleting = {
                let mut won = self.won.lock();
                match won.get(&lock_key) {
                    Some(w) if w.deleting => true,
                    Some(_) => {
                        let w = won.remove(&lock_key).expect("present");
                        return Ok(Some(HeldLock {
                            key: lock_key,
                            etag: w.etag,
                            owner: w.owner,
                        }));
                    }
                    None => false,
                }
            };
            if !deleting {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // An earlier take of this lock whose answer was lost may have
        // created it: the lock then names this mount's owner id.
        let owner = self
            .in_doubt
            .lock()
            .get(&lock_key)
            .cloned()
            .unwrap_or_else(|| Bytes::from(format!("{:032x}", fastrand::u128(..))));
        // A second try only after breaking a stale lock or finding one gone.
        let mut failed = None;
        for _ in 0..2 {
            let put = store
                .put(
                    &lock_key,
                    Body::Small(owner.clone()),
                    WriteCondition::IfAbsent,
                    &PosixMeta::NONE,
                )
                .await;
            let held = match put {
                Ok(lock_etag) => Some(lock_etag),
                Err(StoreError::PreconditionFailed) => None,
                Err(e) if e.may_have_been_carried_out() => {
                    self.in_doubt.lock().insert(lock_key.clone(), owner.clone());
                    failed = Some(e);
                    None
                }
                Err(e) => return Err(FsError::store(&lock_key, e)),
            };
            let created = held.is_some();
            let lock = match held {
                Some(etag) => ObjectMeta {
                    key: lock_key.clone(),
                    size: owner.len() as u64,
                    last_modified: SystemTime::now(),
                    etag,
                },
                None => match store.head(&lock_key).await {
                    Ok(lock) => lock,
                    // Not created by the take that failed: its error stands.
                    Err(StoreError::NotFound) if failed.is_some() => {
                        let e = failed.take().expect("checked");
                        return Err(FsError::store(&lock_key, e));
                    }
                    // Released meanwhile (its holder failed): try again.
                    Err(StoreError::NotFound) => continue,
                    Err(e) => return Err(FsError::store(&lock_key, e)),
                },
            };
            // Of two takes on this mount that find its own lock from a
            // lost answer, only the one that clears the doubt gets it.
            let own = if created {
                self.in_doubt.lock().remove(&lock_key);
                true
            } else {
                self.is_own(store, &lock, &owner).await?
                    && self.in_doubt.lock().remove(&lock_key).is_some()
            };
            if own {
                return Ok(Some(HeldLock {
                    key: lock_key,
                    etag: lock.etag,
                    owner,
                }));
            }
            if !is_stale(lock.last_modified) {
                debug!(
                    key,
                    etag, "another mount holds the claim lock: the rename is lost"
                );
                return Ok(None);
            }
            warn!(
                key,
                lock = lock_key,
                "breaking a claim lock left by a mount that stopped mid-claim"
            );
            match store.delete(&lock_key, Some(&lock.etag)).await {
                Ok(()) | Err(StoreError::NotFound | StoreError::PreconditionFailed) => {}
                Err(e) => return Err(FsError::store(&lock_key, e)),
            }
        }
        Err(FsError::store(
            &lock_key,
            StoreError::Other("the claim lock changed hands during the take; try again".into()),
        ))
    }

    /// Whether `lock` names `owner`: a lock this mount created with a
    /// take whose answer was lost. Only then is its body read.
    async fn is_own<S: ObjectStore>(
        &self,
        store: &S,
        lock: &ObjectMeta,
        owner: &Bytes,
    ) -> Result<bool, FsError> {
        if !self.in_doubt.lock().contains_key(&lock.key) || lock.size != owner.len() as u64 {
            return Ok(false);
        }
        let mut body = Vec::new();
        match store
            .get_range(
                &lock.key,
                &lock.etag,
                0..lock.size,
                &[lock.size],
                &mut |b| body.extend_from_slice(&b),
            )
            .await
        {
            Ok(()) => Ok(body == owner[..]),
            Err(StoreError::NotFound | StoreError::PreconditionFailed) => Ok(false),
            Err(e) => Err(FsError::store(&lock.key, e)),
        }
    }

    /// The claim failed and the file stays where it was: the lock goes at
    /// once, so the file can be claimed again.
    pub async fn release<S: ObjectStore>(&self, store: &S, lock: HeldLock) {
        if !delete_lock(store, &lock.key, &lock.etag).await {
            // Still this mount's to take again; others wait for its lease.
            self.in_doubt.lock().insert(lock.key, lock.owner);
        }
    }

    /// The claim won: the lock is deleted, before this returns or, with
    /// `release_in_background`, right after.
    pub async fn retire<S: ObjectStore>(&self, store: &Arc<S>, lock: HeldLock) {
        let won = WonLock {
            etag: lock.etag,
            owner: lock.owner,
            deleting: false,
        };
        self.won.lock().insert(lock.key.clone(), won);
        if !self.release_in_background {
            self.delete_won(&**store, &lock.key).await;
            return;
        }
        let (store, locks) = (store.clone(), self.clone());
        tokio::spawn(async move { locks.delete_won(&*store, &lock.key).await });
    }

    /// Deletes the won lock `key` unless a take has taken it over meanwhile.
    async fn delete_won<S: ObjectStore>(&self, store: &S, key: &str) {
        let etag = match self.won.lock().get_mut(key) {
            Some(w) if !w.deleting => {
                w.deleting = true;
                w.etag.clone()
            }
            _ => return,
        };
        let deleted = delete_lock(store, key, &etag).await;
        let w = self.won.lock().remove(key);
        if let (false, Some(w)) = (deleted, w) {
            self.in_doubt.lock().insert(key.to_owned(), w.owner);
        }
    }

    /// Deletes every won lock not yet deleted (at shutdown).
    pub async fn drop_kept<S: ObjectStore>(&self, store: &S) {
        let keys: Vec<String> = self.won.lock().keys().cloned().collect();
        for key in keys {
            self.delete_won(store, &key).await;
        }
    }

    /// How many won locks are not deleted yet.
    #[cfg(test)]
    pub fn won_count(&self) -> usize {
        self.won.lock().len()
    }
}

/// Deletes a lock at its version; whether it is gone.
async fn delete_lock<S: ObjectStore>(store: &S, key: &str, etag: &str) -> bool {
    match store.delete(key, Some(etag)).await {
        Ok(()) | Err(StoreError::NotFound) => true,
        Err(e) => {
            warn!(lock = key, error = %e, "cannot delete a claim lock");
            false
        }
    }
}

fn is_stale(written: SystemTime) -> bool {
    SystemTime::now()
        .duration_since(written)
        .is_ok_and(|age| age > LOCK_LEASE)
}
