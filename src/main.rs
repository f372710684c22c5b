//! The `s3mount` binary: dispatches subcommands, turns mount(8) helper
//! calls and `-o` options into the ordinary command line, sets up logging,
//! then mounts in the foreground or as a daemon.

use std::process::ExitCode;

use clap::Parser;
use s3mount::service::{
    catalog_command, daemon, doctor, generate, kernel_mount, mount_helper, notify, refresh,
};
use s3mount::{cli, mount};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    limit_allocator_arenas();
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match argv.get(1).and_then(|a| a.to_str()) {
        Some("refresh") => return refresh::run(&argv[2..]),
        Some("doctor") => return doctor::run(&argv[1..]),
        Some("catalog") => return catalog_command::run(&argv[1..]),
        Some(kernel_mount::WATCHDOG_COMMAND) => return kernel_mount::run_watchdog(&argv[2..]),
        Some(generate::COMMAND) => return generate::run(&argv[2..]),
        _ => {}
    }
    if argv.first().is_some_and(mount_helper::invoked_as_helper) {
        match mount_helper::translate(&argv) {
            Ok(mount_helper::HelperCall::Mount(translated)) => argv = translated,
            Ok(mount_helper::HelperCall::Fake) => return ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("s3mount: error: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let expanded = match cli::expand_mount_options(argv) {
        Ok(expanded) => expanded,
        Err(e) => {
            eprintln!("s3mount: error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = cli::load_env_file(&expanded) {
        eprintln!("s3mount: error: {e}");
        return ExitCode::from(2);
    }
    let args = cli::Args::parse_from(&expanded);
    if let Err(e) = init_logging(&args) {
        eprintln!("s3mount: error: {e}");
        return ExitCode::from(1);
    }
    if !args.foreground && !daemon::is_child() {
        // The child gets the command line as parsed here, so a mount(8)
        // helper call (argv translated above) means the same to it.
        return daemon::spawn_and_wait(&expanded[1..]);
    }
    match mount::run(args, daemon::notify_ready) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("s3mount: error: {e}");
            notify::send(&format!("STATUS=failed: {e}"));
            ExitCode::from(1)
        }
    }
}

/// Logs go to stderr (journald captures it), or with `--log-file` to that
/// file, which also keeps the log of a background daemon after it has let
/// go of the caller's terminal. `--log-format json` writes one object a line.
fn init_logging(args: &cli::Args) -> Result<(), String> {
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
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
    let (writer, ansi) = match &args.log_file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| {
                    format!(
                        "cannot open --log-file {}: {e}; give a writable file path",
                        path.display()
                    )
                })?;
            (BoxMakeWriter::new(std::sync::Mutex::new(file)), false)
        }
        None => (
            BoxMakeWriter::new(std::io::stderr),
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
        ),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(writer);
    match args.log_format {
        cli::LogFormat::Text => builder.with_ansi(ansi).init(),
        cli::LogFormat::Json => builder.json().with_ansi(false).init(),
    }
    Ok(())
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
