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

#[cfg(test)]
mod tests {
    use super::*;

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
