//! Scopes: `action:resource` strings, with `action:*` and `*` wildcards
//! (DESIGN §3 "Scopes").

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// Longest scope accepted, so a scope list cannot be used to bloat memory.
pub const MAX_SCOPE_LEN: usize = 64;

/// A validated scope string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope(Arc<str>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a valid scope: use `name`, `action:resource`, `action:*` or `*` with a-z, 0-9, _ - . (at most 64 characters)")]
pub struct InvalidScope(pub String);

fn is_part(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.')
        })
}

impl Scope {
    /// Parses `*`, `name`, `action:resource` or `action:*`.
    pub fn parse(s: &str) -> Result<Scope, InvalidScope> {
        let ok = s.len() <= MAX_SCOPE_LEN
            && (s == "*"
                || match s.split_once(':') {
                    None => is_part(s),
                    Some((action, resource)) => {
                        is_part(action) && (resource == "*" || is_part(resource))
                    }
                });
        if ok {
            Ok(Scope(s.into()))
        } else {
            Err(InvalidScope(s.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this (held) scope satisfies `required`: exact match,
    /// `action:*` for any `action:…`, or `*` for anything.
    pub fn satisfies(&self, required: &Scope) -> bool {
        let held = self.as_str();
        let req = required.as_str();
        if held == "*" || held == req {
            return true;
        }
        match held.strip_suffix(":*") {
            Some(action) => req
                .split_once(':')
                .is_some_and(|(req_action, _)| req_action == action),
            None => false,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The first scope in `required` that `held` does not satisfy.
pub fn first_missing<'a>(held: &[Scope], required: &'a [Scope]) -> Option<&'a Scope> {
    required
        .iter()
        .find(|r| !held.iter().any(|h| h.satisfies(r)))
}

/// Interns scope lists while loading keys: every key with the same list
/// shares one `Arc<[Scope]>`. Most deployments have a handful of distinct
/// lists across all their keys, so this saves about a hundred bytes per key
/// in the snapshot.
#[derive(Default)]
pub struct ScopeSets {
    seen: HashMap<Vec<Scope>, Arc<[Scope]>>,
}

impl ScopeSets {
    pub fn intern(&mut self, scopes: Vec<Scope>) -> Arc<[Scope]> {
        if let Some(shared) = self.seen.get(&scopes) {
            return shared.clone();
        }
        let shared: Arc<[Scope]> = scopes.as_slice().into();
        self.seen.insert(scopes, shared.clone());
        shared
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Scope {
        Scope::parse(x).expect("valid scope")
    }

    #[test]
    fn parse_accepts_the_documented_forms() {
        for ok in [
            "*",
            "admin",
            "read:orders",
            "read:*",
            "write:orders.v2",
            "a-b:c_d",
        ] {
            assert!(Scope::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Read:orders",
            "read:",
            ":orders",
            "read:orders:x",
            "*:orders",
            "read orders",
            "read:o*",
            &"a".repeat(65),
        ] {
            assert!(Scope::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn wildcards_satisfy_as_designed() {
        assert!(s("read:orders").satisfies(&s("read:orders")));
        assert!(s("read:*").satisfies(&s("read:orders")));
        assert!(s("*").satisfies(&s("read:orders")));
        assert!(s("*").satisfies(&s("admin")));
        assert!(!s("read:*").satisfies(&s("write:orders")));
        assert!(!s("read:*").satisfies(&s("read")));
        assert!(!s("read:orders").satisfies(&s("read:*")));
        assert!(!s("write:orders").satisfies(&s("read:orders")));
    }

    #[test]
    fn equal_scope_lists_share_one_allocation() {
        let mut sets = ScopeSets::default();
        let a = sets.intern(vec![s("read:a"), s("write:a")]);
        let b = sets.intern(vec![s("read:a"), s("write:a")]);
        let c = sets.intern(vec![s("read:a")]);
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(&*c, &[s("read:a")]);
    }

    #[test]
    fn first_missing_names_the_scope() {
        let held = [s("read:orders")];
        let req = [s("read:orders"), s("write:orders")];
        assert_eq!(first_missing(&held, &req), Some(&s("write:orders")));
        assert_eq!(first_missing(&[s("*")], &req), None);
    }
}
