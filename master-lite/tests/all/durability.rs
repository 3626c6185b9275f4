//! The built binary, `kill -9`ed and restarted on the same data dir, loses nothing.

use std::process::{Child, Command, Stdio};

use serde_json::json;

use crate::support::{digest_of, eventually, module, registration, workload};

/// Kills the process when dropped, also when the test fails.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start(dir: &std::path::Path, port: u16) -> Process {
    let child = Command::new(env!("CARGO_BIN_EXE_wasmlet-master"))
        .args(["--data-dir", dir.to_str().unwrap(), "--listen", &format!("127.0.0.1:{port}"), "--insecure-http"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Process(child)
}

async fn ready(http: &reqwest::Client, port: u16) {
    eventually("master ready", || async {
        http.get(format!("http://127.0.0.1:{port}/readyz")).send().await.ok().filter(|r| r.status().is_success()).map(|_| ())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_acknowledged_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut master = start(dir.path(), port);
    ready(&reqwest::Client::new(), port).await;
    // The admin token of the first start keeps working after the crash: it is in the store.
    let token = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {}", token.trim()).parse().unwrap());
    let http = reqwest::Client::builder().default_headers(headers).build().unwrap();
    let url = format!("http://127.0.0.1:{port}/api/v1");
    let module = module(b"durable module");
    let digest = digest_of(&module);
    assert!(http.put(format!("{url}/modules/{digest}")).body(module.clone()).send().await.unwrap().status().is_success());
    let r = http.post(format!("{url}/nodes/register")).json(&registration("n1", json!({}))).send().await.unwrap();
    assert!(r.status().is_success());
    for name in ["a", "b", "c"] {
        let r = http.post(format!("{url}/workloads")).json(&workload(name, &digest, json!({"replicas": 1}))).send().await.unwrap();
        assert_eq!(r.status(), 201);
    }
    let before: serde_json::Value = eventually("3 instances", || async {
        let list: serde_json::Value = http.get(format!("{url}/instances")).send().await.ok()?.json().await.ok()?;
        (list["items"].as_array()?.len() == 3).then_some(list)
    })
    .await;

    master.0.kill().unwrap();
    master.0.wait().unwrap();
    let _master = start(dir.path(), port);
    ready(&http, port).await;
    let workloads: serde_json::Value = http.get(format!("{url}/workloads")).send().await.unwrap().json().await.unwrap();
    assert_eq!(workloads["items"].as_array().unwrap().len(), 3);
    let nodes: serde_json::Value = http.get(format!("{url}/nodes")).send().await.unwrap().json().await.unwrap();
    assert_eq!(nodes["items"][0]["metadata"]["name"], "n1");
    let after: serde_json::Value = http.get(format!("{url}/instances")).send().await.unwrap().json().await.unwrap();
    let names = |v: &serde_json::Value| v["items"].as_array().unwrap().iter().map(|i| i["metadata"]["name"].clone()).collect::<Vec<_>>();
    assert_eq!(names(&after), names(&before), "no instance lost or restarted");
    let bytes = http.get(format!("{url}/modules/{digest}")).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(&bytes[..], &module[..]);
}
