//! Silent nodes with short timings: NotReady, Lost, handed off, fenced; and the disruption rule.

use std::time::Duration;

use serde_json::json;

use crate::support::{FakeNode, Master, eventually, workload};

fn short(c: &mut wasmlet_master::MasterConfig) {
    c.heartbeat_interval = wasmlet_api::Duration::from_millis(100);
    c.node_grace_period = wasmlet_api::Duration::from_millis(300);
    c.lost_after = wasmlet_api::Duration::from_millis(600);
    c.hand_offs_per_second = 0;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_goes_unknown_its_instances_are_handed_off_and_fenced_on_return() {
    let master = Master::start(short).await;
    let n1 = FakeNode::join(&master, "n1", json!({})).await;
    let _n2 = FakeNode::join(&master, "n2", json!({})).await;
    let digest = master.upload(b"svc").await;
    assert_eq!(master.post("/workloads", &workload("web", &digest, json!({"replicas": 2}))).await.0, 201);
    let before = eventually("2 instances", || async {
        let i = master.instances_of("web").await;
        (i.len() == 2).then_some(i)
    })
    .await;
    let (lost_name, _, _, lost_epoch) = before.iter().find(|i| i.1 == "n1").cloned().expect("one on n1");

    n1.silence();
    let node = eventually("n1 Unknown", || async {
        let (_, node) = master.get("/nodes/n1").await;
        (node["status"]["conditions"][0]["status"] == "Unknown").then_some(node)
    })
    .await;
    assert_eq!(node["status"]["conditions"][0]["reason"], "NodeStatusUnknown");
    assert_eq!(node["spec"]["taints"][0]["key"], "node.wasmlet.io/unreachable");
    assert_eq!(node["spec"]["taints"][0]["effect"], "NoSchedule");
    assert!(!master.events("NodeNotReady").await.is_empty());

    let after = eventually("handed off", || async {
        let i = master.instances_of("web").await;
        (i.len() == 3 && i.iter().filter(|x| x.1 == "n2").count() == 2).then_some(i)
    })
    .await;
    assert!(after.iter().any(|i| i.0 == lost_name && i.2 == "Lost"), "{after:?}");
    let replacement = after.iter().filter(|i| i.1 == "n2").map(|i| i.3).max().unwrap();
    assert!(replacement > lost_epoch);
    let handed = master.events("HandedOff").await;
    assert!(handed.iter().any(|m| m.contains("from n1 to n2")), "{handed:?}");

    // The node returns: Ready from its report, untainted, the Lost instance leaves its assignment.
    let _back = n1.come_back(&master).await;
    eventually("fenced", || async { (!master.instances_of("web").await.iter().any(|i| i.0 == lost_name)).then_some(()) }).await;
    let (_, node) = master.get("/nodes/n1").await;
    assert!(node["spec"]["taints"].is_null(), "{node}");
    assert_eq!(node["status"]["conditions"][0]["status"], "True");
    assert!(!master.events("NodeReady").await.is_empty());
    assert!(!master.events("Fenced").await.is_empty());
    let (_, assignment) = master.get("/nodes/n1/assignment").await;
    assert!(assignment["instances"].as_array().unwrap().iter().all(|a| a["instance"]["metadata"]["name"] != lost_name.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_offs_are_held_off_when_most_nodes_go_silent_at_once() {
    let master = Master::start(short).await;
    let nodes = [
        FakeNode::join(&master, "n1", json!({})).await,
        FakeNode::join(&master, "n2", json!({})).await,
        FakeNode::join(&master, "n3", json!({})).await,
        FakeNode::join(&master, "n4", json!({})).await,
    ];
    let digest = master.upload(b"svc").await;
    assert_eq!(master.post("/workloads", &workload("web", &digest, json!({"replicas": 4}))).await.0, 201);
    eventually("4 instances", || async { (master.instances_of("web").await.len() == 4).then_some(()) }).await;
    for n in &nodes[..3] {
        n.silence();
    }
    let message = eventually("held off", || async { master.events("HandOffsHeldOff").await.into_iter().next() }).await;
    assert!(message.contains("3 of 4 nodes"), "{message}");
    // Well past lostAfter, nothing was handed off.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let instances = master.instances_of("web").await;
    assert_eq!(instances.len(), 4, "{instances:?}");
    assert!(instances.iter().all(|i| i.2 != "Lost"), "{instances:?}");
    assert!(master.events("HandedOff").await.is_empty());
}
