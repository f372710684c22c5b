//! The command line: options (`args`), the `-o` mount-option form
//! (`mount_options`), `--env-file` (`env_file`) and the mount target
//! (`target`).
//!
//! Every long option can also be given as a mount option (`-o key=value` or
//! `-o flag`, with `_` or `-` between words), which is what fstab and
//! `mount -t fuse.s3mount` pass.

mod args;
mod env_file;
mod mount_options;
mod target;

pub use args::{
    parse_metrics_addr, Args, ChecksumMode, Connection, LogFormat, PosixMetadataSetting,
};
pub use env_file::load_env_file;
pub use mount_options::expand_mount_options;
pub use target::{ObjectUrl, Target};
