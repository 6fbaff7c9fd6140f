//! Standard Webhooks signatures: `v1,<base64 HMAC-SHA256 of
//! "{id}.{timestamp}.{body}">`, keyed by the base64-decoded part of a
//! `whsec_…` secret. During a secret rotation's grace the header carries
//! one signature per secret, space-separated, so a receiver holding either
//! secret verifies it.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The prefix of every endpoint secret.
pub const SECRET_PREFIX: &str = "whsec_";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SigningError {
    /// The stored secret is not `whsec_` + base64. The text never holds it.
    #[error("the signing secret is not whsec_ followed by base64")]
    MalformedSecret,
}

/// The HMAC key of `secret`: the bytes after `whsec_`, base64-decoded.
fn key_of(secret: &str) -> Result<Vec<u8>, SigningError> {
    let encoded = secret
        .strip_prefix(SECRET_PREFIX)
        .ok_or(SigningError::MalformedSecret)?;
    let key = STANDARD
        .decode(encoded)
        .map_err(|_| SigningError::MalformedSecret)?;
    if key.is_empty() {
        return Err(SigningError::MalformedSecret);
    }
    Ok(key)
}

/// One signature, `v1,<base64>`.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<String, SigningError> {
    let key = key_of(secret)?;
    let mut mac =
        Hmac::<Sha256>::new_from_slice(&key).map_err(|_| SigningError::MalformedSecret)?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// The `webhook-signature` header: one signature per secret (the current
/// one first), space-separated.
pub fn signature_header(
    secrets: &[String],
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<String, SigningError> {
    let sigs = secrets
        .iter()
        .map(|s| sign(s, id, timestamp, body))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(sigs.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;

    #[test]
    fn matches_the_spec_test_vector() {
        assert_eq!(
            sign(SECRET, ID, TS, BODY).as_deref(),
            Ok("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        );
    }

    #[test]
    fn a_rotated_pair_carries_both_signatures() {
        let new = format!("{SECRET_PREFIX}{}", STANDARD.encode([7u8; 32]));
        let header = signature_header(&[new.clone(), SECRET.to_string()], ID, TS, BODY)
            .expect("both secrets sign");
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2, "{header}");
        assert_eq!(parts[0], sign(&new, ID, TS, BODY).expect("new"));
        assert_eq!(parts[1], "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert_ne!(parts[0], parts[1]);
    }

    #[test]
    fn any_change_changes_the_signature() {
        let base = sign(SECRET, ID, TS, BODY).expect("sign");
        assert_ne!(sign(SECRET, "msg_other", TS, BODY).expect("id"), base);
        assert_ne!(sign(SECRET, ID, TS + 1, BODY).expect("ts"), base);
        assert_ne!(sign(SECRET, ID, TS, b"{}").expect("body"), base);
    }

    #[test]
    fn malformed_secrets_are_refused_without_echoing_them() {
        for bad in [
            "",
            "whsec_",
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_!!!not base64",
        ] {
            let err = sign(bad, ID, TS, BODY).expect_err(bad);
            assert_eq!(err, SigningError::MalformedSecret);
            if !bad.is_empty() && bad != "whsec_" {
                assert!(!err.to_string().contains(bad));
            }
        }
    }
}
