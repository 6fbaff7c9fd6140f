//! `GET /api/v1/config` and `POST /api/v1/config/reload` (both `admin`):
//! the running configuration, redacted, and a hot reload of the file
//! `serve` was started with ([`crate::reload`]).

use http::{Response, StatusCode};
use serde_json::json;

use super::error::ApiError;
use super::{db, json, AdminState, Caller};
use crate::errors::FieldError;
use crate::reload::{ReloadError, Reloader, Trigger};
use crate::store::audit::{self, Event, Outcome};

fn reloader(s: &AdminState) -> Result<&Reloader, ApiError> {
    s.reloader.as_deref().ok_or(ApiError::Internal)
}

/// `GET /api/v1/config`: the effective document (file plus environment
/// overrides) with every secret redacted, the SHA-256 of the file's bytes
/// and when it was loaded.
pub fn get_config(s: &AdminState) -> Result<Response<Vec<u8>>, ApiError> {
    let running = reloader(s)?.running();
    Ok(json(
        StatusCode::OK,
        &json!({
            "sha256": running.sha256,
            "loaded_at": running.loaded_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "config": running.document,
        }),
    ))
}

/// `POST /api/v1/config/reload`: re-reads and applies the file; 422
/// `invalid_config` with every error, and nothing changed, when it has any.
/// A reload that applied is an audit entry (`config.reloaded`).
pub async fn reload_config(s: &AdminState, caller: &Caller) -> Result<Response<Vec<u8>>, ApiError> {
    let applied = match reloader(s)?.reload(Trigger::Api).await {
        Ok(a) => a,
        Err(ReloadError::Invalid(errors)) => {
            return Err(ApiError::InvalidConfig(
                errors
                    .0
                    .into_iter()
                    .map(|e| FieldError {
                        field: e.path,
                        message: e.message,
                    })
                    .collect(),
            ))
        }
        Err(ReloadError::Internal) => return Err(ApiError::Internal),
    };
    let event = Event {
        action: "config.reloaded",
        target_type: "config",
        target_id: applied.sha256.clone(),
        before: Some(json!({"sha256": applied.previous_sha256})),
        after: Some(json!({
            "sha256": applied.sha256,
            "needs_restart": applied.needs_restart,
        })),
        outcome: Outcome::Success,
    };
    // The new configuration is already serving: a database that cannot
    // take the entry now is logged, not turned into a failed reload.
    let recorded = async {
        let mut client = db(s).await?;
        let tx = client
            .transaction()
            .await
            .map_err(crate::store::DbError::from)?;
        audit::append(&tx, s.key_service.audit_chain(), &caller.origin, &event).await?;
        tx.commit().await.map_err(crate::store::DbError::from)?;
        Ok::<(), ApiError>(())
    };
    if recorded.await.is_err() {
        tracing::warn!(
            request_id = %caller.origin.request_id,
            sha256 = %applied.sha256,
            "configuration reloaded, but its audit entry could not be written"
        );
    }
    Ok(json(StatusCode::OK, &applied))
}
