//! Running a blocking call (SQLite, a read from the local disk) from async
//! code without stalling the other tasks of the runtime. Shared by the
//! catalog, the read path and the write path, so none of them reaches into
//! another for it.

/// Runs `f`, which may wait for SQLite, without stalling the other tasks of
/// a multi-threaded runtime.
pub(crate) fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}
