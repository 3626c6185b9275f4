//! What the master notes on a Node at its registration, as annotations:
//! where its agent's API and ingress are, the protocol version agreed with
//! its agent, the node CA that signed its certificate. One place for the
//! keys and for reading them back.

/// Node annotation holding the base URL of the node's agent API.
pub const AGENT_API: &str = "wasmlet.io/agent-api";

/// Node annotation holding the base URL of the node's ingress.
pub const AGENT_INGRESS: &str = "wasmlet.io/ingress";

/// Node annotation holding where peers reach the node's ingress over mutual TLS.
pub const AGENT_INGRESS_PEER: &str = "wasmlet.io/ingress-peer";

/// Node annotation holding the protocol version the node's agent speaks (absent: 1).
pub const AGENT_PROTOCOL: &str = "wasmlet.io/agent-protocol";

/// The protocol version the node's agent registered with: what the master may send it.
pub fn agent_protocol(node: &wasmlet_api::Node) -> u32 {
    node.metadata.annotations.get(AGENT_PROTOCOL).and_then(|v| v.parse().ok()).unwrap_or(1)
}

/// Node annotation holding the fingerprint of the node CA that signed the node's certificate.
pub const NODE_CA: &str = "wasmlet.io/node-ca";

/// The agent API of a registration: `apiUrl` when given, else `scheme`, the source address and `apiPort`.
pub fn agent_endpoint(scheme: &str, peer: std::net::SocketAddr, api_port: Option<u16>, api_url: Option<&str>) -> Option<String> {
    if let Some(url) = api_url {
        return Some(url.trim_end_matches('/').to_string());
    }
    let port = api_port?;
    Some(match peer.ip() {
        std::net::IpAddr::V6(ip) => format!("{scheme}://[{ip}]:{port}"),
        std::net::IpAddr::V4(ip) => format!("{scheme}://{ip}:{port}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_come_from_the_peer_and_the_named_port() {
        let v4: std::net::SocketAddr = "10.0.0.7:53211".parse().unwrap();
        assert_eq!(agent_endpoint("https", v4, Some(7071), None).as_deref(), Some("https://10.0.0.7:7071"));
        let v6: std::net::SocketAddr = "[fd00::2]:53211".parse().unwrap();
        assert_eq!(agent_endpoint("http", v6, Some(7071), None).as_deref(), Some("http://[fd00::2]:7071"));
        assert_eq!(agent_endpoint("http", v4, Some(7071), Some("https://edge-1:9000/")).as_deref(), Some("https://edge-1:9000"));
        assert_eq!(agent_endpoint("http", v4, None, None), None);
    }
}
