//! Archive encryption: XChaCha20-Poly1305 in the STREAM construction (1 MiB segments, each
//! authenticated, the last one marked), so truncation, reordering and tampering are all
//! detected. The 32-byte key comes from a file or an environment variable, as 64 hex digits
//! (or 32 raw bytes in a file). Only its fingerprint ever leaves this module.

use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::stream::{DecryptorBE32, EncryptorBE32};
use chacha20poly1305::aead::{KeyInit, generic_array::GenericArray};
use sha2::{Digest, Sha256};

use crate::DrError;

/// Plaintext bytes per encrypted segment.
pub(crate) const SEGMENT: usize = 1 << 20;
/// Authentication tag added to each segment.
const TAG: usize = 16;
/// STREAM nonce prefix length for XChaCha20 (24-byte nonce minus 5 bytes of counter and flag).
pub(crate) const NONCE_PREFIX: usize = 19;

/// An archive encryption key. `Debug` and `Display` show its fingerprint only.
#[derive(Clone)]
pub struct Key {
    bytes: [u8; 32],
    source_name: String,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key(id {}, from {})", self.id(), self.source_name)
    }
}

fn parse_hex(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

impl Key {
    fn bad(source_name: &str, reason: &str) -> DrError {
        DrError::BadKey {
            source_name: source_name.to_string(),
            reason: reason.to_string(),
        }
    }

    /// Reads a key file: 64 hex digits (whitespace around them allowed) or exactly 32 bytes.
    pub fn from_file(path: &std::path::Path) -> Result<Key, DrError> {
        let name = path.display().to_string();
        let raw = std::fs::read(path).map_err(|e| Key::bad(&name, &e.to_string()))?;
        let bytes = match std::str::from_utf8(&raw).ok().and_then(parse_hex) {
            Some(bytes) => bytes,
            None if raw.len() == 32 => raw.as_slice().try_into().expect("32 bytes"),
            None => {
                return Err(Key::bad(
                    &name,
                    "must hold 64 hex digits or exactly 32 bytes",
                ));
            }
        };
        Ok(Key {
            bytes,
            source_name: name,
        })
    }

    /// Reads a key from environment variable `var` (64 hex digits).
    pub fn from_env(var: &str) -> Result<Key, DrError> {
        let name = format!("${var}");
        let text = std::env::var(var).map_err(|_| Key::bad(&name, "is not set"))?;
        let bytes = parse_hex(&text).ok_or_else(|| Key::bad(&name, "must be 64 hex digits"))?;
        Ok(Key {
            bytes,
            source_name: name,
        })
    }

    /// A key from raw bytes (tests, tools).
    pub fn from_bytes(bytes: [u8; 32]) -> Key {
        Key {
            bytes,
            source_name: "bytes".into(),
        }
    }

    /// Fingerprint recorded in manifests: the first 8 bytes of SHA-256 over a domain label and
    /// the key, in hex. Identifies the key without revealing it.
    pub fn id(&self) -> String {
        let mut hash = Sha256::new();
        hash.update(b"ballast-dr-key-id/v1");
        hash.update(self.bytes);
        hex(&hash.finalize()[..8])
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(GenericArray::from_slice(&self.bytes))
    }

    /// Encrypts `plain` with a fresh random nonce prefix; returns (ciphertext, nonce prefix).
    pub(crate) fn encrypt(&self, plain: &[u8]) -> (Vec<u8>, [u8; NONCE_PREFIX]) {
        let mut prefix = [0u8; NONCE_PREFIX];
        rand::Rng::fill(&mut rand::rng(), &mut prefix[..]);
        let mut stream = EncryptorBE32::from_aead(self.cipher(), GenericArray::from_slice(&prefix));
        let mut out = Vec::with_capacity(plain.len() + (plain.len() / SEGMENT + 1) * TAG);
        let mut segments = plain.chunks(SEGMENT).peekable();
        if segments.peek().is_none() {
            out.extend(
                stream
                    .encrypt_last(&[][..])
                    .expect("encrypting cannot fail"),
            );
            return (out, prefix);
        }
        while let Some(segment) = segments.next() {
            if segments.peek().is_some() {
                out.extend(
                    stream
                        .encrypt_next(segment)
                        .expect("encrypting cannot fail"),
                );
            } else {
                out.extend(
                    stream
                        .encrypt_last(segment)
                        .expect("encrypting cannot fail"),
                );
                break;
            }
        }
        (out, prefix)
    }

    /// Decrypts what [`Key::encrypt`] produced; `None` if any segment fails authentication or
    /// the stream is cut short.
    pub(crate) fn decrypt(&self, sealed: &[u8], prefix: &[u8]) -> Option<Vec<u8>> {
        if prefix.len() != NONCE_PREFIX {
            return None;
        }
        let mut stream = DecryptorBE32::from_aead(self.cipher(), GenericArray::from_slice(prefix));
        let mut out = Vec::with_capacity(sealed.len());
        let mut segments = sealed.chunks(SEGMENT + TAG).peekable();
        segments.peek()?;
        while let Some(segment) = segments.next() {
            if segments.peek().is_some() {
                out.extend(stream.decrypt_next(segment).ok()?);
            } else {
                out.extend(stream.decrypt_last(segment).ok()?);
                return Some(out);
            }
        }
        None
    }
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Decodes lower- or upper-case hex.
pub(crate) fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len() / 2)
        .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok())
        .collect()
}

/// SHA-256 of `bytes` as `sha256:<hex>`.
pub(crate) fn checksum(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keys_parse_from_hex_or_raw_and_never_print_themselves() {
        let dir = tempfile::tempdir().expect("dir");
        let hex_file = dir.path().join("k.hex");
        std::fs::write(&hex_file, format!("{}\n", "ab".repeat(32))).expect("write");
        let key = Key::from_file(&hex_file).expect("hex key");
        assert_eq!(key.bytes, [0xab; 32]);
        let raw_file = dir.path().join("k.raw");
        std::fs::write(&raw_file, [0xab; 32]).expect("write");
        assert_eq!(Key::from_file(&raw_file).expect("raw key").id(), key.id());
        let shown = format!("{key:?}");
        assert!(!shown.contains(&"ab".repeat(8)), "{shown}");
        let short = dir.path().join("short");
        std::fs::write(&short, "abcd").expect("write");
        let error = Key::from_file(&short).expect_err("short key").to_string();
        assert!(
            error.contains("64 hex digits") && error.contains("short"),
            "{error}"
        );
        assert!(!error.contains("abcd"), "{error}");
    }

    #[test]
    fn tampering_truncation_and_wrong_keys_are_detected() {
        let key = Key::from_bytes([7; 32]);
        let plain: Vec<u8> = (0..(SEGMENT * 2 + 100)).map(|i| i as u8).collect();
        let (sealed, prefix) = key.encrypt(&plain);
        assert_eq!(key.decrypt(&sealed, &prefix).as_deref(), Some(&plain[..]));
        let mut flipped = sealed.clone();
        flipped[SEGMENT + 5] ^= 1;
        assert!(key.decrypt(&flipped, &prefix).is_none());
        let cut = &sealed[..SEGMENT + TAG];
        assert!(
            key.decrypt(cut, &prefix).is_none(),
            "a cut after a full segment"
        );
        assert!(Key::from_bytes([8; 32]).decrypt(&sealed, &prefix).is_none());
    }

    proptest! {
        #[test]
        fn encryption_round_trips(plain in prop::collection::vec(any::<u8>(), 0..5000)) {
            let key = Key::from_bytes([3; 32]);
            let (sealed, prefix) = key.encrypt(&plain);
            prop_assert_eq!(key.decrypt(&sealed, &prefix), Some(plain));
        }
    }
}
