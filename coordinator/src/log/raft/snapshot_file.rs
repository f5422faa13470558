//! The latest state-machine snapshot, in a file of its own beside fjall's database (issue #24,
//! ADR 0017). Kept in fjall, every snapshot went through the journal (whose writer's buffer
//! grew to the snapshot's size and stayed there) and into a keyspace that held up to about five
//! uncompressed copies before compaction merged them: a replica that had taken 55K KV writes
//! used 78 MiB of disk. Here it is one file, written whole under a temporary name, fsynced and
//! renamed over the previous one, so a crash leaves the old snapshot or the new, never a mix.
//!
//! Layout: magic, format version, the lengths of the two parts, the snapshot's metadata (JSON),
//! its data (the encoded fleet state), and a SHA-256 of everything before it.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The snapshot's file name in the data dir.
pub const FILE_NAME: &str = "state.snapshot";
/// Where the next snapshot is written before it is renamed into place; one left by a crash is
/// overwritten by the next snapshot and never read.
const TEMP_NAME: &str = "state.snapshot.tmp";
const MAGIC: &[u8; 8] = b"BLSTSNAP";
const VERSION: u32 = 1;
/// Magic, version, metadata length (u32), data length (u64).
const HEADER: usize = 8 + 4 + 4 + 8;
const DIGEST: usize = 32;

/// Why the snapshot file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    /// The file system refused.
    #[error("snapshot file {path}: {source}")]
    Io {
        /// File involved.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not a whole snapshot this build can read.
    #[error("snapshot file {path} is unusable: {reason}")]
    Corrupt {
        /// File involved.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A snapshot as read back from its file.
#[derive(Debug, PartialEq, Eq)]
pub struct StoredSnapshot {
    /// The snapshot's metadata, as written.
    pub meta: Vec<u8>,
    /// The snapshot's data, as written.
    pub data: Vec<u8>,
}

/// The snapshot file of data dir `dir`.
pub fn path_in(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// Replaces the snapshot in `dir` with `meta` and `data`, durably: on return the new snapshot
/// survives a crash and the old one is gone.
pub fn write(dir: &Path, meta: &[u8], data: &[u8]) -> Result<(), SnapshotFileError> {
    write_with(dir, meta, |out| out.write_all(data)).map(|_| ())
}

/// As [`write`], with the data written by `encode` straight into the file: a snapshot is never
/// whole in memory (one holding 100K KV keys of 256 B and their history encodes to ~89 MB,
/// rebuilt every 10K log entries under a write load; a heap profile found its buffer grown
/// to 155 MB). Returns the data's length.
pub fn write_with(
    dir: &Path,
    meta: &[u8],
    encode: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<u64, SnapshotFileError> {
    let temp = dir.join(TEMP_NAME);
    let io_at = |path: &Path| {
        let path = path.display().to_string();
        move |source| SnapshotFileError::Io { path, source }
    };
    let meta_len = u32::try_from(meta.len()).map_err(|_| SnapshotFileError::Corrupt {
        path: temp.display().to_string(),
        reason: format!("{} bytes of metadata do not fit the format", meta.len()),
    })?;
    // The header holds the data's length, known only once the data is written: a placeholder
    // first, the header over it afterwards.
    // Read as well as written: the digest is taken from the file.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temp)
        .map_err(io_at(&temp))?;
    let mut out = Counted {
        inner: BufWriter::with_capacity(WRITE_BUFFER, file),
        bytes: 0,
    };
    out.inner.write_all(&[0; HEADER]).map_err(io_at(&temp))?;
    out.inner.write_all(meta).map_err(io_at(&temp))?;
    encode(&mut out).map_err(io_at(&temp))?;
    let data_len = out.bytes;
    let mut file = out
        .inner
        .into_inner()
        .map_err(|e| io_at(&temp)(e.into_error()))?;
    let mut header = Vec::with_capacity(HEADER);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&VERSION.to_le_bytes());
    header.extend_from_slice(&meta_len.to_le_bytes());
    header.extend_from_slice(&data_len.to_le_bytes());
    file.seek(SeekFrom::Start(0)).map_err(io_at(&temp))?;
    file.write_all(&header).map_err(io_at(&temp))?;
    // The digest covers the header, so it is taken by reading the file back (from the page
    // cache) rather than as the data goes out.
    file.seek(SeekFrom::Start(0)).map_err(io_at(&temp))?;
    let digest = digest_of(&mut file).map_err(io_at(&temp))?;
    file.write_all(&digest).map_err(io_at(&temp))?;
    file.sync_all().map_err(io_at(&temp))?;
    drop(file);
    let target = path_in(dir);
    std::fs::rename(&temp, &target).map_err(io_at(&target))?;
    // The rename is durable only once the directory entry is.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_at(dir))?;
    Ok(data_len)
}

/// Buffer between the encoder and the snapshot file.
const WRITE_BUFFER: usize = 256 * 1024;

/// The SHA-256 of everything from `file`'s position to its end.
fn digest_of(file: &mut File) -> std::io::Result<[u8; DIGEST]> {
    let mut digest = Sha256::new();
    let mut buffer = vec![0u8; WRITE_BUFFER];
    loop {
        match file.read(&mut buffer)? {
            0 => return Ok(digest.finalize().into()),
            n => digest.update(&buffer[..n]),
        }
    }
}

/// Counts the bytes written through it.
struct Counted<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The snapshot in `dir`, or `None` when there is no snapshot file.
pub fn read(dir: &Path) -> Result<Option<StoredSnapshot>, SnapshotFileError> {
    let path = path_in(dir);
    let mut bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(SnapshotFileError::Io {
                path: path.display().to_string(),
                source,
            });
        }
    };
    let corrupt = |reason: String| SnapshotFileError::Corrupt {
        path: path.display().to_string(),
        reason,
    };
    if bytes.len() < HEADER + DIGEST {
        return Err(corrupt(format!(
            "{} bytes, shorter than the smallest snapshot",
            bytes.len()
        )));
    }
    if &bytes[..8] != MAGIC {
        return Err(corrupt("not a Ballast snapshot (wrong magic)".into()));
    }
    let field = |range: std::ops::Range<usize>| {
        let mut buf = [0u8; 8];
        buf[..range.len()].copy_from_slice(&bytes[range]);
        u64::from_le_bytes(buf)
    };
    let version = field(8..12);
    if version != u64::from(VERSION) {
        return Err(corrupt(format!(
            "format version {version}; this build reads version {VERSION} (written by a newer Ballast?)"
        )));
    }
    let (meta_len, data_len) = (field(12..16), field(16..24));
    let expected = (HEADER + DIGEST) as u64 + meta_len + data_len;
    if bytes.len() as u64 != expected {
        return Err(corrupt(format!(
            "{} bytes where its header says {expected}: cut short or overwritten",
            bytes.len()
        )));
    }
    let body = bytes.len() - DIGEST;
    if Sha256::digest(&bytes[..body]).as_slice() != &bytes[body..] {
        return Err(corrupt("checksum mismatch".into()));
    }
    let data_start = HEADER + meta_len as usize;
    let meta = bytes[HEADER..data_start].to_vec();
    bytes.truncate(body);
    bytes.drain(..data_start);
    Ok(Some(StoredSnapshot { meta, data: bytes }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_reads_back_as_written_and_replaces_the_one_before() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(read(dir.path()).expect("no file is no snapshot"), None);
        write(dir.path(), b"{\"m\":1}", b"first").expect("write");
        write(dir.path(), b"{\"m\":2}", &[7u8; 100_000]).expect("write");
        let stored = read(dir.path()).expect("read").expect("present");
        assert_eq!(stored.meta, b"{\"m\":2}");
        assert_eq!(stored.data, vec![7u8; 100_000]);
        assert!(
            !dir.path().join(TEMP_NAME).exists(),
            "the temporary file is renamed into place"
        );
    }

    /// Data streamed in pieces reads back whole with its length in the header; an encoder
    /// that fails leaves the snapshot before it in place, and its error is the one returned.
    #[test]
    fn streamed_data_reads_back_and_a_failed_encoder_keeps_the_snapshot_before() {
        let dir = tempfile::tempdir().expect("temp dir");
        let written = write_with(dir.path(), b"m1", |out| {
            for piece in 0..1000u32 {
                out.write_all(&piece.to_le_bytes().repeat(100))?;
            }
            Ok(())
        })
        .expect("write");
        let expected: Vec<u8> = (0..1000u32)
            .flat_map(|piece| piece.to_le_bytes().repeat(100))
            .collect();
        assert_eq!(written, expected.len() as u64);
        let stored = read(dir.path()).expect("read").expect("present");
        assert_eq!(
            (stored.meta.as_slice(), stored.data),
            (&b"m1"[..], expected.clone())
        );

        let failed = write_with(dir.path(), b"m2", |out| {
            out.write_all(b"half")?;
            Err(std::io::Error::other("disk on fire"))
        })
        .expect_err("the encoder failed")
        .to_string();
        assert!(failed.contains("disk on fire"), "{failed}");
        assert_eq!(
            read(dir.path()).expect("read").expect("present").data,
            expected,
            "the snapshot before stays"
        );
    }

    #[test]
    fn a_leftover_temporary_file_is_neither_read_nor_in_the_way() {
        let dir = tempfile::tempdir().expect("temp dir");
        write(dir.path(), b"m", b"kept").expect("write");
        std::fs::write(dir.path().join(TEMP_NAME), b"half a snapshot").expect("leftover");
        assert_eq!(
            read(dir.path()).expect("read").expect("present").data,
            b"kept"
        );
        write(dir.path(), b"m", b"next").expect("write over the leftover");
        assert_eq!(
            read(dir.path()).expect("read").expect("present").data,
            b"next"
        );
    }

    /// Every kind of damage is refused with the file and what is wrong named, never read as a
    /// snapshot: a flipped bit anywhere, a cut, trailing bytes, a foreign file, a newer format.
    #[test]
    fn a_damaged_file_is_refused_naming_the_damage() {
        let dir = tempfile::tempdir().expect("temp dir");
        write(dir.path(), b"meta", b"the fleet state").expect("write");
        let path = path_in(dir.path());
        let good = std::fs::read(&path).expect("read");
        let refused = |bytes: &[u8], expected: &str| {
            std::fs::write(&path, bytes).expect("damage");
            let message = read(dir.path()).expect_err("damaged").to_string();
            assert!(
                message.contains(FILE_NAME) && message.contains(expected),
                "expected {expected:?} in {message:?}"
            );
        };
        for at in [0, 9, 13, 20, HEADER, HEADER + 4, good.len() - 1] {
            let mut flipped = good.clone();
            flipped[at] ^= 1;
            let message = {
                std::fs::write(&path, &flipped).expect("damage");
                read(dir.path()).expect_err("a flipped bit").to_string()
            };
            assert!(message.contains(FILE_NAME), "{message}");
        }
        refused(&good[..good.len() - 5], "cut short");
        refused(&[&good[..], b"x"].concat(), "cut short or overwritten");
        refused(b"short", "shorter than");
        refused(
            &[b"NOTASNAP".as_slice(), &good[8..]].concat(),
            "wrong magic",
        );
        let mut newer = good.clone();
        newer[8] = 2;
        refused(&newer, "format version 2");
        let mut body = good.clone();
        body[HEADER + 5] ^= 0x20;
        refused(&body, "checksum mismatch");
    }
}
