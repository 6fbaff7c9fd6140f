//! The admin route table: one row per (path, method), naming the operation
//! as `admin/openapi.yaml` does. Dispatch is an exhaustive `match` on
//! [`Op`], and a test compares this table with the spec both ways.

use http::Method;

/// One admin operation; the name is the spec's `operationId`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Health,
    HealthLive,
    HealthReady,
    Metrics,
    GetOpenapi,
    CreateKey,
    ListKeys,
    GetKey,
    UpdateKey,
    PatchKey,
    RevokeKey,
    RotateKey,
    GetRateLimitStatus,
    SetKeyRateLimits,
    ListAuditLogs,
    GetRequestStats,
    GetKeyUsage,
    ListRequests,
    GetRequest,
    CreateWebhook,
    ListWebhooks,
    GetWebhook,
    UpdateWebhook,
    DeleteWebhook,
    RotateWebhookSecret,
    TestWebhook,
    ListWebhookDeliveries,
    GetWebhookDelivery,
    RetryWebhookDelivery,
    CreateRole,
    ListRoles,
    GetRole,
    UpdateRole,
    PatchRole,
    DeleteRole,
    GetConfig,
    ReloadConfig,
}

/// Who may call an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: the operational endpoints.
    Public,
    /// Any valid key, whatever its scopes.
    AnyKey,
    /// A key with this scope (`admin` satisfies every one).
    Scope(&'static str),
}

impl Op {
    pub fn operation_id(self) -> &'static str {
        match self {
            Op::Health => "health",
            Op::HealthLive => "health_live",
            Op::HealthReady => "health_ready",
            Op::Metrics => "metrics",
            Op::GetOpenapi => "get_openapi",
            Op::CreateKey => "create_key",
            Op::ListKeys => "list_keys",
            Op::GetKey => "get_key",
            Op::UpdateKey => "update_key",
            Op::PatchKey => "patch_key",
            Op::RevokeKey => "revoke_key",
            Op::RotateKey => "rotate_key",
            Op::GetRateLimitStatus => "get_rate_limit_status",
            Op::SetKeyRateLimits => "set_key_rate_limits",
            Op::ListAuditLogs => "list_audit_logs",
            Op::GetRequestStats => "get_request_stats",
            Op::GetKeyUsage => "get_key_usage",
            Op::ListRequests => "list_requests",
            Op::GetRequest => "get_request",
            Op::CreateWebhook => "create_webhook",
            Op::ListWebhooks => "list_webhooks",
            Op::GetWebhook => "get_webhook",
            Op::UpdateWebhook => "update_webhook",
            Op::DeleteWebhook => "delete_webhook",
            Op::RotateWebhookSecret => "rotate_webhook_secret",
            Op::TestWebhook => "test_webhook",
            Op::ListWebhookDeliveries => "list_webhook_deliveries",
            Op::GetWebhookDelivery => "get_webhook_delivery",
            Op::RetryWebhookDelivery => "retry_webhook_delivery",
            Op::CreateRole => "create_role",
            Op::ListRoles => "list_roles",
            Op::GetRole => "get_role",
            Op::UpdateRole => "update_role",
            Op::PatchRole => "patch_role",
            Op::DeleteRole => "delete_role",
            Op::GetConfig => "get_config",
            Op::ReloadConfig => "reload_config",
        }
    }

    /// Who may call it (DESIGN §3 admin table).
    pub fn access(self) -> Access {
        match self {
            Op::Health | Op::HealthLive | Op::HealthReady | Op::Metrics | Op::GetOpenapi => {
                Access::Public
            }
            Op::GetRateLimitStatus => Access::AnyKey,
            // Usage is aggregate counts of the key's own traffic, no request
            // content: part of reading the key, not of reading request logs.
            Op::ListKeys | Op::GetKey | Op::GetKeyUsage => Access::Scope("read:keys"),
            Op::GetRequestStats => Access::Scope("read:requests"),
            Op::CreateKey | Op::UpdateKey | Op::PatchKey | Op::RevokeKey | Op::RotateKey => {
                Access::Scope("write:keys")
            }
            Op::SetKeyRateLimits | Op::ListAuditLogs => Access::Scope("admin"),
            Op::ListRequests | Op::GetRequest => Access::Scope("read:requests"),
            Op::ListWebhooks
            | Op::GetWebhook
            | Op::ListWebhookDeliveries
            | Op::GetWebhookDelivery => Access::Scope("read:webhooks"),
            Op::CreateWebhook
            | Op::UpdateWebhook
            | Op::DeleteWebhook
            | Op::RotateWebhookSecret
            | Op::TestWebhook
            | Op::RetryWebhookDelivery => Access::Scope("write:webhooks"),
            // A role's scopes reach every key holding it: only admins
            // define them (DESIGN §3 "JWT and roles").
            Op::CreateRole
            | Op::ListRoles
            | Op::GetRole
            | Op::UpdateRole
            | Op::PatchRole
            | Op::DeleteRole => Access::Scope("admin"),
            // The whole configuration (redacted) and changing it.
            Op::GetConfig | Op::ReloadConfig => Access::Scope("admin"),
        }
    }
}

pub struct Route {
    /// Path as written in the spec; `{id}` matches one segment.
    pub path: &'static str,
    pub method: Method,
    pub op: Op,
}

const fn route(path: &'static str, method: Method, op: Op) -> Route {
    Route { path, method, op }
}

pub const ROUTES: &[Route] = &[
    route("/health", Method::GET, Op::Health),
    route("/health/live", Method::GET, Op::HealthLive),
    route("/health/ready", Method::GET, Op::HealthReady),
    route("/metrics", Method::GET, Op::Metrics),
    route("/openapi.json", Method::GET, Op::GetOpenapi),
    route("/api/v1/keys", Method::POST, Op::CreateKey),
    route("/api/v1/keys", Method::GET, Op::ListKeys),
    route("/api/v1/keys/{id}", Method::GET, Op::GetKey),
    route("/api/v1/keys/{id}", Method::PUT, Op::UpdateKey),
    route("/api/v1/keys/{id}", Method::PATCH, Op::PatchKey),
    route("/api/v1/keys/{id}", Method::DELETE, Op::RevokeKey),
    route("/api/v1/keys/{id}/rotate", Method::POST, Op::RotateKey),
    route("/api/v1/keys/{id}/usage", Method::GET, Op::GetKeyUsage),
    route(
        "/api/v1/rate-limits/status",
        Method::GET,
        Op::GetRateLimitStatus,
    ),
    route(
        "/api/v1/rate-limits/keys/{id}",
        Method::PUT,
        Op::SetKeyRateLimits,
    ),
    route("/api/v1/audit-logs", Method::GET, Op::ListAuditLogs),
    // Before any `/api/v1/requests/{id}`: the first matching row wins.
    route("/api/v1/requests/stats", Method::GET, Op::GetRequestStats),
    route("/api/v1/requests", Method::GET, Op::ListRequests),
    route("/api/v1/requests/{id}", Method::GET, Op::GetRequest),
    route("/api/v1/webhooks", Method::POST, Op::CreateWebhook),
    route("/api/v1/webhooks", Method::GET, Op::ListWebhooks),
    route("/api/v1/webhooks/{id}", Method::GET, Op::GetWebhook),
    route("/api/v1/webhooks/{id}", Method::PUT, Op::UpdateWebhook),
    route("/api/v1/webhooks/{id}", Method::DELETE, Op::DeleteWebhook),
    route(
        "/api/v1/webhooks/{id}/rotate-secret",
        Method::POST,
        Op::RotateWebhookSecret,
    ),
    route("/api/v1/webhooks/{id}/test", Method::POST, Op::TestWebhook),
    route(
        "/api/v1/webhooks/{id}/deliveries",
        Method::GET,
        Op::ListWebhookDeliveries,
    ),
    route(
        "/api/v1/webhooks/{id}/deliveries/{delivery_id}",
        Method::GET,
        Op::GetWebhookDelivery,
    ),
    route(
        "/api/v1/webhooks/{id}/deliveries/{delivery_id}/retry",
        Method::POST,
        Op::RetryWebhookDelivery,
    ),
    route("/api/v1/roles", Method::POST, Op::CreateRole),
    route("/api/v1/roles", Method::GET, Op::ListRoles),
    route("/api/v1/roles/{id}", Method::GET, Op::GetRole),
    route("/api/v1/roles/{id}", Method::PUT, Op::UpdateRole),
    route("/api/v1/roles/{id}", Method::PATCH, Op::PatchRole),
    route("/api/v1/roles/{id}", Method::DELETE, Op::DeleteRole),
    route("/api/v1/config", Method::GET, Op::GetConfig),
    route("/api/v1/config/reload", Method::POST, Op::ReloadConfig),
];

/// How a request path and method resolved.
#[derive(Debug, PartialEq, Eq)]
pub enum Resolved<'p> {
    Found {
        op: Op,
        id: Option<&'p str>,
        /// A second path parameter (`{delivery_id}`).
        sub: Option<&'p str>,
    },
    /// The path exists, the method does not: the `Allow` header value.
    MethodNotAllowed(String),
    NotFound,
}

/// The path parameters of a match: `{id}` and a second one, if any.
type Params<'p> = (Option<&'p str>, Option<&'p str>);

/// Matches `path` against a pattern; carries the `{id}` segment and the
/// segment of a second parameter such as `{delivery_id}`.
fn matches<'p>(pattern: &str, path: &'p str) -> Option<Params<'p>> {
    let (mut id, mut sub) = (None, None);
    let mut pat = pattern.split('/');
    let mut got = path.split('/');
    loop {
        match (pat.next(), got.next()) {
            (None, None) => return Some((id, sub)),
            (Some("{id}"), Some(seg)) if !seg.is_empty() => id = Some(seg),
            (Some(p), Some(seg)) if p.starts_with('{') && !seg.is_empty() => sub = Some(seg),
            (Some(p), Some(seg)) if p == seg => {}
            _ => return None,
        }
    }
}

/// Finds the operation for `method` on `path`. `HEAD` is served as `GET`
/// on the unauthenticated endpoints, which load balancers probe with it.
pub fn resolve<'p>(method: &Method, path: &'p str) -> Resolved<'p> {
    resolve_in(ROUTES, method, path)
}

fn resolve_in<'p>(table: &[Route], method: &Method, path: &'p str) -> Resolved<'p> {
    let path = match path.strip_suffix('/') {
        Some(p) if !p.is_empty() => p,
        _ => path,
    };
    // A literal segment wins over `{id}` whatever the table order, so
    // `/requests/stats` is never read as the record with id `stats`.
    let literal = table
        .iter()
        .any(|r| matches(r.path, path).is_some_and(|(id, sub)| id.is_none() && sub.is_none()));
    let mut allow: Vec<&str> = Vec::new();
    for r in table {
        let Some((id, sub)) = matches(r.path, path) else {
            continue;
        };
        if literal && id.is_some() {
            continue;
        }
        let public = r.op.access() == Access::Public;
        let head_as_get = *method == Method::HEAD && r.method == Method::GET && public;
        if r.method == *method || head_as_get {
            return Resolved::Found { op: r.op, id, sub };
        }
        allow.push(r.method.as_str());
        if r.method == Method::GET && public {
            allow.push("HEAD");
        }
    }
    if allow.is_empty() {
        Resolved::NotFound
    } else {
        Resolved::MethodNotAllowed(allow.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Every (path, method, operationId) of the router is in
    /// `admin/openapi.yaml`, and every operation of the spec is routed.
    #[test]
    fn router_and_openapi_spec_list_the_same_operations() {
        let spec: serde_json::Value = serde_json::from_slice(
            &crate::admin::openapi_json().expect("admin/openapi.yaml parses"),
        )
        .expect("json");
        assert_eq!(spec["openapi"].as_str().map(|v| &v[..3]), Some("3.1"));
        let mut in_spec = BTreeSet::new();
        for (path, item) in spec["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                let Ok(m) = method.to_ascii_uppercase().parse::<Method>() else {
                    continue;
                };
                if !matches!(
                    m,
                    Method::GET
                        | Method::POST
                        | Method::PUT
                        | Method::PATCH
                        | Method::DELETE
                        | Method::HEAD
                ) {
                    continue;
                }
                let id = op["operationId"]
                    .as_str()
                    .unwrap_or("<missing operationId>");
                in_spec.insert((path.clone(), m.to_string(), id.to_string()));
            }
        }
        let routed: BTreeSet<(String, String, String)> = ROUTES
            .iter()
            .map(|r| {
                (
                    r.path.to_string(),
                    r.method.to_string(),
                    r.op.operation_id().to_string(),
                )
            })
            .collect();
        let missing_from_spec: Vec<_> = routed.difference(&in_spec).collect();
        let missing_from_router: Vec<_> = in_spec.difference(&routed).collect();
        assert!(
            missing_from_spec.is_empty() && missing_from_router.is_empty(),
            "routed but not in the spec: {missing_from_spec:?}; in the spec but not routed: {missing_from_router:?}"
        );
    }

    /// Every protected operation documents 401 (and 403 when it needs a
    /// scope), and the public ones declare no security.
    #[test]
    fn spec_security_matches_the_required_scopes() {
        let spec: serde_json::Value =
            serde_json::from_slice(&crate::admin::openapi_json().expect("spec")).expect("json");
        for r in ROUTES {
            let op = &spec["paths"][r.path][r.method.as_str().to_ascii_lowercase()];
            let responses = &op["responses"];
            match r.op.access() {
                Access::Scope(_) => {
                    assert!(
                        !responses["401"].is_null() && !responses["403"].is_null(),
                        "{} {} must document 401 and 403",
                        r.method,
                        r.path
                    );
                }
                Access::AnyKey => assert!(
                    !responses["401"].is_null() && op["security"] != serde_json::json!([]),
                    "{} {} needs a key and must document 401",
                    r.method,
                    r.path
                ),
                Access::Public => assert_eq!(
                    op["security"],
                    serde_json::json!([]),
                    "{} {} is public",
                    r.method,
                    r.path
                ),
            }
        }
    }

    #[test]
    fn a_literal_segment_wins_over_an_id_in_any_order() {
        let table = [
            route("/api/v1/requests/{id}", Method::GET, Op::GetRequest),
            route("/api/v1/requests/{id}", Method::DELETE, Op::RevokeKey),
            route("/api/v1/requests/stats", Method::GET, Op::ListAuditLogs),
        ];
        assert_eq!(
            resolve_in(&table, &Method::GET, "/api/v1/requests/stats"),
            Resolved::Found {
                op: Op::ListAuditLogs,
                id: None,
                sub: None
            }
        );
        assert_eq!(
            resolve_in(&table, &Method::DELETE, "/api/v1/requests/stats"),
            Resolved::MethodNotAllowed("GET".into())
        );
        assert_eq!(
            resolve_in(&table, &Method::GET, "/api/v1/requests/statsx"),
            Resolved::Found {
                op: Op::GetRequest,
                id: Some("statsx"),
                sub: None
            }
        );
    }

    #[test]
    fn resolves_paths_ids_and_methods() {
        assert_eq!(
            resolve(&Method::GET, "/api/v1/keys/abc"),
            Resolved::Found {
                op: Op::GetKey,
                id: Some("abc"),
                sub: None
            }
        );
        assert_eq!(
            resolve(&Method::POST, "/api/v1/keys/abc/rotate"),
            Resolved::Found {
                op: Op::RotateKey,
                id: Some("abc"),
                sub: None
            }
        );
        assert_eq!(
            resolve(&Method::GET, "/api/v1/keys/"),
            Resolved::Found {
                op: Op::ListKeys,
                id: None,
                sub: None
            }
        );
        assert_eq!(
            resolve(&Method::HEAD, "/health"),
            Resolved::Found {
                op: Op::Health,
                id: None,
                sub: None
            }
        );
        assert_eq!(
            resolve(&Method::POST, "/api/v1/keys/abc"),
            Resolved::MethodNotAllowed("GET, PUT, PATCH, DELETE".into())
        );
        assert_eq!(
            resolve(&Method::POST, "/health"),
            Resolved::MethodNotAllowed("GET, HEAD".into())
        );
        assert_eq!(
            resolve(
                &Method::GET,
                "/api/v1/requests/0190e0e0-0000-7000-8000-000000000001"
            ),
            Resolved::Found {
                op: Op::GetRequest,
                id: Some("0190e0e0-0000-7000-8000-000000000001"),
                sub: None
            }
        );
        assert_eq!(
            resolve(&Method::POST, "/api/v1/webhooks/w1/deliveries/d1/retry"),
            Resolved::Found {
                op: Op::RetryWebhookDelivery,
                id: Some("w1"),
                sub: Some("d1")
            }
        );
        assert_eq!(
            resolve(&Method::GET, "/api/v1/webhooks/w1/deliveries/d1"),
            Resolved::Found {
                op: Op::GetWebhookDelivery,
                id: Some("w1"),
                sub: Some("d1")
            }
        );
        for missing in [
            "/api/v1/webhooks/w1/deliveries//retry",
            "/",
            "",
            "/api/v1",
            "/api/v1/keys//rotate",
            "/api/v1/keys/a/b",
        ] {
            assert_eq!(
                resolve(&Method::GET, missing),
                Resolved::NotFound,
                "{missing}"
            );
        }
    }
}
