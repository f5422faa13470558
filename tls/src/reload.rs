//! Re-reading TLS files when they change. Each handshake asks for the current configuration;
//! at most once a second that look also compares the files' modification times and sizes with
//! the ones the configuration was built from, and rebuilds on a change. No background task,
//! no signal handling: a rotated file is in use by the next connection after at most a second.

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::{TlsError, TlsFiles};

/// How often the files are looked at.
const CHECK_EVERY: Duration = Duration::from_secs(1);

type Builder<T> = Box<dyn Fn(&TlsFiles) -> Result<T, TlsError> + Send + Sync>;

type Stamp = Vec<Option<(SystemTime, u64)>>;

fn stamp(files: &TlsFiles) -> Stamp {
    files
        .paths()
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

struct Current<T> {
    value: Arc<T>,
    /// The files' stamp when `value` was built, or when a rebuild last failed.
    seen: Stamp,
    checked: Instant,
}

/// A value built from TLS files, rebuilt when they change.
pub(crate) struct Reloading<T> {
    files: TlsFiles,
    build: Builder<T>,
    current: Mutex<Current<T>>,
}

impl<T> Reloading<T> {
    /// Builds the first value; errors here are start-up errors.
    pub(crate) fn new(
        files: TlsFiles,
        build: impl Fn(&TlsFiles) -> Result<T, TlsError> + Send + Sync + 'static,
    ) -> Result<Self, TlsError> {
        let seen = stamp(&files);
        let value = Arc::new(build(&files)?);
        Ok(Self {
            files,
            build: Box::new(build),
            current: Mutex::new(Current {
                value,
                seen,
                checked: Instant::now(),
            }),
        })
    }

    /// The newest valid value.
    pub(crate) fn get(&self) -> Arc<T> {
        let mut current = self.current.lock();
        if current.checked.elapsed() >= CHECK_EVERY {
            current.checked = Instant::now();
            let now = stamp(&self.files);
            if now != current.seen {
                current.seen = now;
                match (self.build)(&self.files) {
                    Ok(value) => {
                        tracing::info!(cert = %self.files.cert.display(), "TLS files changed; new connections use them");
                        current.value = Arc::new(value);
                    }
                    // Half-written or mismatched files during a rotation: keep serving with
                    // the last good material and say why; the next change is tried again.
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS files changed but cannot be used; keeping the previous ones")
                    }
                }
            }
        }
        current.value.clone()
    }
}
