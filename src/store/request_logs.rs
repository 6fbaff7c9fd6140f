//! Reading `request_logs`: the filtered, newest-first pages of
//! `GET /api/v1/requests`, one record by id, and the polling of
//! `gateway logs tail`. (The writer's `COPY` lives with the capture side.)
//!
//! Every query is bounded in time (`ts >= from AND ts < to`), so Postgres
//! prunes the daily partitions it does not need; pages are keyset-paginated
//! on `(ts, id)`, which the `request_logs_ts` index serves in order.

use std::net::IpAddr;

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde::Serialize;
use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, Row};
use uuid::Uuid;

use super::DbError;

/// How far either side of the time in a UUIDv7 id a lookup by id searches:
/// the id and `ts` are both taken at request start, but not necessarily
/// from the same clock reading.
pub const ID_TIME_SLACK: ChronoDuration = ChronoDuration::seconds(60);

/// One stored request, as the admin API and `gateway logs tail --json`
/// show it (DESIGN §3 "Request logs and traffic statistics").
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RequestLog {
    pub id: Uuid,
    pub request_id: String,
    /// Request start.
    pub timestamp: DateTime<Utc>,
    pub key_id: Option<Uuid>,
    pub route: Option<String>,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub status: i16,
    pub error_code: Option<String>,
    pub latency_ms: f64,
    pub upstream_latency_ms: Option<f64>,
    pub upstream: Option<String>,
    pub request_bytes: i64,
    pub response_bytes: i64,
    pub client_ip: Option<IpAddr>,
    pub user_agent: Option<String>,
    /// Only on a `log_bodies` route, and only in a single-record read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_body: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_body: Option<String>,
}

/// The columns of [`RequestLog`] without the bodies, in `from_row` order.
const COLUMNS: &str = "id, request_id, ts, key_id, route, method, path, query, status, \
     error_code, latency_ms, upstream_latency_ms, upstream, request_bytes, response_bytes, \
     client_ip, user_agent";

impl RequestLog {
    /// A row of `COLUMNS`, plus the two bodies when `bodies`.
    fn from_row(r: &Row, bodies: bool) -> RequestLog {
        RequestLog {
            id: r.get(0),
            request_id: r.get(1),
            timestamp: r.get(2),
            key_id: r.get(3),
            route: r.get(4),
            method: r.get(5),
            path: r.get(6),
            query: r.get(7),
            status: r.get(8),
            error_code: r.get(9),
            latency_ms: r.get(10),
            upstream_latency_ms: r.get(11),
            upstream: r.get(12),
            request_bytes: r.get(13),
            response_bytes: r.get(14),
            client_ip: r.get(15),
            user_agent: r.get(16),
            request_body: if bodies { r.get(17) } else { None },
            response_body: if bodies { r.get(18) } else { None },
        }
    }
}

/// Which statuses a filter keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    /// Exactly this code, e.g. 429.
    Exact(i16),
    /// A class: `4` for 400–499.
    Class(i16),
}

/// An address, or a network given as CIDR, that `client_ip` must lie in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpFilter {
    Addr(IpAddr),
    Net(ipnet::IpNet),
}

/// The filters of `GET /api/v1/requests`; `None` means "any". The time
/// window `[from, to)` is always set, so a query never scans every partition.
#[derive(Debug, Clone)]
pub struct RequestLogFilter {
    pub key_id: Option<Uuid>,
    pub route: Option<String>,
    /// Upper case.
    pub method: Option<String>,
    pub status: Option<StatusFilter>,
    pub error_code: Option<String>,
    /// A plain prefix of the normalised path.
    pub path_prefix: Option<String>,
    pub client_ip: Option<IpFilter>,
    pub request_id: Option<String>,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub min_latency_ms: Option<f64>,
    /// Only records before this `(ts, id)` (the cursor), newest first.
    pub before: Option<(DateTime<Utc>, Uuid)>,
}

impl RequestLogFilter {
    /// A filter over `[from, to)` that keeps everything else.
    pub fn window(from: DateTime<Utc>, to: DateTime<Utc>) -> RequestLogFilter {
        RequestLogFilter {
            key_id: None,
            route: None,
            method: None,
            status: None,
            error_code: None,
            path_prefix: None,
            client_ip: None,
            request_id: None,
            from,
            to,
            min_latency_ms: None,
            before: None,
        }
    }
}

/// A `WHERE` clause under construction: conditions and their parameters.
#[derive(Default)]
struct Where {
    conds: Vec<String>,
    params: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl Where {
    /// Adds `cond`, in which `$` stands for the next parameter.
    fn push(&mut self, cond: &str, value: impl ToSql + Sync + Send + 'static) {
        self.params.push(Box::new(value));
        let n = self.params.len();
        self.conds.push(cond.replace('$', &format!("${n}")));
    }

    /// Adds `cond` with two parameters, `$a` and `$b`.
    fn push2(
        &mut self,
        cond: &str,
        a: impl ToSql + Sync + Send + 'static,
        b: impl ToSql + Sync + Send + 'static,
    ) {
        self.params.push(Box::new(a));
        self.params.push(Box::new(b));
        let n = self.params.len();
        self.conds.push(
            cond.replace("$a", &format!("${}", n - 1))
                .replace("$b", &format!("${n}")),
        );
    }

    fn sql(&self) -> String {
        self.conds.join(" AND ")
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| &**p as &(dyn ToSql + Sync))
            .collect()
    }
}

/// Escapes `%`, `_` and `\` for a `LIKE` pattern.
fn like_prefix(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

fn conditions(f: &RequestLogFilter) -> Where {
    let mut w = Where::default();
    w.push("ts >= $", f.from);
    w.push("ts < $", f.to);
    if let Some((ts, id)) = f.before {
        w.push2("(ts, id) < ($a, $b)", ts, id);
    }
    if let Some(k) = f.key_id {
        w.push("key_id = $", k);
    }
    if let Some(r) = &f.route {
        w.push("route = $", r.clone());
    }
    if let Some(m) = &f.method {
        w.push("method = $", m.clone());
    }
    match f.status {
        Some(StatusFilter::Exact(s)) => w.push("status = $", s),
        Some(StatusFilter::Class(c)) => w.push2("status BETWEEN $a AND $b", c * 100, c * 100 + 99),
        None => {}
    }
    if let Some(e) = &f.error_code {
        w.push("error_code = $", e.clone());
    }
    if let Some(p) = &f.path_prefix {
        w.push("path LIKE $", like_prefix(p));
    }
    match f.client_ip {
        Some(IpFilter::Addr(ip)) => w.push("client_ip = $::text::inet", ip.to_string()),
        Some(IpFilter::Net(net)) => w.push("client_ip <<= $::text::inet", net.to_string()),
        None => {}
    }
    if let Some(r) = &f.request_id {
        w.push("request_id = $", r.clone());
    }
    if let Some(ms) = f.min_latency_ms {
        w.push("latency_ms >= $", ms);
    }
    w
}

/// Records matching `f`, newest first (`ts`, then `id`, descending), at
/// most `limit`.
pub async fn list(
    client: &impl GenericClient,
    f: &RequestLogFilter,
    limit: i64,
) -> Result<Vec<RequestLog>, DbError> {
    let mut w = conditions(f);
    w.params.push(Box::new(limit));
    let sql = format!(
        "SELECT {COLUMNS} FROM request_logs WHERE {} ORDER BY ts DESC, id DESC LIMIT ${}",
        w.sql(),
        w.params.len()
    );
    let rows = client.query(&sql, &w.params()).await?;
    Ok(rows
        .iter()
        .map(|r| RequestLog::from_row(r, false))
        .collect())
}

/// The Unix milliseconds in the first 48 bits of a UUIDv7, or None when
/// `id` is not a version 7 UUID.
pub fn id_time(id: Uuid) -> Option<DateTime<Utc>> {
    if id.get_version_num() != 7 {
        return None;
    }
    let b = id.as_bytes();
    let ms = b[..6]
        .iter()
        .fold(0i64, |acc, byte| (acc << 8) | i64::from(*byte));
    DateTime::from_timestamp_millis(ms)
}

/// One record with its bodies. The id's embedded time bounds `ts`, so
/// Postgres reads the one or two partitions around it.
pub async fn get(client: &impl GenericClient, id: Uuid) -> Result<Option<RequestLog>, DbError> {
    let Some(at) = id_time(id) else {
        return Ok(None);
    };
    let sql = format!(
        "SELECT {COLUMNS}, request_body, response_body FROM request_logs \
         WHERE id = $1 AND ts BETWEEN $2 AND $3"
    );
    let row = client
        .query_opt(&sql, &[&id, &(at - ID_TIME_SLACK), &(at + ID_TIME_SLACK)])
        .await?;
    Ok(row.map(|r| RequestLog::from_row(&r, true)))
}

/// The database's clock: `gateway logs tail` measures its overlap window
/// on the clock that the records' times are compared with.
pub async fn now(client: &impl GenericClient) -> Result<DateTime<Utc>, DbError> {
    Ok(client.query_one("SELECT now()", &[]).await?.get(0))
}

/// Records matching `f` after `(ts, id)` (or from `f.from` when `after` is
/// None), oldest first, at most `limit`: one step of a forward scan.
pub async fn list_forward(
    client: &impl GenericClient,
    f: &RequestLogFilter,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<RequestLog>, DbError> {
    let mut w = conditions(f);
    if let Some((ts, id)) = after {
        w.push2("(ts, id) > ($a, $b)", ts, id);
    }
    w.params.push(Box::new(limit));
    let sql = format!(
        "SELECT {COLUMNS} FROM request_logs WHERE {} ORDER BY ts, id LIMIT ${}",
        w.sql(),
        w.params.len()
    );
    let rows = client.query(&sql, &w.params()).await?;
    Ok(rows
        .iter()
        .map(|r| RequestLog::from_row(r, false))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_prefix_escapes_wildcards() {
        assert_eq!(like_prefix("/v1/a_b%c\\"), "/v1/a\\_b\\%c\\\\%");
        assert_eq!(like_prefix(""), "%");
    }

    #[test]
    fn id_time_reads_uuid_v7_milliseconds() {
        let ms = 1_780_000_000_123u64;
        let id = Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            ms / 1000,
            (ms % 1000) as u32 * 1_000_000,
        ));
        assert_eq!(id_time(id).map(|t| t.timestamp_millis()), Some(ms as i64));
        assert_eq!(id_time(Uuid::new_v4()), None);
        assert_eq!(id_time(Uuid::nil()), None);
    }

    #[test]
    fn parameters_are_numbered_in_order() {
        let mut f = RequestLogFilter::window(Utc::now(), Utc::now());
        f.before = Some((Utc::now(), Uuid::nil()));
        f.status = Some(StatusFilter::Class(4));
        f.min_latency_ms = Some(1.5);
        let w = conditions(&f);
        assert_eq!(
            w.sql(),
            "ts >= $1 AND ts < $2 AND (ts, id) < ($3, $4) AND status BETWEEN $5 AND $6 \
             AND latency_ms >= $7"
        );
        assert_eq!(w.params.len(), 7);
    }
}
