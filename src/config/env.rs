//! Environment overrides: `GATEWAY_<SECTION>_<KEY>`, `DATABASE_URL` and
//! `REDIS_URL`, applied to the parsed TOML document before any section is
//! built, so an override is validated exactly like the file's value.

use super::{file, Errors, SECTIONS};

/// `GATEWAY_<SECTION>_<KEY>` overrides one scalar key; `DATABASE_URL` and
/// `REDIS_URL` set the URLs. A key the schema types as a string (URLs, the
/// pepper, prefixes, names) takes the value as it is, byte for byte; any
/// other key reads it as a TOML value (`8`, `true`, `["a","b"]`), or as a
/// string when it does not parse, for the schema to refuse by name.
pub(super) fn apply_env(
    doc: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
    errs: &mut Errors,
) {
    // Longest section first so `RATE_LIMITS_` wins over a shorter match.
    let mut sections: Vec<&str> = SECTIONS
        .iter()
        .copied()
        .filter(|s| !ARRAY_SECTIONS.contains(s))
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
        let value = if takes_string(section, &key, &raw) {
            toml::Value::String(raw)
        } else {
            parse_env_value(&raw)
        };
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

/// Whether the schema of `section` accepts `key = "<raw>"`: the file types
/// decide, so a secret that happens to read as a number, a boolean or a
/// date (`GATEWAY_KEYS_PEPPER=1234…`) is never turned into one. A key the
/// section does not have counts as a string; it is reported as unknown.
/// Sections made of arrays of tables, which env variables cannot address.
const ARRAY_SECTIONS: &[&str] = &["upstreams", "routes", "jwt"];

fn takes_string(section: &str, key: &str, raw: &str) -> bool {
    fn fits<T: serde::de::DeserializeOwned>(t: toml::Table) -> bool {
        t.try_into::<T>().is_ok()
    }
    let mut t = toml::Table::new();
    t.insert(key.to_string(), toml::Value::String(raw.to_string()));
    match section {
        "proxy" => fits::<file::Proxy>(t),
        "admin" => fits::<file::Admin>(t),
        "database" => fits::<file::Database>(t),
        "redis" => fits::<file::Redis>(t),
        "keys" => fits::<file::Keys>(t),
        "rate_limits" => fits::<file::RateLimits>(t),
        "log" => fits::<file::Log>(t),
        "request_logs" => fits::<file::RequestLogs>(t),
        "webhooks" => fits::<file::Webhooks>(t),
        "housekeeping" => fits::<file::Housekeeping>(t),
        _ => false,
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
    use super::super::SECTIONS;
    use super::takes_string;
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
    fn env_values_keep_the_type_the_schema_gives_the_key() {
        // Each of these parses as TOML (a float, an integer, a boolean, a
        // date-time, a quoted string) but the keys they set are strings.
        let pepper = "3.14159265358979323846264338327950288";
        let env = vec![
            ("GATEWAY_KEYS_PEPPER".to_string(), pepper.to_string()),
            ("GATEWAY_KEYS_PREFIX".to_string(), "1234".to_string()),
            (
                "REDIS_URL".to_string(),
                "redis://127.0.0.1:6379".to_string(),
            ),
            ("GATEWAY_REDIS_KEY_PREFIX".to_string(), "true".to_string()),
            ("GATEWAY_PROXY_THREADS".to_string(), "3".to_string()),
        ];
        let cfg = Config::from_toml(&minimal(), env, Need::Serve);
        let cfg = match cfg {
            Ok(cfg) => cfg,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(cfg.keys.pepper.expose(), pepper);
        assert_eq!(cfg.keys.prefix, "1234");
        assert_eq!(
            cfg.redis.as_ref().map(|r| r.key_prefix.as_str()),
            Some("true")
        );
        assert_eq!(cfg.proxy.threads, 3, "numbers stay numbers");

        // A date-time-looking pepper stays the same bytes.
        let pepper = "1979-05-27T07:32:00Z-and-then-some-more-secret";
        let env = vec![("GATEWAY_KEYS_PEPPER".to_string(), pepper.to_string())];
        let cfg = Config::from_toml(&minimal(), env, Need::Serve).expect("valid");
        assert_eq!(cfg.keys.pepper.expose(), pepper);
        // A quoted value is the raw string, quotes included: env values are
        // never unquoted, so a secret is never changed on the way in.
        let quoted = "\"a-pepper-in-quotes-a-pepper-in-quotes\"";
        let env = vec![("GATEWAY_KEYS_PEPPER".to_string(), quoted.to_string())];
        let cfg = Config::from_toml(&minimal(), env, Need::Serve).expect("valid");
        assert_eq!(cfg.keys.pepper.expose(), quoted);
        // A non-string key still takes TOML, and a bad one is an error.
        let env = vec![(
            "GATEWAY_RATE_LIMITS_EXEMPT_IPS".to_string(),
            "[\"10.0.0.0/8\"]".to_string(),
        )];
        assert!(Config::from_toml(&minimal(), env, Need::Serve).is_ok());
        let env = vec![("GATEWAY_PROXY_THREADS".to_string(), "many".to_string())];
        assert!(Config::from_toml(&minimal(), env, Need::Serve).is_err());
    }

    #[test]
    fn every_env_section_is_typed_by_its_schema() {
        // A section missing from `takes_string` would fall back to guessing
        // types from the value; an unknown key of a known section is a string.
        for section in SECTIONS
            .iter()
            .filter(|s| !super::ARRAY_SECTIONS.contains(s))
        {
            assert!(takes_string(section, "no_such_key", "1"), "{section}");
        }
    }

    #[test]
    fn env_override_of_unknown_key_is_an_error() {
        let env = vec![("GATEWAY_PROXY_COLOUR".to_string(), "red".to_string())];
        let errs = Config::from_toml(&minimal(), env, Need::Serve).unwrap_err();
        assert_eq!(errs.0[0].path, "proxy.colour");
    }
}
