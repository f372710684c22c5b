//! Reading a whole buffer at a file offset, however many `pread`s it takes:
//! the disk cache's maps and data files and the upload spool read so.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// Reads into `buf` from `at` until it is full or the file ends; returns
/// how much it read (less than `buf` only at the end of the file).
pub fn read_full_at(file: &File, buf: &mut [u8], at: u64) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], at + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}
