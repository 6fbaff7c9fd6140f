//! Validation helpers shared by the section builders. Each one records what
//! is wrong in [`Errors`] under its key path and returns a usable value (or
//! `None`), so validation goes on and reports every problem at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use serde::de::DeserializeOwned;

use super::Errors;

/// Deserializes one value, recording unknown keys and type errors under `path`.
pub(super) fn section<T: DeserializeOwned + Default>(
    value: Option<toml::Value>,
    path: &str,
    errs: &mut Errors,
) -> Option<T> {
    let Some(value) = value else {
        return Some(T::default());
    };
    let mut unknown = Vec::new();
    let result: Result<T, _> = serde_ignored::deserialize(value, |p| unknown.push(p.to_string()));
    for key in unknown {
        errs.push(format!("{path}.{key}"), "unknown key");
    }
    match result {
        Ok(v) => Some(v),
        Err(e) => {
            errs.push(path, e.to_string().trim().to_string());
            None
        }
    }
}

pub(super) fn array_of<T: DeserializeOwned + Default>(
    value: Option<toml::Value>,
    path: &str,
    errs: &mut Errors,
) -> Vec<Option<T>> {
    match value {
        None => Vec::new(),
        Some(toml::Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| section(Some(v), &format!("{path}[{i}]"), errs))
            .collect(),
        Some(_) => {
            errs.push(path, format!("must be an array of tables ([[{path}]])"));
            Vec::new()
        }
    }
}

/// Reports every repeated `field` value among `(index in file, value)` pairs.
pub(super) fn check_unique(
    names: impl Iterator<Item = (usize, String)>,
    list: &str,
    field: &str,
    errs: &mut Errors,
) {
    let mut seen = HashMap::new();
    for (i, n) in names {
        if let Some(first) = seen.insert(n.clone(), i) {
            errs.push(
                format!("{list}[{i}].{field}"),
                format!("duplicate {field} {n:?} (also {list}[{first}])"),
            );
        }
    }
}

pub(super) fn parse_addr(s: &str, path: &str, errs: &mut Errors) -> Option<SocketAddr> {
    match SocketAddr::from_str(s) {
        Ok(a) => Some(a),
        Err(_) => {
            errs.push(path, format!("{s:?} is not an IP:port address"));
            None
        }
    }
}

pub(super) fn check_url(s: &str, schemes: &[&str], path: &str, errs: &mut Errors) -> bool {
    match url::Url::parse(s) {
        Ok(u) if schemes.contains(&u.scheme()) && u.host().is_some() => true,
        Ok(u) => {
            errs.push(
                path,
                format!(
                    "URL scheme must be one of {schemes:?} with a host (got {:?})",
                    u.scheme()
                ),
            );
            false
        }
        Err(e) => {
            errs.push(path, format!("not a valid URL: {e}"));
            false
        }
    }
}

pub(super) fn positive_ms(
    v: Option<u64>,
    default_ms: u64,
    path: &str,
    errs: &mut Errors,
) -> Duration {
    match v {
        Some(0) => {
            errs.push(path, "must be greater than 0");
            Duration::from_millis(default_ms)
        }
        Some(ms) => Duration::from_millis(ms),
        None => Duration::from_millis(default_ms),
    }
}

pub(super) fn parse_cidrs(list: Option<Vec<String>>, path: &str, errs: &mut Errors) -> Vec<IpNet> {
    list.unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            // A bare address means a single host.
            let parsed =
                IpNet::from_str(s).or_else(|_| std::net::IpAddr::from_str(s).map(IpNet::from));
            match parsed {
                Ok(n) => Some(n),
                Err(_) => {
                    errs.push(format!("{path}[{i}]"), format!("{s:?} is not a CIDR or IP"));
                    None
                }
            }
        })
        .collect()
}

pub(super) fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}
