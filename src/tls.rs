//! The TLS listener's certificates, chosen by SNI and swappable at run
//! time (DESIGN §3 "Edge: TLS, HTTP/2, route options, hot reload").
//!
//! [`Certificates`] is the contract between the TLS listener (which asks it
//! for a certificate on every handshake) and hot reload (which re-reads the
//! files and swaps them in): a reload never rebuilds the listener, so no
//! connection drops, and handshakes after the swap see the new files.

use std::sync::Arc;

use crate::config::{ConfigErrors, TlsListenerConfig};

/// The certificates of the TLS listener.
#[derive(Debug, Default)]
pub struct Certificates {}

impl Certificates {
    /// Reads every certificate and key in `cfg`; errors name the file.
    pub fn load(_cfg: &TlsListenerConfig) -> Result<Arc<Certificates>, ConfigErrors> {
        // Filled in by the TLS work (issue 17).
        Ok(Arc::new(Certificates::default()))
    }

    /// Re-reads the files of `cfg` and swaps them in whole; on any error
    /// nothing changes.
    pub fn reload(&self, _cfg: &TlsListenerConfig) -> Result<(), ConfigErrors> {
        // Filled in by the TLS work (issue 17).
        Ok(())
    }
}
