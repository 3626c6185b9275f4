//! The agent protocol with a fake node: register, lease, status, assignment, instance status.

use serde_json::json;

use crate::support::{FakeNode, Master, eventually, registration, workload};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_lease_status_assignment_and_instance_status() {
    let master = Master::start(|_| {}).await;
    let mut request = registration("edge-1", json!({"zone": "a"}));
    request["taints"] = json!([{"key": "dedicated", "value": "x", "effect": "PreferNoSchedule"}]);
    let (status, joined) = master.post("/nodes/register", &request).await;
    assert_eq!(status, 200, "{joined}");
    let credential = joined["credential"].as_str().unwrap().to_string();
    assert_eq!(credential.len(), 39, "a new node credential: {credential}");
    assert_eq!((joined["heartbeatInterval"].as_str(), joined["lostAfter"].as_str()), (Some("2s"), Some("15s")));
    assert_eq!(joined["node"]["spec"]["taints"][0]["key"], "dedicated");
    assert_eq!(joined["node"]["metadata"]["labels"]["zone"], "a");

    let (status, lease) = master.put("/nodes/edge-1/lease", &json!({"assignmentRevision": 0})).await;
    assert_eq!(status, 200, "{lease}");
    let before = lease["assignmentRevision"].as_u64().unwrap();
    let (status, err) = master.put("/nodes/ghost/lease", &json!({"assignmentRevision": 0})).await;
    assert_eq!(status, 404);
    assert!(err["message"].as_str().unwrap().contains("register"), "{err}");
    let (status, err) = master.put("/nodes/edge-1/lease", &json!({"assignmentRevison": 0})).await;
    assert_eq!(status, 400, "{err}");

    let mut node_status = registration("edge-1", json!({}))["status"].clone();
    node_status["nodeInfo"] = json!({"machineID": "m1", "systemUUID": "", "bootID": "b", "kernelVersion": "6.1", "osImage": "Debian", "operatingSystem": "linux", "architecture": "arm64", "cpuModel": "A72", "agentVersion": "0.1.0", "runtimeVersion": "48"});
    let (status, node) = master.put("/nodes/edge-1/status", &node_status).await;
    assert_eq!(status, 200, "{node}");
    assert_eq!(node["status"]["nodeInfo"]["architecture"], "arm64");

    let digest = master.upload(b"daemon").await;
    assert_eq!(master.post("/workloads", &workload("sensor", &digest, json!({"replicas": 1}))).await.0, 201);

    // The assignment watch answers once the instance is placed.
    let (status, assignment) = master.get(&format!("/nodes/edge-1/assignment?watch=true&since={before}&timeoutSeconds=30")).await;
    assert_eq!(status, 200, "{assignment}");
    let revision = assignment["revision"].as_u64().unwrap();
    assert!(revision > before);
    let item = &assignment["instances"][0];
    assert_eq!(item["workload"]["metadata"]["name"], "sensor");
    let name = item["instance"]["metadata"]["name"].as_str().unwrap().to_string();
    assert!(name.starts_with("sensor-") && name.len() == "sensor-".len() + 5, "{name}");
    let epoch = item["instance"]["spec"]["epoch"].as_u64().unwrap();
    let (_, lease) = master.put("/nodes/edge-1/lease", &json!({"assignmentRevision": revision})).await;
    assert_eq!(lease["assignmentRevision"].as_u64(), Some(revision));

    // Phase updates: the current epoch counts, an older one is ignored.
    let update = |phase: &str, epoch: u64| json!({"updates": [{"name": name, "epoch": epoch, "status": {"phase": phase}}]});
    assert_eq!(master.put("/nodes/edge-1/instances/status", &update("Running", epoch)).await.0, 204);
    assert_eq!(master.put("/nodes/edge-1/instances/status", &update("Failed", epoch - 1)).await.0, 204);
    let (_, instance) = master.get(&format!("/instances/{name}")).await;
    assert_eq!(instance["status"]["phase"], "Running");
    // A status change is not an assignment change.
    let r = master
        .http
        .get(format!("{}/nodes/edge-1/assignment?watch=true&since={revision}&timeoutSeconds=1", master.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    let (_, w) = master.get("/workloads/sensor").await;
    assert_eq!(w["status"]["running"], 1);

    // Registering again with the node's credential keeps its instances and the credential.
    let url = format!("{}/nodes/register", master.url);
    let r = reqwest::Client::new().post(&url).bearer_auth(&credential).json(&request).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let again: serde_json::Value = r.json().await.unwrap();
    assert_eq!(again["credential"], serde_json::Value::Null, "no new credential");
    assert_eq!(again["masterToken"], joined["masterToken"]);
    assert_eq!(master.instances_of("sensor").await.len(), 1);
    // The credential is node edge-1's only: it cannot register another node.
    request["name"] = json!("edge-2");
    let r = reqwest::Client::new().post(&url).bearer_auth(&credential).json(&request).send().await.unwrap();
    assert_eq!(r.status(), 403);

    // Deleting the workload empties the assignment.
    assert_eq!(master.send(reqwest::Method::DELETE, "/workloads/sensor", &json!(null)).await.0, 200);
    let (_, assignment) = master.get(&format!("/nodes/edge-1/assignment?watch=true&since={revision}&timeoutSeconds=30")).await;
    assert_eq!(assignment["instances"].as_array().unwrap().len(), 0);
    assert!(master.instances_of("sensor").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_moves_every_instance_with_its_replacement_running_first() {
    let master = Master::start(|_| {}).await;
    let nodes = [FakeNode::join(&master, "n1", json!({})).await, FakeNode::join(&master, "n2", json!({})).await];
    let digest = master.upload(b"svc").await;
    assert_eq!(master.post("/workloads", &workload("web", &digest, json!({"replicas": 2}))).await.0, 201);
    eventually("2 instances placed", || async { (master.instances_of("web").await.len() == 2).then_some(()) }).await;
    for n in &nodes {
        n.run_assigned(&master).await;
    }
    // A fake "agent" loop that runs whatever is assigned, during the drain.
    let runner = {
        let http = master.http.clone();
        let url = master.url.clone();
        tokio::spawn(async move {
            loop {
                for n in ["n1", "n2"] {
                    if let Ok(r) = http.get(format!("{url}/nodes/{n}/assignment")).send().await
                        && let Ok(a) = r.json::<serde_json::Value>().await
                    {
                        let updates: Vec<_> = a["instances"].as_array().cloned().unwrap_or_default().iter().map(|a| json!({"name": a["instance"]["metadata"]["name"], "epoch": a["instance"]["spec"]["epoch"], "status": {"phase": "Running"}})).collect();
                        let _ = http.put(format!("{url}/nodes/{n}/instances/status")).json(&json!({"updates": updates})).send().await;
                    }
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        })
    };
    let (status, report) = master.post("/nodes/n1/drain?timeoutSeconds=30", &json!(null)).await;
    runner.abort();
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["complete"], true, "{report}");
    let instances = master.instances_of("web").await;
    assert_eq!(instances.len(), 2, "{instances:?}");
    assert!(instances.iter().all(|(_, node, _, _)| node == "n2"), "{instances:?}");
    assert_eq!(master.get("/nodes/n1").await.1["spec"]["unschedulable"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_2_fields_go_only_to_agents_that_speak_it_and_a_live_name_is_not_taken_over() {
    let master = Master::start(|_| {}).await;
    let (status, old) = master.post("/nodes/register", &registration("old", json!({}))).await;
    assert_eq!(status, 200, "{old}");
    assert!(old.get("renewAfter").is_none() && old.get("nodesCaCertificate").is_none(), "an agent of version 1 refuses them: {old}");
    let mut request = registration("new", json!({}));
    request["protocolVersion"] = json!(2);
    request["aFieldOfALaterVersion"] = json!(true);
    let (status, new) = master.post("/nodes/register", &request).await;
    assert_eq!(status, 200, "a registration tolerates fields it does not know: {new}");
    assert!(new["renewAfter"].is_string(), "{new}");
    assert_eq!(new["node"]["metadata"]["annotations"]["wasmlet.io/agent-protocol"], "2");

    // Joining again under a name whose credential is valid: refused, saying what an admin can do.
    let (status, refused) = master.post("/nodes/register", &registration("old", json!({}))).await;
    assert_eq!(status, 409, "{refused}");
    let message = refused["message"].as_str().unwrap();
    assert!(message.contains("token revoke") && message.contains("DELETE /api/v1/nodes/old"), "{message}");
    // Deleting the node frees the name.
    assert_eq!(master.send(reqwest::Method::DELETE, "/nodes/old", &json!(null)).await.0, 200);
    let (status, again) = master.post("/nodes/register", &registration("old", json!({}))).await;
    assert_eq!(status, 200, "{again}");
    assert_ne!(again["credential"], old["credential"]);
}
