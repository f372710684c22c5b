//! Mapping between S3 keys and file names.
//!
//! S3 keys are arbitrary UTF-8 strings; file names are not. A listing of a
//! prefix with delimiter `/` yields child names, and some of them cannot be
//! names in a POSIX directory (`.`, `..`, the empty name produced by `//`, or
//! a component longer than [`NAME_MAX`]). Those are hidden; everything about
//! that decision lives here so it is the same for listings and lookups.

/// Longest file name FUSE passes (`FUSE_NAME_MAX`; longer than most local
/// file systems' 255, so every S3 key component that fits is shown).
pub const NAME_MAX: usize = 1024;

/// Longest S3 key.
pub const MAX_KEY_LEN: usize = 1024;

/// Names of the objects s3mount writes for a moment to learn what the store
/// enforces (see `ObjectStore::probe_conditions`); never shown.
pub const PROBE_NAME_PREFIX: &str = ".s3mount-probe-";

/// The directory, under the mount's prefix, of the locks that decide which
/// mount wins a rename claimed by several (see `fs::claim_lock`); never
/// shown.
pub const CLAIM_DIR_NAME: &str = ".s3mount-claims";

/// Why a listing entry cannot be shown as a file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unrepresentable {
    Empty,
    Dot,
    DotDot,
    TooLong,
    Nul,
    /// One of s3mount's own objects: a short-lived probe, or the claim locks.
    Internal,
}

/// Checks that `name` can be a single path component.
pub fn check_name(name: &str) -> Result<(), Unrepresentable> {
    match name {
        "" => Err(Unrepresentable::Empty),
        "." => Err(Unrepresentable::Dot),
        ".." => Err(Unrepresentable::DotDot),
        _ if name.len() > NAME_MAX => Err(Unrepresentable::TooLong),
        _ if name.contains('\0') => Err(Unrepresentable::Nul),
        _ if name.starts_with(PROBE_NAME_PREFIX) || name == CLAIM_DIR_NAME => {
            Err(Unrepresentable::Internal)
        }
        _ => Ok(()),
    }
}

/// Normalises a mount prefix: no leading slash, exactly one trailing slash
/// unless it is empty (the bucket root).
pub fn normalize_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("{trimmed}/")
    }
}

/// The child name of an object key listed under `dir_prefix`, or `None` when
/// the key is the directory's own marker object (`dir/`).
pub fn file_name<'k>(dir_prefix: &str, key: &'k str) -> Option<&'k str> {
    let rest = key.strip_prefix(dir_prefix)?;
    if rest.is_empty() {
        None
    } else {
        Some(rest)
    }
}

/// The child name of a common prefix (`dir_prefix` + `name/`).
pub fn dir_name<'k>(dir_prefix: &str, common_prefix: &'k str) -> Option<&'k str> {
    common_prefix.strip_prefix(dir_prefix)?.strip_suffix('/')
}

/// The prefix of the directory containing directory `prefix` (`a/b/` ->
/// `a/`, `a/` -> ``); `None` for the bucket root.
pub fn parent_prefix(prefix: &str) -> Option<&str> {
    let trimmed = prefix.strip_suffix('/')?;
    Some(match trimmed.rfind('/') {
        Some(i) => &prefix[..=i],
        None => "",
    })
}

/// The key prefix of the child directory `name` of `dir_prefix`.
pub fn child_dir_prefix(dir_prefix: &str, name: &str) -> String {
    format!("{dir_prefix}{name}/")
}

/// The key of the child file `name` of `dir_prefix`.
pub fn child_key(dir_prefix: &str, name: &str) -> String {
    format!("{dir_prefix}{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_names_that_cannot_be_path_components() {
        assert_eq!(check_name(""), Err(Unrepresentable::Empty));
        assert_eq!(check_name("."), Err(Unrepresentable::Dot));
        assert_eq!(check_name(".."), Err(Unrepresentable::DotDot));
        assert_eq!(check_name(&"x".repeat(1025)), Err(Unrepresentable::TooLong));
        assert_eq!(check_name("a\0b"), Err(Unrepresentable::Nul));
        assert_eq!(check_name(&"x".repeat(1024)), Ok(()));
        assert_eq!(check_name(&"x".repeat(300)), Ok(()));
        assert!(check_name("...").is_ok());
        assert!(check_name("with space %2F+ü").is_ok());
    }

    #[test]
    fn long_name_limit_counts_bytes_not_chars() {
        // 513 two-byte characters are 1026 bytes.
        assert_eq!(check_name(&"ü".repeat(513)), Err(Unrepresentable::TooLong));
        assert!(check_name(&"ü".repeat(512)).is_ok());
    }

    #[test]
    fn normalizes_mount_prefixes() {
        assert_eq!(normalize_prefix(""), "");
        assert_eq!(normalize_prefix("/"), "");
        assert_eq!(normalize_prefix("a"), "a/");
        assert_eq!(normalize_prefix("a/b/"), "a/b/");
        assert_eq!(normalize_prefix("/a/b"), "a/b/");
    }

    #[test]
    fn splits_listing_entries_into_names() {
        assert_eq!(file_name("d/", "d/x.csv"), Some("x.csv"));
        assert_eq!(file_name("d/", "d/"), None);
        assert_eq!(file_name("", "top"), Some("top"));
        assert_eq!(dir_name("d/", "d/sub/"), Some("sub"));
        assert_eq!(dir_name("d/", "d//"), Some(""));
        assert_eq!(dir_name("", "a/"), Some("a"));
        assert_eq!(child_dir_prefix("d/", "s"), "d/s/");
        assert_eq!(child_key("", "f"), "f");
        assert_eq!(parent_prefix("a/b/"), Some("a/"));
        assert_eq!(parent_prefix("a/"), Some(""));
        assert_eq!(parent_prefix(""), None);
    }
}
