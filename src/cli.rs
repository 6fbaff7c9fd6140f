//! The `gateway` subcommands other than `serve`: config checks, migrations
//! and key management straight against the database (the bootstrap path for
//! the first admin key, and the fallback when the admin API is unreachable).

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use chrono::Utc;
use uuid::Uuid;

use crate::config::{Config, Limits, Need};
use crate::keys::format::KeyHasher;
use crate::keys::scope::Scope;
use crate::store::{self, keys::NewKey, migrations};

/// Loads the config at `path` with the process environment applied, or
/// returns every error in one message.
pub fn load_config(path: &Path, need: Need) -> anyhow::Result<Config> {
    Config::load(path, std::env::vars(), need).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// Parses `30d`, `12h`, `15m`, `90s`, `2w` (one number, one unit).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30d, 12h, 15m or 90s"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(format!("{s:?}: unit must be one of s, m, h, d, w")),
    };
    n.checked_mul(secs)
        .filter(|v| *v > 0 && *v <= 100 * 365 * 86_400)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s:?} must be between 1s and 100 years"))
}

/// Parses `a,b,c` into scopes, naming the first bad one.
pub fn parse_scopes(s: &str) -> Result<Vec<Scope>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(|x| Scope::parse(x).map_err(|e| e.to_string()))
        .collect()
}

/// Database errors as operators should read them (server code and message).
fn db_error(e: store::DbError) -> anyhow::Error {
    anyhow!(e.describe())
}

async fn connect(cfg: &Config) -> anyhow::Result<tokio_postgres::Client> {
    store::connect(&cfg.database).await.map_err(db_error)
}

pub async fn migrate(cfg: &Config, action: MigrateAction) -> anyhow::Result<()> {
    let mut client = connect(cfg).await?;
    match action {
        MigrateAction::Up => {
            let ran = migrations::up(&mut client).await?;
            if ran.is_empty() {
                println!("database is up to date");
            }
            for v in ran {
                println!("applied {v:04}");
            }
        }
        MigrateAction::Down(n) => {
            for v in migrations::down(&mut client, n).await? {
                println!("reverted {v:04}");
            }
        }
        MigrateAction::Status => {
            for s in migrations::status(&mut client).await? {
                let state = match (s.applied, s.checksum_mismatch) {
                    (true, true) => "applied, CHANGED SINCE",
                    (true, false) => "applied",
                    (false, _) => "pending",
                };
                println!("{:04}  {:<24} {state}", s.version, s.name);
            }
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
pub enum MigrateAction {
    Up,
    Down(usize),
    Status,
}

pub struct CreateArgs {
    pub name: String,
    pub description: String,
    pub scopes: Vec<Scope>,
    pub expires_in: Option<Duration>,
    pub limits: Limits,
    pub json: bool,
}

pub async fn create_key(cfg: &Config, args: CreateArgs) -> anyhow::Result<()> {
    let name = args.name.trim().to_string();
    if name.is_empty() || name.len() > 200 {
        bail!("--name must be 1-200 characters");
    }
    let client = connect(cfg).await?;
    let hasher = KeyHasher::new(cfg.keys.pepper.expose());
    let expires_at = match args.expires_in {
        Some(d) => {
            Some(Utc::now() + chrono::Duration::from_std(d).context("--expires-in is too long")?)
        }
        None => None,
    };
    let new = NewKey {
        name,
        description: args.description,
        scopes: args.scopes,
        limits: args.limits,
        metadata: serde_json::json!({}),
        expires_at,
    };
    let created = store::keys::create(&client, &hasher, &cfg.keys.prefix, &new)
        .await
        .map_err(db_error)?;
    if args.json {
        println!("{}", serde_json::to_string(&created)?);
    } else {
        println!("created key {} ({})", created.row.id, created.row.name);
        println!("scopes:  {}", created.row.scopes.join(","));
        if let Some(t) = created.row.expires_at {
            println!("expires: {}", t.to_rfc3339());
        }
        println!("key:     {}", created.key);
        println!("The key is shown only now; store it somewhere safe.");
    }
    Ok(())
}

pub async fn list_keys(cfg: &Config, limit: i64, json: bool) -> anyhow::Result<()> {
    let client = connect(cfg).await?;
    let rows = store::keys::list(&client, limit).await.map_err(db_error)?;
    if json {
        println!("{}", serde_json::to_string(&rows)?);
        return Ok(());
    }
    println!(
        "{:<36}  {:<20}  {:<12}  {:<8}  {:<20}  SCOPES",
        "ID", "NAME", "PREFIX", "STATUS", "LAST USED"
    );
    for r in rows {
        let status = serde_json::to_value(r.status)?;
        println!(
            "{:<36}  {:<20}  {:<12}  {:<8}  {:<20}  {}",
            r.id,
            truncate(&r.name, 20),
            r.prefix,
            status.as_str().unwrap_or("?"),
            r.last_used_at.map_or("never".to_string(), |t| t
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()),
            r.scopes.join(",")
        );
    }
    Ok(())
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

pub async fn revoke_key(cfg: &Config, id: &str, json: bool) -> anyhow::Result<()> {
    let id = Uuid::parse_str(id.trim()).map_err(|_| anyhow!("{id:?} is not a key id (a UUID)"))?;
    let client = connect(cfg).await?;
    let row = store::keys::revoke(&client, id)
        .await
        .map_err(db_error)?
        .ok_or_else(|| anyhow!("no key with id {id}"))?;
    if json {
        println!("{}", serde_json::to_string(&row)?);
    } else {
        println!(
            "revoked key {} ({}) at {}",
            row.id,
            row.name,
            row.revoked_at.map_or(String::new(), |t| t.to_rfc3339())
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in [
            "",
            "d",
            "10",
            "10x",
            "0s",
            "-1d",
            "99999999999999999999d",
            "1.5h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scopes_list() {
        assert_eq!(parse_scopes("read:a, write:b").map(|v| v.len()), Ok(2));
        assert!(parse_scopes("read:a,Bad").unwrap_err().contains("Bad"));
    }
}
