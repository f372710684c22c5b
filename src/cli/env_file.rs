//! `--env-file`: KEY=VALUE lines (credentials, endpoint) loaded into the
//! environment before the command line is parsed, read the way systemd's
//! EnvironmentFile= reads them so one file serves a unit and fstab alike.

use std::ffi::OsString;
use std::path::PathBuf;

/// Loads `--env-file` (if the command line has one) into the environment.
/// Runs before the command line is parsed, so options that default from the
/// environment (`--endpoint-url` from `AWS_ENDPOINT_URL`) see the file.
pub fn load_env_file(args: &[OsString]) -> Result<(), String> {
    let mut path = None;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let text = arg.to_string_lossy();
        if text == "--env-file" {
            path = iter.next().map(PathBuf::from);
        } else if let Some(p) = text.strip_prefix("--env-file=") {
            path = Some(PathBuf::from(p));
        }
    }
    let Some(path) = path else {
        return Ok(());
    };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "cannot read --env-file {}: {e}; give a readable file of KEY=VALUE lines",
            path.display()
        )
    })?;
    // Logging is not set up yet; this goes straight to stderr.
    if let Some(warning) = env_file_exposure(&path) {
        eprintln!("s3mount: warning: {warning}");
    }
    for (key, value) in parse_env_file(&text).map_err(|line| {
        format!(
            "--env-file {} line {line} is not KEY=VALUE (no `export`, as for systemd's EnvironmentFile=); fix it or comment it out with #",
            path.display()
        )
    })? {
        // Single-threaded still: nothing else reads the environment yet.
        std::env::set_var(key, value);
    }
    Ok(())
}

/// A warning when `path`, which holds credentials, can be read by users
/// other than its owner.
fn env_file_exposure(path: &std::path::Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o077 != 0).then(|| {
        format!(
            "--env-file {} can be read by other users (mode {:o}) and holds credentials; run `chmod 600 {}`",
            path.display(),
            mode & 0o777,
            path.display()
        )
    })
}

/// `KEY=VALUE` lines as systemd's EnvironmentFile= reads them: blank lines
/// and `#`/`;` comments skipped, optional surrounding quotes. A shell-style
/// `export` line is refused: systemd would ignore it, so the same file would
/// mean different things to a unit and to fstab. Returns the number of the
/// first bad line on error.
fn parse_env_file(text: &str) -> Result<Vec<(String, String)>, usize> {
    let mut vars = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let (key, value) = line.split_once('=').ok_or(i + 1)?;
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(i + 1);
        }
        let value = value.trim();
        let value = [('"', '"'), ('\'', '\'')]
            .iter()
            .find_map(|(open, close)| {
                value
                    .strip_prefix(*open)
                    .and_then(|v| v.strip_suffix(*close))
            })
            .unwrap_or(value);
        vars.push((key.to_owned(), value.to_owned()));
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_env_file_others_can_read_is_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!("s3mount-envfile-{}", std::process::id()));
        std::fs::write(&path, "AWS_SECRET_ACCESS_KEY=x\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(env_file_exposure(&path).unwrap().contains("chmod 600"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(env_file_exposure(&path), None);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn parses_env_files_like_systemd() {
        let vars = parse_env_file(
            "# credentials\nAWS_ACCESS_KEY_ID=GK1\n\nAWS_SECRET_ACCESS_KEY=\"s e\"\nS3MOUNT_OPTIONS='-o x=1'\n",
        )
        .unwrap();
        assert_eq!(
            vars,
            vec![
                ("AWS_ACCESS_KEY_ID".to_owned(), "GK1".to_owned()),
                ("AWS_SECRET_ACCESS_KEY".to_owned(), "s e".to_owned()),
                ("S3MOUNT_OPTIONS".to_owned(), "-o x=1".to_owned()),
            ]
        );
        assert_eq!(parse_env_file("A=1\nnot a line\n"), Err(2));
        assert_eq!(parse_env_file("BAD KEY=1\n"), Err(1));
        assert_eq!(parse_env_file("export A=1\n"), Err(1));
    }
}
