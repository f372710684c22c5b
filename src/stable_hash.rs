//! The one hash whose values are kept on disk or across mounts: inode
//! numbers, the catalog database's file name, the disk cache's file names.

/// A stable 64-bit FNV-1a hash: names database and cache files and numbers
/// inodes, so it must not change between runs (unlike the std hasher).
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_hash_does_not_change() {
        assert_eq!(stable_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
