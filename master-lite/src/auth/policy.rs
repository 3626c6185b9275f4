//! The authorization policy: role × verb × route.
//!
//! | role | may |
//! | --- | --- |
//! | `admin` | everything but open a node's channel |
//! | `viewer` | every GET but tokens, the backup, nodes' registry credentials and channels |
//! | `join` | `POST /nodes/register` |
//! | `node:<n>` | register as `n`; renew `n`'s lease and `n`'s credential; report `n`'s status and its instances' status; watch `n`'s assignment; open `n`'s channel; read Node `n`, the endpoints, and the modules and registry credentials its instances use |
//!
//! Routes are the router's templates (`/api/v1/nodes/{name}/lease`), so a
//! new route is denied to everyone but admins until it is added here.

use axum::http::Method;

use super::Role;

/// What the policy says about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Allowed only if an instance assigned to the node uses it.
    AllowIfUsed {
        node: String,
        uses: Used,
    },
    Deny,
}

/// What an instance of a node uses, that the node may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Used {
    /// A module, by digest.
    Module(String),
    /// Registry credentials, by name.
    RegistryCredentials(String),
}

/// Decides for `role` calling `method` on the route `template`, whose path
/// parameters are `param` (by name).
pub fn authorize(role: &Role, method: &Method, template: &str, param: impl Fn(&str) -> Option<String>) -> Decision {
    let read = *method == Method::GET || *method == Method::HEAD;
    let route = template.strip_prefix("/api/v1").unwrap_or(template);
    // A node's channel carries answers in the node's name: its own credential alone opens it.
    let channel = route == "/nodes/{name}/channel";
    match role {
        Role::Admin if channel => Decision::Deny,
        Role::Admin => Decision::Allow,
        // The backup holds every token's hash and every node's credential for agents.
        Role::Viewer
            if read
                && !channel
                && !route.starts_with("/tokens")
                && route != "/backup"
                && !route.starts_with("/nodes/{name}/registry-credentials") =>
        {
            Decision::Allow
        }
        Role::Viewer => Decision::Deny,
        Role::Join if *method == Method::POST && route == "/nodes/register" => Decision::Allow,
        Role::Join => Decision::Deny,
        Role::Node(node) => {
            let own = || param("name").as_deref() == Some(node.as_str());
            match (method.as_str(), route) {
                // The name in the body is checked by the handler.
                ("POST", "/nodes/register") => Decision::Allow,
                ("GET", "/version" | "/endpoints") => Decision::Allow,
                ("PUT", "/nodes/{name}/lease" | "/nodes/{name}/status" | "/nodes/{name}/instances/status") if own() => Decision::Allow,
                ("GET", "/nodes/{name}" | "/nodes/{name}/assignment" | "/nodes/{name}/channel") if own() => Decision::Allow,
                ("POST", "/nodes/{name}/credential") if own() => Decision::Allow,
                ("GET", "/modules/{digest}") => match param("digest") {
                    Some(digest) => Decision::AllowIfUsed { node: node.clone(), uses: Used::Module(digest) },
                    None => Decision::Deny,
                },
                ("GET", "/nodes/{name}/registry-credentials/{credentials}") if own() => match param("credentials") {
                    Some(name) => Decision::AllowIfUsed { node: node.clone(), uses: Used::RegistryCredentials(name) },
                    None => Decision::Deny,
                },
                _ => Decision::Deny,
            }
        }
    }
}

/// Whether a request changes something (and is therefore audited).
pub fn is_mutation(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decide(role: &str, method: Method, template: &str, name: Option<&str>) -> Decision {
        let role: Role = role.parse().unwrap();
        authorize(&role, &method, template, |p| match p {
            "name" => name.map(str::to_string),
            "digest" => Some("sha256:aa".to_string()),
            "credentials" => Some("team".to_string()),
            _ => None,
        })
    }

    #[test]
    fn nodes_touch_only_themselves() {
        let a = "node:a";
        assert_eq!(decide(a, Method::PUT, "/api/v1/nodes/{name}/lease", Some("a")), Decision::Allow);
        assert_eq!(decide(a, Method::PUT, "/api/v1/nodes/{name}/lease", Some("b")), Decision::Deny);
        assert_eq!(decide(a, Method::PUT, "/api/v1/nodes/{name}/status", Some("b")), Decision::Deny);
        assert_eq!(decide(a, Method::GET, "/api/v1/nodes/{name}/assignment", Some("b")), Decision::Deny);
        assert_eq!(decide(a, Method::GET, "/api/v1/nodes/{name}", Some("a")), Decision::Allow);
        assert_eq!(decide(a, Method::POST, "/api/v1/nodes/{name}/credential", Some("a")), Decision::Allow);
        assert_eq!(decide(a, Method::POST, "/api/v1/nodes/{name}/credential", Some("b")), Decision::Deny);
        assert_eq!(decide("join", Method::POST, "/api/v1/nodes/{name}/credential", Some("a")), Decision::Deny);
        assert_eq!(decide("viewer", Method::POST, "/api/v1/nodes/{name}/credential", Some("a")), Decision::Deny);
        assert_eq!(decide(a, Method::GET, "/api/v1/nodes", None), Decision::Deny);
        assert_eq!(decide(a, Method::GET, "/api/v1/workloads", None), Decision::Deny);
        assert_eq!(decide(a, Method::DELETE, "/api/v1/nodes/{name}", Some("a")), Decision::Deny);
        assert_eq!(decide(a, Method::POST, "/api/v1/workloads", None), Decision::Deny);
        assert_eq!(
            decide(a, Method::GET, "/api/v1/modules/{digest}", None),
            Decision::AllowIfUsed { node: "a".into(), uses: Used::Module("sha256:aa".into()) }
        );
        assert_eq!(decide(a, Method::PUT, "/api/v1/modules/{digest}", None), Decision::Deny);
        let credentials = "/api/v1/nodes/{name}/registry-credentials/{credentials}";
        assert_eq!(
            decide(a, Method::GET, credentials, Some("a")),
            Decision::AllowIfUsed { node: "a".into(), uses: Used::RegistryCredentials("team".into()) }
        );
        assert_eq!(decide(a, Method::GET, credentials, Some("b")), Decision::Deny);
        assert_eq!(decide("viewer", Method::GET, credentials, Some("a")), Decision::Deny);
        assert_eq!(decide(a, Method::GET, "/api/v1/registry-credentials/{name}", Some("team")), Decision::Deny);
        assert_eq!(decide(a, Method::POST, "/api/v1/registry-credentials", None), Decision::Deny);
    }

    #[test]
    fn a_channel_is_opened_by_its_own_node_alone() {
        let channel = "/api/v1/nodes/{name}/channel";
        assert_eq!(decide("node:a", Method::GET, channel, Some("a")), Decision::Allow);
        assert_eq!(decide("node:a", Method::GET, channel, Some("b")), Decision::Deny);
        assert_eq!(decide("admin", Method::GET, channel, Some("a")), Decision::Deny);
        assert_eq!(decide("viewer", Method::GET, channel, Some("a")), Decision::Deny);
        assert_eq!(decide("join", Method::GET, channel, Some("a")), Decision::Deny);
    }

    #[test]
    fn a_rollout_is_read_by_viewers_and_steered_by_admins_alone() {
        let (read, act) = ("/api/v1/workloads/{name}/rollout", "/api/v1/workloads/{name}/rollout/{action}");
        assert_eq!(decide("viewer", Method::GET, read, Some("web")), Decision::Allow);
        assert_eq!(decide("viewer", Method::POST, act, Some("web")), Decision::Deny);
        assert_eq!(decide("admin", Method::POST, act, Some("web")), Decision::Allow);
        for role in ["node:a", "join"] {
            assert_eq!(decide(role, Method::GET, read, Some("web")), Decision::Deny, "{role}");
            assert_eq!(decide(role, Method::POST, act, Some("web")), Decision::Deny, "{role}");
        }
    }

    #[test]
    fn viewers_read_and_joiners_only_join() {
        assert_eq!(decide("viewer", Method::GET, "/api/v1/workloads", None), Decision::Allow);
        assert_eq!(decide("viewer", Method::GET, "/metrics", None), Decision::Allow);
        assert_eq!(decide("viewer", Method::POST, "/api/v1/workloads", None), Decision::Deny);
        assert_eq!(decide("viewer", Method::GET, "/api/v1/registry-credentials", None), Decision::Allow);
        assert_eq!(decide("viewer", Method::POST, "/api/v1/registry-credentials", None), Decision::Deny);
        assert_eq!(decide("viewer", Method::GET, "/api/v1/tokens", None), Decision::Deny);
        assert_eq!(decide("viewer", Method::GET, "/api/v1/backup", None), Decision::Deny);
        assert_eq!(decide("admin", Method::GET, "/api/v1/backup", None), Decision::Allow);
        assert_eq!(decide("node:a", Method::GET, "/api/v1/backup", None), Decision::Deny);
        assert_eq!(decide("join", Method::POST, "/api/v1/nodes/register", None), Decision::Allow);
        assert_eq!(decide("join", Method::GET, "/api/v1/nodes", None), Decision::Deny);
        assert_eq!(decide("admin", Method::DELETE, "/api/v1/tokens/{id}", None), Decision::Allow);
        assert!(is_mutation(&Method::PUT) && !is_mutation(&Method::GET));
    }

    #[test]
    fn usage_history_and_self_are_for_operators_only() {
        let history = "/api/v1/nodes/{name}/usage-history";
        assert_eq!(decide("viewer", Method::GET, history, Some("a")), Decision::Allow);
        assert_eq!(decide("admin", Method::GET, history, Some("a")), Decision::Allow);
        assert_eq!(decide("viewer", Method::DELETE, history, Some("a")), Decision::Deny);
        // Not even a node's own history: nodes read only what they need to run.
        assert_eq!(decide("node:a", Method::GET, history, Some("a")), Decision::Deny);
        assert_eq!(decide("node:a", Method::GET, history, Some("b")), Decision::Deny);
        assert_eq!(decide("join", Method::GET, history, Some("a")), Decision::Deny);
        assert_eq!(decide("viewer", Method::GET, "/api/v1/self", None), Decision::Allow);
        assert_eq!(decide("node:a", Method::GET, "/api/v1/self", None), Decision::Deny);
        assert_eq!(decide("join", Method::GET, "/api/v1/self", None), Decision::Deny);
        // What the dashboard's admin buttons call is refused to a viewer's token.
        for (method, route) in [
            (Method::POST, "/api/v1/nodes/{name}/drain"),
            (Method::POST, "/api/v1/nodes/{name}/cordon"),
            (Method::PUT, "/api/v1/workloads/{name}"),
            (Method::DELETE, "/api/v1/workloads/{name}"),
        ] {
            assert_eq!(decide("viewer", method.clone(), route, Some("a")), Decision::Deny, "{method} {route}");
            assert_eq!(decide("admin", method, route, Some("a")), Decision::Allow);
        }
    }
}
