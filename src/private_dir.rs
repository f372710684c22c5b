//! Directories only this user may read: the catalog's and the disk cache's
//! (every object name of the bucket, and object data) and the upload spool.

use std::path::Path;

/// Creates `dir` (and its parents) readable by this user only, since what
/// goes in it shows the bucket's names or data; an existing directory is
/// left as it is.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}
