//! Token records and roles.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use wasmlet_security::Token;

/// What a token lets its holder be.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Role {
    /// Everything.
    Admin,
    /// Reads everything but tokens.
    Viewer,
    /// May register a node, once per registration: exchanged for a node credential.
    Join,
    /// One node: its Node, lease, status, assignment, its instances' status and their modules.
    Node(String),
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Admin => f.write_str("admin"),
            Role::Viewer => f.write_str("viewer"),
            Role::Join => f.write_str("join"),
            Role::Node(name) => write!(f, "node:{name}"),
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Role, String> {
        match text {
            "admin" => Ok(Role::Admin),
            "viewer" => Ok(Role::Viewer),
            "join" => Ok(Role::Join),
            _ => match text.strip_prefix("node:") {
                Some(name) if !name.is_empty() => Ok(Role::Node(name.to_string())),
                _ => Err(format!("`{text}` is not a role: admin, viewer, join or node:<name>")),
            },
        }
    }
}

impl Serialize for Role {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Role {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Role, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}

/// A token as the master keeps it: the secret only as its SHA-256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenRecord {
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub secret_sha256: String,
    pub role: Role,
    #[serde(default)]
    pub description: String,
    pub created: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<DateTime<Utc>>,
    /// The store revision of the record's last write (not stored: the store
    /// knows it); a write of the record expects it, so concurrent changes conflict.
    #[serde(skip)]
    pub revision: Option<u64>,
}

impl TokenRecord {
    pub fn new(token: &Token, role: Role, description: impl Into<String>, expires: Option<DateTime<Utc>>) -> TokenRecord {
        TokenRecord {
            id: token.id.clone(),
            secret_sha256: token.secret_hash(),
            role,
            description: description.into(),
            created: Utc::now(),
            expires,
            revoked: None,
            revision: None,
        }
    }

    /// The record without its hash, for lists.
    pub fn public(&self) -> TokenRecord {
        TokenRecord { secret_sha256: String::new(), ..self.clone() }
    }

    /// Why the record does not authenticate anyone now, if it does not.
    pub fn unusable(&self, now: DateTime<Utc>) -> Option<String> {
        if let Some(at) = self.revoked {
            return Some(format!("token {} was revoked at {}", self.id, at.format("%Y-%m-%dT%H:%M:%SZ")));
        }
        match self.expires {
            Some(at) if at <= now => Some(format!("token {} expired at {}", self.id, at.format("%Y-%m-%dT%H:%M:%SZ"))),
            _ => None,
        }
    }
}

/// Who sent a request: the token's id and its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub token_id: String,
    pub role: Role,
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (token {})", self.role, self.token_id)
    }
}

/// Why a presented token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("authentication required: send `Authorization: Bearer <token>`")]
    Missing,
    #[error("{0}")]
    Invalid(String),
}

/// Every token record by id, readable without the cluster lock (lease
/// renewals authenticate on every heartbeat). Written by the cluster's commits.
/// Indexed by role too: a registration looks up its node's credentials under
/// the cluster lock, and a scan of every node's would make joining a fleet
/// quadratic.
#[derive(Debug, Clone, Default)]
pub struct TokenTable(Arc<RwLock<Records>>);

#[derive(Debug, Default)]
struct Records {
    by_id: BTreeMap<String, TokenRecord>,
    by_role: HashMap<Role, BTreeSet<String>>,
}

impl Records {
    fn of_role(&self, role: &Role) -> impl Iterator<Item = &TokenRecord> {
        self.by_role.get(role).into_iter().flatten().filter_map(|id| self.by_id.get(id))
    }

    fn remove(&mut self, id: &str) -> Option<TokenRecord> {
        let record = self.by_id.remove(id)?;
        if let Some(ids) = self.by_role.get_mut(&record.role) {
            ids.remove(id);
            if ids.is_empty() {
                self.by_role.remove(&record.role);
            }
        }
        Some(record)
    }
}

impl TokenTable {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Records> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Records> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, id: &str) -> Option<TokenRecord> {
        self.read().by_id.get(id).cloned()
    }

    pub fn all(&self) -> Vec<TokenRecord> {
        self.read().by_id.values().cloned().collect()
    }

    /// The records of `role` not revoked yet.
    pub fn unrevoked(&self, role: &Role) -> Vec<TokenRecord> {
        self.read().of_role(role).filter(|r| r.revoked.is_none()).cloned().collect()
    }

    /// Every record of `role`, revoked or not.
    pub fn of_role(&self, role: &Role) -> Vec<TokenRecord> {
        self.read().of_role(role).cloned().collect()
    }

    pub fn insert(&self, record: TokenRecord) {
        let mut records = self.write();
        // A record's role never changes, but the index must not keep a stale entry should it.
        records.remove(&record.id);
        records.by_role.entry(record.role.clone()).or_default().insert(record.id.clone());
        records.by_id.insert(record.id.clone(), record);
    }

    pub fn remove(&self, id: &str) {
        self.write().remove(id);
    }

    pub fn clear(&self) {
        *self.write() = Records::default();
    }

    /// The caller a bearer token stands for.
    pub fn authenticate(&self, bearer: Option<&str>, now: DateTime<Utc>) -> Result<Caller, Refusal> {
        let text = bearer.ok_or(Refusal::Missing)?;
        // A join token is presented whole or as its `<id>.<secret>` part.
        let token = Token::from_bearer(text).map_err(|_| Refusal::Invalid("the bearer token is malformed".into()))?;
        let record = self.get(&token.id).ok_or_else(|| Refusal::Invalid(format!("token {} is not known to this cluster", token.id)))?;
        if !token.matches(&record.secret_sha256) {
            return Err(Refusal::Invalid(format!("token {} is not known to this cluster", token.id)));
        }
        if let Some(why) = record.unusable(now) {
            return Err(Refusal::Invalid(why));
        }
        Ok(Caller { token_id: record.id, role: record.role })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_authenticate_until_they_expire_or_are_revoked() {
        let table = TokenTable::default();
        let token = Token::generate().unwrap();
        let now = Utc::now();
        table.insert(TokenRecord::new(&token, Role::Node("edge-1".into()), "", Some(now + chrono::Duration::hours(1))));
        let caller = table.authenticate(Some(&token.to_string()), now).unwrap();
        assert_eq!(caller.role, Role::Node("edge-1".into()));
        assert_eq!(table.authenticate(None, now), Err(Refusal::Missing));
        let later = now + chrono::Duration::hours(2);
        assert!(table.authenticate(Some(&token.to_string()), later).unwrap_err().to_string().contains("expired"));
        let wrong = Token { id: token.id.clone(), secret: Token::generate().unwrap().secret };
        assert!(table.authenticate(Some(&wrong.to_string()), now).unwrap_err().to_string().contains("not known"));
        let mut record = table.get(&token.id).unwrap();
        record.revoked = Some(now);
        table.insert(record);
        assert!(table.authenticate(Some(&token.to_string()), now).unwrap_err().to_string().contains("revoked"));
        assert!(table.authenticate(Some("garbage"), now).unwrap_err().to_string().contains("malformed"));
    }

    #[test]
    fn records_are_found_by_role_through_inserts_revocations_and_removals() {
        let table = TokenTable::default();
        let record = |node: &str| TokenRecord::new(&Token::generate().unwrap(), Role::Node(node.into()), "", None);
        let ids = |records: Vec<TokenRecord>| records.into_iter().map(|r| r.id).collect::<BTreeSet<_>>();
        let (a1, a2, b) = (record("a"), record("a"), record("b"));
        for r in [&a1, &a2, &b] {
            table.insert(r.clone());
        }
        assert_eq!(ids(table.of_role(&Role::Node("a".into()))), BTreeSet::from([a1.id.clone(), a2.id.clone()]));
        assert_eq!(ids(table.of_role(&Role::Node("b".into()))), BTreeSet::from([b.id.clone()]));
        assert!(table.of_role(&Role::Node("c".into())).is_empty());

        let mut revoked = a1.clone();
        revoked.revoked = Some(Utc::now());
        table.insert(revoked);
        assert_eq!(ids(table.unrevoked(&Role::Node("a".into()))), BTreeSet::from([a2.id.clone()]));
        assert_eq!(table.of_role(&Role::Node("a".into())).len(), 2, "a revoked record is still the node's");

        table.remove(&a2.id);
        table.remove(&a1.id);
        assert!(table.of_role(&Role::Node("a".into())).is_empty());
        assert!(!table.read().by_role.contains_key(&Role::Node("a".into())), "no empty entry is left behind");
        table.clear();
        assert!(table.get(&b.id).is_none() && table.of_role(&Role::Node("b".into())).is_empty());
    }

    #[test]
    fn roles_round_trip() {
        for role in ["admin", "viewer", "join", "node:edge-1"] {
            assert_eq!(role.parse::<Role>().unwrap().to_string(), role);
        }
        assert!("node:".parse::<Role>().is_err());
        assert!("root".parse::<Role>().unwrap_err().contains("not a role"));
    }
}
