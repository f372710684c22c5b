//! Running s3mount as a service: everything around the filesystem that an
//! operator touches. Background mode ([`daemon`]), mount(2) and the
//! auto-unmount watchdog ([`kernel_mount`]), the mount(8) helper form
//! ([`mount_helper`]), systemd notify ([`notify`]), Prometheus metrics and
//! the summary line ([`metrics`]), `s3mount doctor` ([`doctor`]),
//! `s3mount refresh` ([`refresh`]) and the man page and completions
//! ([`generate`]).

pub mod catalog_command;
pub mod daemon;
pub mod doctor;
pub mod generate;
pub mod kernel_mount;
pub mod metrics;
pub mod mount_helper;
pub mod notify;
pub mod refresh;
