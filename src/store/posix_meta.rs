//! POSIX attributes kept in an object's user metadata, under the names s3fs
//! and rclone use, so a bucket written by either shows the same times,
//! modes, owners and symlinks in s3mount, and the other way round:
//! `x-amz-meta-mode` (decimal `st_mode`, file type bits included, as s3fs
//! writes it), `x-amz-meta-uid`, `x-amz-meta-gid` and `x-amz-meta-mtime`
//! (seconds, with a fraction of up to nine digits, as rclone and recent
//! s3fs write it).

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The user-metadata names (S3 adds the `x-amz-meta-` prefix).
pub const META_MODE: &str = "mode";
pub const META_UID: &str = "uid";
pub const META_GID: &str = "gid";
pub const META_MTIME: &str = "mtime";

/// The POSIX attributes an object carries; `None` where it carries none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PosixMeta {
    /// The whole `st_mode`: file type and permission bits.
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mtime: Option<SystemTime>,
}

impl PosixMeta {
    /// No attributes: what an object written by a plain S3 client carries.
    pub const NONE: PosixMeta = PosixMeta {
        mode: None,
        uid: None,
        gid: None,
        mtime: None,
    };

    pub fn is_none(&self) -> bool {
        *self == PosixMeta::NONE
    }

    /// Whether the mode says symbolic link (s3fs's form of one: the
    /// object's body is the target).
    pub fn is_symlink(&self) -> bool {
        self.mode.is_some_and(|m| m & libc::S_IFMT == libc::S_IFLNK)
    }

    /// Whether the mode says directory.
    pub fn is_dir(&self) -> bool {
        self.mode.is_some_and(|m| m & libc::S_IFMT == libc::S_IFDIR)
    }

    /// The user-metadata entries that carry these attributes.
    pub fn to_headers(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(mode) = self.mode {
            out.push((META_MODE, mode.to_string()));
        }
        if let Some(uid) = self.uid {
            out.push((META_UID, uid.to_string()));
        }
        if let Some(gid) = self.gid {
            out.push((META_GID, gid.to_string()));
        }
        if let Some(mtime) = self.mtime {
            out.push((META_MTIME, format_time(mtime)));
        }
        out
    }

    /// Adds these attributes to user metadata about to be written.
    pub fn add_to(&self, metadata: &mut HashMap<String, String>) {
        for (name, value) in self.to_headers() {
            metadata.insert(name.to_owned(), value);
        }
    }

    /// The attributes in an object's user metadata (names compared without
    /// case: S3 lowercases them, but not every store does). A value that
    /// does not parse is taken as absent.
    pub fn from_headers<'a>(metadata: impl IntoIterator<Item = (&'a str, &'a str)>) -> PosixMeta {
        let mut meta = PosixMeta::NONE;
        for (name, value) in metadata {
            let value = value.trim();
            if name.eq_ignore_ascii_case(META_MODE) {
                meta.mode = parse_mode(value);
            } else if name.eq_ignore_ascii_case(META_UID) {
                meta.uid = value.parse().ok();
            } else if name.eq_ignore_ascii_case(META_GID) {
                meta.gid = value.parse().ok();
            } else if name.eq_ignore_ascii_case(META_MTIME) {
                meta.mtime = parse_time(value);
            }
        }
        meta
    }
}

/// A mode as s3fs writes it (decimal `st_mode`, at most 0o177777); rclone's
/// metadata mode is octal (`100644`), which read as decimal is too large
/// for a mode or names no file type.
fn parse_mode(value: &str) -> Option<u32> {
    let known_type = |m: u32| {
        matches!(
            m & libc::S_IFMT,
            libc::S_IFREG | libc::S_IFDIR | libc::S_IFLNK
        )
    };
    let decimal = value.parse::<u32>().ok();
    match decimal {
        Some(m) if m <= 0o177777 && known_type(m) => Some(m),
        _ => match u32::from_str_radix(value, 8)
            .ok()
            .filter(|&m| known_type(m))
        {
            Some(m) => Some(m),
            // A bare permission (`644` is not written by either tool, but
            // a hand-made header may be): a regular file with those bits.
            None => decimal.filter(|&m| m <= 0o7777).map(|m| m | libc::S_IFREG),
        },
    }
}

/// `seconds[.fraction]` since the epoch; before it, a negative number.
fn format_time(t: SystemTime) -> String {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) if d.subsec_nanos() == 0 => d.as_secs().to_string(),
        Ok(d) => format!("{}.{:09}", d.as_secs(), d.subsec_nanos()),
        Err(before) => {
            let d = before.duration();
            format!("-{}.{:09}", d.as_secs(), d.subsec_nanos())
        }
    }
}

fn parse_time(value: &str) -> Option<SystemTime> {
    let (negative, digits) = match value.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, value),
    };
    let (secs, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let secs: u64 = secs.parse().ok()?;
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nanos: u32 = format!("{:0<9}", &fraction[..fraction.len().min(9)])
        .parse()
        .ok()?;
    let d = Duration::new(secs, nanos);
    match negative {
        false => UNIX_EPOCH.checked_add(d),
        true => UNIX_EPOCH.checked_sub(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> PosixMeta {
        PosixMeta::from_headers(pairs.iter().copied())
    }

    #[test]
    fn reads_what_s3fs_and_rclone_write() {
        let s3fs = parse(&[
            ("mode", "33261"),
            ("uid", "1000"),
            ("gid", "100"),
            ("mtime", "1577934245"),
        ]);
        assert_eq!(s3fs.mode, Some(0o100755));
        assert_eq!(s3fs.uid, Some(1000));
        assert_eq!(s3fs.gid, Some(100));
        assert_eq!(
            s3fs.mtime,
            Some(UNIX_EPOCH + Duration::from_secs(1577934245))
        );
        let rclone = parse(&[("Mtime", "1577934245.123456789"), ("mode", "100644")]);
        assert_eq!(
            rclone.mtime,
            Some(UNIX_EPOCH + Duration::new(1577934245, 123456789))
        );
        assert_eq!(rclone.mode, Some(0o100644));
        let link = parse(&[("mode", &(libc::S_IFLNK | 0o777).to_string())]);
        assert!(link.is_symlink());
        assert_eq!(
            parse(&[("mtime", "12.5")]).mtime,
            Some(UNIX_EPOCH + Duration::from_millis(12_500))
        );
    }

    #[test]
    fn what_it_writes_reads_back_the_same() {
        for meta in [
            PosixMeta {
                mode: Some(0o100600),
                uid: Some(0),
                gid: Some(65534),
                mtime: Some(UNIX_EPOCH + Duration::new(1_600_000_000, 1)),
            },
            PosixMeta {
                mtime: Some(UNIX_EPOCH - Duration::new(5, 500)),
                ..PosixMeta::NONE
            },
            PosixMeta::NONE,
        ] {
            let headers = meta.to_headers();
            let back = PosixMeta::from_headers(headers.iter().map(|(k, v)| (*k, v.as_str())));
            assert_eq!(back, meta);
        }
    }

    #[test]
    fn garbage_is_taken_as_absent() {
        let meta = parse(&[("mode", "rw-r--r--"), ("uid", "-1"), ("mtime", "yesterday")]);
        assert_eq!(meta, PosixMeta::NONE);
        assert_eq!(parse(&[("mtime", "1.5x")]).mtime, None);
    }
}
