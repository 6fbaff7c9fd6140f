//! Environment overrides: `GATEWAY_<SECTION>_<KEY>`, `DATABASE_URL` and
//! `REDIS_URL`, applied to the parsed TOML document before any section is
//! built, so an override is validated exactly like the file's value.

use super::{Errors, SECTIONS};

/// `GATEWAY_<SECTION>_<KEY>` overrides one scalar key; `DATABASE_URL` and
/// `REDIS_URL` set the URLs. Values are read as TOML when they parse as a
/// TOML value (`8`, `true`, `["a","b"]`), otherwise as a plain string.
pub(super) fn apply_env(
    doc: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
    errs: &mut Errors,
) {
    // Longest section first so `RATE_LIMITS_` wins over a shorter match.
    let mut sections: Vec<&str> = SECTIONS
        .iter()
        .copied()
        .filter(|s| *s != "upstreams" && *s != "routes")
        .collect();
    sections.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut vars: Vec<(String, String)> = env.into_iter().collect();
    // Explicit GATEWAY_ variables win over the conventional URL variables.
    vars.sort_by_key(|(k, _)| k.starts_with("GATEWAY_"));
    for (name, raw) in vars {
        let (section, key) = match name.as_str() {
            "DATABASE_URL" => ("database", "url".to_string()),
            "REDIS_URL" => ("redis", "url".to_string()),
            _ => {
                let Some(rest) = name.strip_prefix("GATEWAY_") else {
                    continue;
                };
                let lower = rest.to_ascii_lowercase();
                let found = sections.iter().find_map(|s| {
                    lower
                        .strip_prefix(s)
                        .and_then(|r| r.strip_prefix('_'))
                        .filter(|k| !k.is_empty())
                        .map(|k| (*s, k.to_string()))
                });
                match found {
                    Some(f) => f,
                    // GATEWAY_CONFIG and friends are not config keys.
                    None => continue,
                }
            }
        };
        let value = parse_env_value(&raw);
        let table = doc
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match table {
            toml::Value::Table(t) => {
                t.insert(key, value);
            }
            _ => errs.push(section, "must be a table"),
        }
    }
}

pub(super) fn parse_env_value(raw: &str) -> toml::Value {
    let probe = format!("v = {raw}");
    match probe.parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::minimal;
    use crate::config::{Config, Need};

    #[test]
    fn env_overrides_win() {
        let env = vec![
            ("GATEWAY_PROXY_THREADS".to_string(), "3".to_string()),
            (
                "GATEWAY_RATE_LIMITS_BACKEND".to_string(),
                "local".to_string(),
            ),
            (
                "DATABASE_URL".to_string(),
                "postgres://a@127.0.0.1:1/b".to_string(),
            ),
            (
                "GATEWAY_DATABASE_URL".to_string(),
                "postgres://c@127.0.0.1:1/d".to_string(),
            ),
            ("GATEWAY_CONFIG".to_string(), "ignored".to_string()),
        ];
        let cfg = Config::from_toml(&minimal(), env, Need::Serve).expect("valid");
        assert_eq!(cfg.proxy.threads, 3);
        assert_eq!(cfg.database.url, "postgres://c@127.0.0.1:1/d");
    }

    #[test]
    fn env_override_of_unknown_key_is_an_error() {
        let env = vec![("GATEWAY_PROXY_COLOUR".to_string(), "red".to_string())];
        let errs = Config::from_toml(&minimal(), env, Need::Serve).unwrap_err();
        assert_eq!(errs.0[0].path, "proxy.colour");
    }
}
