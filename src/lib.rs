//! s3mount: a FUSE filesystem that shows the objects under an S3 prefix as
//! files and directories. See ARCHITECTURE.md for the codemap.

pub mod catalog;
pub mod cli;
pub mod daemon;
pub mod doctor;
pub mod error;
pub mod fs;
pub mod fuse;
pub mod generate;
pub mod kernel_mount;
pub mod metrics;
pub mod mount;
pub mod mount_helper;
pub mod names;
pub mod notify;
pub mod read;
pub mod refresh;
pub mod store;
pub mod upload;
