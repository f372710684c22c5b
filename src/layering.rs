//! The layering ARCHITECTURE.md states, checked: each top-level module may
//! name (`crate::x`) only the modules listed for it here, so a lower layer
//! that starts to import a higher one fails `cargo test --lib` at once.
//! Comments are ignored; `super::` stays inside a module and is not a layer
//! crossing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Modules every layer may use: pure rules and small facilities that know
/// nothing of S3 or the filesystem.
const LEAVES: &[&str] = &[
    "blocking",
    "byte_sizes",
    "names",
    "positioned_read",
    "private_dir",
    "scratch_dir",
    "stable_hash",
];

/// What each layer may import, lowest first. A module missing here fails
/// the check, so a new top-level module must be placed deliberately.
const ALLOWED: &[(&str, &[&str])] = &[
    ("blocking", &[]),
    ("byte_sizes", &[]),
    ("names", &[]),
    ("positioned_read", &[]),
    ("private_dir", &[]),
    ("scratch_dir", &[]),
    ("stable_hash", &[]),
    ("store", &[]),
    // The errors of filesystem operations, shared by the layers between the
    // store and the FUSE adapter, with the one mapping to errno.
    ("error", &["store"]),
    ("catalog", &["store", "error"]),
    ("read", &["store", "error"]),
    // The write path reads the versions it changes, and keys its open files
    // by the catalog's inode numbers.
    ("write", &["store", "error", "read", "catalog"]),
    ("fs", &["store", "error", "read", "write", "catalog"]),
    ("fuse", &["store", "error", "read", "fs"]),
    // The command line, mounting and the operator's tools sit on top and may
    // use everything below (and each other).
    ("cli", &["*"]),
    ("mount", &["*"]),
    ("service", &["*"]),
    ("layering", &["*"]),
    ("lib", &["*"]),
    ("main", &["*"]),
];

fn allowed(layer: &str) -> Option<BTreeSet<&'static str>> {
    let (_, deps) = ALLOWED.iter().find(|(name, _)| *name == layer)?;
    Some(deps.iter().chain(LEAVES).copied().collect())
}

/// The top-level module a source file belongs to: `src/x.rs` and
/// `src/x/...` are `x`.
fn layer_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).expect("file under src");
    let first = relative.components().next().expect("non-empty path");
    let name = first.as_os_str().to_string_lossy();
    name.trim_end_matches(".rs").to_owned()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a file's code names as `crate::x`.
fn crate_paths(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
            rest = after;
        }
    }
    found
}

#[test]
fn no_layer_imports_one_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut wrong = Vec::new();
    for file in &files {
        let layer = layer_of(&src, file);
        let Some(may) = allowed(&layer) else {
            wrong.push(format!(
                "{}: module `{layer}` has no place in layering.rs's ALLOWED table",
                file.display()
            ));
            continue;
        };
        if may.contains("*") {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("read source");
        for used in crate_paths(&text) {
            if used != layer && !may.contains(used.as_str()) {
                wrong.push(format!(
                    "{}: `{layer}` uses `crate::{used}`, which it may not (see ARCHITECTURE.md, Layers)",
                    file.display()
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

#[test]
fn the_check_sees_crate_paths_and_skips_comments() {
    let text = "use crate::store::Body;\n// crate::mount is only mentioned\nlet x = crate::names::f(); crate::read::g();";
    let found: Vec<String> = crate_paths(text).into_iter().collect();
    assert_eq!(found, ["names", "read", "store"]);
}
