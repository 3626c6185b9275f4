//! Placement over real HTTP: spreading, and FailedScheduling that resolves when a node joins.

use std::collections::BTreeMap;

use serde_json::json;

use crate::support::{FakeNode, Master, eventually, workload};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_replicas_spread_two_per_node_and_a_selector_waits_for_its_node() {
    let master = Master::start(|_| {}).await;
    let _nodes = [
        FakeNode::join(&master, "n1", json!({})).await,
        FakeNode::join(&master, "n2", json!({})).await,
        FakeNode::join(&master, "n3", json!({})).await,
    ];
    let digest = master.upload(b"svc").await;
    assert_eq!(master.post("/workloads", &workload("web", &digest, json!({"replicas": 6}))).await.0, 201);
    let per_node = eventually("6 instances", || async {
        let instances = master.instances_of("web").await;
        (instances.len() == 6).then(|| {
            let mut per_node = BTreeMap::new();
            for (_, node, _, _) in instances {
                *per_node.entry(node).or_insert(0) += 1;
            }
            per_node
        })
    })
    .await;
    assert_eq!(per_node.values().copied().collect::<Vec<_>>(), [2, 2, 2], "{per_node:?}");

    let w = workload("gpu", &digest, json!({"nodeSelector": {"accelerator": "tpu"}}));
    assert_eq!(master.post("/workloads", &w).await.0, 201);
    let message = eventually("FailedScheduling", || async { master.events("FailedScheduling").await.into_iter().next() }).await;
    assert_eq!(message, "0/3 nodes available: 3 node selector mismatch");
    assert!(master.instances_of("gpu").await.is_empty());

    let _tpu = FakeNode::join(&master, "n4", json!({"accelerator": "tpu"})).await;
    let placed = eventually("placed on the new node", || async {
        let instances = master.instances_of("gpu").await;
        (instances.len() == 1).then(|| instances[0].1.clone())
    })
    .await;
    assert_eq!(placed, "n4");
    assert_eq!(master.events("FailedScheduling").await.len(), 1, "one event per distinct answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_spec_rolls_over_only_as_new_instances_run() {
    let master = Master::start(|_| {}).await;
    let node = FakeNode::join(&master, "n1", json!({})).await;
    let digest = master.upload(b"svc").await;
    let (_, created) = master.post("/workloads", &workload("web", &digest, json!({"replicas": 2}))).await;
    eventually("2 instances", || async { (master.instances_of("web").await.len() == 2).then_some(()) }).await;
    node.run_assigned(&master).await;
    let old: Vec<String> = master.instances_of("web").await.into_iter().map(|i| i.0).collect();

    let mut changed = created.clone();
    changed["spec"]["args"] = json!(["--v2"]);
    assert_eq!(master.put("/workloads/web", &changed).await.0, 200);
    eventually("a surge instance", || async { (master.instances_of("web").await.len() == 3).then_some(()) }).await;
    // Nothing old goes while the new one is not Running.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(master.instances_of("web").await.len(), 3);
    eventually("all replaced", || async {
        node.run_assigned(&master).await;
        let now = master.instances_of("web").await;
        (now.len() == 2 && now.iter().all(|i| !old.contains(&i.0))).then_some(())
    })
    .await;
}
