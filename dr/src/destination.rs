//! Parsing destination and archive URLs into object stores.

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;

use crate::DrError;

/// Where archives go: an object store and a prefix in it.
#[derive(Clone)]
pub struct Destination {
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) prefix: Path,
    url: String,
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

fn bad(url: &str, reason: impl Into<String>) -> DrError {
    DrError::Destination {
        url: url.to_string(),
        reason: reason.into(),
    }
}

impl Destination {
    /// Parses a destination URL:
    /// - a path or `file:///path`: a local directory (created if missing);
    /// - `s3://bucket[/prefix][?endpoint=URL&allow_http=true&region=R]`: S3 or any
    ///   S3-compatible store. Credentials and defaults come from the standard `AWS_*`
    ///   environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
    ///   `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`, ...); query parameters override them.
    pub fn parse(url: &str) -> Result<Destination, DrError> {
        if url.is_empty() {
            return Err(bad(url, "empty"));
        }
        if url.trim() != url || url.chars().any(char::is_control) {
            return Err(bad(
                url,
                "leading or trailing whitespace or control characters",
            ));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            return Destination::s3(url, rest);
        }
        if url.contains("://") && !url.starts_with("file://") {
            return Err(bad(
                url,
                "only local paths, file:// and s3:// are supported",
            ));
        }
        let path = url.strip_prefix("file://").unwrap_or(url);
        std::fs::create_dir_all(path).map_err(|e| bad(url, format!("cannot create: {e}")))?;
        let store = LocalFileSystem::new_with_prefix(path).map_err(|e| bad(url, e.to_string()))?;
        Ok(Destination {
            store: Arc::new(store),
            prefix: Path::default(),
            url: url.to_string(),
        })
    }

    /// Checks a destination a remote caller chose for this process to write to (the Export
    /// call): besides [`Destination::parse`]'s rules, a local path must be absolute and free
    /// of `..`, so a caller cannot make the server write relative to its working directory or
    /// climb out of the directory named.
    pub fn check_remote(url: &str) -> Result<(), DrError> {
        if url.starts_with("s3://") {
            return Ok(());
        }
        let path = std::path::Path::new(url.strip_prefix("file://").unwrap_or(url));
        if !path.is_absolute() {
            return Err(bad(
                url,
                "a destination sent to a replica must be s3://... or an absolute path",
            ));
        }
        if path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(bad(url, "`..` is not allowed in a destination"));
        }
        Ok(())
    }

    fn s3(url: &str, rest: &str) -> Result<Destination, DrError> {
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
        if bucket.is_empty() {
            return Err(bad(url, "no bucket (expected s3://bucket/prefix)"));
        }
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        let mut path_style = false;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            builder = match key {
                "endpoint" => {
                    path_style = true;
                    builder.with_endpoint(value)
                }
                "allow_http" => builder.with_allow_http(value == "true"),
                "region" => builder.with_region(value),
                other => return Err(bad(url, format!("unknown parameter {other:?}"))),
            };
        }
        if path_style || std::env::var_os("AWS_ENDPOINT").is_some() {
            // Custom endpoints (MinIO, Ceph, moto, ...) generally want path-style requests.
            builder = builder.with_virtual_hosted_style_request(false);
        }
        let store = builder.build().map_err(|e| bad(url, e.to_string()))?;
        Ok(Destination {
            store: Arc::new(store),
            prefix: Path::from(prefix.trim_matches('/')),
            url: url.to_string(),
        })
    }

    /// Object path of `leaf` inside archive `name`.
    pub(crate) fn object(&self, name: &str, leaf: &str) -> Path {
        self.prefix.clone().join(name).join(leaf)
    }

    /// The destination URL as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL of archive `name` in this destination.
    pub fn archive_url(&self, name: &str) -> String {
        match self.url.split_once('?') {
            Some((base, query)) => format!("{}/{name}?{query}", base.trim_end_matches('/')),
            None => format!("{}/{name}", self.url.trim_end_matches('/')),
        }
    }

    pub(crate) fn storage_error(&self, source: object_store::Error) -> DrError {
        DrError::Storage {
            url: self.url.clone(),
            source,
        }
    }
}

/// One archive: its destination and its name (the last path segment of the URL).
#[derive(Clone, Debug)]
pub struct ArchiveUrl {
    /// Where it lives.
    pub destination: Destination,
    /// Its name.
    pub name: String,
}

impl ArchiveUrl {
    /// Parses an archive URL: a destination URL with the archive name as last segment, e.g.
    /// `s3://bucket/prefix/0001732400000000-r42` or `/backups/0001732400000000-r42`.
    pub fn parse(url: &str) -> Result<ArchiveUrl, DrError> {
        let (location, query) = match url.split_once('?') {
            Some((l, q)) => (l, Some(q)),
            None => (url, None),
        };
        let location = location.trim_end_matches('/');
        let (parent, name) = location
            .rsplit_once('/')
            .filter(|(parent, name)| {
                !name.is_empty() && !parent.is_empty() && !parent.ends_with(':')
            })
            .ok_or_else(|| bad(url, "expected <destination>/<archive name>"))?;
        if parent.ends_with("s3:/") {
            return Err(bad(url, "expected s3://bucket/<archive name>"));
        }
        let parent = match query {
            Some(q) => format!("{parent}?{q}"),
            None => parent.to_string(),
        };
        if !parent.starts_with("s3://") {
            let local = parent.strip_prefix("file://").unwrap_or(&parent);
            if !std::path::Path::new(local).join(name).is_dir() {
                return Err(DrError::NotFound(url.to_string()));
            }
        }
        Ok(ArchiveUrl {
            destination: Destination::parse(&parent)?,
            name: name.to_string(),
        })
    }

    /// The archive's URL.
    pub fn url(&self) -> String {
        self.destination.archive_url(&self.name)
    }
}
