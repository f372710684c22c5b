use std::process::ExitCode;

use clap::Parser;
use s3mount::{cli, daemon, mount, refresh};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    limit_allocator_arenas();
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == "refresh") {
        return refresh::run(&argv[2..]);
    }
    let args = match cli::expand_mount_options(argv) {
        Ok(expanded) => cli::Args::parse_from(expanded),
        Err(e) => {
            eprintln!("s3mount: error: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&args);
    if !args.foreground && !daemon::is_child() {
        return daemon::spawn_and_wait();
    }
    match mount::run(args, daemon::notify_ready) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("s3mount: error: {e}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(args: &cli::Args) {
    let filter = match (&args.log_level, std::env::var("RUST_LOG")) {
        (Some(spec), _) if spec.contains('=') || spec.contains(',') => spec.clone(),
        (Some(level), _) => format!("warn,s3mount={level}"),
        (None, Ok(spec)) if !spec.is_empty() => spec,
        _ => {
            let level = match args.verbose {
                0 => "warn",
                1 => "info",
                2 => "debug",
                _ => "trace",
            };
            format!("warn,s3mount={level}")
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(EnvFilter::new(filter))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Fetched blocks are allocated on I/O threads and freed on whichever thread
/// evicts them. With glibc's default of one arena per thread (up to 8 per
/// core), memory freed in one arena cannot serve another, and the process
/// holds far more than the memory budget. Two arenas keep it close.
fn limit_allocator_arenas() {
    // SAFETY: mallopt only tunes the allocator; it runs before any other
    // thread exists and takes plain integers.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
