//! The compact JWS form, decoded without trusting it, and the claim checks
//! made after the signature verified. Pure functions: time comes in as an
//! argument.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{Outcome, Refusal};
use crate::config::IssuerConfig;
use crate::keys::scope::Scope;

/// Longest bearer value tried as a JWT, checked before any parsing. Real
/// access tokens are 1-2 KiB; this bounds the base64 and JSON work an
/// unauthenticated caller can ask for.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Longest accepted `sub`, in bytes (it becomes a rate-limit key and an
/// upstream header).
pub const MAX_SUBJECT_LEN: usize = 256;
/// Scopes kept from one token; the rest are dropped.
pub const MAX_SCOPES: usize = 128;

/// The JOSE header fields the verifier reads; the others are ignored.
#[derive(Debug, Deserialize)]
pub(crate) struct Header {
    pub alg: String,
    #[serde(default)]
    pub kid: Option<String>,
    /// Extensions the token says must be understood: none are, so any
    /// `crit` refuses the token (RFC 7515 §4.1.11).
    #[serde(default)]
    pub crit: Option<Value>,
}

/// A token split and decoded, not yet verified.
pub(crate) struct Unverified<'a> {
    /// `header.payload`, the signed bytes.
    pub message: &'a str,
    /// The base64url signature.
    pub signature: &'a str,
    pub header: Header,
    pub claims: Map<String, Value>,
}

const MALFORMED: Refusal = Refusal::new(Outcome::Malformed, "malformed token");

fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, Refusal> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| MALFORMED)?;
    serde_json::from_slice(&bytes).map_err(|_| MALFORMED)
}

/// Splits and decodes `token`. Nothing here is trusted: the claims only
/// choose the issuer whose keys then verify the signature.
pub(crate) fn decode(token: &str) -> Result<Unverified<'_>, Refusal> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(Refusal::new(Outcome::Malformed, "token too long"));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(MALFORMED);
    };
    if h.is_empty() || p.is_empty() {
        return Err(MALFORMED);
    }
    let header: Header = decode_json(h)?;
    let claims: Map<String, Value> = decode_json(p)?;
    Ok(Unverified {
        message: &token[..h.len() + 1 + p.len()],
        signature: s,
        header,
        claims,
    })
}

/// A NumericDate claim in whole seconds; fractions are truncated.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, ()> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                Ok(Some(i))
            } else {
                match n.as_f64() {
                    // `as` saturates: a huge `exp` means "far future".
                    Some(f) if f.is_finite() => Ok(Some(f as i64)),
                    _ => Err(()),
                }
            }
        }
        Some(_) => Err(()),
    }
}

/// What a verified token yields.
pub(crate) struct Checked {
    pub subject: String,
    pub expires_at: i64,
    pub scopes: Vec<Scope>,
}

/// Checks `aud`, `exp`, `nbf`, `iat` (with the issuer's leeway, against
/// `now_s`) and `sub`, then reads the scopes. `iss` was matched exactly when
/// the issuer was chosen.
pub(crate) fn check_claims(
    claims: &Map<String, Value>,
    cfg: &IssuerConfig,
    now_s: i64,
) -> Result<Checked, Refusal> {
    let invalid = |reason| Refusal::new(Outcome::InvalidClaims, reason);
    let leeway = cfg.leeway.as_secs() as i64;

    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => cfg.audiences.iter().any(|x| x == a),
        Some(Value::Array(list)) => list.iter().any(|v| {
            v.as_str()
                .is_some_and(|a| cfg.audiences.iter().any(|x| x == a))
        }),
        _ => false,
    };
    if !aud_ok {
        return Err(invalid("audience not accepted"));
    }

    let exp = match numeric_date(claims, "exp") {
        Ok(Some(e)) => e,
        Ok(None) => return Err(invalid("missing exp")),
        Err(()) => return Err(invalid("invalid exp")),
    };
    if now_s > exp.saturating_add(leeway) {
        return Err(Refusal::new(Outcome::Expired, "token expired"));
    }
    match numeric_date(claims, "nbf") {
        Ok(Some(nbf)) if now_s.saturating_add(leeway) < nbf => {
            return Err(invalid("token not yet valid"))
        }
        Ok(_) => {}
        Err(()) => return Err(invalid("invalid nbf")),
    }
    match numeric_date(claims, "iat") {
        Ok(Some(iat)) if iat > now_s.saturating_add(leeway) => {
            return Err(invalid("token issued in the future"))
        }
        Ok(_) => {}
        Err(()) => return Err(invalid("invalid iat")),
    }

    let subject = match claims.get("sub") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_SUBJECT_LEN => {
            // It becomes an upstream header value and a limiter key.
            if s.bytes().any(|b| b.is_ascii_control()) {
                return Err(invalid("invalid sub"));
            }
            s.clone()
        }
        Some(_) => return Err(invalid("invalid sub")),
        None => return Err(invalid("missing sub")),
    };

    Ok(Checked {
        subject,
        expires_at: exp,
        scopes: scopes(claims.get(&cfg.scopes_claim)),
    })
}

/// Scopes from a space-separated string or an array of strings. Entries
/// that are not valid gateway scopes are dropped (the token still verifies;
/// it just grants nothing by them), as are entries past [`MAX_SCOPES`].
pub(crate) fn scopes(v: Option<&Value>) -> Vec<Scope> {
    let mut out: Vec<Scope> = Vec::new();
    let mut push = |s: &str| {
        if out.len() < MAX_SCOPES {
            if let Ok(sc) = Scope::parse(s) {
                if !out.contains(&sc) {
                    out.push(sc);
                }
            }
        }
    };
    match v {
        Some(Value::String(s)) => s.split_ascii_whitespace().for_each(&mut push),
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).for_each(&mut push),
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    fn issuer() -> IssuerConfig {
        IssuerConfig {
            name: "idp".into(),
            issuer: "https://idp.example/".into(),
            audiences: vec!["api".into(), "other".into()],
            keys: crate::config::KeySource::JwksFile("x".into()),
            algorithms: vec!["RS256".into()],
            scopes_claim: "scope".into(),
            leeway: std::time::Duration::from_secs(30),
            rate_limits: None,
            forward_token: false,
        }
    }

    fn reason(r: Result<Checked, Refusal>) -> &'static str {
        match r {
            Ok(_) => "ok",
            Err(e) => e.reason,
        }
    }

    #[test]
    fn time_claims_respect_the_leeway() {
        let c = |v| claims(json!(v));
        let iss = issuer();
        let now = 1_000_000;
        let base = json!({"sub": "u", "aud": "api", "exp": now + 100});
        assert_eq!(reason(check_claims(&c(base.clone()), &iss, now)), "ok");
        let mut v = base.clone();
        v["exp"] = json!(now - 29);
        assert_eq!(reason(check_claims(&c(v.clone()), &iss, now)), "ok");
        v["exp"] = json!(now - 31);
        assert_eq!(reason(check_claims(&c(v), &iss, now)), "token expired");
        let mut v = base.clone();
        v["nbf"] = json!(now + 31);
        assert_eq!(
            reason(check_claims(&c(v.clone()), &iss, now)),
            "token not yet valid"
        );
        v["nbf"] = json!(now + 29);
        assert_eq!(reason(check_claims(&c(v), &iss, now)), "ok");
        let mut v = base.clone();
        v["iat"] = json!(now + 31);
        assert_eq!(
            reason(check_claims(&c(v), &iss, now)),
            "token issued in the future"
        );
        let mut v = base;
        v["exp"] = json!("soon");
        assert_eq!(reason(check_claims(&c(v), &iss, now)), "invalid exp");
    }

    #[test]
    fn audience_may_be_a_string_or_an_array() {
        let iss = issuer();
        let ok = |aud: Value| {
            reason(check_claims(
                &claims(json!({"sub": "u", "aud": aud, "exp": 10})),
                &iss,
                0,
            ))
        };
        assert_eq!(ok(json!("other")), "ok");
        assert_eq!(ok(json!(["x", "api"])), "ok");
        assert_eq!(ok(json!(["x"])), "audience not accepted");
        assert_eq!(ok(json!("API")), "audience not accepted");
        assert_eq!(ok(json!(null)), "audience not accepted");
    }

    #[test]
    fn subject_is_required_and_bounded() {
        let iss = issuer();
        let r = |sub: Value| {
            reason(check_claims(
                &claims(json!({"sub": sub, "aud": "api", "exp": 10})),
                &iss,
                0,
            ))
        };
        assert_eq!(r(json!("x".repeat(MAX_SUBJECT_LEN))), "ok");
        assert_eq!(r(json!("x".repeat(MAX_SUBJECT_LEN + 1))), "invalid sub");
        assert_eq!(r(json!("")), "invalid sub");
        assert_eq!(r(json!(42)), "invalid sub");
        assert_eq!(r(json!("a\r\nb")), "invalid sub");
        let no_sub = claims(json!({"aud": "api", "exp": 10}));
        assert_eq!(reason(check_claims(&no_sub, &iss, 0)), "missing sub");
    }

    #[test]
    fn scopes_from_a_string_or_an_array_drop_invalid_entries() {
        let names = |v: Value| {
            scopes(Some(&v))
                .iter()
                .map(|s| s.as_str().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(json!("read:a  write:b read:a")),
            ["read:a", "write:b"]
        );
        assert_eq!(
            names(json!(["read:a", "Bad Scope", 3, "x"])),
            ["read:a", "x"]
        );
        assert!(names(json!({"read": true})).is_empty());
        let many: Vec<String> = (0..MAX_SCOPES + 10).map(|i| format!("s{i}")).collect();
        assert_eq!(names(json!(many)).len(), MAX_SCOPES);
    }

    #[test]
    fn decode_bounds_and_shapes() {
        let too_long = "a".repeat(MAX_TOKEN_LEN + 1);
        assert_eq!(
            decode(&too_long).err().map(|r| r.reason),
            Some("token too long")
        );
        for bad in ["", "a.b", "a.b.c.d", ".e30.", "e30..", "!!.e30.x"] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
        // {"alg":"none"} . {} . (empty signature)
        let t = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(b"{}")
        );
        let u = decode(&t).map_err(|r| r.reason);
        assert!(matches!(u, Ok(ref u) if u.header.alg == "none" && u.signature.is_empty()));
    }
}
