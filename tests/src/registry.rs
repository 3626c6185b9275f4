//! A real OCI registry on loopback (Debian's `docker-registry`), serving
//! TLS with a CA of the test's own and asking for a user and password
//! (htpasswd, bcrypt), its storage in a temporary dir. Its access log (one
//! line per request, with the client's user agent) is kept for the test to
//! read. Killed when dropped; [`TestRegistry::stop`] and
//! [`TestRegistry::start_again`] take it down and bring it back on the same
//! port with the same content.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine as _;

use crate::free_port;
use crate::test_ca::TestCa;

pub struct TestRegistry {
    /// `127.0.0.1:PORT`, the registry part of a reference.
    pub host: String,
    /// The CA (PEM) its certificate is signed by.
    pub ca_file: PathBuf,
    pub user: String,
    pub password: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
}

impl TestRegistry {
    pub fn start(user: &str, password: &str) -> anyhow::Result<TestRegistry> {
        let dir = tempfile::Builder::new().prefix("wasmlet-registry-").tempdir()?;
        let ca = TestCa::new();
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])?;
        params.subject_alt_names = vec![rcgen::SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into())];
        let (certificate, key) = ca.sign(params);
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &ca.pem)?;
        std::fs::write(dir.path().join("cert.pem"), certificate.pem())?;
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem())?;
        // The lowest cost bcrypt allows: every request checks the password.
        let hash = bcrypt::hash(password, 4).context("hashing the password")?;
        std::fs::write(dir.path().join("htpasswd"), format!("{user}:{hash}\n"))?;
        let host = format!("127.0.0.1:{}", free_port());
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {data}\nhttp:\n  addr: {host}\n  secret: wasmlet-test\n  tls:\n    certificate: {dir}/cert.pem\n    key: {dir}/key.pem\nauth:\n  htpasswd:\n    realm: wasmlet-test\n    path: {dir}/htpasswd\n",
            data = dir.path().join("data").display(),
            dir = dir.path().display(),
        );
        std::fs::write(dir.path().join("config.yml"), config)?;
        let mut registry =
            TestRegistry { host, ca_file, user: user.to_string(), password: password.to_string(), dir, child: None, log: Arc::default() };
        registry.start_again()?;
        Ok(registry)
    }

    /// Starts the registry (again) and waits until it answers.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting docker-registry (Debian's docker-registry package; `make test-deps` installs it)")?;
        for stream in
            [child.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>), child.stderr.take().map(|s| Box::new(s) as _)]
                .into_iter()
                .flatten()
        {
            let log = self.log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    log.lock().expect("log lock").push(line);
                }
            });
        }
        self.child = Some(child);
        let client = self.client()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // 401: up, and asking for the password.
            if client.get(format!("https://{}/v2/", self.host)).send().is_ok_and(|r| r.status() == 401) {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                bail!("docker-registry exited ({status}):\n{}", self.log_text());
            }
            if Instant::now() > deadline {
                bail!("docker-registry did not answer within 20 s:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the registry; its content stays for [`TestRegistry::start_again`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A client trusting the registry's CA.
    pub fn client(&self) -> anyhow::Result<reqwest::blocking::Client> {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&self.ca_file)?)?;
        Ok(reqwest::blocking::Client::builder().add_root_certificate(ca).timeout(Duration::from_secs(10)).build()?)
    }

    /// Everything the registry logged (its access log included).
    pub fn log_text(&self) -> String {
        self.log.lock().expect("log lock").join("\n")
    }

    /// The access log's lines for blob downloads (`GET /v2/…/blobs/…`).
    pub fn blob_pulls(&self) -> Vec<String> {
        self.log.lock().expect("log lock").iter().filter(|l| l.contains("\"GET /v2/") && l.contains("/blobs/sha256:")).cloned().collect()
    }

    /// A Docker `config.json` giving `password` (right or wrong) for this registry, written to `file`.
    pub fn write_credentials(&self, file: &std::path::Path, password: &str) -> anyhow::Result<()> {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{}:{password}", self.user));
        std::fs::write(file, format!("{{\"auths\": {{\"{}\": {{\"auth\": \"{auth}\"}}}}}}", self.host))?;
        Ok(())
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}
