//! `MemoryStore`: an [`ObjectStore`] held in memory, with S3's semantics as
//! far as s3mount relies on them (ETags, ranged GETs pinned to an ETag,
//! multipart uploads, copies and deletes with their conditions, listings
//! with a delimiter and continuation tokens), so the layers above the store
//! can be checked in-process, in milliseconds, without a server. It never
//! replaces the real-server integration tests; it lets a test run many
//! cases of one rule, such as many mounts claiming one file at once.
//!
//! Whether it enforces write conditions is a setting, so a test can show
//! both what a store like SeaweedFS guarantees and what Garage does not.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use parking_lot::Mutex;

use super::{
    Body, ListPage, ObjectMeta, ObjectStore, PosixMeta, StoreError, UserMetadata, WriteCondition,
};

#[derive(Clone)]
struct Object {
    data: Bytes,
    etag: String,
    last_modified: SystemTime,
    marks: UserMetadata,
    /// Listings show the object from this moment on (see
    /// [`MemoryStore::set_listing_lag`]).
    listed_from: Instant,
}

struct PendingUpload {
    key: String,
    posix: PosixMeta,
    parts: BTreeMap<u32, Bytes>,
}

/// The one bucket's objects and the multipart uploads in progress.
#[derive(Default)]
struct MemoryBucket {
    objects: BTreeMap<String, Object>,
    uploads: HashMap<String, PendingUpload>,
    /// Deleted objects that listings still show, until the given moment.
    listed_after_delete: BTreeMap<String, (Object, Instant)>,
    listing_lag: Duration,
}

pub struct MemoryStore {
    state: Mutex<MemoryBucket>,
    enforce: AtomicBool,
    next_id: AtomicU64,
    /// Requests served, for tests that count them.
    requests: AtomicU64,
}

impl MemoryStore {
    /// An empty store; `enforce_conditions` says whether write conditions
    /// are honoured (AWS, SeaweedFS) or ignored (Garage).
    pub fn new(enforce_conditions: bool) -> Self {
        MemoryStore {
            state: Mutex::default(),
            enforce: AtomicBool::new(enforce_conditions),
            next_id: AtomicU64::new(1),
            requests: AtomicU64::new(0),
        }
    }

    /// Stores `data` as `key` as another client would.
    pub fn insert(&self, key: &str, data: impl Into<Bytes>) -> String {
        self.insert_with(key, data, PosixMeta::NONE)
    }

    /// Stores `data` as `key` with POSIX attributes, as s3fs would.
    pub fn insert_with(&self, key: &str, data: impl Into<Bytes>, posix: PosixMeta) -> String {
        let data = data.into();
        let etag = self.new_etag(&data);
        let mut state = self.state.lock();
        let object = Object {
            data,
            etag: etag.clone(),
            last_modified: SystemTime::now(),
            marks: UserMetadata {
                posix,
                ..UserMetadata::default()
            },
            listed_from: Instant::now() + state.listing_lag,
        };
        Self::place(&mut state, key, object);
        etag
    }

    /// Stores `object` under `key`; while listings lag, they show the
    /// version it replaced until they show it.
    fn place(state: &mut MemoryBucket, key: &str, object: Object) {
        let listed_from = object.listed_from;
        let replaced = state.objects.insert(key.to_owned(), object);
        if let (Some(old), false) = (replaced, state.listing_lag.is_zero()) {
            state
                .listed_after_delete
                .insert(key.to_owned(), (old, listed_from));
        }
    }

    /// Makes listings lag behind writes by `lag`, as S3's did before 2020
    /// and some S3-compatible stores' still do: a new object is listed
    /// only `lag` after it was written, and a deleted one still listed
    /// until `lag` after its delete. Reads and HEADs see writes at once.
    pub fn set_listing_lag(&self, lag: Duration) {
        self.state.lock().listing_lag = lag;
    }

    /// Removes `key` as another client would.
    pub fn remove(&self, key: &str) {
        let mut state = self.state.lock();
        Self::forget(&mut state, key);
    }

    fn forget(state: &mut MemoryBucket, key: &str) {
        if let Some(object) = state.objects.remove(key) {
            if !state.listing_lag.is_zero() {
                let until = Instant::now() + state.listing_lag;
                state
                    .listed_after_delete
                    .insert(key.to_owned(), (object, until));
            }
        }
    }

    /// The bytes of `key`, if it holds an object.
    pub fn bytes(&self, key: &str) -> Option<Bytes> {
        self.state.lock().objects.get(key).map(|o| o.data.clone())
    }

    /// The POSIX attributes `key`'s user metadata carries, if it holds an
    /// object.
    pub fn posix(&self, key: &str) -> Option<PosixMeta> {
        self.state.lock().objects.get(key).map(|o| o.marks.posix)
    }

    /// Every key, in order.
    pub fn keys(&self) -> Vec<String> {
        self.state.lock().objects.keys().cloned().collect()
    }

    /// Requests served so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Counts a request and lets other tasks run first, as a round trip
    /// to a server would: concurrent operations interleave between the
    /// requests they are made of.
    async fn round_trip(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        tokio::task::yield_now().await;
    }

    /// A quoted ETag unique to this write (S3's are MD5s of the content;
    /// uniqueness is what the layers above rely on, and a copy keeps its
    /// source's).
    fn new_etag(&self, data: &[u8]) -> String {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!(
            "\"{:08x}-{id}\"",
            crate::stable_hash::stable_hash(data) as u32
        )
    }

    fn check(
        &self,
        state: &MemoryBucket,
        key: &str,
        condition: WriteCondition<'_>,
    ) -> Result<(), StoreError> {
        if !self.enforce.load(Ordering::Relaxed) {
            return Ok(());
        }
        let current = state.objects.get(key);
        match (condition, current) {
            (WriteCondition::Always, _) => Ok(()),
            (WriteCondition::IfAbsent, None) => Ok(()),
            (WriteCondition::IfMatch(etag), Some(o)) if same(&o.etag, etag) => Ok(()),
            _ => Err(StoreError::PreconditionFailed),
        }
    }

    fn write(
        &self,
        state: &mut MemoryBucket,
        key: &str,
        data: Bytes,
        etag: String,
        marks: UserMetadata,
    ) -> String {
        let object = Object {
            data,
            etag: etag.clone(),
            last_modified: SystemTime::now(),
            marks,
            listed_from: Instant::now() + state.listing_lag,
        };
        Self::place(state, key, object);
        etag
    }
}

fn same(a: &str, b: &str) -> bool {
    a.trim_matches('"') == b.trim_matches('"')
}

fn meta(key: &str, o: &Object) -> ObjectMeta {
    ObjectMeta {
        key: key.to_owned(),
        size: o.data.len() as u64,
        last_modified: o.last_modified,
        etag: o.etag.clone(),
    }
}

fn body_bytes(body: &Body) -> Result<Bytes, StoreError> {
    match body {
        Body::Empty => Ok(Bytes::new()),
        Body::Small(bytes) => Ok(bytes.clone()),
        Body::File { path, offset, len } => {
            use std::os::unix::fs::FileExt;
            let file = std::fs::File::open(path)
                .map_err(|e| StoreError::Other(format!("cannot read upload data: {e}")))?;
            let mut buf = vec![0; *len as usize];
            file.read_exact_at(&mut buf, *offset)
                .map_err(|e| StoreError::Other(format!("cannot read upload data: {e}")))?;
            Ok(buf.into())
        }
    }
}

/// The user metadata of a write carrying `posix`.
fn token(posix: &PosixMeta) -> UserMetadata {
    UserMetadata {
        token: Some(format!("{:016x}", fastrand::u64(..))),
        copied_from: None,
        posix: *posix,
    }
}

impl ObjectStore for MemoryStore {
    fn describe(&self) -> String {
        "memory".to_owned()
    }

    async fn list_page(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        continuation: Option<String>,
        max_keys: Option<i32>,
    ) -> Result<ListPage, StoreError> {
        self.round_trip().await;
        let max = max_keys.unwrap_or(1000).max(1) as usize;
        let state = self.state.lock();
        let mut page = ListPage::default();
        let after = continuation.unwrap_or_default();
        let mut last = String::new();
        let now = Instant::now();
        let mut listed: BTreeMap<&String, &Object> = state
            .objects
            .range(prefix.to_owned()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .filter(|(_, o)| o.listed_from <= now)
            .collect();
        for (key, (object, until)) in state.listed_after_delete.range(prefix.to_owned()..) {
            if !key.starts_with(prefix) {
                break;
            }
            if *until > now {
                listed.entry(key).or_insert(object);
            }
        }
        for (key, object) in listed {
            let rolled = delimiter.and_then(|d| {
                let rest = &key[prefix.len()..];
                rest.find(d)
                    .map(|i| format!("{prefix}{}", &rest[..i + d.len()]))
            });
            let item = rolled.clone().unwrap_or_else(|| key.clone());
            if item <= after || item == last {
                continue;
            }
            if page.objects.len() + page.common_prefixes.len() == max {
                page.next = Some(last);
                return Ok(page);
            }
            match rolled {
                Some(p) => page.common_prefixes.push(p),
                None => page.objects.push(meta(key, object)),
            }
            last = item;
        }
        Ok(page)
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        self.head_metadata(key).await.map(|(m, _)| m)
    }

    async fn get_range(
        &self,
        key: &str,
        etag: &str,
        range: Range<u64>,
        pieces: &[u64],
        deliver: &mut (dyn FnMut(Bytes) + Send),
    ) -> Result<(), StoreError> {
        self.round_trip().await;
        let data = {
            let state = self.state.lock();
            let object = state.objects.get(key).ok_or(StoreError::NotFound)?;
            if !same(&object.etag, etag) {
                return Err(StoreError::PreconditionFailed);
            }
            object.data.clone()
        };
        if range.end > data.len() as u64 {
            return Err(StoreError::Other("range past the end of the object".into()));
        }
        let mut at = range.start as usize;
        for len in pieces {
            let end = at + *len as usize;
            deliver(data.slice(at..end));
            at = end;
        }
        Ok(())
    }

    async fn put(
        &self,
        key: &str,
        body: Body,
        condition: WriteCondition<'_>,
        posix: &PosixMeta,
    ) -> Result<String, StoreError> {
        self.round_trip().await;
        let data = body_bytes(&body)?;
        let mut state = self.state.lock();
        self.check(&state, key, condition)?;
        let etag = self.new_etag(&data);
        Ok(self.write(&mut state, key, data, etag, token(posix)))
    }

    async fn start_multipart(&self, key: &str, posix: &PosixMeta) -> Result<String, StoreError> {
        self.round_trip().await;
        let id = format!("upload-{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        self.state.lock().uploads.insert(
            id.clone(),
            PendingUpload {
                key: key.to_owned(),
                posix: *posix,
                parts: BTreeMap::new(),
            },
        );
        Ok(id)
    }

    async fn put_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        body: Body,
    ) -> Result<String, StoreError> {
        self.round_trip().await;
        let data = body_bytes(&body)?;
        let etag = self.new_etag(&data);
        let mut state = self.state.lock();
        let upload = state
            .uploads
            .get_mut(upload_id)
            .filter(|u| u.key == key)
            .ok_or(StoreError::NotFound)?;
        upload.parts.insert(number, data);
        Ok(etag)
    }

    async fn copy_part(
        &self,
        from: &str,
        etag: &str,
        range: Range<u64>,
        to: &str,
        upload_id: &str,
        number: u32,
    ) -> Result<String, StoreError> {
        self.round_trip().await;
        let mut state = self.state.lock();
        let source = state.objects.get(from).ok_or(StoreError::NotFound)?;
        if !same(&source.etag, etag) {
            return Err(StoreError::PreconditionFailed);
        }
        let data = source.data.slice(range.start as usize..range.end as usize);
        let part_etag = self.new_etag(&data);
        let upload = state
            .uploads
            .get_mut(upload_id)
            .filter(|u| u.key == to)
            .ok_or(StoreError::NotFound)?;
        upload.parts.insert(number, data);
        Ok(part_etag)
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        part_etags: Vec<String>,
        condition: WriteCondition<'_>,
    ) -> Result<String, StoreError> {
        self.round_trip().await;
        let mut state = self.state.lock();
        self.check(&state, key, condition)?;
        let upload = state
            .uploads
            .remove(upload_id)
            .ok_or(StoreError::NotFound)?;
        if upload.parts.len() != part_etags.len() {
            return Err(StoreError::Other("InvalidPart: parts missing".into()));
        }
        let data: Vec<u8> = upload
            .parts
            .values()
            .flat_map(|p| p.iter().copied())
            .collect();
        let etag = self.new_etag(&data);
        Ok(self.write(&mut state, key, data.into(), etag, token(&upload.posix)))
    }

    async fn abort_multipart(&self, _key: &str, upload_id: &str) -> Result<(), StoreError> {
        self.round_trip().await;
        self.state.lock().uploads.remove(upload_id);
        Ok(())
    }

    async fn copy(
        &self,
        from: &str,
        etag: &str,
        _size: u64,
        to: &str,
        condition: WriteCondition<'_>,
        posix: &PosixMeta,
    ) -> Result<String, StoreError> {
        self.round_trip().await;
        let mut state = self.state.lock();
        let source = state
            .objects
            .get(from)
            .cloned()
            .ok_or(StoreError::NotFound)?;
        if !same(&source.etag, etag) {
            return Err(StoreError::PreconditionFailed);
        }
        self.check(&state, to, condition)?;
        let marks = UserMetadata {
            copied_from: Some(etag.to_owned()),
            ..token(posix)
        };
        // As on S3, a copy keeps its source's ETag.
        Ok(self.write(&mut state, to, source.data, source.etag, marks))
    }

    async fn delete(&self, key: &str, if_match: Option<&str>) -> Result<(), StoreError> {
        self.round_trip().await;
        let mut state = self.state.lock();
        if let (Some(etag), true) = (if_match, self.enforce.load(Ordering::Relaxed)) {
            match state.objects.get(key) {
                None => return Err(StoreError::NotFound),
                Some(o) if !same(&o.etag, etag) => return Err(StoreError::PreconditionFailed),
                Some(_) => {}
            }
        }
        Self::forget(&mut state, key);
        Ok(())
    }

    async fn head_metadata(&self, key: &str) -> Result<(ObjectMeta, UserMetadata), StoreError> {
        self.round_trip().await;
        let state = self.state.lock();
        let object = state.objects.get(key).ok_or(StoreError::NotFound)?;
        Ok((meta(key, object), object.marks.clone()))
    }

    fn enforces_conditions(&self) -> bool {
        self.enforce.load(Ordering::Relaxed)
    }

    async fn probe_conditions(&self, _prefix: &str) -> Result<bool, StoreError> {
        Ok(self.enforces_conditions())
    }
}

/// Runs an in-process test's future to its end on one thread, where the
/// store's yields interleave concurrent operations.
#[cfg(test)]
pub fn run_on_one_thread<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
        .block_on(f)
}

/// Runs `futures` together on the current task and returns their outputs
/// in order: on one thread they interleave at every request, as
/// concurrent clients of one server do.
#[cfg(test)]
pub async fn join_all<F: std::future::Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut set: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in set.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        match pending {
            true => std::task::Poll::Pending,
            false => std::task::Poll::Ready(()),
        }
    })
    .await;
    out.into_iter().map(Option::unwrap).collect()
}

#[cfg(test)]
mod tests {
    use super::run_on_one_thread as run;
    use super::*;

    #[test]
    fn listings_roll_up_prefixes_and_page_with_tokens() {
        let store = MemoryStore::new(true);
        for key in ["d/a", "d/b/1", "d/b/2", "d/c", "d/e/x/y", "e"] {
            store.insert(key, "x");
        }
        let mut names = Vec::new();
        let mut token = None;
        loop {
            let page = run(store.list_page("d/", Some("/"), token, Some(2))).unwrap();
            names.extend(page.objects.iter().map(|o| o.key.clone()));
            names.extend(page.common_prefixes.iter().cloned());
            token = page.next;
            if token.is_none() {
                break;
            }
        }
        names.sort();
        assert_eq!(names, ["d/a", "d/b/", "d/c", "d/e/"]);
    }

    #[test]
    fn conditions_are_enforced_or_ignored_as_set() {
        let strict = MemoryStore::new(true);
        let etag = strict.insert("k", "v1");
        assert!(matches!(
            run(strict.put("k", Body::Empty, WriteCondition::IfAbsent, &PosixMeta::NONE)),
            Err(StoreError::PreconditionFailed)
        ));
        assert!(run(strict.put(
            "k",
            Body::Empty,
            WriteCondition::IfMatch(&etag),
            &PosixMeta::NONE
        ))
        .is_ok());
        assert!(matches!(
            run(strict.delete("k", Some(&etag))),
            Err(StoreError::PreconditionFailed)
        ));
        let lax = MemoryStore::new(false);
        lax.insert("k", "v1");
        assert!(run(lax.put("k", Body::Empty, WriteCondition::IfAbsent, &PosixMeta::NONE)).is_ok());
    }

    #[test]
    fn with_a_listing_lag_listings_show_writes_and_deletes_late() {
        let store = MemoryStore::new(true);
        store.insert("old", "x");
        store.set_listing_lag(std::time::Duration::from_millis(200));
        store.insert("new", "y");
        store.remove("old");
        let listed = |store: &MemoryStore| -> Vec<String> {
            let page = run(store.list_page("", None, None, None)).unwrap();
            page.objects.into_iter().map(|o| o.key).collect()
        };
        assert_eq!(listed(&store), ["old"]);
        assert!(
            run(store.head("new")).is_ok(),
            "reads see the write at once"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
        assert_eq!(listed(&store), ["new"]);
    }

    #[test]
    fn a_ranged_get_is_pinned_to_its_version() {
        let store = MemoryStore::new(true);
        let etag = store.insert("k", "0123456789");
        let mut got = Vec::new();
        run(store.get_range("k", &etag, 2..8, &[3, 3], &mut |b| got.push(b))).unwrap();
        assert_eq!(got.concat(), b"234567");
        store.insert("k", "changed!!!");
        assert!(matches!(
            run(store.get_range("k", &etag, 0..1, &[1], &mut |_| {})),
            Err(StoreError::PreconditionFailed)
        ));
    }
}
