//! Starting a master, fake nodes, and polling with deadlines.

use std::future::Future;
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use wasmlet_master::MasterConfig;

/// Generous: a slow machine must not fail a test.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A master running in-process; stopped when dropped.
pub struct Master {
    pub url: String,
    pub http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    pub dir: tempfile::TempDir,
}

impl Master {
    pub async fn start(tune: impl FnOnce(&mut MasterConfig)) -> Master {
        let dir = tempfile::tempdir().unwrap();
        let mut config = MasterConfig::for_data_dir(dir.path());
        // These tests are about the control plane: plain HTTP, as admin (TLS and roles are tested end to end).
        config.insecure_http = true;
        tune(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/api/v1", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(wasmlet_master::run(config, listener, async move {
            let _ = stopped.await;
        }));
        let token_file = dir.path().join("admin.token");
        let token =
            eventually("the admin token", || async { std::fs::read_to_string(&token_file).ok().filter(|t| t.ends_with('\n')) }).await;
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {}", token.trim()).parse().unwrap());
        let http = reqwest::Client::builder().default_headers(headers).build().unwrap();
        Master { url, http, stop: Some(stop), task: Some(task), dir }
    }

    /// Stops the master gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(format!("{}{path}", self.url)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn send(&self, method: reqwest::Method, path: &str, body: &Value) -> (u16, Value) {
        let r = self.http.request(method, format!("{}{path}", self.url)).json(body).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, body).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(reqwest::Method::PUT, path, body).await
    }

    /// Uploads a valid module named `tag` (see [`module`]) and returns its digest.
    pub async fn upload(&self, tag: &[u8]) -> String {
        let bytes = module(tag);
        let digest = digest_of(&bytes);
        let r = self.http.put(format!("{}/modules/{digest}", self.url)).body(bytes).send().await.unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        digest
    }

    pub async fn items(&self, path: &str) -> Vec<Value> {
        let (status, body) = self.get(path).await;
        assert_eq!(status, 200, "{body}");
        body["items"].as_array().cloned().unwrap_or_default()
    }

    pub async fn events(&self, reason: &str) -> Vec<String> {
        self.items("/events")
            .await
            .into_iter()
            .filter(|e| e["reason"] == reason)
            .map(|e| e["message"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Instances of `workload`, as (name, node, phase, epoch).
    pub async fn instances_of(&self, workload: &str) -> Vec<(String, String, String, u64)> {
        self.items(&format!("/instances?labelSelector=wasmlet.io/workload={workload}"))
            .await
            .into_iter()
            .map(|i| {
                (
                    i["metadata"]["name"].as_str().unwrap().to_string(),
                    i["spec"]["node"].as_str().unwrap().to_string(),
                    i["status"]["phase"].as_str().unwrap_or("Pending").to_string(),
                    i["spec"]["epoch"].as_u64().unwrap(),
                )
            })
            .collect()
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The smallest valid WebAssembly module, told apart by `tag` in a custom section.
pub fn module(tag: &[u8]) -> Vec<u8> {
    assert!(tag.len() < 100, "one LEB128 byte of length");
    let mut bytes = b"\0asm\x01\0\0\0".to_vec();
    bytes.extend_from_slice(&[0, tag.len() as u8 + 2, 1, b't']);
    bytes.extend_from_slice(tag);
    bytes
}

pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

pub fn workload(name: &str, digest: &str, extra: Value) -> Value {
    let mut w = json!({
        "apiVersion": "wasmlet.io/v1",
        "kind": "Workload",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"type": "daemon", "module": {"source": format!("{name}.wasm"), "digest": digest}},
    });
    if let (Some(spec), Some(extra)) = (w["spec"].as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            spec.insert(k.clone(), v.clone());
        }
    }
    w
}

/// A node's registration: Ready, 4 CPUs, 4 GiB, 100 instance slots.
pub fn registration(name: &str, labels: Value) -> Value {
    let now = chrono::Utc::now();
    let resources = json!({"cpu": "4", "memory": "4Gi", "ephemeralStorage": "10Gi", "instances": 100});
    json!({
        "name": name,
        "labels": labels,
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [{"type": "Ready", "status": "True", "reason": "AgentReady", "message": "", "lastHeartbeatTime": now, "lastTransitionTime": now}],
        }
    })
}

/// A fake agent: registers, then renews its lease every 50 ms until stopped or dropped.
pub struct FakeNode {
    pub name: String,
    /// The node credential its registration gave.
    pub credential: String,
    heartbeat: JoinHandle<()>,
}

impl FakeNode {
    pub async fn join(master: &Master, name: &str, labels: Value) -> FakeNode {
        let (status, body) = master.post("/nodes/register", &registration(name, labels)).await;
        assert_eq!(status, 200, "{body}");
        FakeNode::heartbeating(master, name, body["credential"].as_str().unwrap_or_default())
    }

    /// The node back from silence: it registers again with its own credential, as an agent does.
    pub async fn come_back(&self, master: &Master) -> FakeNode {
        let url = format!("{}/nodes/register", master.url);
        let request = registration(&self.name, json!({}));
        let r = reqwest::Client::new().post(url).bearer_auth(&self.credential).json(&request).send().await.unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
        FakeNode::heartbeating(master, &self.name, &self.credential)
    }

    fn heartbeating(master: &Master, name: &str, credential: &str) -> FakeNode {
        let url = format!("{}/nodes/{name}/lease", master.url);
        let http = master.http.clone();
        let heartbeat = tokio::spawn(async move {
            loop {
                let _ = http.put(&url).json(&json!({"assignmentRevision": 0})).send().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        FakeNode { name: name.to_string(), credential: credential.to_string(), heartbeat }
    }

    /// Stops renewing the lease (the node goes silent).
    pub fn silence(&self) {
        self.heartbeat.abort();
    }

    /// Reports every instance assigned to this node as Running under its epoch.
    pub async fn run_assigned(&self, master: &Master) {
        let (status, assignment) = master.get(&format!("/nodes/{}/assignment", self.name)).await;
        assert_eq!(status, 200, "{assignment}");
        let updates: Vec<Value> = assignment["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| json!({"name": a["instance"]["metadata"]["name"], "epoch": a["instance"]["spec"]["epoch"], "status": {"phase": "Running"}}))
            .collect();
        let (status, body) = master.put(&format!("/nodes/{}/instances/status", self.name), &json!({"updates": updates})).await;
        assert_eq!(status, 204, "{body}");
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

/// Polls `check` until it gives a value, failing after [`DEADLINE`] with `what`.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
