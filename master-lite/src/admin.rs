//! Commands run beside a master, on its machine: `token create|list|revoke`
//! and `client-config`. They read the admin token and the CA from the data
//! dir and talk to the running master over its API, so the store is only
//! ever written by the master itself.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;
use wasmlet_security::files;

use crate::auth::bootstrap::{ADMIN_TOKEN_FILE, PKI_DIR, advertised_url, local_url};
use crate::config::{MasterConfig, TokenCommand};

/// The admin token and CA of the master whose data dir `config` names.
pub(crate) struct Admin {
    pub(crate) url: String,
    pub(crate) token: String,
    pub(crate) ca_pem: String,
}

impl Admin {
    pub(crate) fn of(config: &MasterConfig) -> anyhow::Result<Admin> {
        let dir = &config.data_dir;
        let missing = |what: &str| {
            format!("{what} is not in {}: is this the master's data dir (--data-dir), and has the master started once?", dir.display())
        };
        let token = files::read_secret(&dir.join(ADMIN_TOKEN_FILE))?.with_context(|| missing(ADMIN_TOKEN_FILE))?;
        let ca_path = dir.join(PKI_DIR).join("ca.crt");
        let ca_pem = std::fs::read_to_string(&ca_path).with_context(|| missing("pki/ca.crt"))?;
        Ok(Admin { url: local_url(config), token, ca_pem })
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}/api/v1{path}", self.url);
        let mut request = crate::admin::trusting_client(&self.ca_pem)?.request(method, &url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach the master at {}: {}", self.url, wasmlet_security::error_chain(&e)))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("the master answered {status}: {}", body["message"].as_str().unwrap_or("no reason given"));
        }
        Ok(body)
    }
}

pub async fn token(config: &MasterConfig, command: &TokenCommand) -> anyhow::Result<String> {
    let admin = Admin::of(config)?;
    match command {
        TokenCommand::Create { role, ttl, description } => {
            let body = serde_json::json!({ "role": role, "ttl": ttl, "description": description });
            let created = admin.call(reqwest::Method::POST, "/tokens", Some(body)).await?;
            let token = created["token"].as_str().unwrap_or_default();
            let mut out = format!("{token}\n");
            if role == "join" {
                let expires = created["expires"].as_str().map_or("never expires".to_string(), |e| format!("expires {e}"));
                let _ = writeln!(
                    out,
                    "\nJoin a node with it ({expires}):\n  wasmlet-agent --master {} --join-token {token}",
                    advertised_url(config)
                );
            }
            Ok(out)
        }
        TokenCommand::List => {
            let list = admin.call(reqwest::Method::GET, "/tokens", None).await?;
            let mut rows = vec![["ID", "ROLE", "EXPIRES", "STATUS", "DESCRIPTION"].map(String::from)];
            let now = chrono::Utc::now();
            for item in list["items"].as_array().into_iter().flatten() {
                let text = |key: &str| item[key].as_str().unwrap_or_default().to_string();
                let expires = item["expires"].as_str().and_then(|e| e.parse::<chrono::DateTime<chrono::Utc>>().ok());
                let status = if item["revoked"].is_string() {
                    "revoked"
                } else if expires.is_some_and(|e| e <= now) {
                    "expired"
                } else {
                    "valid"
                };
                let expires = expires.map_or("never".to_string(), |e| e.format("%Y-%m-%dT%H:%M:%SZ").to_string());
                rows.push([text("id"), text("role"), expires, status.to_string(), text("description")]);
            }
            Ok(table(&rows))
        }
        TokenCommand::Revoke { id } => {
            let record = admin.call(reqwest::Method::DELETE, &format!("/tokens/{id}"), None).await?;
            Ok(format!("token {id} ({}) revoked\n", record["role"].as_str().unwrap_or_default()))
        }
    }
}

/// A config file for the `wasmlet` CLI with one context: this master, its CA and the admin token.
pub fn client_config(config: &MasterConfig, context: &str, server: Option<&str>) -> anyhow::Result<String> {
    let admin = Admin::of(config)?;
    let server = server.map(str::to_string).unwrap_or_else(|| advertised_url(config));
    let quote = |s: &str| toml::Value::String(s.to_string()).to_string();
    Ok(format!(
        "# wasmlet CLI configuration: save as ~/.config/wasmlet/config.toml (or point WASMLETCONFIG at it).\n\
         # It holds the cluster's admin token: keep it private (chmod 600).\n\
         current-context = {ctx}\n\n[[contexts]]\nname = {ctx}\nmaster = {server}\ntoken = {token}\ncertificate-authority-data = '''\n{ca}'''\n",
        ctx = quote(context),
        server = quote(&server),
        token = quote(&admin.token),
        ca = admin.ca_pem,
    ))
}

fn table(rows: &[[String; 5]]) -> String {
    let widths: Vec<usize> = (0..5).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        let _ = writeln!(out, "{}", line.join("   ").trim_end());
    }
    out
}

/// A client that trusts the cluster CA only: `wasmlet-master token …` calls the master with it.
pub fn trusting_client(ca_pem: &str) -> anyhow::Result<reqwest::Client> {
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes())?;
    Ok(reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .build()?)
}
