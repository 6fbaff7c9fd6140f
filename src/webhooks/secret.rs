//! Endpoint signing secrets: `whsec_` + base64 of 24+ random bytes, stored
//! encrypted under a key derived from the pepper.

/// A new `whsec_…` secret.
pub fn generate() -> String {
    unimplemented!("webhook secrets: generate")
}

/// Encrypts and decrypts secrets at rest (key derived from the pepper).
#[derive(Clone)]
pub struct SecretBox {}

impl SecretBox {
    pub fn new(pepper: &str) -> Self {
        let _ = pepper;
        Self {}
    }

    /// nonce || ciphertext || tag.
    pub fn seal(&self, secret: &str) -> Vec<u8> {
        let _ = secret;
        unimplemented!("webhook secrets: seal")
    }

    pub fn open(&self, sealed: &[u8]) -> anyhow::Result<String> {
        let _ = sealed;
        unimplemented!("webhook secrets: open")
    }
}
