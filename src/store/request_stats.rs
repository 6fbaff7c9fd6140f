//! `request_rollups`: the flusher's upsert and the queries behind
//! `/requests/stats` and `/keys/{id}/usage`.
//!
//! Rows of requests without a key or route hold the nil UUID and `''`
//! (primary-key columns cannot be NULL); the queries turn them back into
//! NULL.

use chrono::{DateTime, Duration as TimeDelta, Utc};
use tokio_postgres::types::ToSql;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use super::DbError;

/// One row to add into `request_rollups`.
#[derive(Debug, Clone)]
pub struct RollupRow {
    pub minute: DateTime<Utc>,
    pub route: String,
    pub key_id: Uuid,
    pub method: String,
    pub status: i16,
    pub error_code: String,
    pub count: i64,
    pub client_errors: i64,
    pub server_errors: i64,
    pub request_bytes: i64,
    pub response_bytes: i64,
    pub latency_sum_ms: f64,
    /// Trimmed histogram counts (see `reqlog::histogram`).
    pub latency_buckets: Vec<i64>,
}

impl RollupRow {
    pub fn primary_key(&self) -> (DateTime<Utc>, &str, Uuid, &str, i16, &str) {
        (
            self.minute,
            &self.route,
            self.key_id,
            &self.method,
            self.status,
            &self.error_code,
        )
    }
}

/// Rows per statement: bounds one statement's parameters and locks.
const UPSERT_CHUNK: usize = 2_000;

const UPSERT: &str = "
INSERT INTO request_rollups AS r
    (minute, route, key_id, method, status, error_code, count, client_errors,
     server_errors, request_bytes, response_bytes, latency_sum_ms, latency_buckets)
SELECT m, route, key_id, method, status, error_code, n, ce, se, rq, rs, ls, h::bigint[]
FROM unnest($1::timestamptz[], $2::text[], $3::uuid[], $4::text[], $5::smallint[],
            $6::text[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[],
            $11::bigint[], $12::float8[], $13::text[])
     AS t(m, route, key_id, method, status, error_code, n, ce, se, rq, rs, ls, h)
ON CONFLICT (minute, route, key_id, method, status, error_code) DO UPDATE SET
    count = r.count + EXCLUDED.count,
    client_errors = r.client_errors + EXCLUDED.client_errors,
    server_errors = r.server_errors + EXCLUDED.server_errors,
    request_bytes = r.request_bytes + EXCLUDED.request_bytes,
    response_bytes = r.response_bytes + EXCLUDED.response_bytes,
    latency_sum_ms = r.latency_sum_ms + EXCLUDED.latency_sum_ms,
    latency_buckets = histogram_add(r.latency_buckets, EXCLUDED.latency_buckets)";

/// Adds `rows` (unique by primary key, in primary-key order) into
/// `request_rollups`, all or nothing.
pub async fn upsert_rollups(
    client: &mut deadpool_postgres::Object,
    rows: &[RollupRow],
) -> Result<(), DbError> {
    let tx = client.transaction().await?;
    for chunk in rows.chunks(UPSERT_CHUNK) {
        let minutes: Vec<DateTime<Utc>> = chunk.iter().map(|r| r.minute).collect();
        let routes: Vec<&str> = chunk.iter().map(|r| r.route.as_str()).collect();
        let keys: Vec<Uuid> = chunk.iter().map(|r| r.key_id).collect();
        let methods: Vec<&str> = chunk.iter().map(|r| r.method.as_str()).collect();
        let statuses: Vec<i16> = chunk.iter().map(|r| r.status).collect();
        let codes: Vec<&str> = chunk.iter().map(|r| r.error_code.as_str()).collect();
        let col = |f: fn(&RollupRow) -> i64| chunk.iter().map(f).collect::<Vec<i64>>();
        let counts = col(|r| r.count);
        let client_errors = col(|r| r.client_errors);
        let server_errors = col(|r| r.server_errors);
        let request_bytes = col(|r| r.request_bytes);
        let response_bytes = col(|r| r.response_bytes);
        let sums: Vec<f64> = chunk.iter().map(|r| r.latency_sum_ms).collect();
        let hists: Vec<String> = chunk
            .iter()
            .map(|r| array_text(&r.latency_buckets))
            .collect();
        tx.execute(
            UPSERT,
            &[
                &minutes,
                &routes,
                &keys,
                &methods,
                &statuses,
                &codes,
                &counts,
                &client_errors,
                &server_errors,
                &request_bytes,
                &response_bytes,
                &sums,
                &hists,
            ],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// `{1,0,3}`: a histogram as a Postgres array literal (one text parameter
/// per row, as `unnest` cannot take an array of arrays of varying length).
fn array_text(v: &[i64]) -> String {
    let mut s = String::with_capacity(2 + v.len() * 3);
    s.push('{');
    for (i, n) in v.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(itoa::Buffer::new().format(*n));
    }
    s.push('}');
    s
}

/// What stats are grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Route,
    Key,
    Status,
    Method,
    ErrorCode,
    Minute,
    Hour,
    Day,
}

impl GroupBy {
    pub const NAMES: &'static [&'static str] = &[
        "route",
        "key",
        "status",
        "method",
        "error_code",
        "minute",
        "hour",
        "day",
    ];

    pub fn parse(s: &str) -> Option<GroupBy> {
        Some(match s {
            "route" => GroupBy::Route,
            "key" => GroupBy::Key,
            "status" => GroupBy::Status,
            "method" => GroupBy::Method,
            "error_code" => GroupBy::ErrorCode,
            "minute" => GroupBy::Minute,
            "hour" => GroupBy::Hour,
            "day" => GroupBy::Day,
            _ => return None,
        })
    }

    pub fn is_time(self) -> bool {
        matches!(self, GroupBy::Minute | GroupBy::Hour | GroupBy::Day)
    }

    /// The group's SQL expression over a rollup row, and the expression
    /// that turns its value `g` into text (NULL for the sentinels) once per
    /// group, not once per row. Fixed fragments only: nothing of the
    /// request reaches the SQL text.
    fn sql(self) -> (&'static str, &'static str) {
        const TIME: &str = "to_char(g AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')";
        match self {
            GroupBy::Route => ("route", "nullif(g, '')"),
            GroupBy::Key => (
                "key_id",
                "nullif(g, '00000000-0000-0000-0000-000000000000')::text",
            ),
            GroupBy::Status => ("status", "g::text"),
            GroupBy::Method => ("method", "g"),
            GroupBy::ErrorCode => ("error_code", "nullif(g, '')"),
            GroupBy::Minute => ("minute", TIME),
            GroupBy::Hour => ("date_trunc('hour', minute, 'UTC')", TIME),
            GroupBy::Day => ("date_trunc('day', minute, 'UTC')", TIME),
        }
    }
}

/// A stats query: minutes that overlap `[from, to)`, optionally of one key
/// or route.
#[derive(Debug, Clone)]
pub struct StatsFilter {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub key_id: Option<Uuid>,
    /// `Some("")` never matches a real route; the API refuses it.
    pub route: Option<String>,
    pub group_by: Option<GroupBy>,
}

/// The sums of one group; `hist` is sparse (bucket index, count).
#[derive(Debug, Clone, Default)]
pub struct GroupSums {
    /// The group's value as text, None for the sentinels (and when there
    /// is no grouping).
    pub key: Option<String>,
    pub total: i64,
    pub client_errors: i64,
    pub server_errors: i64,
    pub response_bytes: i64,
    pub latency_sum_ms: f64,
    pub hist: Vec<(usize, i64)>,
}

/// The sums per group of every rollup row in the filter's range, from one
/// snapshot of the table.
pub async fn stats(
    client: &mut deadpool_postgres::Object,
    f: &StatsFilter,
) -> Result<Vec<GroupSums>, DbError> {
    let (group, label) = f.group_by.map_or(("NULL::text", "g"), GroupBy::sql);
    // A rollup minute m covers [m, m + 1 min): it overlaps the range when
    // m > from - 1 min and m < to.
    let from = f.from - TimeDelta::minutes(1);
    let filter = "minute > $1 AND minute < $2 \
                  AND ($3::uuid IS NULL OR key_id = $3) \
                  AND ($4::text IS NULL OR route = $4)";
    let totals_sql = format!(
        "SELECT {label}, n, ce, se, rb, ls FROM ( \
           SELECT {group} AS g, sum(count)::bigint AS n, sum(client_errors)::bigint AS ce, \
                  sum(server_errors)::bigint AS se, sum(response_bytes)::bigint AS rb, \
                  coalesce(sum(latency_sum_ms), 0)::float8 AS ls \
           FROM request_rollups WHERE {filter} GROUP BY 1) t"
    );
    let hist_sql = format!(
        "SELECT {label}, i, c FROM ( \
           SELECT r.g, u.i::int AS i, sum(u.c)::bigint AS c \
           FROM (SELECT {group} AS g, latency_buckets FROM request_rollups WHERE {filter}) r, \
                unnest(r.latency_buckets) WITH ORDINALITY AS u(c, i) \
           WHERE u.c <> 0 GROUP BY 1, 2) t"
    );
    let params: [&(dyn ToSql + Sync); 4] = [&from, &f.to, &f.key_id, &f.route];
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let totals = tx.query(&totals_sql, &params).await?;
    let hist = tx.query(&hist_sql, &params).await?;
    tx.commit().await?;

    let mut groups: Vec<GroupSums> = Vec::with_capacity(totals.len());
    let mut index = std::collections::HashMap::with_capacity(totals.len());
    for r in &totals {
        let key: Option<String> = r.try_get(0)?;
        index.insert(key.clone(), groups.len());
        groups.push(GroupSums {
            key,
            total: r.try_get::<_, Option<i64>>(1)?.unwrap_or(0),
            client_errors: r.try_get::<_, Option<i64>>(2)?.unwrap_or(0),
            server_errors: r.try_get::<_, Option<i64>>(3)?.unwrap_or(0),
            response_bytes: r.try_get::<_, Option<i64>>(4)?.unwrap_or(0),
            latency_sum_ms: r.try_get::<_, Option<f64>>(5)?.unwrap_or(0.0),
            hist: Vec::new(),
        });
    }
    for r in &hist {
        let key: Option<String> = r.try_get(0)?;
        // Ordinality is 1-based; bucket indexes are 0-based.
        let i: i32 = r.try_get(1)?;
        let c: i64 = r.try_get(2)?;
        if let (Some(&g), Ok(b)) = (index.get(&key), usize::try_from(i - 1)) {
            groups[g].hist.push((b, c));
        }
    }
    Ok(groups)
}

/// Whether a key with this id exists (revoked and expired keys do).
pub async fn key_exists(client: &impl GenericClient, id: Uuid) -> Result<bool, DbError> {
    Ok(client
        .query_opt("SELECT 1 FROM api_keys WHERE id = $1", &[&id])
        .await?
        .is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_literal() {
        assert_eq!(array_text(&[]), "{}");
        assert_eq!(array_text(&[1, 0, 30]), "{1,0,30}");
    }

    #[test]
    fn every_group_name_parses() {
        for n in GroupBy::NAMES {
            assert!(GroupBy::parse(n).is_some(), "{n}");
        }
        assert_eq!(GroupBy::parse("Route"), None);
    }
}
