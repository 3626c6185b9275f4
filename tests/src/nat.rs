//! A machine behind NAT, made of network namespaces on this host: an
//! `inside` namespace whose only way out is a `router` namespace that
//! masquerades it behind its own address on a link to the host.
//!
//! ```text
//! host  HOST_IP ──veth── ROUTER_IP  router  (MASQUERADE) ──veth── INSIDE_IP  inside
//! ```
//!
//! The host has no route to the inside: what runs inside reaches the host's
//! address, and the host sees its connections come from the router's
//! address, where nothing listens. Everything is removed when the lab is
//! dropped (the namespaces take their links and their rules with them).

use std::process::Command;

use anyhow::{Context, bail};

/// Two namespaces and their links, removed on drop.
pub struct NatLab {
    router: String,
    inside: String,
    /// The host's end of the link to the router: where the inside reaches the host.
    pub host_ip: String,
    /// The router's address on that link: what the host sees of the inside.
    pub router_ip: String,
    /// The inside's own address, which the host cannot reach.
    pub inside_ip: String,
}

fn run(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0]).args(&args[1..]).output().with_context(|| format!("running {args:?}"))?;
    if !out.status.success() {
        bail!("{args:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl NatLab {
    /// Creates the namespaces, links and the masquerading rule (needs root, `ip` and `iptables`).
    pub fn create() -> anyhow::Result<NatLab> {
        let id = std::process::id();
        // A /24 pair of its own per test process, within 10.200.0.0/13.
        let net = 200 + (id % 8);
        let sub = (id / 8) % 125 * 2;
        let lab = NatLab {
            router: format!("wlr{id}"),
            inside: format!("wli{id}"),
            host_ip: format!("10.{net}.{sub}.1"),
            router_ip: format!("10.{net}.{sub}.2"),
            inside_ip: format!("10.{net}.{}.2", sub + 1),
        };
        let (router, inside) = (lab.router.as_str(), lab.inside.as_str());
        let (host_if, router_up, router_down, inside_if) = (format!("wh{id}"), format!("wu{id}"), format!("wd{id}"), format!("wn{id}"));
        let inner_net = format!("10.{net}.{}.0/24", sub + 1);
        run(&["ip", "netns", "add", router])?;
        run(&["ip", "netns", "add", inside])?;
        run(&["ip", "link", "add", &host_if, "type", "veth", "peer", "name", &router_up, "netns", router])?;
        run(&["ip", "addr", "add", &format!("{}/24", lab.host_ip), "dev", &host_if])?;
        run(&["ip", "link", "set", &host_if, "up"])?;
        run(&["ip", "-n", router, "addr", "add", &format!("{}/24", lab.router_ip), "dev", &router_up])?;
        run(&["ip", "-n", router, "link", "set", &router_up, "up"])?;
        run(&["ip", "-n", router, "link", "set", "lo", "up"])?;
        run(&["ip", "-n", router, "link", "add", &router_down, "type", "veth", "peer", "name", &inside_if, "netns", inside])?;
        run(&["ip", "-n", router, "addr", "add", &format!("10.{net}.{}.1/24", sub + 1), "dev", &router_down])?;
        run(&["ip", "-n", router, "link", "set", &router_down, "up"])?;
        run(&["ip", "-n", inside, "addr", "add", &format!("{}/24", lab.inside_ip), "dev", &inside_if])?;
        run(&["ip", "-n", inside, "link", "set", &inside_if, "up"])?;
        run(&["ip", "-n", inside, "link", "set", "lo", "up"])?;
        run(&["ip", "-n", inside, "route", "add", "default", "via", &format!("10.{net}.{}.1", sub + 1)])?;
        run(&["ip", "netns", "exec", router, "sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        run(&[
            "ip",
            "netns",
            "exec",
            router,
            "iptables",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-s",
            &inner_net,
            "-o",
            &router_up,
            "-j",
            "MASQUERADE",
        ])?;
        Ok(lab)
    }

    /// A command that runs `program` inside, behind the NAT.
    pub fn inside(&self, program: &std::path::Path) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.inside]).arg(program);
        command
    }
}

impl Drop for NatLab {
    fn drop(&mut self) {
        for namespace in [&self.inside, &self.router] {
            let _ = run(&["ip", "netns", "del", namespace]);
        }
    }
}
