//! `GET /api/v1/requests/stats` and `GET /api/v1/keys/{id}/usage`: traffic
//! totals, error counts and latency percentiles from the per-minute rollups
//! only (never the raw logs), so they count every request whatever
//! `sample_rate` kept, and outlive raw partitions.
//!
//! A range counts the whole minutes that overlap `[from, to)`. Ranges are at
//! most [`MAX_RANGE_DAYS`] days (rollups are kept 90 days by default); a
//! `minute` grouping at most a day and an `hour` grouping at most 31 days,
//! so an answer holds at most 1,440 time groups. Only groups with traffic
//! are listed.

use chrono::{DateTime, Duration as TimeDelta, SecondsFormat, Utc};
use http::{Response, StatusCode};
use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::input::Query;
use super::keys::key_id;
use super::{json, AdminState};
use crate::reqlog::histogram::Histogram;
use crate::store::request_stats::{self, GroupBy, GroupSums, StatsFilter};

/// Longest range of a stats or usage query, in days.
pub const MAX_RANGE_DAYS: i64 = 92;
/// Longest range grouped by minute.
const MAX_MINUTE_RANGE_DAYS: i64 = 1;
/// Longest range grouped by hour.
const MAX_HOUR_RANGE_DAYS: i64 = 31;
/// Longest route name accepted as a filter.
const MAX_ROUTE: usize = 200;

/// `from` and `to`, defaulting to the `default` span that ends now (or at
/// `to`); `from` must be before `to` and the span at most `max_days`.
fn range(
    q: &mut Query,
    now: DateTime<Utc>,
    default: TimeDelta,
    group_by: Option<GroupBy>,
) -> (DateTime<Utc>, DateTime<Utc>) {
    let from = q.time("from");
    let to = q.time("to");
    let to_v = to.unwrap_or(now);
    let from_v = from.unwrap_or(to_v - default);
    if from_v >= to_v {
        q.problems.add("from", "Must be before `to`.");
        return (from_v, to_v);
    }
    let (max, field, what) = match group_by {
        Some(GroupBy::Minute) => (MAX_MINUTE_RANGE_DAYS, "group_by", "with group_by=minute "),
        Some(GroupBy::Hour) => (MAX_HOUR_RANGE_DAYS, "group_by", "with group_by=hour "),
        _ => (MAX_RANGE_DAYS, "from", ""),
    };
    if to_v - from_v > TimeDelta::days(max) {
        let days = if max == 1 { "day" } else { "days" };
        let max = if max == 1 {
            String::new()
        } else {
            format!("{max} ")
        };
        q.problems.add(
            field,
            format!("The range from `from` to `to` {what}must be at most {max}{days}."),
        );
    }
    (from_v, to_v)
}

/// `group_by`, one of `allowed`.
fn group_by(q: &mut Query, allowed: &[&str]) -> Option<GroupBy> {
    let v = q.take("group_by")?;
    match GroupBy::parse(&v).filter(|_| allowed.contains(&v.as_str())) {
        Some(g) => Some(g),
        None => {
            q.problems.add(
                "group_by",
                format!("Must be one of: {}.", allowed.join(", ")),
            );
            None
        }
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Milliseconds to three decimals (microseconds), as JSON.
fn ms(v: Option<f64>) -> Value {
    match v {
        Some(v) if v.is_finite() => json!((v * 1000.0).round() / 1000.0),
        _ => Value::Null,
    }
}

/// The figures of one group or of the whole answer.
fn summary(g: &GroupSums, out: &mut Map<String, Value>) {
    let mut h = Histogram::default();
    for &(b, c) in &g.hist {
        h.add(b, c);
    }
    let avg = (g.total > 0).then(|| g.latency_sum_ms / g.total as f64);
    let error_rate = if g.total > 0 {
        g.server_errors as f64 / g.total as f64
    } else {
        0.0
    };
    out.insert("total".into(), json!(g.total));
    out.insert("client_errors".into(), json!(g.client_errors));
    out.insert("server_errors".into(), json!(g.server_errors));
    out.insert("error_rate".into(), json!((error_rate * 1e6).round() / 1e6));
    out.insert(
        "latency_ms".into(),
        json!({
            "avg": ms(avg),
            "p50": ms(h.quantile(0.50)),
            "p95": ms(h.quantile(0.95)),
            "p99": ms(h.quantile(0.99)),
        }),
    );
    out.insert("response_bytes".into(), json!(g.response_bytes));
}

/// Every group added up.
fn overall(groups: &[GroupSums]) -> GroupSums {
    let mut all = GroupSums::default();
    for g in groups {
        all.total += g.total;
        all.client_errors += g.client_errors;
        all.server_errors += g.server_errors;
        all.response_bytes = all.response_bytes.saturating_add(g.response_bytes);
        all.latency_sum_ms += g.latency_sum_ms;
        all.hist.extend_from_slice(&g.hist);
    }
    all
}

/// The answer: the filter's range, the overall figures, and the groups
/// (time groups in time order, status codes ascending, others by traffic).
fn answer(
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    group_by: Option<GroupBy>,
    mut groups: Vec<GroupSums>,
    extra: Option<(&str, Value)>,
) -> Response<Vec<u8>> {
    let mut out = Map::new();
    if let Some((k, v)) = extra {
        out.insert(k.into(), v);
    }
    out.insert("from".into(), json!(rfc3339(from)));
    out.insert("to".into(), json!(rfc3339(to)));
    summary(&overall(&groups), &mut out);
    let listed: Vec<Value> = match group_by {
        None => Vec::new(),
        Some(g) => {
            if g.is_time() {
                groups.sort_by(|a, b| a.key.cmp(&b.key));
            } else if g == GroupBy::Status {
                groups.sort_by_key(|x| x.key.as_deref().and_then(|k| k.parse::<i64>().ok()));
            } else {
                groups.sort_by(|a, b| b.total.cmp(&a.total).then_with(|| a.key.cmp(&b.key)));
            }
            groups
                .iter()
                .map(|x| {
                    let mut m = Map::new();
                    let key = match (&x.key, g) {
                        (None, _) => Value::Null,
                        (Some(k), GroupBy::Status) => {
                            k.parse::<i64>().map_or_else(|_| json!(k), |n| json!(n))
                        }
                        (Some(k), _) => json!(k),
                    };
                    m.insert("key".into(), key);
                    summary(x, &mut m);
                    Value::Object(m)
                })
                .collect()
        }
    };
    out.insert("groups".into(), Value::Array(listed));
    json(StatusCode::OK, &Value::Object(out))
}

async fn run(s: &AdminState, f: &StatsFilter) -> Result<Vec<GroupSums>, ApiError> {
    let mut client = super::db(s).await?;
    Ok(request_stats::stats(&mut client, f).await?)
}

/// `GET /api/v1/requests/stats`.
pub async fn request_stats(
    s: &AdminState,
    query: Option<&str>,
) -> Result<Response<Vec<u8>>, ApiError> {
    let mut q = Query::parse(query);
    let group_by = group_by(&mut q, GroupBy::NAMES);
    let (from, to) = range(&mut q, Utc::now(), TimeDelta::hours(1), group_by);
    let key_id = q.uuid("key_id");
    let route = q.text("route", MAX_ROUTE);
    let filter = StatsFilter {
        from,
        to,
        key_id,
        route,
        group_by,
    };
    let filter = q.finish().finish(filter)?;
    let groups = run(s, &filter).await?;
    Ok(answer(from, to, group_by, groups, None))
}

/// `GET /api/v1/keys/{id}/usage`: one key's traffic, by hour or day
/// (default: the last 7 days by day).
pub async fn key_usage(
    s: &AdminState,
    id: Option<&str>,
    query: Option<&str>,
) -> Result<Response<Vec<u8>>, ApiError> {
    let id = key_id(id)?;
    let mut q = Query::parse(query);
    let group_by = group_by(&mut q, &["hour", "day"]).or(Some(GroupBy::Day));
    let (from, to) = range(&mut q, Utc::now(), TimeDelta::days(7), group_by);
    let filter = StatsFilter {
        from,
        to,
        key_id: Some(id),
        route: None,
        group_by,
    };
    let filter = q.finish().finish(filter)?;
    {
        let client = super::db(s).await?;
        if !request_stats::key_exists(&**client, id).await? {
            return Err(ApiError::NotFound("No key with this id."));
        }
    }
    let groups = run(s, &filter).await?;
    Ok(answer(
        from,
        to,
        group_by,
        groups,
        Some(("key_id", json!(id))),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2030-06-01T12:00:30Z")
            .expect("time")
            .with_timezone(&Utc)
    }

    fn problems(query: &str, default: TimeDelta) -> (Vec<String>, (DateTime<Utc>, DateTime<Utc>)) {
        let mut q = Query::parse(Some(query));
        let g = group_by(&mut q, GroupBy::NAMES);
        let r = range(&mut q, now(), default, g);
        let _ = q.take("key_id");
        let fields = match q.finish().finish(()) {
            Ok(()) => Vec::new(),
            Err(ApiError::Validation(d)) => d.into_iter().map(|e| e.field).collect(),
            Err(e) => panic!("{e:?}"),
        };
        (fields, r)
    }

    #[test]
    fn the_default_range_is_the_last_hour_and_bad_filters_name_their_parameter() {
        let (p, (from, to)) = problems("", TimeDelta::hours(1));
        assert!(p.is_empty());
        assert_eq!((to - from, to), (TimeDelta::hours(1), now()));
        let (_, (from, _)) = problems("to=2030-01-01T00:00:00Z", TimeDelta::hours(1));
        assert_eq!(rfc3339(from), "2029-12-31T23:00:00Z");
        for (query, field) in [
            ("group_by=week", "group_by"),
            ("from=yesterday", "from"),
            ("to=2030-13-01T00:00:00Z", "to"),
            ("from=2030-06-01T13:00:00Z", "from"),
            ("from=2030-06-01T12:00:00Z&to=2030-06-01T12:00:00Z", "from"),
            ("from=2030-01-01T00:00:00Z", "from"),
            ("from=2030-05-30T00:00:00Z&group_by=minute", "group_by"),
            ("from=2030-04-01T00:00:00Z&group_by=hour", "group_by"),
            ("colour=red", "colour"),
        ] {
            let (p, _) = problems(query, TimeDelta::hours(1));
            assert_eq!(p, [field], "{query}");
        }
        let (p, _) = problems(
            "from=2030-03-15T00:00:00Z&group_by=day",
            TimeDelta::hours(1),
        );
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn answers_merge_groups_and_show_sentinels_as_null() {
        let g = |key: Option<&str>, total: i64, server: i64, hist: Vec<(usize, i64)>| GroupSums {
            key: key.map(str::to_string),
            total,
            client_errors: 0,
            server_errors: server,
            response_bytes: total * 10,
            latency_sum_ms: total as f64 * 2.0,
            hist,
        };
        let resp = answer(
            now() - TimeDelta::hours(1),
            now(),
            Some(GroupBy::Route),
            vec![
                g(None, 1, 0, vec![(1, 1)]),
                g(Some("echo"), 3, 3, vec![(40, 3)]),
            ],
            None,
        );
        let v: Value = serde_json::from_slice(resp.body()).expect("json");
        assert_eq!(v["total"], 4);
        assert_eq!(v["server_errors"], 3);
        assert_eq!(v["error_rate"], 0.75);
        assert_eq!(v["response_bytes"], 40);
        assert_eq!(v["latency_ms"]["avg"], 2.0);
        assert_eq!(v["groups"][0]["key"], "echo");
        assert_eq!(v["groups"][1]["key"], Value::Null);
        assert_eq!(v["from"], "2030-06-01T11:00:30Z");
        let empty = answer(now(), now(), None, Vec::new(), None);
        let v: Value = serde_json::from_slice(empty.body()).expect("json");
        assert_eq!(v["total"], 0);
        assert_eq!(v["error_rate"], 0.0);
        assert_eq!(v["latency_ms"]["p99"], Value::Null);
        assert_eq!(v["groups"], json!([]));
    }
}
