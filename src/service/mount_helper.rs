//! The mount(8) helper: `mount -t fuse.s3mount SOURCE DIR -o OPTS` and fstab
//! lines run `/sbin/mount.fuse.s3mount SOURCE DIR [-sfnv] [-o OPTS]`, which
//! is a link to the s3mount binary. This turns that argument form into the
//! ordinary command line (always in background mode, since mount(8) waits
//! for the helper to exit and expects the mount to be live when it does).

use std::ffi::OsString;
use std::path::Path;

/// Names the binary answers to as a mount helper.
const HELPER_NAMES: [&str; 2] = ["mount.fuse.s3mount", "mount.s3mount"];

/// What a helper invocation asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum HelperCall {
    /// Mount with this s3mount command line.
    Mount(Vec<OsString>),
    /// `-f`: mount(8)'s "fake" mode; do everything but mount.
    Fake,
}

/// Whether the binary was started as a mount helper (by its name).
pub fn invoked_as_helper(argv0: &OsString) -> bool {
    Path::new(argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| HELPER_NAMES.contains(&n))
}

/// Translates a helper command line into s3mount's own.
pub fn translate(argv: &[OsString]) -> Result<HelperCall, String> {
    let mut positional = Vec::new();
    let mut out: Vec<OsString> = vec!["s3mount".into()];
    let mut fake = false;
    let mut iter = argv.iter().skip(1);
    while let Some(arg) = iter.next() {
        let text = arg.to_string_lossy();
        match text.as_ref() {
            "-o" => {
                let value = iter
                    .next()
                    .ok_or("-o needs a value, such as -o endpoint_url=http://host:3900")?;
                out.push("-o".into());
                out.push(value.clone());
            }
            // Type and namespace are mount(8)'s business, not ours.
            "-t" | "-N" => {
                iter.next();
            }
            flags if flags.starts_with('-') && flags.len() > 1 && !flags.starts_with("--") => {
                for flag in flags[1..].chars() {
                    match flag {
                        'f' => fake = true,
                        'v' => out.push("-v".into()),
                        // -s sloppy, -n no mtab: nothing to do.
                        's' | 'n' => {}
                        other => {
                            return Err(format!(
                                "mount helper got an unknown flag -{other}; expected SOURCE DIR [-sfnv] [-o OPTIONS]"
                            ))
                        }
                    }
                }
            }
            _ => positional.push(arg.clone()),
        }
    }
    if positional.len() != 2 {
        return Err(
            "mount helper expects SOURCE DIR [-o OPTIONS], e.g. mount -t fuse.s3mount bucket/prefix /mnt"
                .into(),
        );
    }
    if fake {
        return Ok(HelperCall::Fake);
    }
    // Sources written as `s3mount#bucket/prefix` (the old fuse form) work too.
    let source = positional[0].to_string_lossy();
    let source = source
        .strip_prefix("s3mount#")
        .unwrap_or(&source)
        .to_owned();
    out.insert(1, source.into());
    out.insert(2, positional[1].clone());
    Ok(HelperCall::Mount(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn recognises_helper_names() {
        assert!(invoked_as_helper(&"/sbin/mount.fuse.s3mount".into()));
        assert!(invoked_as_helper(&"mount.s3mount".into()));
        assert!(!invoked_as_helper(&"/usr/bin/s3mount".into()));
    }

    #[test]
    fn translates_mount_command_lines() {
        let call = translate(&os(&[
            "/sbin/mount.fuse.s3mount",
            "bucket/prefix",
            "/mnt/data",
            "-n",
            "-o",
            "rw,_netdev,endpoint_url=http://h:3900,allow_other",
        ]))
        .unwrap();
        assert_eq!(
            call,
            HelperCall::Mount(os(&[
                "s3mount",
                "bucket/prefix",
                "/mnt/data",
                "-o",
                "rw,_netdev,endpoint_url=http://h:3900,allow_other",
            ]))
        );
        let call = translate(&os(&[
            "mount.fuse.s3mount",
            "s3mount#b",
            "/m",
            "-sv",
            "-t",
            "fuse.s3mount",
        ]))
        .unwrap();
        assert_eq!(call, HelperCall::Mount(os(&["s3mount", "b", "/m", "-v"])));
    }

    #[test]
    fn fake_mode_and_bad_calls() {
        assert_eq!(
            translate(&os(&["mount.s3mount", "b", "/m", "-f"])).unwrap(),
            HelperCall::Fake
        );
        assert!(translate(&os(&["mount.s3mount", "b"])).is_err());
        assert!(translate(&os(&["mount.s3mount", "b", "/m", "-x"])).is_err());
        assert!(translate(&os(&["mount.s3mount", "b", "/m", "-o"])).is_err());
    }
}
