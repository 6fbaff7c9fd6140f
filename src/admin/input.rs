//! Reading admin request input: JSON bodies and query strings, checked
//! field by field so one response lists every problem, each with the path
//! of its field.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::error::ApiError;
use crate::config::Limits;
use crate::errors::FieldError;
use crate::keys::scope::Scope;

/// Errors collected while reading one request.
#[derive(Debug, Default)]
pub struct Problems(Vec<FieldError>);

impl Problems {
    pub fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    /// `Ok(value)` when nothing was wrong, else 400 `validation_failed`.
    pub fn finish<T>(self, value: T) -> Result<T, ApiError> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(ApiError::Validation(self.0))
        }
    }
}

/// A JSON object body whose fields are taken one by one; whatever is left
/// at the end is an unknown field.
pub struct Body {
    fields: Map<String, Value>,
    pub problems: Problems,
}

impl Body {
    /// Parses `bytes` as a JSON object. An empty body is `{}` when
    /// `empty_ok`, else an error.
    pub fn parse(bytes: &[u8], empty_ok: bool) -> Result<Body, ApiError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return if empty_ok {
                Ok(Body {
                    fields: Map::new(),
                    problems: Problems::default(),
                })
            } else {
                Err(ApiError::InvalidJson(
                    "The request needs a JSON object body.".into(),
                ))
            };
        }
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            ApiError::InvalidJson(format!(
                "The body is not valid JSON: {} at line {} column {}.",
                match e.classify() {
                    serde_json::error::Category::Eof => "it ends early",
                    serde_json::error::Category::Io => "it cannot be read",
                    serde_json::error::Category::Syntax => "syntax error",
                    serde_json::error::Category::Data => "unexpected data",
                },
                e.line(),
                e.column()
            ))
        })?;
        match value {
            Value::Object(fields) => Ok(Body {
                fields,
                problems: Problems::default(),
            }),
            _ => {
                let mut problems = Problems::default();
                problems.add("", "The body must be a JSON object.");
                Err(ApiError::Validation(problems.0))
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    pub fn has(&self, name: &str) -> bool {
        self.fields.contains_key(name)
    }

    /// Removes and returns a field: `Some(Value::Null)` for an explicit null.
    pub fn take(&mut self, name: &str) -> Option<Value> {
        self.fields.remove(name)
    }

    /// Reports every field nobody took, then returns the problems.
    pub fn finish(mut self) -> Problems {
        for name in self.fields.keys() {
            self.problems.add(name.clone(), "Unknown field.");
        }
        self.problems
    }

    /// A string of 1 (after trimming) to `max` characters.
    pub fn name(&mut self, field: &str, max: usize) -> Option<String> {
        let v = self.take(field)?;
        let ok = string(&mut self.problems, field, v, max)?;
        let trimmed = ok.trim();
        if trimmed.is_empty() {
            self.problems.add(field, "Must not be empty.");
            return None;
        }
        Some(trimmed.to_string())
    }

    /// A string of at most `max` characters.
    pub fn text(&mut self, field: &str, max: usize) -> Option<String> {
        let v = self.take(field)?;
        string(&mut self.problems, field, v, max)
    }

    /// A list of valid scopes, duplicates removed, order kept.
    pub fn scopes(&mut self, field: &str) -> Option<Vec<Scope>> {
        let v = self.take(field)?;
        let Value::Array(items) = v else {
            self.problems
                .add(field, "Must be an array of scope strings.");
            return None;
        };
        if items.len() > MAX_SCOPES {
            self.problems
                .add(field, format!("At most {MAX_SCOPES} scopes."));
            return None;
        }
        let mut out: Vec<Scope> = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.into_iter().enumerate() {
            let at = format!("{field}[{i}]");
            match item {
                Value::String(s) => match Scope::parse(&s) {
                    Ok(s) if !out.contains(&s) => out.push(s),
                    Ok(_) => {}
                    Err(e) => {
                        self.problems.add(at, e.to_string());
                        ok = false;
                    }
                },
                _ => {
                    self.problems.add(at, "Must be a string.");
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    /// A list of role names (each 1 to `max` characters after trimming),
    /// duplicates removed, order kept. Whether they exist is for the
    /// database to say.
    pub fn role_names(&mut self, field: &str, max: usize) -> Option<Vec<String>> {
        let v = self.take(field)?;
        let Value::Array(items) = v else {
            self.problems.add(field, "Must be an array of role names.");
            return None;
        };
        if items.len() > MAX_ROLES {
            self.problems
                .add(field, format!("At most {MAX_ROLES} roles."));
            return None;
        }
        let mut out: Vec<String> = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.into_iter().enumerate() {
            let at = format!("{field}[{i}]");
            match string(&mut self.problems, &at, item, max) {
                Some(s) if s.trim().is_empty() => {
                    self.problems.add(at, "Must not be empty.");
                    ok = false;
                }
                Some(s) => {
                    let s = s.trim().to_string();
                    if !out.contains(&s) {
                        out.push(s);
                    }
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// An integer in `min..=max`.
    pub fn integer(&mut self, field: &str, min: i64, max: i64) -> Option<i64> {
        let v = self.take(field)?;
        integer(&mut self.problems, field, &v, min, max)
    }

    /// An RFC 3339 time in the future, or `Some(None)` for an explicit null.
    pub fn future_time(&mut self, field: &str) -> Option<Option<DateTime<Utc>>> {
        match self.take(field)? {
            Value::Null => Some(None),
            Value::String(s) => match DateTime::parse_from_rfc3339(&s) {
                Ok(t) if t.with_timezone(&Utc) > Utc::now() => Some(Some(t.with_timezone(&Utc))),
                Ok(_) => {
                    self.problems.add(field, "Must be in the future.");
                    None
                }
                Err(_) => {
                    self.problems.add(
                        field,
                        "Must be an RFC 3339 time such as 2030-01-31T12:00:00Z.",
                    );
                    None
                }
            },
            _ => {
                self.problems
                    .add(field, "Must be an RFC 3339 time string or null.");
                None
            }
        }
    }

    /// Per-key rate-limit overrides; null (or `{}`) clears them all.
    pub fn limits(&mut self, field: &str) -> Option<Limits> {
        let v = self.take(field)?;
        let fields = match v {
            Value::Null => return Some(Limits::default()),
            Value::Object(m) => m,
            _ => {
                self.problems.add(
                    field,
                    "Must be an object with per_minute, per_hour and per_day.",
                );
                return None;
            }
        };
        let mut inner = Body {
            fields,
            problems: Problems::default(),
        };
        let limits = inner.tiers();
        let problems = inner.finish();
        let ok = problems.0.is_empty();
        for p in problems.0 {
            self.problems.add(format!("{field}.{}", p.field), p.message);
        }
        ok.then_some(limits)
    }

    /// `per_minute`, `per_hour` and `per_day` of this object, each a
    /// positive integer or null (absent or null: no override).
    pub fn tiers(&mut self) -> Limits {
        let mut tier = |name: &str| match self.take(name) {
            None | Some(Value::Null) => None,
            Some(v) => integer(&mut self.problems, name, &v, 1, i64::from(i32::MAX))
                .and_then(|n| u32::try_from(n).ok()),
        };
        Limits {
            per_minute: tier("per_minute"),
            per_hour: tier("per_hour"),
            per_day: tier("per_day"),
        }
    }

    /// A JSON object of at most `MAX_METADATA_BYTES` serialised, that
    /// Postgres stores and gives back unchanged.
    pub fn metadata(&mut self, field: &str) -> Option<Value> {
        let v = self.take(field)?;
        if !v.is_object() {
            self.problems.add(field, "Must be a JSON object.");
            return None;
        }
        if let Err(why) = storable(&v) {
            self.problems.add(field, why);
            return None;
        }
        let size = serde_json::to_vec(&v).map_or(usize::MAX, |b| b.len());
        if size > MAX_METADATA_BYTES {
            self.problems.add(
                field,
                format!("Must be at most {MAX_METADATA_BYTES} bytes as JSON (got {size})."),
            );
            return None;
        }
        Some(v)
    }
}

/// Most scopes one key may hold.
pub const MAX_SCOPES: usize = 50;
/// Most roles one key may hold.
pub const MAX_ROLES: usize = crate::store::roles::MAX_ROLES_PER_KEY;
/// Largest `metadata` object, serialised.
pub const MAX_METADATA_BYTES: usize = 4096;

/// Largest magnitude of a number in `metadata`: Postgres keeps numbers as
/// exact decimals, and ones near the limits of a double do not read back.
const MAX_METADATA_NUMBER: f64 = 9.2e18;

/// Whether Postgres can store `v` as jsonb and give it back unchanged: no NUL
/// characters (jsonb and text refuse them) and no extreme numbers.
fn storable(v: &Value) -> Result<(), &'static str> {
    match v {
        Value::String(s) if s.contains('\0') => Err("Must not contain NUL (\\u0000) characters."),
        Value::Number(n) if n.as_f64().is_some_and(|f| f.abs() >= MAX_METADATA_NUMBER) => {
            Err("Numbers must lie between -9.2e18 and 9.2e18.")
        }
        Value::Array(items) => items.iter().try_for_each(storable),
        Value::Object(m) => m.iter().try_for_each(|(k, v)| {
            if k.contains('\0') {
                Err("Must not contain NUL (\\u0000) characters.")
            } else {
                storable(v)
            }
        }),
        _ => Ok(()),
    }
}

fn string(problems: &mut Problems, field: &str, v: Value, max: usize) -> Option<String> {
    match v {
        Value::String(s) if s.contains('\0') => {
            problems.add(field, "Must not contain NUL (\\u0000) characters.");
            None
        }
        Value::String(s) if s.chars().count() <= max => Some(s),
        Value::String(_) => {
            problems.add(field, format!("Must be at most {max} characters."));
            None
        }
        _ => {
            problems.add(field, "Must be a string.");
            None
        }
    }
}

fn integer(problems: &mut Problems, field: &str, v: &Value, min: i64, max: i64) -> Option<i64> {
    match v.as_i64() {
        Some(n) if (min..=max).contains(&n) => Some(n),
        Some(_) => {
            problems.add(field, format!("Must be between {min} and {max}."));
            None
        }
        None if v.is_number() => {
            problems.add(
                field,
                format!("Must be a whole number between {min} and {max}."),
            );
            None
        }
        None => {
            problems.add(field, "Must be an integer.");
            None
        }
    }
}

/// A query string's parameters, taken one by one like [`Body`] fields.
pub struct Query {
    params: BTreeMap<String, String>,
    pub problems: Problems,
}

impl Query {
    pub fn parse(query: Option<&str>) -> Query {
        let mut params = BTreeMap::new();
        let mut problems = Problems::default();
        for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            if v.contains('\0') {
                problems.add(k.to_string(), "Must not contain NUL characters.");
                continue;
            }
            if params.insert(k.to_string(), v.to_string()).is_some() {
                problems.add(k.to_string(), "Given more than once.");
            }
        }
        Query { params, problems }
    }

    pub fn take(&mut self, name: &str) -> Option<String> {
        self.params.remove(name)
    }

    /// Whether the parameter was given (and not yet taken).
    pub fn has(&self, name: &str) -> bool {
        self.params.contains_key(name)
    }

    /// A string of 1 to `max` characters.
    pub fn text(&mut self, name: &str, max: usize) -> Option<String> {
        let v = self.take(name)?;
        if v.is_empty() || v.chars().count() > max {
            self.problems
                .add(name, format!("Must be 1 to {max} characters."));
            return None;
        }
        Some(v)
    }

    /// `limit`: 1..=100, default 20.
    pub fn limit(&mut self) -> i64 {
        match self.take("limit").map(|v| v.parse::<i64>()) {
            None => DEFAULT_PAGE,
            Some(Ok(n)) if (1..=MAX_PAGE).contains(&n) => n,
            Some(_) => {
                self.problems
                    .add("limit", format!("Must be an integer from 1 to {MAX_PAGE}."));
                DEFAULT_PAGE
            }
        }
    }

    pub fn time(&mut self, name: &str) -> Option<DateTime<Utc>> {
        let v = self.take(name)?;
        match DateTime::parse_from_rfc3339(&v) {
            Ok(t) => Some(t.with_timezone(&Utc)),
            Err(_) => {
                self.problems.add(
                    name,
                    "Must be an RFC 3339 time such as 2030-01-31T12:00:00Z.",
                );
                None
            }
        }
    }

    pub fn uuid(&mut self, name: &str) -> Option<uuid::Uuid> {
        let v = self.take(name)?;
        match uuid::Uuid::parse_str(&v) {
            Ok(u) => Some(u),
            Err(_) => {
                self.problems.add(name, "Must be a UUID.");
                None
            }
        }
    }

    /// Reports every parameter nobody took, then returns the problems.
    pub fn finish(mut self) -> Problems {
        for name in self.params.keys() {
            self.problems.add(name.clone(), "Unknown query parameter.");
        }
        self.problems
    }
}

/// Page size when `limit` is not given.
pub const DEFAULT_PAGE: i64 = 20;
/// Largest page a list returns.
pub const MAX_PAGE: i64 = 100;

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(p: Problems) -> Vec<String> {
        p.0.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn body_collects_every_problem_with_its_field() {
        let mut b = Body::parse(
            br#"{"name":"  ","scopes":["read:a","Bad",3],"rate_limits":{"per_minute":0,"per_hour":1.5,"x":1},
                "metadata":[],"expires_at":"2001-01-01T00:00:00Z","extra":true}"#,
            false,
        )
        .expect("object");
        assert!(b.name("name", 200).is_none());
        assert!(b.scopes("scopes").is_none());
        assert!(b.limits("rate_limits").is_none());
        assert!(b.metadata("metadata").is_none());
        assert!(b.future_time("expires_at").is_none());
        assert_eq!(
            fields(b.finish()),
            [
                "name",
                "scopes[1]",
                "scopes[2]",
                "rate_limits.per_minute",
                "rate_limits.per_hour",
                "rate_limits.x",
                "metadata",
                "expires_at",
                "extra"
            ]
        );
    }

    #[test]
    fn bodies_that_are_not_objects() {
        assert!(matches!(
            Body::parse(b"{", false),
            Err(ApiError::InvalidJson(_))
        ));
        assert!(matches!(
            Body::parse(b"[1]", false),
            Err(ApiError::Validation(_))
        ));
        assert!(matches!(
            Body::parse(b"", false),
            Err(ApiError::InvalidJson(_))
        ));
        assert!(Body::parse(b" ", true).is_ok_and(|b| b.is_empty()));
        assert!(matches!(
            Body::parse(b"\xff", false),
            Err(ApiError::InvalidJson(_))
        ));
    }

    #[test]
    fn what_postgres_cannot_store_is_refused() {
        let mut b = Body::parse(
            br#"{"a":{"k\u0000":1},"b":{"k":"v\u0000"},"c":{"n":[1.7976931348623155e308]},
                "d":{"ok":[1.5,-3,"x",{"y":null}]},"name":"x\u0000"}"#,
            false,
        )
        .expect("object");
        assert!(b.metadata("a").is_none());
        assert!(b.metadata("b").is_none());
        assert!(b.metadata("c").is_none());
        assert!(b.metadata("d").is_some());
        assert!(b.name("name", 10).is_none());
        assert_eq!(fields(b.finish()), ["a", "b", "c", "name"]);
        let q = Query::parse(Some("q=%00"));
        assert_eq!(fields(q.finish()), ["q"]);
    }

    #[test]
    fn limits_null_clears_and_values_parse() {
        let mut b = Body::parse(br#"{"a":null,"b":{"per_minute":5,"per_day":null}}"#, false)
            .expect("object");
        assert_eq!(b.limits("a"), Some(Limits::default()));
        let l = b.limits("b").expect("limits");
        assert_eq!((l.per_minute, l.per_hour, l.per_day), (Some(5), None, None));
    }

    #[test]
    fn query_parameters() {
        let mut q = Query::parse(Some("limit=101&status=active&status=revoked&x=1&q="));
        assert_eq!(q.limit(), DEFAULT_PAGE);
        assert!(q.text("q", 10).is_none());
        let _ = q.take("status");
        assert_eq!(fields(q.finish()), ["status", "limit", "q", "x"]);
        let mut q = Query::parse(Some("limit=7"));
        assert_eq!(q.limit(), 7);
        assert!(q.finish().0.is_empty());
    }
}
