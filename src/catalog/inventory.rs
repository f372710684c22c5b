//! S3 Inventory reports as a source of listings: the keys of a report's
//! data files (as AWS documents them: a `manifest.json` naming the source
//! bucket, the format, the column schema and the gzip CSV or Parquet files) turned into the
//! directories a mount would list, then written as a catalog snapshot.
//!
//! Reports are not sorted by directory, and may hold hundreds of millions
//! of keys, so the rows go into a scratch SQLite file and are read back
//! ordered by directory and name: memory stays flat whatever the size.
//! The names are shown as a listing would show them: a key with a component
//! that cannot be a file name is hidden below that component, a marker
//! object (`dir/`) makes its directory exist, and a directory hides a file
//! of the same name.

use std::io::{BufRead, Write};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection};

use super::snapshot::{SnapshotCounts, SnapshotWriter};
use super::{Entry, EntryKind};
use crate::names;

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("the inventory manifest is not what AWS documents: {0}")]
    Manifest(String),
    #[error("the inventory's format is {0}; s3mount reads CSV and Parquet inventories (set the inventory's output format to one of them)")]
    Format(String),
    #[error("inventory data file {file}, line {line}: {why}")]
    Row {
        file: String,
        line: u64,
        why: String,
    },
    #[error("cannot keep the inventory's rows in {path}: {why}")]
    Scratch { path: String, why: String },
    #[error("cannot write the snapshot: {0}")]
    Write(#[from] std::io::Error),
}

/// What a `manifest.json` says.
#[derive(Debug, Clone)]
pub struct InventoryManifest {
    pub source_bucket: String,
    /// The bucket holding the data files (from the destination ARN).
    pub destination_bucket: String,
    pub created: SystemTime,
    pub file_format: String,
    /// Column names, in order.
    pub schema: Vec<String>,
    /// Keys of the data files in the destination bucket.
    pub files: Vec<String>,
}

impl InventoryManifest {
    pub fn parse(json: &[u8]) -> Result<InventoryManifest, InventoryError> {
        let bad = |what: &str| InventoryError::Manifest(what.to_owned());
        let v: serde_json::Value =
            serde_json::from_slice(json).map_err(|e| InventoryError::Manifest(e.to_string()))?;
        let text = |field: &str| -> Result<String, InventoryError> {
            v.get(field)
                .and_then(|f| f.as_str())
                .map(str::to_owned)
                .ok_or_else(|| bad(&format!("no {field}")))
        };
        let destination = text("destinationBucket")?;
        let destination_bucket = destination
            .strip_prefix("arn:aws:s3:::")
            .unwrap_or(&destination)
            .to_owned();
        let created_ms: u64 = text("creationTimestamp")?
            .parse()
            .map_err(|_| bad("creationTimestamp is not milliseconds"))?;
        let schema = text("fileSchema")?
            .split(',')
            .map(|c| c.trim().to_owned())
            .collect();
        let files = v
            .get("files")
            .and_then(|f| f.as_array())
            .ok_or_else(|| bad("no files"))?
            .iter()
            .map(|f| {
                f.get("key")
                    .and_then(|k| k.as_str())
                    .map(str::to_owned)
                    .ok_or_else(|| bad("a file without a key"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(InventoryManifest {
            source_bucket: text("sourceBucket")?,
            destination_bucket,
            created: UNIX_EPOCH + Duration::from_millis(created_ms),
            file_format: text("fileFormat")?,
            schema,
            files,
        })
    }
}

/// Where the columns s3mount needs are in a row.
#[derive(Debug, Clone, Copy)]
struct Columns {
    key: usize,
    size: Option<usize>,
    modified: Option<usize>,
    etag: Option<usize>,
    is_latest: Option<usize>,
    is_delete_marker: Option<usize>,
}

/// One row of a report, whatever its format.
#[derive(Debug, Default)]
struct InventoryRow {
    key: Option<String>,
    size: Option<u64>,
    modified: Option<SystemTime>,
    etag: Option<String>,
    old_version: bool,
    delete_marker: bool,
}

/// The directories an inventory's keys make, gathered in a scratch file.
pub struct InventoryTree {
    conn: Connection,
    prefix: String,
    columns: Columns,
    created: SystemTime,
    keys: u64,
}

impl InventoryTree {
    /// A tree of the keys under `prefix` (normalised: "" or ending in `/`),
    /// kept in a new SQLite file at `scratch`.
    pub fn new(
        scratch: &Path,
        prefix: &str,
        manifest: &InventoryManifest,
    ) -> Result<InventoryTree, InventoryError> {
        // Parquet files name their columns themselves; a CSV row's order is
        // the manifest's schema.
        let columns = match manifest.file_format.to_ascii_uppercase().as_str() {
            "CSV" => {
                let at = |name: &str| manifest.schema.iter().position(|c| c == name);
                // Without a size and an ETag a file could not be opened
                // right (its reads are pinned to the ETag).
                let needed = |name: &str| {
                    at(name).ok_or_else(|| {
                        InventoryError::Manifest(format!(
                            "fileSchema has no {name}; include Size, LastModifiedDate and ETag in the inventory's fields"
                        ))
                    })
                };
                Columns {
                    key: needed("Key")?,
                    size: Some(needed("Size")?),
                    modified: at("LastModifiedDate"),
                    etag: Some(needed("ETag")?),
                    is_latest: at("IsLatest"),
                    is_delete_marker: at("IsDeleteMarker"),
                }
            }
            "PARQUET" => Columns {
                key: 0,
                size: None,
                modified: None,
                etag: None,
                is_latest: None,
                is_delete_marker: None,
            },
            _ => return Err(InventoryError::Format(manifest.file_format.clone())),
        };
        let scratch_err = |e: rusqlite::Error| InventoryError::Scratch {
            path: scratch.display().to_string(),
            why: e.to_string(),
        };
        let _ = std::fs::remove_file(scratch);
        let conn = Connection::open(scratch).map_err(scratch_err)?;
        // It holds every key of the report: this user's only.
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(scratch, std::fs::Permissions::from_mode(0o600));
        }
        conn.execute_batch(
            "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;
             CREATE TABLE dirs (dir TEXT PRIMARY KEY) WITHOUT ROWID;
             CREATE TABLE rows (dir TEXT NOT NULL, name TEXT NOT NULL, is_dir INTEGER NOT NULL,
                 size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, etag TEXT NOT NULL,
                 PRIMARY KEY (dir, name, is_dir)) WITHOUT ROWID;
             INSERT INTO dirs VALUES ('');
             BEGIN;",
        )
        .map_err(scratch_err)?;
        Ok(InventoryTree {
            conn,
            prefix: prefix.to_owned(),
            columns,
            created: manifest.created,
            keys: 0,
        })
    }

    /// Keys of the source under the prefix taken so far.
    pub fn keys(&self) -> u64 {
        self.keys
    }

    /// Adds the rows of one Parquet data file, by the column names AWS
    /// gives them (`key`, `size`, `last_modified_date`, `e_tag`,
    /// `is_latest`, `is_delete_marker`); keys are not URL-encoded there.
    pub fn add_parquet(&mut self, file: &str, path: &Path) -> Result<(), InventoryError> {
        use parquet::file::reader::SerializedFileReader;
        use parquet::record::Field;
        let row_err = |line: u64, why: String| InventoryError::Row {
            file: file.to_owned(),
            line,
            why,
        };
        let opened = std::fs::File::open(path).map_err(|e| row_err(0, e.to_string()))?;
        let reader =
            SerializedFileReader::try_from(opened).map_err(|e| row_err(0, e.to_string()))?;
        for (n, row) in reader.into_iter().enumerate() {
            let n = n as u64 + 1;
            let row = row.map_err(|e| row_err(n, e.to_string()))?;
            let mut r = InventoryRow::default();
            for (name, field) in row.get_column_iter() {
                match (name.as_str(), field) {
                    ("key", Field::Str(k)) => r.key = Some(k.clone()),
                    ("size", Field::Long(s)) => r.size = Some((*s).max(0) as u64),
                    ("last_modified_date", Field::TimestampMillis(ms)) => {
                        r.modified = Some(UNIX_EPOCH + Duration::from_millis((*ms).max(0) as u64))
                    }
                    ("last_modified_date", Field::TimestampMicros(us)) => {
                        r.modified = Some(UNIX_EPOCH + Duration::from_micros((*us).max(0) as u64))
                    }
                    ("e_tag", Field::Str(e)) => r.etag = Some(e.clone()),
                    ("is_latest", Field::Bool(b)) => r.old_version = !b,
                    ("is_delete_marker", Field::Bool(b)) => r.delete_marker = *b,
                    _ => {}
                }
            }
            let key = r.key.take().ok_or_else(|| row_err(n, "no key".into()))?;
            self.add_row(&key, r).map_err(|e| row_err(n, e))?;
        }
        Ok(())
    }

    /// Adds one row's key, unless it is an older version or a delete marker.
    fn add_row(&mut self, key: &str, r: InventoryRow) -> Result<(), String> {
        if r.old_version || r.delete_marker {
            return Ok(());
        }
        let (Some(size), Some(etag)) = (r.size, r.etag.filter(|e| !e.is_empty())) else {
            return Err(format!(
                "{key:?} has no size or ETag; include Size and ETag in the inventory's fields"
            ));
        };
        let etag = match etag.starts_with('"') {
            true => etag,
            false => format!("\"{etag}\""),
        };
        let mtime = r.modified.unwrap_or(self.created);
        self.add_key(key, size, mtime, &etag)
            .map_err(|e| e.to_string())
    }

    /// Adds the rows of one data file (its CSV, decompressed).
    pub fn add_csv(&mut self, file: &str, csv: impl BufRead) -> Result<(), InventoryError> {
        for (n, line) in csv.lines().enumerate() {
            let row_err = |why: String| InventoryError::Row {
                file: file.to_owned(),
                line: n as u64 + 1,
                why,
            };
            let line = line.map_err(|e| row_err(e.to_string()))?;
            if line.is_empty() {
                continue;
            }
            let fields = split_csv(&line).map_err(row_err)?;
            let field = |i: Option<usize>| i.and_then(|i| fields.get(i)).map(String::as_str);
            let key = field(Some(self.columns.key))
                .ok_or_else(|| row_err("no key".into()))
                .and_then(|k| url_decode(k).map_err(row_err))?;
            let row = InventoryRow {
                key: None,
                size: match field(self.columns.size) {
                    Some(s) if !s.is_empty() => {
                        Some(s.parse().map_err(|_| row_err(format!("size {s:?}")))?)
                    }
                    _ => None,
                },
                modified: match field(self.columns.modified) {
                    Some(t) if !t.is_empty() => {
                        Some(parse_time(t).ok_or_else(|| row_err(format!("time {t:?}")))?)
                    }
                    _ => None,
                },
                etag: field(self.columns.etag).map(str::to_owned),
                old_version: field(self.columns.is_latest)
                    .is_some_and(|v| v.eq_ignore_ascii_case("false")),
                delete_marker: field(self.columns.is_delete_marker)
                    .is_some_and(|v| v.eq_ignore_ascii_case("true")),
            };
            self.add_row(&key, row).map_err(row_err)?;
        }
        Ok(())
    }

    fn add_key(
        &mut self,
        key: &str,
        size: u64,
        mtime: SystemTime,
        etag: &str,
    ) -> rusqlite::Result<()> {
        let Some(rel) = key.strip_prefix(&self.prefix) else {
            return Ok(());
        };
        self.keys += 1;
        let mut parts: Vec<&str> = rel.split('/').collect();
        // A marker (`dir/`) ends in an empty name: only its directories.
        let file = parts.pop().filter(|f| !f.is_empty());
        let mut dir = String::new();
        for part in parts {
            if names::check_name(part).is_err() {
                return Ok(());
            }
            self.row(&dir, part, None, self.created)?;
            dir = names::child_dir_prefix(&dir, part);
            self.conn
                .prepare_cached("INSERT OR IGNORE INTO dirs VALUES (?1)")?
                .execute([&dir])?;
        }
        match file {
            Some(name) if names::check_name(name).is_ok() => {
                self.row(&dir, name, Some((size, etag)), mtime)
            }
            _ => Ok(()),
        }
    }

    fn row(
        &self,
        dir: &str,
        name: &str,
        file: Option<(u64, &str)>,
        mtime: SystemTime,
    ) -> rusqlite::Result<()> {
        let (is_dir, size, etag) = match file {
            Some((size, etag)) => (false, size as i64, etag),
            None => (true, 0, ""),
        };
        let ns = mtime
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        self.conn
            .prepare_cached(
                "INSERT OR IGNORE INTO rows (dir, name, is_dir, size, mtime_ns, etag)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![dir, name, is_dir, size, ns, etag])?;
        Ok(())
    }

    /// Writes every directory, listed at the report's time, to `w`.
    pub fn write_snapshot<W: Write>(
        self,
        mut w: SnapshotWriter<W>,
    ) -> Result<(W, SnapshotCounts), InventoryError> {
        let sql = |e: rusqlite::Error| InventoryError::Write(std::io::Error::other(e));
        self.conn.execute_batch("COMMIT").map_err(sql)?;
        let mut dirs = self
            .conn
            .prepare("SELECT dir FROM dirs ORDER BY dir")
            .map_err(sql)?;
        let mut rows = self
            .conn
            .prepare(
                "SELECT name, is_dir, size, mtime_ns, etag FROM rows WHERE dir = ?1
                 ORDER BY name, is_dir DESC",
            )
            .map_err(sql)?;
        let mut dir_rows = dirs.query([]).map_err(sql)?;
        while let Some(d) = dir_rows.next().map_err(sql)? {
            let dir: String = d.get(0).map_err(sql)?;
            w.dir(&dir, self.created)?;
            let mut entries = rows.query([&dir]).map_err(sql)?;
            let mut last_dir: Option<String> = None;
            while let Some(r) = entries.next().map_err(sql)? {
                let name: String = r.get(0).map_err(sql)?;
                let is_dir: bool = r.get(1).map_err(sql)?;
                let mtime = UNIX_EPOCH
                    + Duration::from_nanos(r.get::<_, i64>(3).map_err(sql)?.max(0) as u64);
                if is_dir {
                    w.entry(&Entry {
                        name: name.clone(),
                        kind: EntryKind::Dir,
                        mtime,
                    })?;
                    last_dir = Some(name);
                } else if last_dir.as_deref() != Some(name.as_str()) {
                    // A directory of the same name hides the file.
                    w.entry(&Entry {
                        name,
                        kind: EntryKind::File {
                            size: r.get::<_, i64>(2).map_err(sql)? as u64,
                            etag: r.get(4).map_err(sql)?,
                        },
                        mtime,
                    })?;
                }
            }
        }
        Ok(w.finish()?)
    }
}

/// The fields of one CSV line (RFC 4180 quoting, as inventories use it).
fn split_csv(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => return Err("a quoted field never ends".into()),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                field.push(c);
                chars.next();
            }
        }
        fields.push(field);
        match chars.next() {
            Some(',') => continue,
            None => return Ok(fields),
            Some(c) => return Err(format!("{c:?} after a quoted field")),
        }
    }
}

/// A key as inventories write it: URL-encoded (`%XX`, and `+` for a space).
fn url_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad escape in key {s:?}"))?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| format!("key {s:?} is not UTF-8"))
}

/// An inventory's `LastModifiedDate` (ISO 8601, e.g. 2024-01-02T03:04:05.000Z).
fn parse_time(s: &str) -> Option<SystemTime> {
    use aws_smithy_types::date_time::{DateTime, Format};
    let t = DateTime::from_str(s, Format::DateTime).ok()?;
    SystemTime::try_from(t).ok()
}

#[cfg(test)]
mod tests {
    use super::super::snapshot::{SnapshotHeader, SnapshotItem, SnapshotReader};
    use super::*;

    fn manifest() -> InventoryManifest {
        InventoryManifest::parse(
            br#"{"sourceBucket": "src", "destinationBucket": "arn:aws:s3:::inv",
                "version": "2016-11-30", "creationTimestamp": "1700000000000",
                "fileFormat": "CSV",
                "fileSchema": "Bucket, Key, VersionId, IsLatest, IsDeleteMarker, Size, LastModifiedDate, ETag",
                "files": [{"key": "inv/src/data/a.csv.gz", "size": 10, "MD5checksum": "x"}]}"#,
        )
        .unwrap()
    }

    #[test]
    fn a_manifest_reads_as_aws_documents_it() {
        let m = manifest();
        assert_eq!(m.source_bucket, "src");
        assert_eq!(m.destination_bucket, "inv");
        assert_eq!(m.files, ["inv/src/data/a.csv.gz"]);
        assert_eq!(m.schema[1], "Key");
        assert!(InventoryManifest::parse(b"{}").is_err());
        // Without sizes and ETags files could not be opened right.
        let mut no_etag = m.clone();
        no_etag.schema.retain(|c| c != "ETag");
        let scratch =
            std::env::temp_dir().join(format!("s3mount-inv-noetag-{}", std::process::id()));
        let err = InventoryTree::new(&scratch, "", &no_etag)
            .err()
            .expect("refused");
        assert!(err.to_string().contains("no ETag"), "{err}");
        let mut orc = m;
        orc.file_format = "ORC".into();
        let err = InventoryTree::new(&scratch, "", &orc)
            .err()
            .expect("refused");
        assert!(err.to_string().contains("CSV and Parquet"), "{err}");
        let _ = std::fs::remove_file(&scratch);
    }

    #[test]
    fn rows_become_the_directories_a_listing_shows() {
        let dir = std::env::temp_dir().join(format!("s3mount-inventory-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut tree = InventoryTree::new(&dir.join("scratch"), "p/", &manifest()).unwrap();
        let csv = "\"src\",\"p/a/one+two.txt\",\"v1\",\"true\",\"false\",\"5\",\"2024-01-02T03:04:05.000Z\",\"e1\"\n\
                   \"src\",\"p/a/old\",\"v0\",\"false\",\"false\",\"5\",\"2024-01-02T03:04:05.000Z\",\"e0\"\n\
                   \"src\",\"p/a/gone\",\"v2\",\"true\",\"true\",\"\",\"2024-01-02T03:04:05.000Z\",\"\"\n\
                   \"src\",\"p/b/\",\"v3\",\"true\",\"false\",\"0\",\"2024-01-02T03:04:05.000Z\",\"e3\"\n\
                   \"src\",\"p/a\",\"v4\",\"true\",\"false\",\"1\",\"2024-01-02T03:04:05.000Z\",\"e4\"\n\
                   \"src\",\"p/c//x\",\"v5\",\"true\",\"false\",\"1\",\"2024-01-02T03:04:05.000Z\",\"e5\"\n\
                   \"src\",\"q/other\",\"v6\",\"true\",\"false\",\"1\",\"2024-01-02T03:04:05.000Z\",\"e6\"\n\
                   \"src\",\"p/%C3%A9t%C3%A9\",\"v7\",\"true\",\"false\",\"7\",\"2024-01-02T03:04:05.000Z\",\"e7\"\n";
        tree.add_csv("a.csv", csv.as_bytes()).unwrap();
        let header = SnapshotHeader {
            bucket: "src".into(),
            prefix: "p/".into(),
            created: UNIX_EPOCH,
        };
        let w = SnapshotWriter::new(Vec::new(), &header).unwrap();
        let (bytes, _) = tree.write_snapshot(w).unwrap();
        let mut shown = Vec::new();
        let mut dir = String::new();
        for item in SnapshotReader::new(&bytes[..]).unwrap() {
            match item.unwrap() {
                SnapshotItem::Dir { dir: d, .. } => dir = d,
                SnapshotItem::Attrs { .. } => panic!("an inventory gives no attributes"),
                SnapshotItem::Entry(e) => shown.push(match e.kind {
                    EntryKind::Dir => format!("{dir}{}/", e.name),
                    EntryKind::File { size, etag } => format!("{dir}{} {size} {etag}", e.name),
                }),
            }
        }
        assert_eq!(
            shown,
            ["a/", "b/", "c/", "été 7 \"e7\"", "a/one two.txt 5 \"e1\"",]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn csv_fields_and_keys_decode() {
        assert_eq!(
            split_csv(r#""a","b ""q""",c"#).unwrap(),
            ["a", "b \"q\"", "c"]
        );
        assert!(split_csv("\"open").is_err());
        assert_eq!(url_decode("a%2Fb+c").unwrap(), "a/b c");
        assert!(url_decode("%zz").is_err());
        assert!(parse_time("2024-01-02T03:04:05.000Z").is_some());
    }
}
