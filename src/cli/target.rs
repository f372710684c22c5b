//! The mount target: `BUCKET`, `BUCKET/PREFIX` or `s3://BUCKET/PREFIX`.

/// A parsed mount target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub bucket: String,
    /// Normalised key prefix: empty, or ending in `/`.
    pub prefix: String,
}

impl Target {
    pub fn parse(s: &str) -> Result<Target, String> {
        let rest = s.strip_prefix("s3://").unwrap_or(s);
        let (bucket, prefix) = match rest.split_once('/') {
            Some((b, p)) => (b, p),
            None => (rest, ""),
        };
        if bucket.is_empty() {
            return Err(format!(
                "'{s}' names no bucket; give BUCKET or BUCKET/PREFIX, e.g. my-bucket/data"
            ));
        }
        if bucket
            .chars()
            .any(|c| c.is_whitespace() || c == ':' || c == '\\')
        {
            return Err(format!("'{bucket}' is not a valid bucket name; bucket names use letters, digits, '.', '-' and '_'"));
        }
        Ok(Target {
            bucket: bucket.to_owned(),
            prefix: crate::names::normalize_prefix(prefix),
        })
    }
}

/// One object, `s3://BUCKET/KEY` (a catalog snapshot's place).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectUrl {
    pub bucket: String,
    pub key: String,
}

impl ObjectUrl {
    pub fn parse(s: &str) -> Result<ObjectUrl, String> {
        let wrong = || {
            format!("'{s}' is not an object URL; give s3://BUCKET/KEY, e.g. s3://my-bucket/snapshots/data.s3msnap")
        };
        let rest = s.strip_prefix("s3://").ok_or_else(wrong)?;
        match rest.split_once('/') {
            Some((bucket, key)) if !bucket.is_empty() && !key.is_empty() && !key.ends_with('/') => {
                Ok(ObjectUrl {
                    bucket: bucket.to_owned(),
                    key: key.to_owned(),
                })
            }
            _ => Err(wrong()),
        }
    }
}

impl std::fmt::Display for ObjectUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_object_urls() {
        let u = ObjectUrl::parse("s3://b/snap/x.s3msnap").unwrap();
        assert_eq!((u.bucket.as_str(), u.key.as_str()), ("b", "snap/x.s3msnap"));
        for bad in ["b/k", "s3://b", "s3://b/", "s3:///k", "s3://b/dir/"] {
            let e = ObjectUrl::parse(bad).unwrap_err();
            assert!(e.contains("s3://BUCKET/KEY"), "{bad}: {e}");
        }
    }

    #[test]
    fn parses_targets() {
        assert_eq!(
            Target::parse("b").unwrap(),
            Target {
                bucket: "b".into(),
                prefix: "".into()
            }
        );
        assert_eq!(
            Target::parse("b/p").unwrap(),
            Target {
                bucket: "b".into(),
                prefix: "p/".into()
            }
        );
        assert_eq!(
            Target::parse("s3://b/p/q/").unwrap(),
            Target {
                bucket: "b".into(),
                prefix: "p/q/".into()
            }
        );
        assert!(Target::parse("s3://").is_err());
        assert!(Target::parse("/p").is_err());
        assert!(Target::parse("bad bucket/p").is_err());
    }
}
