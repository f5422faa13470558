//! Auth tokens: JSON Web Tokens signed with HMAC-SHA256 under a secret held in the replicated
//! auth state, carrying the claims etcd's JWT tokens carry (`username`, `revision`, `exp`).
//! Any replica checks a token without asking another, so a token outlives leader changes and
//! works on every replica, and a new auth enable (a new secret) voids every earlier token.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::AuthError;

/// The JOSE header of every token.
const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// What a token says.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    /// The user.
    pub username: String,
    /// The auth revision it was issued at.
    pub revision: u64,
    /// When it stops working, in seconds since the Unix epoch.
    pub exp: u64,
}

fn mac(secret: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length.
    Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts every key length")
}

/// A token for `claims` signed with `secret`.
pub fn issue(secret: &[u8], claims: &Claims) -> String {
    let payload = serde_json::to_vec(claims).expect("claims always serialize");
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(HEADER),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let mut mac = mac(secret);
    mac.update(signed.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signed}.{signature}")
}

/// The claims of `token` if `secret` signed it and it has not expired at `now_secs`; etcd's
/// "invalid auth token" otherwise.
pub fn verify(secret: &[u8], token: &str, now_secs: u64) -> Result<Claims, AuthError> {
    let invalid = || AuthError::InvalidToken;
    let (signed, signature) = token.rsplit_once('.').ok_or_else(invalid)?;
    let (header, payload) = signed.split_once('.').ok_or_else(invalid)?;
    let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| invalid())?;
    let mut mac = mac(secret);
    mac.update(signed.as_bytes());
    // Constant-time comparison.
    mac.verify_slice(&signature).map_err(|_| invalid())?;
    if URL_SAFE_NO_PAD.decode(header).map_err(|_| invalid())? != HEADER.as_bytes() {
        return Err(invalid());
    }
    let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| invalid())?;
    let claims: Claims = serde_json::from_slice(&payload).map_err(|_| invalid())?;
    if claims.exp <= now_secs {
        return Err(invalid());
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            username: "alice".into(),
            revision: 7,
            exp: 1_000,
        }
    }

    #[test]
    fn a_token_verifies_under_its_secret_until_it_expires() {
        let token = issue(b"secret", &claims());
        assert_eq!(token.split('.').count(), 3);
        assert_eq!(verify(b"secret", &token, 999).unwrap(), claims());
        assert_eq!(
            verify(b"secret", &token, 1_000),
            Err(AuthError::InvalidToken)
        );
        assert_eq!(verify(b"other", &token, 10), Err(AuthError::InvalidToken));
    }

    #[test]
    fn a_changed_claim_or_garbage_is_refused() {
        let token = issue(b"secret", &claims());
        let mut forged = claims();
        forged.username = "root".into();
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        let parts: Vec<&str> = token.split('.').collect();
        let tampered = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
        assert_eq!(
            verify(b"secret", &tampered, 10),
            Err(AuthError::InvalidToken)
        );
        for garbage in ["", "a.b", "a.b.c", "...", "x.y.!!"] {
            assert_eq!(verify(b"secret", garbage, 10), Err(AuthError::InvalidToken));
        }
    }
}
