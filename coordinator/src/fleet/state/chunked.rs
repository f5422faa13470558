//! postcard output into an `io::Write` through a buffer of its own.
//!
//! postcard hands its output over a byte or a few at a time (every varint, every tag), and
//! `postcard::to_io` passes each piece to the writer: through `&mut dyn Write` that is an
//! indirect call per byte. A snapshot of a KV-heavy state is tens of MB, encoded beside the
//! writes, so the pieces are gathered here and the writer sees whole chunks.

use std::io::Write;

/// Bytes gathered before they go to the writer.
const CHUNK: usize = 64 * 1024;

/// A postcard flavor (by `&mut`, so that it outlives a failed encoding) writing to `out` in
/// chunks of [`CHUNK`] bytes. The writer's own error is kept: postcard reports any failed
/// push as a full buffer.
struct Chunked<'a> {
    out: &'a mut dyn Write,
    buf: Vec<u8>,
    failed: Option<std::io::Error>,
}

impl<'a> Chunked<'a> {
    fn new(out: &'a mut dyn Write) -> Self {
        Chunked {
            out,
            buf: Vec::with_capacity(CHUNK),
            failed: None,
        }
    }

    fn write_out(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        if self.failed.is_some() {
            return Err(postcard::Error::SerializeBufferFull);
        }
        self.out.write_all(bytes).map_err(|e| {
            self.failed = Some(e);
            postcard::Error::SerializeBufferFull
        })
    }

    fn drain(&mut self) -> postcard::Result<()> {
        let buf = std::mem::take(&mut self.buf);
        let written = self.write_out(&buf);
        self.buf = buf;
        self.buf.clear();
        written
    }
}

impl postcard::ser_flavors::Flavor for &mut Chunked<'_> {
    type Output = ();

    #[inline]
    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        if self.buf.len() == CHUNK {
            self.drain()?;
        }
        self.buf.push(byte);
        Ok(())
    }

    #[inline]
    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        if self.buf.len() + bytes.len() > CHUNK {
            self.drain()?;
            if bytes.len() >= CHUNK {
                return self.write_out(bytes);
            }
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        self.drain()
    }
}

/// Encodes `value` with postcard into `out`; fails only when `out` does (with its error) or
/// when `value` cannot be encoded.
pub(super) fn encode_into<T: serde::Serialize + ?Sized>(
    value: &T,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let mut chunked = Chunked::new(out);
    let encoded = postcard::serialize_with_flavor(value, &mut chunked);
    match (encoded, chunked.failed.take()) {
        (Ok(()), _) => Ok(()),
        (Err(_), Some(failed)) => Err(failed),
        (Err(e), None) => Err(std::io::Error::other(format!("encoding the state: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails with its own error once `room` bytes were written.
    struct FullAfter {
        room: usize,
        written: Vec<u8>,
    }

    impl Write for FullAfter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.written.len() + buf.len() > self.room {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    "disk full (test)",
                ));
            }
            self.written.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Several chunks' worth of small fields and large byte strings, around the chunk size.
    fn sample() -> (Vec<u64>, Vec<Vec<u8>>, String) {
        let numbers = (0..100_000u64).map(|n| n * 7919).collect();
        let blobs = [10, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 5]
            .iter()
            .map(|&len| (0..len).map(|i| i as u8).collect())
            .collect();
        (numbers, blobs, "tail".into())
    }

    #[test]
    fn chunked_output_is_postcards_own_bytes() {
        let value = sample();
        let mut out = Vec::new();
        encode_into(&value, &mut out).expect("encode");
        assert_eq!(out, postcard::to_allocvec(&value).expect("postcard"));
    }

    #[test]
    fn a_failing_writer_gives_its_own_error() {
        let value = sample();
        let mut out = FullAfter {
            room: 2 * CHUNK + 100,
            written: Vec::new(),
        };
        let error = encode_into(&value, &mut out).expect_err("the writer is full");
        assert_eq!(error.kind(), std::io::ErrorKind::StorageFull, "{error}");
        assert!(out.written.len() <= out.room);
    }
}
