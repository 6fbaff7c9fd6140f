//! Endpoint signing secrets: `whsec_` + base64 of 32 random bytes, stored
//! encrypted under a key derived from the pepper.
//!
//! The signing secret must be recoverable (the dispatcher HMACs with it), so
//! unlike API keys it cannot be stored as a hash. It is sealed with
//! ChaCha20-Poly1305 under a key derived from the pepper by BLAKE3
//! `derive_key` with a context string of its own, so the key is unrelated to
//! the key hashing or audit-chain keys derived from the same pepper. Every
//! seal takes a fresh random 96-bit nonce; the column holds
//! `nonce || ciphertext || tag`. Someone with the database but not the pepper
//! can neither read a secret nor forge one the dispatcher would accept.

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;

/// Prefix of every signing secret (Standard Webhooks).
pub const PREFIX: &str = "whsec_";
/// Random bytes in a new secret (the spec asks for 24 to 64).
pub const SECRET_BYTES: usize = 32;
/// BLAKE3 `derive_key` context: the encryption key of webhook secrets.
const KEY_CONTEXT: &str = "gateway webhook secrets v1 (chacha20poly1305)";
/// ChaCha20-Poly1305 nonce length.
const NONCE_BYTES: usize = 12;

/// A new `whsec_…` secret: base64 (standard alphabet, as the Standard
/// Webhooks libraries decode it) of [`SECRET_BYTES`] bytes from the OS RNG.
pub fn generate() -> String {
    let mut raw = [0u8; SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    format!(
        "{PREFIX}{}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// Why a sealed secret could not be opened. Says nothing about the value.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("sealed webhook secret is too short")]
    Truncated,
    /// Wrong pepper, or the column was altered.
    #[error("sealed webhook secret does not authenticate (pepper changed or data altered)")]
    Forged,
    #[error("sealed webhook secret is not UTF-8")]
    NotText,
}

/// Encrypts and decrypts secrets at rest (key derived from the pepper).
#[derive(Clone)]
pub struct SecretBox {
    cipher: ChaCha20Poly1305,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(<redacted>)")
    }
}

impl SecretBox {
    pub fn new(pepper: &str) -> Self {
        let key = blake3::derive_key(KEY_CONTEXT, pepper.as_bytes());
        Self {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key)),
        }
    }

    /// nonce || ciphertext || tag, with a fresh random nonce.
    pub fn seal(&self, secret: &str) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let mut out = nonce.to_vec();
        // Encryption in memory of a short plaintext cannot fail (the
        // length limit is 2^38 bytes); the fallback is unreachable.
        match self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), secret.as_bytes())
        {
            Ok(sealed) => out.extend_from_slice(&sealed),
            Err(_) => tracing::error!("webhook secret encryption failed"),
        }
        out
    }

    pub fn open(&self, sealed: &[u8]) -> anyhow::Result<String> {
        Ok(self.open_checked(sealed)?)
    }

    /// [`SecretBox::open`] with a typed error.
    pub fn open_checked(&self, sealed: &[u8]) -> Result<String, OpenError> {
        // A tag alone is 16 bytes: anything shorter was never sealed here.
        if sealed.len() < NONCE_BYTES + 16 {
            return Err(OpenError::Truncated);
        }
        let (nonce, body) = sealed.split_at(NONCE_BYTES);
        let plain = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), body)
            .map_err(|_| OpenError::Forged)?;
        String::from_utf8(plain).map_err(|_| OpenError::NotText)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_whsec_and_base64_of_32_random_bytes() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        for s in [&a, &b] {
            let raw = s.strip_prefix(PREFIX).expect("whsec_ prefix");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(raw)
                .expect("standard base64");
            assert_eq!(bytes.len(), SECRET_BYTES);
        }
    }

    #[test]
    fn seal_then_open_gives_the_secret_back_and_never_holds_it_in_clear() {
        let sb = SecretBox::new("pepper-one");
        let secret = generate();
        let sealed = sb.seal(&secret);
        assert_eq!(sealed.len(), NONCE_BYTES + secret.len() + 16);
        assert!(!sealed.windows(PREFIX.len()).any(|w| w == PREFIX.as_bytes()));
        assert_eq!(sb.open(&sealed).expect("opens"), secret);
        // A fresh nonce each time: the same secret seals differently.
        assert_ne!(sb.seal(&secret), sealed);
    }

    #[test]
    fn a_wrong_pepper_truncation_or_tampering_does_not_open() {
        let sb = SecretBox::new("pepper-one");
        let sealed = sb.seal("whsec_abc");
        assert!(matches!(
            SecretBox::new("pepper-two").open_checked(&sealed),
            Err(OpenError::Forged)
        ));
        assert!(matches!(
            sb.open_checked(&sealed[..20]),
            Err(OpenError::Truncated)
        ));
        assert!(matches!(sb.open_checked(&[]), Err(OpenError::Truncated)));
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(
                matches!(sb.open_checked(&bad), Err(OpenError::Forged)),
                "{i}"
            );
        }
    }

    #[test]
    fn debug_shows_no_key() {
        assert_eq!(
            format!("{:?}", SecretBox::new("p")),
            "SecretBox(<redacted>)"
        );
    }
}
