//! `GET /api/v1/requests` and `GET /api/v1/requests/{id}`: the stored
//! request records, filtered and paged newest first.
//!
//! Every list reads a bounded time window so it touches only the daily
//! partitions it needs: `[from, to)`, where `to` defaults to now and `from`
//! to [`DEFAULT_WINDOW`] before `to`, and the window may span at most
//! [`MAX_WINDOW`]. The cursor is opaque to clients; it carries the last
//! record's `(ts, id)` and the window's start, so following `next_cursor`
//! without `from` keeps the window the first page used instead of sliding
//! it forward with the clock.

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use http::{Response, StatusCode};
use uuid::Uuid;

use super::error::ApiError;
use super::input::Query;
use super::{db, json, page, AdminState};
use crate::store::request_logs::{self, IpFilter, RequestLogFilter, StatusFilter};

/// The window a list reads when `from` is not given: the last day.
pub const DEFAULT_WINDOW: ChronoDuration = ChronoDuration::hours(24);
/// The widest window a list may read (DESIGN §3: a range over 31 days is a
/// validation error).
pub const MAX_WINDOW: ChronoDuration = ChronoDuration::days(31);
/// Longest `path_prefix` accepted.
const MAX_PATH_PREFIX: usize = 2048;
/// Longest `route`, `request_id` and `error_code` accepted.
const MAX_TEXT: usize = 200;
/// Largest `min_latency_ms` accepted (about 11.5 days).
const MAX_LATENCY_MS: f64 = 1e9;

/// 9999-12-31T23:59:59.999999Z in Unix microseconds.
const MAX_CURSOR_MICROS: i64 = 253_402_300_799_999_999;

const NOT_A_CURSOR: &str = "Not a cursor from this API.";

/// Where the next page starts: after the record at `(ts, id)`, in the
/// window that began at `from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    ts: DateTime<Utc>,
    id: Uuid,
    from: DateTime<Utc>,
}

impl Cursor {
    /// 64 hex digits: `ts` and `from` as big-endian Unix microseconds
    /// around the id's 16 bytes.
    fn encode(&self) -> String {
        let mut b = Vec::with_capacity(32);
        b.extend_from_slice(&self.ts.timestamp_micros().to_be_bytes());
        b.extend_from_slice(self.id.as_bytes());
        b.extend_from_slice(&self.from.timestamp_micros().to_be_bytes());
        hex::encode(b)
    }

    fn decode(s: &str) -> Option<Cursor> {
        let b = hex::decode(s).ok()?;
        if b.len() != 32 {
            return None;
        }
        // Only times Postgres and RFC 3339 can hold (years 1970 to 9999):
        // anything else was not handed out by this API.
        let micros = |r: &[u8]| -> Option<DateTime<Utc>> {
            let us = i64::from_be_bytes(r.try_into().ok()?);
            (0..=MAX_CURSOR_MICROS)
                .contains(&us)
                .then(|| DateTime::from_timestamp_micros(us))
                .flatten()
        };
        Some(Cursor {
            ts: micros(&b[..8])?,
            id: Uuid::from_slice(&b[8..24]).ok()?,
            from: micros(&b[24..])?,
        })
    }
}

/// `status`: `429` or a class such as `4xx`.
fn parse_status(v: &str) -> Option<StatusFilter> {
    let v = v.trim();
    match v.as_bytes() {
        [d @ b'1'..=b'5', x, y]
            if x.eq_ignore_ascii_case(&b'x') && y.eq_ignore_ascii_case(&b'x') =>
        {
            Some(StatusFilter::Class(i16::from(d - b'0')))
        }
        _ => match v.parse::<i16>() {
            Ok(n) if (100..=599).contains(&n) => Some(StatusFilter::Exact(n)),
            _ => None,
        },
    }
}

/// `client_ip`: an address or a CIDR network.
fn parse_ip(v: &str) -> Option<IpFilter> {
    if let Ok(ip) = v.parse() {
        return Some(IpFilter::Addr(ip));
    }
    v.parse::<ipnet::IpNet>()
        .ok()
        .map(|n| IpFilter::Net(n.trunc()))
}

/// An HTTP method token, upper-cased (methods are matched case-insensitively).
fn parse_method(v: &str) -> Option<String> {
    let ok = !v.is_empty()
        && v.len() <= 32
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    ok.then(|| v.to_ascii_uppercase())
}

/// Reads the query of a list call at time `now`: the filter and the page size.
fn parse_list(
    query: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(RequestLogFilter, i64), ApiError> {
    let mut q = Query::parse(query);
    let limit = q.limit();
    let cursor = q.take("cursor").and_then(|c| {
        let parsed = Cursor::decode(&c);
        if parsed.is_none() {
            q.problems.add("cursor", NOT_A_CURSOR);
        }
        parsed
    });
    let key_id = q.uuid("key_id");
    let route = q.text("route", MAX_TEXT);
    let method = q.take("method").and_then(|v| {
        let m = parse_method(&v);
        if m.is_none() {
            q.problems
                .add("method", "Must be an HTTP method such as GET.");
        }
        m
    });
    let status = q.take("status").and_then(|v| {
        let s = parse_status(&v);
        if s.is_none() {
            q.problems.add(
                "status",
                "Must be a status code from 100 to 599 such as 429, or a class from 1xx to 5xx.",
            );
        }
        s
    });
    let error_code = q.take("error_code").and_then(|v| {
        let ok = !v.is_empty()
            && v.len() <= MAX_TEXT
            && v.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !ok {
            q.problems.add(
                "error_code",
                "Must be an error code such as rate_limited (lower-case letters, digits and _).",
            );
        }
        ok.then_some(v)
    });
    let path_prefix = q.take("path_prefix").and_then(|v| {
        let ok = v.starts_with('/') && v.chars().count() <= MAX_PATH_PREFIX;
        if !ok {
            q.problems.add(
                "path_prefix",
                format!("Must start with / and be at most {MAX_PATH_PREFIX} characters."),
            );
        }
        ok.then_some(v)
    });
    let client_ip = q.take("client_ip").and_then(|v| {
        let ip = parse_ip(&v);
        if ip.is_none() {
            q.problems.add(
                "client_ip",
                "Must be an IP address such as 203.0.113.7 or a network such as 203.0.113.0/24.",
            );
        }
        ip
    });
    let request_id = q.text("request_id", MAX_TEXT);
    let min_latency_ms = q
        .take("min_latency_ms")
        .and_then(|v| match v.parse::<f64>() {
            Ok(ms) if ms.is_finite() && (0.0..=MAX_LATENCY_MS).contains(&ms) => Some(ms),
            _ => {
                q.problems.add(
                    "min_latency_ms",
                    format!("Must be a number of milliseconds from 0 to {MAX_LATENCY_MS}."),
                );
                None
            }
        });
    let had_from = q.has("from");
    let had_to = q.has("to");
    let from = q.time("from");
    let to = q.time("to");
    // A bad `from` or `to` is reported as such; the window checks below
    // only judge times that parsed.
    let times_ok = (from.is_some() || !had_from) && (to.is_some() || !had_to);
    let to = to.unwrap_or(now);
    let from = from
        .or(cursor.map(|c| c.from))
        .unwrap_or(to - DEFAULT_WINDOW);
    if times_ok {
        // The part of the window a cursor leaves to read.
        let end = cursor.map_or(to, |c| c.ts.min(to));
        if from > to {
            q.problems.add("from", "Must not be after `to`.");
        } else if end - from > MAX_WINDOW {
            q.problems.add(
                "from",
                "The window from `from` to `to` must be at most 31 days.",
            );
        }
    }
    let filter = RequestLogFilter {
        key_id,
        route,
        method,
        status,
        error_code,
        path_prefix,
        client_ip,
        request_id,
        from,
        to,
        min_latency_ms,
        before: cursor.map(|c| (c.ts, c.id)),
    };
    let filter = q.finish().finish(filter)?;
    Ok((filter, limit))
}

pub async fn list_requests(
    s: &AdminState,
    query: Option<&str>,
) -> Result<Response<Vec<u8>>, ApiError> {
    let (filter, limit) = parse_list(query, Utc::now())?;
    let client = db(s).await?;
    let rows = request_logs::list(&**client, &filter, limit + 1).await?;
    let from = filter.from;
    Ok(page(rows, limit, |r| {
        Cursor {
            ts: r.timestamp,
            id: r.id,
            from,
        }
        .encode()
    }))
}

/// One record, bodies included. A malformed id is 404, as on `/keys/{id}`:
/// no record has it.
pub async fn get_request(s: &AdminState, id: Option<&str>) -> Result<Response<Vec<u8>>, ApiError> {
    const NOT_FOUND: ApiError = ApiError::NotFound("No request record with this id.");
    let id = id.and_then(|s| Uuid::parse_str(s).ok()).ok_or(NOT_FOUND)?;
    let client = db(s).await?;
    let row = request_logs::get(&**client, id).await?.ok_or(NOT_FOUND)?;
    Ok(json(StatusCode::OK, &row))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2030-06-15T12:00:00Z")
            .map(|t| t.with_timezone(&Utc))
            .expect("time")
    }

    fn fields(e: ApiError) -> Vec<String> {
        match e {
            ApiError::Validation(d) => d.into_iter().map(|f| f.field).collect(),
            other => panic!("not a validation error: {other:?}"),
        }
    }

    #[test]
    fn status_codes_and_classes() {
        assert_eq!(parse_status("429"), Some(StatusFilter::Exact(429)));
        assert_eq!(parse_status("4xx"), Some(StatusFilter::Class(4)));
        assert_eq!(parse_status("5XX"), Some(StatusFilter::Class(5)));
        for bad in [
            "6xx", "0xx", "4x", "4xxx", "99", "600", "", "x", "-1", "4x5",
        ] {
            assert_eq!(parse_status(bad), None, "{bad}");
        }
    }

    #[test]
    fn addresses_and_networks() {
        assert_eq!(
            parse_ip("203.0.113.7"),
            Some(IpFilter::Addr("203.0.113.7".parse().expect("ip")))
        );
        assert_eq!(
            parse_ip("203.0.113.9/24"),
            Some(IpFilter::Net("203.0.113.0/24".parse().expect("net")))
        );
        assert!(matches!(parse_ip("2001:db8::/32"), Some(IpFilter::Net(_))));
        assert_eq!(parse_ip("203.0.113.0/33"), None);
        assert_eq!(parse_ip("example.com"), None);
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let c = Cursor {
            ts: now(),
            id: Uuid::now_v7(),
            from: now() - DEFAULT_WINDOW,
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        let far = format!("7fffffffffffffff{}{}", "0".repeat(32), "0".repeat(16));
        let negative = format!("{}{}ffffffffffffffff", "0".repeat(16), "0".repeat(32));
        for bad in [
            "",
            "zz",
            "00",
            &"0".repeat(62),
            &"0".repeat(66),
            &far,
            &negative,
        ] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn default_window_is_the_last_day() {
        let (f, limit) = parse_list(None, now()).expect("valid");
        assert_eq!((f.from, f.to), (now() - DEFAULT_WINDOW, now()));
        assert_eq!(limit, crate::admin::input::DEFAULT_PAGE);
        let (f, _) = parse_list(Some("to=2030-01-02T00:00:00Z"), now()).expect("valid");
        assert_eq!(f.from.to_rfc3339(), "2030-01-01T00:00:00+00:00");
    }

    #[test]
    fn a_cursor_keeps_the_window_of_the_first_page() {
        let c = Cursor {
            ts: now() - ChronoDuration::hours(1),
            id: Uuid::now_v7(),
            from: now() - ChronoDuration::hours(30),
        };
        // An hour later the default window would start at a later time.
        let later = now() + ChronoDuration::hours(1);
        let (f, _) = parse_list(Some(&format!("cursor={}", c.encode())), later).expect("valid");
        assert_eq!(f.from, c.from);
        assert_eq!(f.before, Some((c.ts, c.id)));
    }

    #[test]
    fn every_filter_parses() {
        let (f, limit) = parse_list(
            Some(
                "key_id=0190e0e0-0000-7000-8000-000000000001&route=orders&method=post&status=5xx\
                 &error_code=upstream_timeout&path_prefix=/v1/orders&client_ip=10.0.0.0/8\
                 &request_id=abc&from=2030-06-15T00:00:00Z&to=2030-06-15T06:00:00Z\
                 &min_latency_ms=12.5&limit=100",
            ),
            now(),
        )
        .expect("valid");
        assert_eq!(limit, 100);
        assert_eq!(f.method.as_deref(), Some("POST"));
        assert_eq!(f.status, Some(StatusFilter::Class(5)));
        assert_eq!(f.route.as_deref(), Some("orders"));
        assert_eq!(f.min_latency_ms, Some(12.5));
        assert!(matches!(f.client_ip, Some(IpFilter::Net(_))));
        assert!(f.key_id.is_some() && f.request_id.is_some() && f.error_code.is_some());
        assert_eq!(f.path_prefix.as_deref(), Some("/v1/orders"));
    }

    #[test]
    fn bad_filters_name_their_parameter() {
        let cases: &[(&str, &[&str])] = &[
            ("status=6xx", &["status"]),
            ("status=abc", &["status"]),
            ("key_id=nope", &["key_id"]),
            ("from=yesterday", &["from"]),
            ("to=2030-13-01T00:00:00Z", &["to"]),
            (
                "from=2030-06-15T00:00:00Z&to=2030-06-14T00:00:00Z",
                &["from"],
            ),
            (
                "from=2030-05-01T00:00:00Z&to=2030-06-02T00:00:00Z",
                &["from"],
            ),
            ("limit=0", &["limit"]),
            ("limit=101", &["limit"]),
            ("cursor=abc", &["cursor"]),
            ("client_ip=300.1.1.1", &["client_ip"]),
            ("min_latency_ms=-1", &["min_latency_ms"]),
            ("min_latency_ms=NaN", &["min_latency_ms"]),
            ("path_prefix=v1", &["path_prefix"]),
            ("method=GE%20T", &["method"]),
            ("error_code=Rate%20Limited", &["error_code"]),
            ("route=", &["route"]),
            ("bogus=1", &["bogus"]),
        ];
        for (query, want) in cases {
            let got = fields(parse_list(Some(query), now()).expect_err(query));
            assert_eq!(&got, want, "{query}");
        }
        // 31 days exactly is allowed.
        assert!(parse_list(
            Some("from=2030-05-01T00:00:00Z&to=2030-06-01T00:00:00Z"),
            now()
        )
        .is_ok());
    }
}
