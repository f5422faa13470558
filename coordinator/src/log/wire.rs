//! The binary encoding of Raft log entries and peer messages (postcard): compact and several
//! times faster than JSON, which matters because openraft gives an AppendEntries round trip —
//! encoding, sending, the follower's decode and fsync — only one heartbeat interval.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Encodes a log entry or message.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_allocvec(value)
}

/// Decodes what [`encode`] produced.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// Size of what [`encode`] would produce, counted without building it.
pub fn encoded_size<T: Serialize>(value: &T) -> Result<usize, postcard::Error> {
    postcard::experimental::serialized_size(value)
}
