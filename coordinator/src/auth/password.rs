//! Password hashing with bcrypt at etcd's default cost. Slow on purpose (tens of
//! milliseconds): callers run it on a blocking thread, and only the proposer of a change or
//! the replica checking a login does — never the state machine.

/// bcrypt cost (etcd's default `--bcrypt-cost`).
pub const BCRYPT_COST: u32 = 10;

/// The bcrypt hash of `password` with a fresh salt; why not, for a password bcrypt refuses.
pub fn hash_password(password: &str, cost: u32) -> Result<String, String> {
    bcrypt::hash(password, cost).map_err(|e| format!("the password cannot be hashed: {e}"))
}

/// Whether `password` matches `hash` (a hash that does not parse matches nothing).
pub fn verify_password(password: &str, hash: &str) -> bool {
    bcrypt::verify(password, hash).unwrap_or(false)
}
