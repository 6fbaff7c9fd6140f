//! `GET /api/v1/audit-logs`: the audit trail, newest first.

use http::Response;

use super::error::ApiError;
use super::input::Query;
use super::{db, page, AdminState};
use crate::store::audit::{self, AuditFilter};

pub async fn list_audit_logs(
    s: &AdminState,
    query: Option<&str>,
) -> Result<Response<Vec<u8>>, ApiError> {
    let mut q = Query::parse(query);
    let limit = q.limit();
    let before_id = q.take("cursor").and_then(|c| match c.parse::<i64>() {
        Ok(n) if n > 0 => Some(n),
        _ => {
            q.problems.add("cursor", "Not a cursor from this API.");
            None
        }
    });
    let filter = AuditFilter {
        action: q.text("action", 100),
        actor: q.uuid("actor"),
        target_id: q.text("target_id", 200),
        since: q.time("since"),
        until: q.time("until"),
        before_id,
    };
    let filter = q.finish().finish(filter)?;
    let client = db(s).await?;
    let rows = audit::list(&**client, &filter, limit + 1).await?;
    Ok(page(rows, limit, |r| r.id.to_string()))
}
