//! `[keys]`: the pepper, the key prefix and the `last_used_at` flush.

use std::time::Duration;

use super::validate::positive_ms;
use super::{file, Errors, Need, Secret};

/// Default key prefix (DESIGN §3 "API keys").
pub const DEFAULT_KEY_PREFIX: &str = "gw_live_";
/// Shortest pepper accepted: 32 bytes, the size of the BLAKE3 key it derives.
pub const MIN_PEPPER_LEN: usize = 32;
/// Default budget of Postgres lookups per second for keys missing from the
/// snapshot (DESIGN §3 "API keys" → "Visibility").
pub const DEFAULT_MISS_LOOKUPS_PER_SECOND: u32 = 200;
/// Highest `keys.miss_lookups_per_second` accepted.
pub const MAX_MISS_LOOKUPS_PER_SECOND: u64 = 100_000;

#[derive(Debug, Clone)]
pub struct KeysConfig {
    /// Secret mixed into every key hash. Never logged.
    pub pepper: Secret,
    pub prefix: String,
    pub last_used_flush: Duration,
    /// Postgres lookups per second, at most, of well-formed keys missing
    /// from the snapshot; 0 disables them (default 200).
    pub miss_lookups_per_second: u32,
    /// Keys expired for longer than this many days are deleted by
    /// housekeeping, with an `api_key.purged` audit entry; 0 = never.
    pub purge_expired_after_days: u32,
}

pub(super) fn build_keys(k: file::Keys, need: Need, errs: &mut Errors) -> Option<KeysConfig> {
    let prefix = k.prefix.unwrap_or_else(|| DEFAULT_KEY_PREFIX.to_string());
    let prefix_ok = !prefix.is_empty()
        && prefix.len() <= 16
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !prefix_ok {
        errs.push(
            "keys.prefix",
            "must be 1-16 characters of A-Z, a-z, 0-9 and _",
        );
    }
    let pepper = match k.pepper {
        Some(p) if p.len() >= MIN_PEPPER_LEN => Some(Secret::new(p)),
        Some(_) => {
            errs.push(
                "keys.pepper",
                format!("must be at least {MIN_PEPPER_LEN} bytes (generate one with `openssl rand -hex 32`)"),
            );
            None
        }
        None if need == Need::Database => Some(Secret::new(String::new())),
        None => {
            errs.push(
                "keys.pepper",
                "missing: set [keys] pepper or GATEWAY_KEYS_PEPPER (at least 32 bytes of secret)",
            );
            None
        }
    };
    let flush = positive_ms(k.last_used_flush_ms, 5_000, "keys.last_used_flush_ms", errs);
    let miss_lookups_per_second = match k.miss_lookups_per_second {
        None => DEFAULT_MISS_LOOKUPS_PER_SECOND,
        Some(n) => u32::try_from(n)
            .ok()
            .filter(|n| u64::from(*n) <= MAX_MISS_LOOKUPS_PER_SECOND)
            .unwrap_or_else(|| {
                errs.push(
                    "keys.miss_lookups_per_second",
                    format!("must be 0 (off) to {MAX_MISS_LOOKUPS_PER_SECOND}"),
                );
                DEFAULT_MISS_LOOKUPS_PER_SECOND
            }),
    };
    let purge_expired_after_days = match k.purge_expired_after_days {
        None => 30,
        Some(n @ 0..=36_500) => n as u32,
        Some(_) => {
            errs.push(
                "keys.purge_expired_after_days",
                "must be 0 (never) to 36500 days",
            );
            30
        }
    };
    Some(KeysConfig {
        pepper: pepper?,
        prefix,
        last_used_flush: flush,
        miss_lookups_per_second,
        purge_expired_after_days,
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{minimal, no_env, PEPPER};
    use crate::config::{Config, Need};

    #[test]
    fn missing_pepper_is_fine_for_migrate_only() {
        let text = "[database]\nurl = \"postgres://a@127.0.0.1/b\"\n";
        assert!(Config::from_toml(text, no_env(), Need::Database).is_ok());
        let errs = Config::from_toml(text, no_env(), Need::Keys).unwrap_err();
        assert_eq!(errs.0[0].path, "keys.pepper");
    }

    #[test]
    fn miss_lookups_per_second_is_bounded_and_zero_disables() {
        let with = |v: &str| {
            minimal().replace(
                "[keys]\n",
                &format!("[keys]\nmiss_lookups_per_second = {v}\n"),
            )
        };
        let cfg = Config::from_toml(&with("0"), no_env(), Need::Serve).expect("valid");
        assert_eq!(cfg.keys.miss_lookups_per_second, 0);
        let errs = Config::from_toml(&with("100001"), no_env(), Need::Serve).unwrap_err();
        assert_eq!(errs.0[0].path, "keys.miss_lookups_per_second");
        assert!(Config::from_toml(&with("-1"), no_env(), Need::Serve).is_err());
    }

    #[test]
    fn pepper_is_not_printed_by_debug() {
        let cfg = Config::from_toml(&minimal(), no_env(), Need::Serve).expect("valid");
        assert!(!format!("{cfg:?}").contains(PEPPER));
    }
}
