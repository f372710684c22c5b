//! s3mount: a FUSE filesystem that shows the objects under an S3 prefix as
//! files and directories. See ARCHITECTURE.md for the codemap.

pub mod blocking;
pub mod byte_sizes;
pub mod catalog;
pub mod cli;
pub mod error;
pub mod fs;
pub mod fuse;
pub mod mount;
pub mod names;
pub mod positioned_read;
pub mod private_dir;
pub mod read;
pub mod service;
pub mod stable_hash;
pub mod store;
pub mod write;

#[cfg(test)]
mod layering;
#[cfg(test)]
mod scratch_dir;
