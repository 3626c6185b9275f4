//! Bad input over HTTP, optimistic concurrency, label selectors, watches, modules.

use std::time::Duration;

use serde_json::json;

use crate::support::{Master, digest_of, module, workload};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_right_status_a_clear_message_and_writes_nothing() {
    let master = Master::start(|c| c.max_module_size = wasmlet_api::Bytes::new(1024)).await;
    let digest = master.upload(b"module one").await;
    let good = workload("web", &digest, json!({"replicas": 1}));

    let mut unknown = good.clone();
    unknown["spec"]["replicaz"] = json!(2);
    let mut bad_quantity = good.clone();
    bad_quantity["spec"]["resources"] = json!({"requests": {"memory": "12Qi"}});
    let not_uploaded = workload("web", &digest_of(b"never uploaded"), json!({}));
    let cases = [
        (unknown, "spec", "replicaz"),
        (bad_quantity, "spec.resources.requests.memory", "Qi"),
        (not_uploaded, "upload it first", "curl -X PUT --data-binary @web.wasm"),
    ];
    for (body, a, b) in cases {
        let (status, err) = master.post("/workloads", &body).await;
        assert_eq!(status, 400, "{err}");
        assert_eq!(err["reason"], "Invalid");
        let message = err["message"].as_str().unwrap();
        assert!(message.contains(a) && message.contains(b), "{message}");
    }
    let r = master.http.post(format!("{}/workloads", master.url)).body("{\"metadata\":").send().await.unwrap();
    assert_eq!(r.status(), 400);
    let err: serde_json::Value = r.json().await.unwrap();
    assert!(err["message"].as_str().unwrap().contains("EOF"), "{err}");
    assert!(master.items("/workloads").await.is_empty(), "nothing half-written");

    // Duplicate name.
    assert_eq!(master.post("/workloads", &good).await.0, 201);
    let (status, err) = master.post("/workloads", &good).await;
    assert_eq!((status, err["reason"].as_str()), (409, Some("AlreadyExists")), "{err}");
    assert!(err["message"].as_str().unwrap().contains("`web` already exists"));
    assert_eq!(master.items("/workloads").await.len(), 1);

    // Wrong digest: 400 naming both digests, nothing stored.
    let wrong = digest_of(b"other bytes");
    let r = master.http.put(format!("{}/modules/{wrong}", master.url)).body(module(b"two")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let message = r.json::<serde_json::Value>().await.unwrap()["message"].as_str().unwrap().to_string();
    assert!(message.contains(&wrong) && message.contains(&digest_of(&module(b"two"))), "{message}");
    assert_eq!(master.http.get(format!("{}/modules/{wrong}", master.url)).send().await.unwrap().status(), 404);

    // Oversize (the streamed check without a declared length is a unit test of store::modules).
    let big = vec![7u8; 2048];
    let r = master.http.put(format!("{}/modules/{}", master.url, digest_of(&big))).body(big.clone()).send().await.unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["reason"], "TooLarge");
    let leftovers: Vec<_> = std::fs::read_dir(master.dir.path().join("modules")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(leftovers.len(), 1, "only the good module: {leftovers:?}");

    // The module comes back byte for byte.
    let bytes = master.http.get(format!("{}/modules/{digest}", master.url)).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(&bytes[..], module(b"module one"));
    let (status, err) = master.get("/workloads/nope").await;
    assert_eq!((status, err["reason"].as_str()), (404, Some("NotFound")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_resource_version_is_refused() {
    let master = Master::start(|_| {}).await;
    let digest = master.upload(b"m").await;
    let (_, created) = master.post("/workloads", &workload("web", &digest, json!({"replicas": 1}))).await;
    let v1 = created["metadata"]["resourceVersion"].as_u64().unwrap();
    assert!(created["metadata"]["uid"].is_string() && created["metadata"]["creationTimestamp"].is_string());

    let mut first = created.clone();
    first["spec"]["replicas"] = json!(2);
    let (status, updated) = master.put("/workloads/web", &first).await;
    assert_eq!(status, 200, "{updated}");
    assert!(updated["metadata"]["resourceVersion"].as_u64().unwrap() > v1);
    assert_eq!(updated["metadata"]["uid"], created["metadata"]["uid"]);

    let mut second = created.clone();
    second["spec"]["replicas"] = json!(5);
    let (status, err) = master.put("/workloads/web", &second).await;
    assert_eq!((status, err["reason"].as_str()), (409, Some("Conflict")), "{err}");
    assert!(err["message"].as_str().unwrap().contains(&format!("resourceVersion {v1}")));
    assert_eq!(master.get("/workloads/web").await.1["spec"]["replicas"], 2, "the stale write changed nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_selectors_and_watches() {
    let master = Master::start(|_| {}).await;
    let digest = master.upload(b"m").await;
    for (name, tier) in [("a", "edge"), ("b", "core"), ("c", "edge")] {
        let mut w = workload(name, &digest, json!({}));
        w["metadata"]["labels"]["tier"] = json!(tier);
        assert_eq!(master.post("/workloads", &w).await.0, 201);
    }
    let names =
        |items: Vec<serde_json::Value>| items.iter().map(|w| w["metadata"]["name"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(names(master.items("/workloads?labelSelector=tier%3Dedge").await), ["a", "c"]);
    assert_eq!(names(master.items("/workloads?labelSelector=tier!%3Dedge").await), ["b"]);
    assert_eq!(names(master.items("/workloads?labelSelector=tier,app%3Db").await), ["b"]);
    assert!(master.items("/workloads?labelSelector=zone").await.is_empty());
    let (status, err) = master.get("/workloads?labelSelector=bad%20key").await;
    assert_eq!(status, 400, "{err}");

    // A watch with nothing new answers 304 at its timeout.
    let revision = master.get("/workloads").await.1["revision"].as_u64().unwrap();
    let started = std::time::Instant::now();
    let r = master.http.get(format!("{}/workloads?watch=true&since={revision}&timeoutSeconds=1", master.url)).send().await.unwrap();
    assert_eq!(r.status(), 304);
    assert!(started.elapsed() >= Duration::from_millis(900));

    // A change answers a waiting watch.
    let url = format!("{}/workloads?watch=true&since={revision}&timeoutSeconds=30", master.url);
    let watch = tokio::spawn(master.http.get(url).send());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(master.post("/workloads", &workload("d", &digest, json!({}))).await.0, 201);
    let answer: serde_json::Value = watch.await.unwrap().unwrap().json().await.unwrap();
    assert!(answer["revision"].as_u64().unwrap() > revision);
    assert_eq!(answer["items"].as_array().unwrap().len(), 4);

    // A revision the cluster never reached (a watcher of a store since replaced): 410, list again.
    let future = answer["revision"].as_u64().unwrap() + 1000;
    for path in ["/workloads", "/instances", "/events", "/nodes", "/endpoints"] {
        let (status, err) = master.get(&format!("{path}?watch=true&since={future}&timeoutSeconds=30")).await;
        assert_eq!(status, 410, "{path}: {err}");
        assert!(err["message"].as_str().unwrap().contains("list again"), "{err}");
    }

    let metrics = master.http.get(master.url.replace("/api/v1", "/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("wasmlet_master_http_requests_total"), "{metrics}");
    assert!(metrics.contains("wasmlet_master_nodes{ready=\"True\"} 0"), "{metrics}");
    master.stop().await;
}
