//! Key format, checksum and hashing (DESIGN §3 "API keys").
//!
//! A key is `<prefix><22 base62 chars of 128 random bits><6 base62 chars of
//! CRC32>`. The checksum lets the proxy reject typos and garbage without
//! hashing or looking anything up. Keys are stored only as a keyed BLAKE3
//! hash whose key is derived from the server pepper, so a stolen table is
//! useless without the pepper.

use rand::RngCore;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Base62 digits carrying the 128 random bits (62^22 > 2^128).
pub const RANDOM_LEN: usize = 22;
/// Base62 digits carrying the CRC32 (62^6 > 2^32).
pub const CHECKSUM_LEN: usize = 6;
/// Random characters of a key shown in lists after the configured prefix:
/// enough to recognise it, useless to an attacker (24 of 128 bits). With
/// the default `gw_live_` that is the 12 characters DESIGN §3 names.
pub const DISPLAY_RANDOM_LEN: usize = 4;
/// Context string for deriving the hashing key from the pepper; changing it
/// invalidates every stored hash.
const HASH_CONTEXT: &str = "gateway api-key hash v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    #[error("API key is malformed")]
    Malformed,
    #[error("API key checksum does not match")]
    BadChecksum,
}

impl KeyFormatError {
    /// Label for the `gateway_auth_failures_total{reason}` metric.
    pub fn reason(self) -> &'static str {
        match self {
            KeyFormatError::Malformed => crate::identity::auth_reason::MALFORMED,
            KeyFormatError::BadChecksum => crate::identity::auth_reason::BAD_CHECKSUM,
        }
    }
}

fn encode_base62(mut n: u128, out: &mut [u8]) {
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
}

fn is_base62(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

fn checksum(prefix_and_random: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut out = [0u8; CHECKSUM_LEN];
    encode_base62(u128::from(crc32fast::hash(prefix_and_random)), &mut out);
    out
}

/// Generates a new plaintext key with `prefix`.
pub fn generate(prefix: &str) -> String {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    mint(prefix, u128::from_le_bytes(bytes))
}

/// The well-formed key with `prefix` carrying `random`. Only [`generate`]
/// makes real keys; tests and benches mint reproducible ones.
pub fn mint(prefix: &str, random: u128) -> String {
    let mut digits = [0u8; RANDOM_LEN];
    encode_base62(random, &mut digits);
    let mut key = Vec::with_capacity(prefix.len() + RANDOM_LEN + CHECKSUM_LEN);
    key.extend_from_slice(prefix.as_bytes());
    key.extend_from_slice(&digits);
    let sum = checksum(&key);
    key.extend_from_slice(&sum);
    // Only ASCII went in.
    String::from_utf8_lossy(&key).into_owned()
}

/// Checks shape and checksum. Cheap: no allocation, no hashing.
pub fn verify(presented: &str, prefix: &str) -> Result<(), KeyFormatError> {
    let bytes = presented.as_bytes();
    if bytes.len() != prefix.len() + RANDOM_LEN + CHECKSUM_LEN || !presented.starts_with(prefix) {
        return Err(KeyFormatError::Malformed);
    }
    let body = &bytes[prefix.len()..];
    if !body.iter().copied().all(is_base62) {
        return Err(KeyFormatError::Malformed);
    }
    let (head, sum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
    if checksum(head) != sum {
        return Err(KeyFormatError::BadChecksum);
    }
    Ok(())
}

/// The part of a key shown in lists and logs: the configured `prefix` and
/// [`DISPLAY_RANDOM_LEN`] characters, whatever the prefix's length (a fixed
/// count would show more randomness the shorter the prefix).
pub fn display_prefix<'a>(key: &'a str, prefix: &str) -> &'a str {
    key.get(..prefix.len() + DISPLAY_RANDOM_LEN).unwrap_or(key)
}

/// Hashes presented keys with the server pepper.
#[derive(Clone)]
pub struct KeyHasher {
    key: [u8; 32],
}

/// Keyed hash of an API key as stored in `api_keys.key_hash`.
pub type KeyHash = [u8; 32];

impl KeyHasher {
    pub fn new(pepper: &str) -> Self {
        Self {
            key: blake3::derive_key(HASH_CONTEXT, pepper.as_bytes()),
        }
    }

    pub fn hash(&self, presented: &str) -> KeyHash {
        *blake3::keyed_hash(&self.key, presented.as_bytes()).as_bytes()
    }
}

impl std::fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyHasher(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "gw_live_";

    #[test]
    fn generated_keys_verify_and_have_the_documented_shape() {
        for _ in 0..1000 {
            let k = generate(P);
            assert_eq!(k.len(), P.len() + RANDOM_LEN + CHECKSUM_LEN);
            assert!(k.starts_with(P));
            assert_eq!(verify(&k, P), Ok(()));
        }
    }

    #[test]
    fn any_single_character_change_fails_the_checksum() {
        let k = generate(P);
        for i in P.len()..k.len() {
            let mut b = k.clone().into_bytes();
            b[i] = if b[i] == b'a' { b'b' } else { b'a' };
            let changed = String::from_utf8(b).expect("ascii");
            assert_eq!(verify(&changed, P), Err(KeyFormatError::BadChecksum), "{i}");
        }
    }

    #[test]
    fn malformed_inputs_are_rejected() {
        let k = generate(P);
        for bad in [
            "",
            "gw_live_",
            &k[..k.len() - 1],
            &format!("{k}x"),
            &k.replace("gw_live_", "gw_test_"),
            &format!("gw_live_{}", "é".repeat(14)),
            &"x".repeat(10_000),
        ] {
            assert_eq!(verify(bad, P), Err(KeyFormatError::Malformed), "{bad}");
        }
    }

    #[test]
    fn hash_depends_on_pepper_and_key() {
        let a = KeyHasher::new("pepper-one-pepper-one-pepper-one");
        let b = KeyHasher::new("pepper-two-pepper-two-pepper-two");
        assert_ne!(a.hash("k"), b.hash("k"));
        assert_ne!(a.hash("k"), a.hash("l"));
        assert_eq!(a.hash("k"), a.hash("k"));
    }

    #[test]
    fn display_prefix_is_the_prefix_and_four_chars() {
        assert_eq!(display_prefix("gw_live_abcdefgh", P), "gw_live_abcd");
        assert_eq!(display_prefix(&generate(P), P).len(), 12);
        let short = generate("k_");
        assert_eq!(display_prefix(&short, "k_"), &short[..6]);
        let long = generate("acme_prod_live_");
        assert_eq!(display_prefix(&long, "acme_prod_live_"), &long[..19]);
        assert_eq!(display_prefix("short", P), "short");
    }
}
