//! Join tokens: single-use, expiring secrets a new replica presents to join. The state
//! machine keeps only the SHA-256 of each secret, so snapshots and archives hold nothing a
//! replica could join with.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::FleetError;

/// Most tokens kept at once (expired ones are dropped whenever one is created).
pub const MAX_TOKENS: usize = 1_000;

/// One token as remembered.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct JoinToken {
    /// Hex SHA-256 of the secret.
    pub secret_sha256: String,
    /// When it was created (leader clock).
    pub created_at_ms: u64,
    /// When it stops working.
    pub expires_at_ms: u64,
    /// The replica that spent it.
    pub used_by: Option<u64>,
}

/// The tokens, by public id.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct JoinTokens {
    tokens: BTreeMap<String, JoinToken>,
}

impl JoinTokens {
    /// Remembers a new token and forgets expired ones.
    pub fn create(
        &mut self,
        id: &str,
        secret_sha256: &str,
        now_ms: u64,
        expires_at_ms: u64,
    ) -> Result<(), FleetError> {
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(FleetError::invalid(
                "token id",
                "1-64 ASCII letters or digits",
            ));
        }
        if secret_sha256.len() != 64 || !secret_sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(FleetError::invalid("token secret", "a hex SHA-256"));
        }
        if expires_at_ms <= now_ms {
            return Err(FleetError::invalid("token expiry", "must be in the future"));
        }
        self.tokens.retain(|_, t| t.expires_at_ms > now_ms);
        if self.tokens.contains_key(id) {
            return Err(FleetError::invalid("token id", "already in use"));
        }
        if self.tokens.len() >= MAX_TOKENS {
            return Err(FleetError::TooLarge {
                what: "join tokens".into(),
                count: self.tokens.len() + 1,
                limit: MAX_TOKENS,
            });
        }
        self.tokens.insert(
            id.to_string(),
            JoinToken {
                secret_sha256: secret_sha256.to_string(),
                created_at_ms: now_ms,
                expires_at_ms,
                used_by: None,
            },
        );
        Ok(())
    }

    /// Spends a token for `replica`. Returns whether anything changed (spending it again for
    /// the same replica changes nothing and is allowed).
    pub fn spend(
        &mut self,
        id: &str,
        secret_sha256: &str,
        replica: u64,
        now_ms: u64,
    ) -> Result<bool, FleetError> {
        let token = self
            .tokens
            .get_mut(id)
            .filter(|t| t.secret_sha256.eq_ignore_ascii_case(secret_sha256))
            .ok_or_else(|| FleetError::JoinToken("unknown token".into()))?;
        match token.used_by {
            Some(user) if user == replica => return Ok(false),
            Some(user) => {
                return Err(FleetError::JoinToken(format!(
                    "already used by replica {user}; tokens are single-use"
                )));
            }
            None => {}
        }
        if token.expires_at_ms <= now_ms {
            return Err(FleetError::JoinToken(format!(
                "expired {} s ago",
                (now_ms - token.expires_at_ms) / 1000
            )));
        }
        token.used_by = Some(replica);
        Ok(true)
    }

    /// Tokens remembered now.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether none are remembered.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::JoinTokens;

    const HASH: &str = "aa00000000000000000000000000000000000000000000000000000000000000";
    const OTHER: &str = "bb00000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn tokens_are_single_use_and_expire() {
        let mut tokens = JoinTokens::default();
        tokens.create("t1", HASH, 1_000, 61_000).expect("create");
        assert!(
            tokens.create("t1", HASH, 1_000, 61_000).is_err(),
            "duplicate id"
        );
        assert!(tokens.spend("t1", OTHER, 4, 2_000).is_err(), "wrong secret");
        assert!(tokens.spend("t9", HASH, 4, 2_000).is_err(), "unknown id");
        assert_eq!(tokens.spend("t1", HASH, 4, 2_000), Ok(true));
        assert_eq!(
            tokens.spend("t1", HASH, 4, 3_000),
            Ok(false),
            "same replica retries"
        );
        let error = tokens
            .spend("t1", HASH, 5, 3_000)
            .expect_err("second replica");
        assert!(error.to_string().contains("already used by replica 4"));
        tokens.create("t2", HASH, 1_000, 2_000).expect("create");
        let error = tokens.spend("t2", HASH, 6, 5_000).expect_err("expired");
        assert!(error.to_string().contains("expired 3 s ago"), "{error}");
        tokens.create("t3", HASH, 100_000, 200_000).expect("create");
        assert_eq!(tokens.len(), 1, "expired tokens are forgotten");
        assert!(tokens.create("bad id!", HASH, 0, 10).is_err());
        assert!(tokens.create("t4", "nothex", 0, 10).is_err());
        assert!(tokens.create("t5", HASH, 10, 10).is_err());
    }
}
