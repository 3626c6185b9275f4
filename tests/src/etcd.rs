//! A cluster of real `etcd` servers (Debian's `etcd-server`) on loopback, each
//! member with its own data dir, for masters on `--store etcd`. Every member
//! is killed when the cluster drops.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::{free_port, signal};

/// One member: its name, URLs, data dir and process.
struct Member {
    name: String,
    client: String,
    peer: String,
    child: Option<Child>,
}

pub struct EtcdCluster {
    members: Vec<Member>,
    dir: tempfile::TempDir,
    initial_cluster: String,
    tls: Option<EtcdTls>,
}

/// PEM files for members that serve their clients over mutual TLS: the CA
/// clients must present certificates of, and the members' certificate (for
/// 127.0.0.1) and key.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub ca: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

impl EtcdCluster {
    /// Starts `size` members and waits until the cluster answers.
    pub fn start(size: usize) -> anyhow::Result<EtcdCluster> {
        Self::start_with(size, None)
    }

    /// Starts `size` members, serving clients over mutual TLS with `tls`.
    pub fn start_with(size: usize, tls: Option<EtcdTls>) -> anyhow::Result<EtcdCluster> {
        let dir = tempfile::Builder::new().prefix("wasmlet-etcd-").tempdir()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let members: Vec<Member> = (0..size)
            .map(|i| Member {
                name: format!("e{i}"),
                client: format!("{scheme}://127.0.0.1:{}", free_port()),
                peer: format!("http://127.0.0.1:{}", free_port()),
                child: None,
            })
            .collect();
        let initial_cluster = members.iter().map(|m| format!("{}={}", m.name, m.peer)).collect::<Vec<_>>().join(",");
        let mut cluster = EtcdCluster { members, dir, initial_cluster, tls };
        for i in 0..size {
            cluster.spawn(i, "new")?;
        }
        for i in 0..size {
            cluster.wait_healthy(i)?;
        }
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize, state: &str) -> anyhow::Result<()> {
        let data = self.dir.path().join(&self.members[i].name);
        let member = &mut self.members[i];
        let log = std::fs::File::create(self.dir.path().join(format!("{}.log", member.name)))?;
        let mut command = Command::new("etcd");
        if let Some(tls) = &self.tls {
            command.arg("--cert-file").arg(&tls.cert).arg("--key-file").arg(&tls.key);
            command.arg("--trusted-ca-file").arg(&tls.ca).arg("--client-cert-auth");
        }
        let child = command
            .args(["--name", &member.name])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &member.client, "--advertise-client-urls", &member.client])
            .args(["--listen-peer-urls", &member.peer, "--initial-advertise-peer-urls", &member.peer])
            .args(["--initial-cluster", &self.initial_cluster, "--initial-cluster-state", state])
            .args(["--initial-cluster-token", "wasmlet-test", "--log-level", "warn", "--logger", "zap"])
            // Elections within a few hundred milliseconds, as on a LAN.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting etcd (Debian's etcd-server; `make test-deps` installs it)")?;
        member.child = Some(child);
        Ok(())
    }

    /// Waits until member `i` answers `/health` as healthy.
    pub fn wait_healthy(&mut self, i: usize) -> anyhow::Result<()> {
        let mut client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(2));
        if let Some(tls) = &self.tls {
            let identity = [std::fs::read(&tls.cert)?, std::fs::read(&tls.key)?].concat();
            client = client
                .tls_built_in_root_certs(false)
                .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&tls.ca)?)?)
                .identity(reqwest::Identity::from_pem(&identity)?);
        }
        let client = client.build()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let url = format!("{}/health", self.members[i].client);
            if let Ok(answer) = client.get(&url).send()
                && answer.text().is_ok_and(|t| t.contains("\"true\""))
            {
                return Ok(());
            }
            if let Some(child) = &mut self.members[i].child
                && let Some(status) = child.try_wait()?
            {
                bail!("etcd member {} exited with {status}: {}", self.members[i].name, self.log(i));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("etcd member {} was not healthy within 30 s: {}", self.members[i].name, self.log(i))
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{}.log", self.members[i].name))).unwrap_or_default()
    }

    /// The members' client URLs, comma-separated: the masters' `--etcd-endpoints`.
    pub fn endpoints(&self) -> String {
        self.members.iter().map(|m| m.client.clone()).collect::<Vec<_>>().join(",")
    }

    /// `kill -9` of member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its data dir, and waits until it is healthy.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill(i);
        self.spawn(i, "existing")
    }

    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            if let Some(child) = &member.child {
                // A member stopped with SIGSTOP must be continued to die promptly.
                signal(child.id(), rustix::process::Signal::CONT);
            }
            if let Some(mut child) = member.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
