//! The mount(8) option form: `-o key=value,flag` rewritten into long
//! options, so fstab, `mount -t fuse.s3mount` and the command line share one
//! parser. mount(8)'s generic options are accepted and ignored where they
//! mean nothing to a FUSE daemon.

use std::ffi::OsString;

/// Generic mount(8) options that mean nothing to this daemon.
fn is_ignored_mount_option(opt: &str) -> bool {
    matches!(
        opt,
        "defaults"
            | "auto"
            | "noauto"
            | "user"
            | "nouser"
            | "users"
            | "_netdev"
            | "nofail"
            | "rw"
            | "suid"
            | "nosuid"
            | "dev"
            | "nodev"
            | "exec"
            | "noexec"
            | "atime"
            | "noatime"
            | "relatime"
            | "norelatime"
            | "strictatime"
            | "async"
            | "dirsync"
            | "sync"
            | "nodiratime"
            | "diratime"
            | "lazytime"
            | "silent"
            | "loud"
            | "owner"
            | "noowner"
            | "group"
            | "nogroup"
            | "loop"
    ) || opt.starts_with("x-")
        || opt.starts_with("comment=")
        || opt.starts_with("user=")
}

/// Rewrites `-o a=b,c` into `--a=b --c`, so every option has one parser.
pub fn expand_mount_options(args: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let mut out = Vec::with_capacity(args.len());
    let mut iter = args.into_iter();
    if let Some(program) = iter.next() {
        out.push(program);
    }
    while let Some(arg) = iter.next() {
        let text = arg.to_string_lossy().into_owned();
        let list = if text == "-o" {
            match iter.next() {
                Some(v) => v.to_string_lossy().into_owned(),
                None => {
                    return Err("-o needs a value, such as -o allow_other,metadata_ttl=60".into())
                }
            }
        } else if let Some(rest) = text
            .strip_prefix("-o")
            .filter(|r| !r.is_empty() && !text.starts_with("--"))
        {
            rest.to_owned()
        } else {
            out.push(arg);
            continue;
        };
        for opt in list.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            if is_ignored_mount_option(opt) {
                continue;
            }
            if opt == "ro" {
                out.push("--read-only".into());
                continue;
            }
            let (key, value) = match opt.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (opt, None),
            };
            let key = key.replace('_', "-");
            out.push(match value {
                Some(v) => format!("--{key}={v}").into(),
                None => format!("--{key}").into(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Args;
    use clap::Parser;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn expands_mount_options_into_long_options() {
        let out = expand_mount_options(os(&[
            "s3mount",
            "b",
            "/m",
            "-o",
            "allow_other,metadata_ttl=5,_netdev,x-systemd.automount,ro",
            "-oendpoint_url=http://h:1",
        ]))
        .unwrap();
        assert_eq!(
            out,
            os(&[
                "s3mount",
                "b",
                "/m",
                "--allow-other",
                "--metadata-ttl=5",
                "--read-only",
                "--endpoint-url=http://h:1"
            ])
        );
    }

    #[test]
    fn mount_options_parse_like_long_options() {
        let args = expand_mount_options(os(&[
            "s3mount",
            "b/p",
            "/m",
            "-o",
            "file_mode=600,uid=7,force_path_style",
        ]))
        .unwrap();
        let parsed = Args::try_parse_from(args).unwrap();
        assert_eq!(parsed.file_mode, 0o600);
        assert_eq!(parsed.uid, Some(7));
        assert!(parsed.connection.force_path_style);
    }

    #[test]
    fn unknown_mount_option_is_an_error() {
        let args =
            expand_mount_options(os(&["s3mount", "b", "/m", "-o", "bogus_thing=1"])).unwrap();
        assert!(Args::try_parse_from(args).is_err());
        assert!(expand_mount_options(os(&["s3mount", "b", "/m", "-o"])).is_err());
    }
}
