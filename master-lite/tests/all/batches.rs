//! A workload asking for many instances is placed in batches: each pass of
//! the workload controller commits at most a batch, the next follows at once,
//! and the API answers in between.

use std::collections::BTreeMap;

use serde_json::json;
use wasmlet_master::config::defaults::CONTROLLER_BATCH;

use crate::support::{Master, eventually, registration, workload};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_replicas_are_placed_batch_by_batch() {
    let master = Master::start(|c| c.max_replicas = 5000).await;
    let mut node = registration("big", json!({}));
    node["status"]["capacity"]["instances"] = json!(10_000);
    node["status"]["allocatable"]["instances"] = json!(10_000);
    let (status, body) = master.post("/nodes/register", &node).await;
    assert_eq!(status, 200, "{body}");
    let digest = master.upload(b"many").await;
    let replicas = 2 * CONTROLLER_BATCH + 500;
    assert_eq!(master.post("/workloads", &workload("many", &digest, json!({"replicas": replicas}))).await.0, 201);
    let instances = eventually("every replica placed", || async {
        let items = master.items("/instances").await;
        (items.len() == replicas).then_some(items)
    })
    .await;
    // Every batch is one commit: its instances share a resourceVersion.
    let mut per_commit: BTreeMap<u64, usize> = BTreeMap::new();
    for instance in &instances {
        *per_commit.entry(instance["metadata"]["resourceVersion"].as_u64().unwrap()).or_default() += 1;
    }
    let sizes: Vec<usize> = per_commit.values().copied().collect();
    assert_eq!(sizes, [CONTROLLER_BATCH, CONTROLLER_BATCH, 500], "{sizes:?}");
    let (status, _) = master.get("/workloads/many").await;
    assert_eq!(status, 200);
}
