//! Who may do what: tokens, roles, the policy, the audit log, and the
//! bootstrap of a new cluster's secrets.
//!
//! Every request but `/healthz` and `/readyz` carries `Authorization: Bearer
//! <id>.<secret>`. The token's record (kept hashed in the store) gives the
//! caller's [`Role`]; [`policy::authorize`] decides from the role, the verb and
//! the route alone, except a node's module downloads, which are checked
//! against what is assigned to it. Mutations and refusals go to the audit log;
//! a source refused too often is answered `429`.
//!
//! - `tokens`: records, roles, and checking a presented token.
//! - `policy`: the role × route table.
//! - `audit`: the append-only JSON-lines audit log, rotated and capped.
//! - `ratelimit`: per source address, how many refused requests are answered before `429`.
//! - `bootstrap`: the CAs, the admin token and the first join token of a new cluster.
//! - `serving`: the master's serving certificate, renewed while it runs.
//! - `middleware`: the layer that authenticates, authorizes and audits.

pub mod audit;
pub mod bootstrap;
pub mod middleware;
pub mod policy;
pub mod ratelimit;
pub mod serving;
pub mod tokens;

pub use tokens::{Caller, Role, TokenRecord, TokenTable};
