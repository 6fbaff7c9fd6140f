//! The request-log writer's SQL: binary `COPY` of a batch into
//! `request_logs`, and daily partitions (`request_logs_ensure_partition`).
//! Reads are in `store::request_logs`.

use chrono::NaiveDate;
use futures_util::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Statement};

use crate::reqlog::record::RequestRecord;

/// The columns the writer fills, in `COPY` order.
pub const COPY_STATEMENT: &str = "COPY request_logs (id, ts, request_id, key_id, route, method, \
     path, query, status, error_code, latency_ms, upstream_latency_ms, upstream, request_bytes, \
     response_bytes, client_ip, user_agent, request_body, response_body) FROM STDIN BINARY";

const TYPES: [Type; 19] = [
    Type::UUID,
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::UUID,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::INT2,
    Type::TEXT,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::TEXT,
    Type::INT8,
    Type::INT8,
    Type::INET,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
];

/// Prepares [`COPY_STATEMENT`] on `client` (once per connection).
pub async fn prepare_copy(client: &Client) -> Result<Statement, tokio_postgres::Error> {
    client.prepare(COPY_STATEMENT).await
}

/// Writes `records` with one binary `COPY`; all or nothing.
pub async fn copy_records(
    client: &Client,
    copy: &Statement,
    records: &[RequestRecord],
) -> Result<u64, tokio_postgres::Error> {
    let sink = client.copy_in(copy).await?;
    let writer = BinaryCopyInWriter::new(sink, &TYPES);
    pin_mut!(writer);
    for r in records {
        let request_id = r.request_id.to_str().unwrap_or("");
        let route = r.route.as_deref();
        let status = r.status.min(i16::MAX as u16) as i16;
        let upstream = r.upstream.map(|a| a.to_string());
        let request_bytes = r.request_bytes.min(i64::MAX as u64) as i64;
        let response_bytes = r.response_bytes.min(i64::MAX as u64) as i64;
        let row: [&(dyn ToSql + Sync); 19] = [
            &r.id,
            &r.ts,
            &request_id,
            &r.key_id,
            &route,
            &r.method.as_str(),
            &&*r.path,
            &r.query.as_deref(),
            &status,
            &r.error_code,
            &r.latency_ms,
            &r.upstream_latency_ms,
            &upstream,
            &request_bytes,
            &response_bytes,
            &r.client_ip,
            &r.user_agent.as_deref(),
            &r.request_body.as_deref(),
            &r.response_body.as_deref(),
        ];
        writer.as_mut().write(&row).await?;
    }
    writer.finish().await
}

/// Creates the partition of `day` (UTC) if it is missing.
pub async fn ensure_partition(
    client: &Client,
    day: NaiveDate,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute("SELECT request_logs_ensure_partition($1)", &[&day])
        .await
        .map(drop)
}

/// True for the error of a row whose day has no partition yet.
pub fn is_missing_partition(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|db| {
        db.code() == &tokio_postgres::error::SqlState::CHECK_VIOLATION
            && db.message().starts_with("no partition of relation")
    })
}

/// True when `e` says nothing about the data: the link, the server's state
/// or its resources. Such a batch is kept and retried until it is written.
pub fn is_transient(e: &tokio_postgres::Error) -> bool {
    match e.as_db_error() {
        // No answer from the server at all: an I/O error or a closed link.
        None => true,
        Some(db) => {
            let code = db.code().code();
            // 08 connection, 40 transaction rollback (serialization,
            // deadlock), 53 insufficient resources, 55 object not in
            // prerequisite state (lock timeouts, a database not accepting
            // connections), 57 operator intervention (shutdown, cancel),
            // 58 system errors, XX internal.
            ["08", "40", "53", "55", "57", "58", "XX"]
                .iter()
                .any(|class| code.starts_with(class))
        }
    }
}
