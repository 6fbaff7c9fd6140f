//! The `gateway` subcommands other than `serve`: config checks, migrations,
//! key, role and webhook management straight against the database (the bootstrap
//! path for the first admin key, and the fallback when the admin API is
//! unreachable).

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::config::{Config, Limits, Need};
use crate::keys::scope::Scope;
use crate::service::keys::{Authority, KeyService, KeyUpdate, OpError, MAX_ROTATION_GRACE};
use crate::store::audit::{self, AuditChain, Origin, Verdict};
use crate::store::keys::{CreatedKey, KeyRow, NewKey};
use crate::store::roles::{self, NewRole, RoleError, RoleOps, RoleRow, RoleUpdate};
use crate::store::webhook_admin::{self, DeliveryFilter, NewWebhook, WebhookOps};
use crate::store::{self, migrations};
use crate::webhooks::dispatch::Dispatch;
use crate::webhooks::secret::SecretBox;
use crate::webhooks::ssrf;

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

/// What `gateway health` asks when neither `--url` nor a config is given:
/// the image's HEALTHCHECK, against the admin listener's default port.
pub const DEFAULT_HEALTH_URL: &str = "http://127.0.0.1:9090/health/ready";

/// The readiness URL of an admin listener bound to `addr`. A wildcard bind
/// (`0.0.0.0`, `::`, as in a container) is reached over loopback.
pub fn health_url(addr: std::net::SocketAddr) -> String {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    format!(
        "http://{}/health/ready",
        std::net::SocketAddr::new(ip, addr.port())
    )
}

/// `gateway health`: one HTTP/1.1 GET of `url` (plain http, as the admin
/// listener speaks), all of it within `timeout`. Ok on 200; otherwise an
/// error that says in one line what went wrong and where. Hand-written over
/// a TcpStream so the probe needs no TLS stack, proxy settings or curl.
pub async fn health(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let target = HealthTarget::parse(url)?;
    match tokio::time::timeout(timeout, target.get()).await {
        Ok(Ok(200)) => Ok(()),
        Ok(Ok(status)) => bail!("{url}: answered {status}, not 200"),
        Ok(Err(e)) => Err(e.context(url.to_string())),
        Err(_) => bail!(
            "{url}: no answer from {} within {}s",
            target.addr,
            timeout.as_secs_f64()
        ),
    }
}

struct HealthTarget {
    /// `host:port` as dialled (and named in errors).
    addr: String,
    host: String,
    path: String,
}

impl HealthTarget {
    fn parse(raw: &str) -> anyhow::Result<Self> {
        let url = url::Url::parse(raw).map_err(|e| anyhow!("{raw:?} is not a URL: {e}"))?;
        if url.scheme() != "http" {
            bail!("{raw}: only http:// is supported (the admin listener has no TLS)");
        }
        let host = match url.host() {
            Some(url::Host::Ipv6(ip)) => format!("[{ip}]"),
            Some(h) => h.to_string(),
            None => bail!("{raw}: no host"),
        };
        let port = url.port_or_known_default().unwrap_or(80);
        let mut path = url.path().to_string();
        if let Some(q) = url.query() {
            path = format!("{path}?{q}");
        }
        Ok(Self {
            addr: format!("{host}:{port}"),
            host,
            path,
        })
    }

    /// Sends the request and returns the status code of the answer.
    async fn get(&self) -> anyhow::Result<u16> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(&self.addr)
            .await
            .with_context(|| format!("cannot connect to {}", self.addr))?;
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: gateway-health\r\nConnection: close\r\n\r\n",
            self.path, self.host
        );
        stream
            .write_all(request.as_bytes())
            .await
            .with_context(|| format!("cannot send to {}", self.addr))?;
        // Only the status line matters; it must arrive within 1 KiB.
        let mut buf = Vec::with_capacity(1024);
        loop {
            if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
                return parse_status_line(&buf[..end])
                    .ok_or_else(|| anyhow!("{} answered something that is not HTTP", self.addr));
            }
            if buf.len() >= 1024 {
                bail!("{} answered something that is not HTTP", self.addr);
            }
            let mut chunk = [0u8; 512];
            let n = stream
                .read(&mut chunk)
                .await
                .with_context(|| format!("cannot read from {}", self.addr))?;
            if n == 0 {
                bail!("{} closed the connection without answering", self.addr);
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// `HTTP/1.1 200 OK` → 200.
fn parse_status_line(line: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

#[cfg(test)]
mod health_tests {
    use super::*;

    #[test]
    fn wildcard_admin_binds_are_probed_over_loopback() {
        let url = |s: &str| health_url(s.parse().unwrap());
        assert_eq!(url("0.0.0.0:9090"), "http://127.0.0.1:9090/health/ready");
        assert_eq!(url("[::]:9191"), "http://[::1]:9191/health/ready");
        assert_eq!(url("10.1.2.3:9090"), "http://10.1.2.3:9090/health/ready");
    }

    #[test]
    fn targets() {
        let t = HealthTarget::parse("http://127.0.0.1:9090/health/ready").unwrap();
        assert_eq!(
            (t.addr.as_str(), t.path.as_str()),
            ("127.0.0.1:9090", "/health/ready")
        );
        let t = HealthTarget::parse("http://[::1]:9/x?y=1").unwrap();
        assert_eq!((t.addr.as_str(), t.path.as_str()), ("[::1]:9", "/x?y=1"));
        assert_eq!(HealthTarget::parse("http://gw/").unwrap().addr, "gw:80");
        for bad in ["https://127.0.0.1:9090/", "127.0.0.1:9090", "http://"] {
            assert!(HealthTarget::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK"), Some(200));
        assert_eq!(
            parse_status_line(b"HTTP/1.0 503 Service Unavailable"),
            Some(503)
        );
        assert_eq!(parse_status_line(b"HTTP/1.1 200"), Some(200));
        for bad in [
            &b"SSH-2.0-OpenSSH"[..],
            b"HTTP/1.1 2000 OK",
            b"",
            b"HTTP/2 200",
        ] {
            assert_eq!(parse_status_line(bad), None);
        }
    }
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
    /// Names of roles the key holds.
    pub roles: Vec<String>,
    pub json: bool,
}

/// The CLI's key operations: unrestricted, audited with actor `cli`.
async fn key_ops(cfg: &Config) -> anyhow::Result<(tokio_postgres::Client, KeyService, Origin)> {
    Ok((connect(cfg).await?, KeyService::new(cfg), Origin::cli()))
}

fn op_error(id: Uuid) -> impl Fn(OpError) -> anyhow::Error {
    move |e| match e {
        OpError::NotFound => anyhow!("no key with id {id}"),
        OpError::Revoked => anyhow!("key {id} is revoked; a revoked key cannot change"),
        OpError::Forbidden(s) => anyhow!("not allowed: needs scope {s}"),
        OpError::NeedsAdmin(what) => anyhow!("not allowed: {what} needs scope admin"),
        OpError::Invalid(details) => anyhow!(
            "{}",
            details
                .iter()
                .map(|d| d.message.clone())
                .collect::<Vec<_>>()
                .join(" ")
        ),
        OpError::Db(e) => db_error(e),
    }
}

fn parse_id(id: &str) -> anyhow::Result<Uuid> {
    Uuid::parse_str(id.trim()).map_err(|_| anyhow!("{id:?} is not a key id (a UUID)"))
}

fn name_arg(name: &str) -> anyhow::Result<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        bail!("--name must be 1-200 characters");
    }
    Ok(name.to_string())
}

fn in_future(d: Duration, flag: &str) -> anyhow::Result<DateTime<Utc>> {
    Ok(
        Utc::now()
            + chrono::Duration::from_std(d).with_context(|| format!("{flag} is too long"))?,
    )
}

/// Prints a key together with its plaintext, which is shown only now.
fn print_secret(verb: &str, k: &CreatedKey, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(k)?);
        return Ok(());
    }
    println!("{verb} key {} ({})", k.row.id, k.row.name);
    println!("scopes:  {}", k.row.scopes.join(","));
    if !k.row.roles.is_empty() {
        println!("roles:   {}", k.row.roles.join(", "));
    }
    if let Some(t) = k.row.expires_at {
        println!("expires: {}", t.to_rfc3339());
    }
    if let Some(t) = k
        .row
        .rotation
        .as_ref()
        .and_then(|r| r.previous_key_expires_at)
    {
        println!("the previous secret works until {}", t.to_rfc3339());
    }
    println!("key:     {}", k.key);
    println!("The key is shown only now; store it somewhere safe.");
    Ok(())
}

fn print_row(verb: &str, r: &KeyRow, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
    } else {
        println!("{verb} key {} ({})", r.id, r.name);
    }
    Ok(())
}

pub async fn create_key(cfg: &Config, args: CreateArgs) -> anyhow::Result<()> {
    let name = name_arg(&args.name)?;
    let expires_at = match args.expires_in {
        Some(d) => Some(in_future(d, "--expires-in")?),
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
    let roles = role_names(&args.roles)?;
    let (mut client, ops, origin) = key_ops(cfg).await?;
    let created = ops
        .create_with_roles(&mut client, &origin, &Authority::Unrestricted, &new, &roles)
        .await
        .map_err(op_error(Uuid::nil()))?;
    print_secret("created", &created, args.json)
}

/// `gateway keys update`: the fields given change, the others stay.
pub struct UpdateArgs {
    pub id: String,
    pub name: Option<String>,
    pub description: Option<String>,
    pub scopes: Option<Vec<Scope>>,
    pub expires_in: Option<Duration>,
    pub no_expiry: bool,
    /// Replaces all overrides when set.
    pub limits: Option<Limits>,
    pub metadata: Option<String>,
    /// Replaces the key's roles (by name) when set; empty removes them all.
    pub roles: Option<Vec<String>>,
    pub json: bool,
}

pub async fn update_key(cfg: &Config, args: UpdateArgs) -> anyhow::Result<()> {
    let id = parse_id(&args.id)?;
    let metadata = match args.metadata {
        Some(m) => {
            let v: serde_json::Value =
                serde_json::from_str(&m).context("--metadata must be a JSON object")?;
            if !v.is_object() {
                bail!("--metadata must be a JSON object");
            }
            Some(v)
        }
        None => None,
    };
    let expires_at = match (args.expires_in, args.no_expiry) {
        (Some(d), false) => Some(Some(in_future(d, "--expires-in")?)),
        (None, true) => Some(None),
        (None, false) => None,
        (Some(_), true) => bail!("give --expires-in or --no-expiry, not both"),
    };
    if args.name.is_none()
        && args.description.is_none()
        && args.scopes.is_none()
        && expires_at.is_none()
        && args.limits.is_none()
        && metadata.is_none()
        && args.roles.is_none()
    {
        bail!("nothing to change: give at least one of --name, --description, --scopes, --expires-in, --no-expiry, --per-minute/--per-hour/--per-day, --clear-limits, --metadata, --role, --no-roles");
    }
    let change = KeyUpdate {
        name: args.name.as_deref().map(name_arg).transpose()?,
        description: args.description,
        scopes: args.scopes,
        expires_at,
        limits: args.limits,
        metadata,
        roles: args.roles.as_deref().map(role_names).transpose()?,
    };
    let (mut client, ops, origin) = key_ops(cfg).await?;
    let row = ops
        .update(&mut client, &origin, &Authority::Unrestricted, id, change)
        .await
        .map_err(op_error(id))?;
    print_row("updated", &row, args.json)
}

pub async fn rotate_key(cfg: &Config, id: &str, grace: Duration, json: bool) -> anyhow::Result<()> {
    let id = parse_id(id)?;
    if grace > MAX_ROTATION_GRACE {
        bail!("--grace must be at most 7d");
    }
    let (mut client, ops, origin) = key_ops(cfg).await?;
    let rotated = ops
        .rotate(&mut client, &origin, &Authority::Unrestricted, id, grace)
        .await
        .map_err(op_error(id))?;
    print_secret("rotated", &rotated, json)
}

/// Parses a rotation grace period: `0` or a duration such as `1h`.
pub fn parse_grace(s: &str) -> Result<Duration, String> {
    if matches!(s.trim(), "0" | "0s") {
        return Ok(Duration::ZERO);
    }
    parse_duration(s)
}

/// `gateway audit verify`: walks the chain; an error names the first broken entry.
pub async fn verify_audit(cfg: &Config) -> anyhow::Result<()> {
    let client = connect(cfg).await?;
    let chain = AuditChain::new(cfg.keys.pepper.expose());
    match audit::verify(&client, &chain).await.map_err(db_error)? {
        Verdict::Intact { entries, head } => {
            println!("audit log intact: {entries} entries");
            if let Some(h) = head {
                println!("head hash: {h}");
                println!(
                    "(record the head hash elsewhere to detect removal of the newest entries)"
                );
            }
            Ok(())
        }
        Verdict::Broken {
            id,
            checked,
            reason,
        } => {
            bail!("audit log broken at entry {id}: {reason}; the {checked} entries before it check out")
        }
    }
}

pub async fn list_keys(cfg: &Config, limit: i64, json: bool) -> anyhow::Result<()> {
    let client = connect(cfg).await?;
    let rows = store::keys::list(&client, &Default::default(), limit)
        .await
        .map_err(db_error)?;
    if json {
        println!("{}", serde_json::to_string(&rows)?);
        return Ok(());
    }
    // The display prefix is `keys.prefix` and 4 characters.
    let prefix_width = (cfg.keys.prefix.len() + crate::keys::format::DISPLAY_RANDOM_LEN).max(6);
    println!(
        "{:<36}  {:<20}  {:<prefix$}  {:<8}  {:<20}  SCOPES",
        "ID",
        "NAME",
        "PREFIX",
        "STATUS",
        "LAST USED",
        prefix = prefix_width,
    );
    for r in rows {
        let status = serde_json::to_value(r.status)?;
        println!(
            "{:<36}  {:<20}  {:<prefix$}  {:<8}  {:<20}  {}",
            r.id,
            truncate(&r.name, 20),
            r.prefix,
            status.as_str().unwrap_or("?"),
            r.last_used_at.map_or("never".to_string(), |t| t
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()),
            r.scopes.join(","),
            prefix = prefix_width,
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
    let id = parse_id(id)?;
    let (mut client, ops, origin) = key_ops(cfg).await?;
    let row = ops
        .revoke(&mut client, &origin, &Authority::Unrestricted, id)
        .await
        .map_err(op_error(id))?;
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

/// Role names as given to `--role`: trimmed, non-empty, duplicates dropped.
fn role_names(names: &[String]) -> anyhow::Result<Vec<String>> {
    let mut out: Vec<String> = Vec::with_capacity(names.len());
    for n in names {
        let n = n.trim();
        if n.is_empty() || n.chars().count() > roles::MAX_NAME {
            bail!("--role must be 1-{} characters", roles::MAX_NAME);
        }
        if !out.iter().any(|o| o == n) {
            out.push(n.to_string());
        }
    }
    if out.len() > roles::MAX_ROLES_PER_KEY {
        bail!("a key holds at most {} roles", roles::MAX_ROLES_PER_KEY);
    }
    Ok(out)
}

/// `gateway roles create`.
pub struct RoleCreateArgs {
    pub name: String,
    pub description: String,
    pub scopes: Vec<Scope>,
    pub json: bool,
}

/// `gateway roles update`: the fields given change, the others stay.
pub struct RoleUpdateArgs {
    /// The role's id or name.
    pub role: String,
    pub name: Option<String>,
    pub description: Option<String>,
    pub scopes: Option<Vec<Scope>>,
    pub json: bool,
}

fn role_error(role: &str) -> impl Fn(RoleError) -> anyhow::Error + '_ {
    move |e| match e {
        RoleError::NotFound => anyhow!("no role {role:?}"),
        RoleError::NameTaken => anyhow!("a role with this name already exists"),
        RoleError::Db(e) => db_error(e),
    }
}

fn role_description(d: &str) -> anyhow::Result<String> {
    if d.chars().count() > roles::MAX_DESCRIPTION {
        bail!(
            "--description must be at most {} characters",
            roles::MAX_DESCRIPTION
        );
    }
    Ok(d.to_string())
}

/// The id of the role named or identified by `role`.
async fn find_role(client: &tokio_postgres::Client, role: &str) -> anyhow::Result<Uuid> {
    let role = role.trim();
    if let Ok(id) = Uuid::parse_str(role) {
        if roles::get(client, id).await.map_err(db_error)?.is_some() {
            return Ok(id);
        }
    }
    roles::get_by_name(client, role)
        .await
        .map_err(db_error)?
        .map(|r| r.id)
        .ok_or_else(|| anyhow!("no role named or with id {role:?}"))
}

fn print_role(verb: &str, r: &RoleRow, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
    } else {
        println!(
            "{verb} role {} ({}): scopes {}; held by {} keys",
            r.id,
            r.name,
            r.scopes.join(","),
            r.key_count
        );
    }
    Ok(())
}

/// Creates a role straight in the database, audited with actor `cli`.
pub async fn create_role(cfg: &Config, args: RoleCreateArgs) -> anyhow::Result<()> {
    let new = NewRole {
        name: name_arg(&args.name)?,
        description: role_description(&args.description)?,
        scopes: args.scopes,
    };
    let chain = AuditChain::new(cfg.keys.pepper.expose());
    let mut client = connect(cfg).await?;
    let row = RoleOps { chain: &chain }
        .create(&mut client, &Origin::cli(), &new)
        .await
        .map_err(role_error(&new.name))?;
    print_role("created", &row, args.json)
}

pub async fn list_roles(cfg: &Config, limit: i64, json: bool) -> anyhow::Result<()> {
    let client = connect(cfg).await?;
    let rows = roles::list(&client, None, limit).await.map_err(db_error)?;
    if json {
        println!("{}", serde_json::to_string(&rows)?);
        return Ok(());
    }
    println!("{:<36}  {:<20}  {:>6}  SCOPES", "ID", "NAME", "KEYS");
    for r in rows {
        println!(
            "{:<36}  {:<20}  {:>6}  {}",
            r.id,
            truncate(&r.name, 20),
            r.key_count,
            r.scopes.join(",")
        );
    }
    Ok(())
}

/// Changes a role; a change of scopes reaches every key holding it on every
/// instance, as a key change does.
pub async fn update_role(cfg: &Config, args: RoleUpdateArgs) -> anyhow::Result<()> {
    if args.name.is_none() && args.description.is_none() && args.scopes.is_none() {
        bail!("nothing to change: give at least one of --name, --description, --scopes");
    }
    let change = RoleUpdate {
        name: args.name.as_deref().map(name_arg).transpose()?,
        description: args
            .description
            .as_deref()
            .map(role_description)
            .transpose()?,
        scopes: args.scopes,
    };
    let chain = AuditChain::new(cfg.keys.pepper.expose());
    let mut client = connect(cfg).await?;
    let id = find_role(&client, &args.role).await?;
    let changed = RoleOps { chain: &chain }
        .update(&mut client, &Origin::cli(), id, change)
        .await
        .map_err(role_error(&args.role))?;
    print_role("updated", &changed.row, args.json)
}

/// Deletes a role; every key holding it loses it (and its scopes).
pub async fn delete_role(cfg: &Config, role: &str, json: bool) -> anyhow::Result<()> {
    let chain = AuditChain::new(cfg.keys.pepper.expose());
    let mut client = connect(cfg).await?;
    let id = find_role(&client, role).await?;
    let changed = RoleOps { chain: &chain }
        .delete(&mut client, &Origin::cli(), id)
        .await
        .map_err(role_error(role))?;
    if json {
        println!(
            "{}",
            serde_json::json!({"id": id, "deleted": true, "keys_changed": changed.keys.len()})
        );
    } else {
        println!("deleted role {id}; {} keys lost it", changed.keys.len());
    }
    Ok(())
}

/// `gateway logs tail`.
pub struct TailArgs {
    /// A key id: only that key's records.
    pub key: Option<String>,
    /// A route name: only that route's records.
    pub route: Option<String>,
    /// Start this far back instead of at the newest record.
    pub since: Option<Duration>,
    /// Stop after this many records.
    pub limit: Option<u64>,
    pub json: bool,
}

/// How long after its request started a record may still reach the
/// database and be shown by `gateway logs tail`: records are stamped with
/// the request start, but written when the response ends and the writer
/// flushes. Each poll re-reads this much of the recent past and skips the
/// ids it has printed, so a late record is printed once, not missed.
pub const TAIL_OVERLAP: Duration = Duration::from_secs(30);
/// How often `gateway logs tail` polls.
const TAIL_POLL: Duration = Duration::from_secs(1);
/// Rows read per query while catching up.
const TAIL_BATCH: i64 = 500;

/// Follows new request records until Ctrl-C (or `--limit`).
pub async fn tail_logs(cfg: &Config, args: TailArgs) -> anyhow::Result<()> {
    tokio::select! {
        r = follow_logs(cfg, args) => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

async fn follow_logs(cfg: &Config, args: TailArgs) -> anyhow::Result<()> {
    use std::collections::HashMap;
    use std::io::Write;

    use crate::store::request_logs::{self, RequestLogFilter};

    let key_id = args.key.as_deref().map(parse_id).transpose()?;
    let client = connect(cfg).await?;
    let overlap = chrono::Duration::from_std(TAIL_OVERLAP)?;
    let start = request_logs::now(&client).await.map_err(db_error)?;
    let since = match args.since {
        Some(d) => start - chrono::Duration::from_std(d)?,
        None => start,
    };
    // Printed (or, without --since, already there at start) ids, with
    // their times so they can be forgotten once out of the overlap.
    let mut seen: HashMap<Uuid, DateTime<Utc>> = HashMap::new();
    let mut printed = 0u64;
    let mut first = true;
    let stdout = std::io::stdout();
    loop {
        let now = request_logs::now(&client).await.map_err(db_error)?;
        let from = if first {
            since.min(now - overlap)
        } else {
            now - overlap
        };
        // Records stamped after `now` (a gateway clock ahead of the
        // database's) are shown too.
        let mut filter = RequestLogFilter::window(from, now + chrono::Duration::days(1));
        filter.key_id = key_id;
        filter.route = args.route.clone();
        let mut after = None;
        loop {
            let rows = request_logs::list_forward(&client, &filter, after, TAIL_BATCH)
                .await
                .map_err(db_error)?;
            let full = rows.len() as i64 == TAIL_BATCH;
            for r in rows {
                after = Some((r.timestamp, r.id));
                if seen.insert(r.id, r.timestamp).is_some() {
                    continue;
                }
                // Without --since, what was there at start is history.
                if first && r.timestamp < since {
                    continue;
                }
                let line = if args.json {
                    serde_json::to_string(&r)?
                } else {
                    tail_line(&r)
                };
                let mut out = stdout.lock();
                // A closed pipe (`| head`) ends the tail quietly.
                if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                    return Ok(());
                }
                printed += 1;
                if args.limit.is_some_and(|l| printed >= l) {
                    return Ok(());
                }
            }
            if !full {
                break;
            }
        }
        seen.retain(|_, ts| *ts >= now - overlap);
        first = false;
        tokio::time::sleep(TAIL_POLL).await;
    }
}

/// One record as a line of `gateway logs tail`: time, status, method,
/// path and query, latency, then the fields that are set.
fn tail_line(r: &crate::store::request_logs::RequestLog) -> String {
    let mut line = format!(
        "{} {} {} {}",
        r.timestamp
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        r.status,
        r.method,
        r.path
    );
    if let Some(q) = &r.query {
        line.push('?');
        line.push_str(q);
    }
    line.push_str(&format!(" {:.1}ms", r.latency_ms));
    let fields = [
        ("route", r.route.clone()),
        ("key", r.key_id.map(|k| k.to_string())),
        ("error", r.error_code.clone()),
        ("ip", r.client_ip.map(|ip| ip.to_string())),
        ("request_id", Some(r.request_id.clone())),
    ];
    for (name, value) in fields {
        if let Some(v) = value {
            line.push_str(&format!(" {name}={v}"));
        }
    }
    line
}

/// How long `gateway logs prune` waits for a running housekeeping round.
const PRUNE_LOCK_WAIT: Duration = Duration::from_secs(10);

/// `gateway logs prune [--dry-run]`: the retention job by hand, under the
/// housekeeping lock so it never overlaps a gateway's round; prints what it
/// drops (or, with `--dry-run`, would drop; a dry run changes nothing and
/// takes no lock).
pub async fn prune_logs(cfg: &Config, dry_run: bool) -> anyhow::Result<()> {
    use crate::reqlog::retention::Retention;
    use crate::service::housekeeping::LOCK_ID;

    let mut client = connect(cfg).await?;
    if !dry_run {
        let deadline = std::time::Instant::now() + PRUNE_LOCK_WAIT;
        loop {
            let locked: bool = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&LOCK_ID])
                .await
                .map_err(|e| db_error(e.into()))?
                .get(0);
            if locked {
                break;
            }
            if std::time::Instant::now() >= deadline {
                bail!(
                    "a gateway is running housekeeping (advisory lock {LOCK_ID} is held); try again later"
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let cfg_logs = &cfg.request_logs;
    // The lock is the connection's: it ends with it, whatever happens here.
    let outcome = Retention::new(cfg_logs)
        .prune(&mut client, Utc::now(), dry_run)
        .await
        .map_err(db_error)?;
    let (create, drop, delete) = if dry_run {
        ("would create", "would drop", "would delete")
    } else {
        ("created", "dropped", "deleted")
    };
    for name in &outcome.created {
        println!("{create} partition {name}");
    }
    for p in &outcome.dropped {
        let rows = p
            .rows_estimate
            .map_or("rows unknown".to_string(), |n| format!("~{n} rows"));
        println!("{drop} partition {} ({}, {rows})", p.name, p.day);
    }
    println!(
        "{delete} {} rollup rows before {}",
        outcome.rollups_deleted,
        outcome
            .rollups_before
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    if outcome.dropped.is_empty() {
        println!(
            "no partition older than retention_days = {}",
            cfg_logs.retention_days
        );
    }
    Ok(())
}

/// `gateway webhooks create`.
pub struct WebhookCreateArgs {
    pub url: String,
    pub events: Vec<String>,
    pub description: String,
    pub disabled: bool,
    pub json: bool,
}

/// Parses `a,b` into event names, `api_key.*` or `*`.
pub fn parse_events(s: &str) -> Result<Vec<String>, String> {
    let list: Vec<String> = s
        .split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect();
    webhook_admin::check_events(&list).map_err(|(at, why)| match at {
        Some(i) => format!("{:?}: {why}", list[i]),
        None => why,
    })
}

fn webhook_id(id: &str) -> anyhow::Result<Uuid> {
    Uuid::parse_str(id.trim()).map_err(|_| anyhow!("{id:?} is not a webhook id (a UUID)"))
}

/// The CLI's webhook changes: audited with actor `cli`, like `gateway keys`.
fn webhook_ops<'a>(secrets: &'a SecretBox, chain: &'a AuditChain) -> WebhookOps<'a> {
    WebhookOps { secrets, chain }
}

/// Creates an endpoint straight in the database, after the same checks as
/// the admin API (SSRF guard included, per `webhooks.allow_private_targets`),
/// and prints its secret, shown only now.
pub async fn create_webhook(cfg: &Config, args: WebhookCreateArgs) -> anyhow::Result<()> {
    if args.url.chars().count() > webhook_admin::MAX_URL {
        bail!(
            "--url must be at most {} characters",
            webhook_admin::MAX_URL
        );
    }
    if args.description.chars().count() > webhook_admin::MAX_DESCRIPTION {
        bail!(
            "--description must be at most {} characters",
            webhook_admin::MAX_DESCRIPTION
        );
    }
    let url = ssrf::check_url(&args.url, cfg.webhooks.allow_private_targets)
        .await
        .map_err(|why| anyhow!("invalid webhook url: {why}"))?;
    let new = NewWebhook {
        url: url.to_string(),
        description: args.description,
        events: args.events,
        enabled: !args.disabled,
    };
    let pepper = cfg.keys.pepper.expose();
    let (secrets, chain) = (SecretBox::new(pepper), AuditChain::new(pepper));
    let mut client = connect(cfg).await?;
    let created = webhook_ops(&secrets, &chain)
        .create(&mut client, &Origin::cli(), &new)
        .await
        .map_err(db_error)?;
    if args.json {
        println!("{}", serde_json::to_string(&created)?);
        return Ok(());
    }
    let w = &created.row;
    println!("created webhook {} -> {}", w.id, w.url);
    println!("events:  {}", w.events.join(","));
    if !w.enabled {
        println!("disabled: it receives nothing until enabled");
    }
    println!("secret:  {}", created.secret);
    println!("The secret is shown only now; receivers verify signatures with it.");
    Ok(())
}

pub async fn list_webhooks(cfg: &Config, limit: i64, json: bool) -> anyhow::Result<()> {
    let client = connect(cfg).await?;
    let rows = webhook_admin::list(&client, None, limit)
        .await
        .map_err(db_error)?;
    if json {
        println!("{}", serde_json::to_string(&rows)?);
        return Ok(());
    }
    println!(
        "{:<36}  {:<8}  {:>9}  {:>6}  {:<24}  URL",
        "ID", "STATE", "SUCCEEDED", "FAILED", "EVENTS"
    );
    for w in rows {
        let state = match (w.enabled, w.disabled_reason.as_deref()) {
            (true, _) => "enabled".to_string(),
            (false, Some(why)) => format!("disabled ({why})"),
            (false, None) => "disabled".to_string(),
        };
        println!(
            "{:<36}  {:<8}  {:>9}  {:>6}  {:<24}  {}",
            w.id,
            state,
            w.stats.succeeded,
            w.stats.failed,
            truncate(&w.events.join(","), 24),
            w.url
        );
    }
    Ok(())
}

/// Sends one `webhook.test` event to the endpoint from this process (the
/// same signed POST, client and SSRF guard as the dispatcher) and prints the
/// delivery with its attempt. No serving instance is needed.
pub async fn test_webhook(cfg: &Config, id: &str, json: bool) -> anyhow::Result<()> {
    let id = webhook_id(id)?;
    let pepper = cfg.keys.pepper.expose();
    let chain = AuditChain::new(pepper);
    let pool = store::pool(&cfg.database).map_err(db_error)?;
    let dispatch = Dispatch::with_pool(cfg.webhooks.clone(), pepper, pool);
    let mut client = connect(cfg).await?;
    let delivery = webhook_ops(&dispatch.secrets, &chain)
        .create_test(&mut client, &Origin::cli(), id, dispatch.lease())
        .await
        .map_err(db_error)?
        .ok_or_else(|| anyhow!("no webhook with id {id}"))?;
    dispatch
        .attempt_now(delivery)
        .await
        .context("the test delivery was created but not attempted; a serving instance will")?;
    let detail = webhook_admin::get_delivery_detail(&client, id, delivery)
        .await
        .map_err(db_error)?
        .ok_or_else(|| anyhow!("the webhook {id} was deleted meanwhile"))?;
    if json {
        println!("{}", serde_json::to_string(&detail)?);
        return Ok(());
    }
    let d = &detail.delivery;
    println!("test delivery {} ({}): {}", d.id, d.event_id, d.status);
    if let Some(status) = d.response_status {
        println!("response: HTTP {status}");
    }
    if let Some(e) = &d.error {
        println!("error:    {e}");
    }
    if let Some(ms) = d.duration_ms {
        println!("took:     {ms:.1} ms");
    }
    if d.status != "succeeded" {
        bail!("the test delivery did not succeed");
    }
    Ok(())
}

/// `gateway webhooks deliveries`.
pub struct DeliveriesArgs {
    pub id: String,
    pub status: Option<String>,
    pub event_type: Option<String>,
    pub limit: i64,
    pub json: bool,
}

pub async fn list_webhook_deliveries(cfg: &Config, args: DeliveriesArgs) -> anyhow::Result<()> {
    let id = webhook_id(&args.id)?;
    let client = connect(cfg).await?;
    if webhook_admin::get(&client, id)
        .await
        .map_err(db_error)?
        .is_none()
    {
        bail!("no webhook with id {id}");
    }
    let filter = DeliveryFilter {
        status: args.status,
        event_type: args.event_type,
        after_id: None,
    };
    let rows = webhook_admin::list_deliveries(&client, id, &filter, args.limit)
        .await
        .map_err(db_error)?;
    if args.json {
        println!("{}", serde_json::to_string(&rows)?);
        return Ok(());
    }
    println!(
        "{:<36}  {:<20}  {:<9}  {:>8}  {:<6}  {:<13}  CREATED",
        "ID", "EVENT", "STATUS", "ATTEMPTS", "HTTP", "ERROR"
    );
    for d in rows {
        println!(
            "{:<36}  {:<20}  {:<9}  {:>8}  {:<6}  {:<13}  {}",
            d.id,
            truncate(&d.event_type, 20),
            d.status,
            d.attempts,
            d.response_status.map_or("-".to_string(), |s| s.to_string()),
            d.error.as_deref().unwrap_or("-"),
            d.created_at.format("%Y-%m-%d %H:%M:%S")
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
