//! The man page and shell completions, generated from the command-line
//! definition so they cannot drift from it. Used by the package build:
//! `s3mount __generate man DIR` and `s3mount __generate completions DIR`.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Args;

/// The hidden subcommand.
pub const COMMAND: &str = "__generate";

pub fn run(args: &[OsString]) -> ExitCode {
    let what = args.first().and_then(|a| a.to_str());
    let Some(dir) = args.get(1).map(PathBuf::from) else {
        eprintln!("usage: s3mount {COMMAND} man|completions DIR");
        return ExitCode::from(2);
    };
    let result = match what {
        Some("man") => man_page(&dir),
        Some("completions") => completions(&dir),
        _ => {
            eprintln!("usage: s3mount {COMMAND} man|completions DIR");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("s3mount: error: cannot write into {}: {e}", dir.display());
            ExitCode::from(1)
        }
    }
}

/// Sections the options list cannot carry: subcommands, fstab, files.
const EXTRA_SECTIONS: &str = r#".SH COMMANDS
.TP
\fBs3mount refresh\fR \fIPATH\fR...
List the directories at PATH (inside a running mount) from S3 again now.
.TP
\fBs3mount doctor\fR \fIBUCKET\fR[/\fIPREFIX\fR] [\fB\-\-json\fR]
Check credentials and permissions, measure time to first byte, ranged GET
throughput with 1, 8 and 32 connections and LIST latency, describe the
object sizes under the prefix, and print advice drawn from the figures.
.SH MOUNT OPTIONS
Every long option can be given in mount(8) form: \fB\-o\fR \fIkey\fR=\fIvalue\fR
or \fB\-o\fR \fIflag\fR, with \fB_\fR or \fB\-\fR between words. mount(8)'s
generic options (\fB_netdev\fR, \fBnofail\fR, \fBnoauto\fR, \fBx\-systemd.*\fR,
\fBrw\fR, \fBnosuid\fR, \fBnodev\fR, ...) are accepted and ignored; \fBro\fR
means \fB\-\-read\-only\fR.
.PP
An fstab line:
.PP
.nf
my\-bucket/data /mnt/data fuse.s3mount _netdev,nofail,allow_other,env_file=/etc/s3mount/data.env,metadata_ttl=60 0 0
.fi
.SH FILES
.TP
\fI/sbin/mount.fuse.s3mount\fR
The mount(8) helper (a link to s3mount).
.TP
\fI/lib/systemd/system/s3mount@.service\fR
systemd unit template; the instance reads \fI/etc/s3mount/INSTANCE.env\fR.
.TP
\fI$XDG_CACHE_HOME/s3mount\fR, \fI~/.cache/s3mount\fR, \fI/var/cache/s3mount\fR
Listing catalog and upload spool (see \fB\-\-cache\-dir\fR).
.SH ENVIRONMENT
\fBAWS_ACCESS_KEY_ID\fR, \fBAWS_SECRET_ACCESS_KEY\fR, \fBAWS_SESSION_TOKEN\fR,
\fBAWS_PROFILE\fR, \fBAWS_REGION\fR, \fBAWS_ENDPOINT_URL\fR and the rest of the
standard AWS configuration; \fBRUST_LOG\fR for log filtering by module;
\fBNOTIFY_SOCKET\fR for systemd's notify protocol.
.SH SEE ALSO
mount(8), fstab(5), fusermount3(1), systemd.service(5)
"#;

fn man_page(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let man = clap_mangen::Man::new(Args::command());
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    out.write_all(EXTRA_SECTIONS.as_bytes())?;
    man.render_version_section(&mut out)?;
    std::fs::write(dir.join("s3mount.1"), out)
}

fn completions(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut cmd = Args::command();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, "s3mount", dir)?;
    }
    Ok(())
}
