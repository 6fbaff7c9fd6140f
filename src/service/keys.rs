//! Key lifecycle operations shared by the admin API and the CLI: create,
//! update, revoke, rotate.
//!
//! Each runs in one transaction with its audit entry, so a change and its
//! record commit together; the `NOTIFY` trigger on `api_keys` fires in the
//! same transaction, so every instance applies the change on commit. Every
//! change is recorded through [`record`], the single place where the
//! webhook outbox joins the audit log.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_postgres::{Client, Transaction};
use uuid::Uuid;

use crate::config::{Config, Limits};
use crate::errors::FieldError;
use crate::keys::format::KeyHasher;
use crate::keys::scope::Scope;
use crate::store::audit::{self, AuditChain, Event, Origin, Outcome};
use crate::store::keys::{self as repo, CreatedKey, KeyRow, NewKey};
use crate::store::roles::{self, Grant};
use crate::store::{webhooks, DbError};

/// Default grace period of a rotation: the old secret keeps working a day.
pub const DEFAULT_ROTATION_GRACE: Duration = Duration::from_secs(86_400);
/// Longest grace period a rotation accepts (7 days).
pub const MAX_ROTATION_GRACE: Duration = Duration::from_secs(604_800);

#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("no key with this id")]
    NotFound,
    #[error("the key is revoked")]
    Revoked,
    /// The caller would need this scope itself (privilege escalation guard).
    #[error("the caller lacks scope `{0}`")]
    Forbidden(String),
    /// The change needs `admin`; the text says what in it does, e.g.
    /// "Setting rate_limits".
    #[error("{0} needs scope `admin`")]
    NeedsAdmin(&'static str),
    /// Input only the database can judge, such as an unknown role name:
    /// one entry per problem, as validation reports them.
    #[error("invalid input: {}", .0.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldError>),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<tokio_postgres::Error> for OpError {
    fn from(e: tokio_postgres::Error) -> Self {
        OpError::Db(e.into())
    }
}

/// What the caller may hand out or act on (DESIGN §3 "API keys" →
/// "Authority"): a caller may only hand out what it holds.
#[derive(Debug, Clone)]
pub enum Authority {
    /// `admin` keys and the CLI: anything.
    Unrestricted,
    /// Any other key: only scopes it holds itself, and only on keys whose
    /// scopes it holds, so no key can mint or take over a stronger one.
    /// It sets no rate limits and never removes or extends an expiry, and
    /// the keys it creates expire no later than `until`, the caller's own
    /// expiry (if it has one): otherwise a key could outlive itself by
    /// minting its own successor.
    Holds {
        scopes: Arc<[Scope]>,
        until: Option<DateTime<Utc>>,
    },
}

/// Whether going from expiry `before` to `after` removes or extends it.
/// Setting an expiry on a key that has none shortens its life.
pub fn lengthens(before: Option<DateTime<Utc>>, after: Option<DateTime<Utc>>) -> bool {
    match (before, after) {
        (Some(_), None) => true,
        (Some(b), Some(a)) => a > b,
        (None, _) => false,
    }
}

impl Authority {
    /// The authority of a caller holding `scopes` (and no expiry).
    pub fn of(scopes: &[Scope]) -> Authority {
        let admin = Scope::parse("admin").ok();
        if admin.is_some_and(|a| scopes.iter().any(|s| s.satisfies(&a))) {
            Authority::Unrestricted
        } else {
            Authority::Holds {
                scopes: scopes.iter().cloned().collect(),
                until: None,
            }
        }
    }

    /// The same authority for a caller whose own key expires at `until`.
    pub fn until(self, until: Option<DateTime<Utc>>) -> Authority {
        match self {
            Authority::Holds { scopes, .. } => Authority::Holds { scopes, until },
            unrestricted => unrestricted,
        }
    }

    /// `Err` with the first scope in `wanted` the caller does not hold.
    pub fn check<'a>(&self, wanted: impl IntoIterator<Item = &'a str>) -> Result<(), OpError> {
        let Authority::Holds { scopes: held, .. } = self else {
            return Ok(());
        };
        for w in wanted {
            // A stored scope that no longer parses can only be handled by an admin.
            let covered = Scope::parse(w).is_ok_and(|w| held.iter().any(|h| h.satisfies(&w)));
            if !covered {
                return Err(OpError::Forbidden(w.to_string()));
            }
        }
        Ok(())
    }

    /// Checks what a new key gets beyond its scopes: limits need `admin`,
    /// and a restricted caller's key must not outlive the caller.
    pub fn check_new(&self, new: &NewKey) -> Result<(), OpError> {
        let Authority::Holds { until, .. } = self else {
            return Ok(());
        };
        if new.limits != Limits::default() {
            return Err(OpError::NeedsAdmin("Setting rate_limits"));
        }
        if until.is_some() && lengthens(*until, new.expires_at) {
            return Err(OpError::NeedsAdmin(
                "Creating a key that expires after the calling key",
            ));
        }
        Ok(())
    }

    /// Checks a change from the locked row `before` to `after`: changing
    /// limits, and removing or extending the expiry, need `admin`.
    pub fn check_change(&self, before: &KeyRow, after: &KeyRow) -> Result<(), OpError> {
        if matches!(self, Authority::Unrestricted) {
            return Ok(());
        }
        if before.rate_limits != after.rate_limits {
            return Err(OpError::NeedsAdmin("Setting rate_limits"));
        }
        if lengthens(before.expires_at, after.expires_at) {
            return Err(OpError::NeedsAdmin("Removing or extending an expiry"));
        }
        Ok(())
    }
}

/// The fields of an update; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct KeyUpdate {
    pub name: Option<String>,
    pub description: Option<String>,
    pub scopes: Option<Vec<Scope>>,
    /// `Some(None)` removes the expiry.
    pub expires_at: Option<Option<DateTime<Utc>>>,
    /// Replaces all overrides; a `None` tier falls back to the default.
    pub limits: Option<Limits>,
    pub metadata: Option<Value>,
    /// Replaces the set of roles (by name) the key holds.
    pub roles: Option<Vec<String>>,
}

/// The roles named `names`, share-locked for the transaction, after
/// checking that each exists and that the caller holds every scope it
/// grants: a role is a bundle of scopes, and a caller may only hand out
/// what it holds (DESIGN §3 "API keys" → "Authority").
async fn grant_roles(
    tx: &Transaction<'_>,
    authority: &Authority,
    names: &[String],
) -> Result<Vec<Grant>, OpError> {
    let grants = roles::resolve_for_grant(tx, "roles", names)
        .await?
        .map_err(OpError::Invalid)?;
    for g in &grants {
        authority.check(g.scopes.iter().map(String::as_str))?;
    }
    Ok(grants)
}

/// Records one change in its transaction: the audit entry and, for a key
/// change with a webhook event, the outbox row (so the admin API and the
/// CLI both emit, and a change that rolls back emits nothing).
pub async fn record(
    tx: &Transaction<'_>,
    chain: &AuditChain,
    origin: &Origin,
    event: &Event<'_>,
) -> Result<(), DbError> {
    audit::append(tx, chain, origin, event).await?;
    if let Some((event_type, data)) = webhook_event(event) {
        webhooks::enqueue_event(tx, event_type, data, None).await?;
    }
    Ok(())
}

/// The webhook event a successful key change announces: its type and
/// `data`, the key as `GET /keys/{id}` shows it (the audit entry's `after`,
/// which never holds the secret or its hash).
fn webhook_event(event: &Event<'_>) -> Option<(&'static str, Value)> {
    if event.target_type != "api_key" || !matches!(event.outcome, Outcome::Success) {
        return None;
    }
    let event_type = match event.action {
        "api_key.created" => "api_key.created",
        "api_key.updated" => "api_key.updated",
        "api_key.rotated" => "api_key.rotated",
        "api_key.revoked" => "api_key.revoked",
        _ => return None,
    };
    Some((event_type, event.after.clone()?))
}

fn key_event<'a>(
    action: &'a str,
    id: Uuid,
    before: Option<&KeyRow>,
    after: Option<&KeyRow>,
) -> Event<'a> {
    Event {
        action,
        target_type: "api_key",
        target_id: id.to_string(),
        before: before.and_then(|r| serde_json::to_value(r).ok()),
        after: after.and_then(|r| serde_json::to_value(r).ok()),
        outcome: Outcome::Success,
    }
}

/// The key operations, with what they need to hash secrets and chain audit
/// entries.
#[derive(Debug, Clone)]
pub struct KeyService {
    hasher: KeyHasher,
    key_prefix: String,
    chain: AuditChain,
}

impl KeyService {
    pub fn new(cfg: &Config) -> KeyService {
        let pepper = cfg.keys.pepper.expose();
        KeyService {
            hasher: KeyHasher::new(pepper),
            key_prefix: cfg.keys.prefix.clone(),
            chain: AuditChain::new(pepper),
        }
    }

    /// The audit chain, for other audited changes (webhook endpoints).
    pub fn audit_chain(&self) -> &AuditChain {
        &self.chain
    }

    pub async fn create(
        &self,
        client: &mut Client,
        origin: &Origin,
        authority: &Authority,
        new: &NewKey,
    ) -> Result<CreatedKey, OpError> {
        self.create_with_roles(client, origin, authority, new, &[])
            .await
    }

    /// [`KeyService::create`] of a key holding the roles named `roles`:
    /// each must exist, and the caller must hold every scope they grant.
    pub async fn create_with_roles(
        &self,
        client: &mut Client,
        origin: &Origin,
        authority: &Authority,
        new: &NewKey,
        role_names: &[String],
    ) -> Result<CreatedKey, OpError> {
        authority.check(new.scopes.iter().map(Scope::as_str))?;
        authority.check_new(new)?;
        let tx = client.transaction().await?;
        let grants = grant_roles(&tx, authority, role_names).await?;
        let mut created = repo::create(&tx, &self.hasher, &self.key_prefix, new).await?;
        if !grants.is_empty() {
            let ids: Vec<Uuid> = grants.iter().map(|g| g.id).collect();
            roles::set_key_roles(&tx, created.row.id, &ids).await?;
            // With its roles, and the version the role rows raised it to.
            created.row = repo::get(&tx, created.row.id)
                .await?
                .ok_or(OpError::NotFound)?;
        }
        let event = key_event("api_key.created", created.row.id, None, Some(&created.row));
        record(&tx, &self.chain, origin, &event).await?;
        tx.commit().await?;
        Ok(created)
    }

    /// Locks the key and checks the caller may act on it.
    async fn lock(
        tx: &Transaction<'_>,
        authority: &Authority,
        id: Uuid,
    ) -> Result<KeyRow, OpError> {
        let row = repo::get_for_update(tx, id)
            .await?
            .ok_or(OpError::NotFound)?;
        authority.check(row.effective_scopes.iter().map(String::as_str))?;
        Ok(row)
    }

    pub async fn update(
        &self,
        client: &mut Client,
        origin: &Origin,
        authority: &Authority,
        id: Uuid,
        change: KeyUpdate,
    ) -> Result<KeyRow, OpError> {
        if let Some(scopes) = &change.scopes {
            authority.check(scopes.iter().map(Scope::as_str))?;
        }
        let tx = client.transaction().await?;
        // Roles first: their locks come before the key's (see
        // `roles::resolve_for_grant`).
        let grants = match &change.roles {
            Some(names) => Some(grant_roles(&tx, authority, names).await?),
            None => None,
        };
        let before = Self::lock(&tx, authority, id).await?;
        if before.revoked_at.is_some() {
            return Err(OpError::Revoked);
        }
        let mut row = before.clone();
        if let Some(v) = change.name {
            row.name = v;
        }
        if let Some(v) = change.description {
            row.description = v;
        }
        if let Some(v) = change.scopes {
            row.scopes = v.iter().map(|s| s.as_str().to_string()).collect();
        }
        if let Some(v) = change.expires_at {
            row.expires_at = v;
        }
        if let Some(l) = change.limits {
            row.rate_limits = l;
        }
        if let Some(v) = change.metadata {
            row.metadata = v;
        }
        // Against the locked row, so a concurrent change cannot slip an
        // extension past the check.
        authority.check_change(&before, &row)?;
        if let Some(grants) = grants {
            let ids: Vec<Uuid> = grants.iter().map(|g| g.id).collect();
            roles::set_key_roles(&tx, id, &ids).await?;
        }
        let after = repo::save(&tx, &row).await?;
        let event = key_event("api_key.updated", id, Some(&before), Some(&after));
        record(&tx, &self.chain, origin, &event).await?;
        tx.commit().await?;
        Ok(after)
    }

    /// Revokes a key. Revoking a revoked key returns it unchanged and
    /// records nothing, so retries are safe.
    pub async fn revoke(
        &self,
        client: &mut Client,
        origin: &Origin,
        authority: &Authority,
        id: Uuid,
    ) -> Result<KeyRow, OpError> {
        let tx = client.transaction().await?;
        let before = Self::lock(&tx, authority, id).await?;
        if before.revoked_at.is_some() {
            return Ok(before);
        }
        let after = repo::revoke(&tx, id).await?.ok_or(OpError::NotFound)?;
        let event = key_event("api_key.revoked", id, Some(&before), Some(&after));
        record(&tx, &self.chain, origin, &event).await?;
        tx.commit().await?;
        Ok(after)
    }

    pub async fn rotate(
        &self,
        client: &mut Client,
        origin: &Origin,
        authority: &Authority,
        id: Uuid,
        grace: Duration,
    ) -> Result<CreatedKey, OpError> {
        let tx = client.transaction().await?;
        let before = Self::lock(&tx, authority, id).await?;
        if before.revoked_at.is_some() {
            return Err(OpError::Revoked);
        }
        // The gateway's clock, which the proxy checks the grace against.
        let now = Utc::now();
        let rotated = repo::rotate(&tx, &self.hasher, &self.key_prefix, id, now, grace)
            .await?
            .ok_or(OpError::NotFound)?;
        let event = key_event("api_key.rotated", id, Some(&before), Some(&rotated.row));
        record(&tx, &self.chain, origin, &event).await?;
        tx.commit().await?;
        Ok(rotated)
    }

    /// Records refused admin calls (401/403), already folded by the denial
    /// writer, in one transaction: one lock and one read of the chain head
    /// for the whole batch.
    pub async fn record_denials(
        &self,
        client: &mut Client,
        entries: &[(Origin, Event<'_>)],
    ) -> Result<(), DbError> {
        let tx = client.transaction().await?;
        audit::append_all(&tx, &self.chain, entries).await?;
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scopes(s: &[&str]) -> Arc<[Scope]> {
        s.iter().map(|s| Scope::parse(s).unwrap()).collect()
    }

    #[test]
    fn authority_only_hands_out_what_it_holds() {
        assert!(matches!(
            Authority::of(&scopes(&["admin"])),
            Authority::Unrestricted
        ));
        assert!(matches!(
            Authority::of(&scopes(&["*"])),
            Authority::Unrestricted
        ));
        let a = Authority::of(&scopes(&["write:keys", "read:*"]));
        assert!(a.check(["read:orders", "read:*", "write:keys"]).is_ok());
        for escalation in ["admin", "*", "write:*", "write:orders", "Bad Scope"] {
            assert!(
                matches!(a.check([escalation]), Err(OpError::Forbidden(s)) if s == escalation),
                "{escalation}"
            );
        }
        assert!(Authority::Unrestricted.check(["admin", "?"]).is_ok());
    }

    fn t(secs: i64) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0)
    }

    #[test]
    fn only_shortening_an_expiry_is_not_lengthening_it() {
        assert!(lengthens(t(0), None), "removing");
        assert!(lengthens(t(0), t(1)), "extending");
        assert!(!lengthens(t(1), t(0)), "shortening");
        assert!(!lengthens(t(0), t(0)), "unchanged");
        assert!(!lengthens(None, t(0)), "setting one where there was none");
        assert!(!lengthens(None, None), "no expiry before or after");
    }

    fn row(limits: Limits, expires_at: Option<DateTime<Utc>>) -> KeyRow {
        let at = t(-100).unwrap_or_default();
        KeyRow {
            id: Uuid::nil(),
            name: "k".into(),
            description: String::new(),
            prefix: "gw_live_abcd".into(),
            scopes: vec!["read:echo".into()],
            roles: Vec::new(),
            effective_scopes: vec!["read:echo".into()],
            rate_limits: limits,
            metadata: Value::Null,
            status: repo::KeyStatus::Active,
            created_at: at,
            updated_at: at,
            expires_at,
            revoked_at: None,
            last_used_at: None,
            rotation: None,
            version: 1,
        }
    }

    #[test]
    fn limits_and_longer_expiries_need_admin() {
        let writer = Authority::of(&scopes(&["write:keys", "read:echo"]));
        let five = Limits {
            per_minute: Some(5),
            ..Limits::default()
        };
        let more = Limits {
            per_minute: Some(1_000_000),
            ..Limits::default()
        };
        let needs_admin = |a: &Authority, before: &KeyRow, after: &KeyRow| {
            matches!(a.check_change(before, after), Err(OpError::NeedsAdmin(_)))
        };
        let base = row(five, t(100));
        for escalation in [
            row(more, t(100)),
            row(Limits::default(), t(100)),
            row(five, None),
            row(five, t(101)),
        ] {
            assert!(needs_admin(&writer, &base, &escalation), "{escalation:?}");
            assert!(Authority::Unrestricted
                .check_change(&base, &escalation)
                .is_ok());
        }
        for allowed in [row(five, t(100)), row(five, t(50))] {
            assert!(writer.check_change(&base, &allowed).is_ok(), "{allowed:?}");
        }
        assert!(writer
            .check_change(&row(five, None), &row(five, t(10)))
            .is_ok());

        let new = |limits: Limits, expires_at: Option<DateTime<Utc>>| NewKey {
            name: "n".into(),
            description: String::new(),
            scopes: Vec::new(),
            limits,
            metadata: Value::Null,
            expires_at,
        };
        assert!(writer.check_new(&new(Limits::default(), None)).is_ok());
        assert!(writer.check_new(&new(Limits::default(), t(5))).is_ok());
        assert!(matches!(
            writer.check_new(&new(five, t(5))),
            Err(OpError::NeedsAdmin(_))
        ));
        // A caller that expires hands out nothing that outlives it.
        let expiring = writer.clone().until(t(100));
        assert!(expiring.check_new(&new(Limits::default(), t(100))).is_ok());
        assert!(expiring.check_new(&new(Limits::default(), t(99))).is_ok());
        for outliving in [None, t(101)] {
            assert!(matches!(
                expiring.check_new(&new(Limits::default(), outliving)),
                Err(OpError::NeedsAdmin(_))
            ));
        }
        let admin = Authority::Unrestricted.until(t(1));
        assert!(admin.check_new(&new(more, None)).is_ok());
    }
}
