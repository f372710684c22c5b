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

/// The I/O runtime of a one-shot subcommand (`doctor`, `catalog`), or the
/// exit code after saying why it cannot start.
pub(crate) fn command_runtime(
    workers: usize,
) -> Result<tokio::runtime::Runtime, std::process::ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("s3mount: error: cannot start the I/O runtime: {e}");
            std::process::ExitCode::from(1)
        })
}
