//! What every [`Store`] promises, checked the same way against each
//! implementation (redb in its unit tests, etcd against real servers in the
//! end-to-end tests). The store must be empty.

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{Batch, Expect, Kind, Op, Store, StoreError, Write};

fn put(name: &str, value: &str, expect: Expect) -> Op {
    Op::Put { kind: Kind::Workload, name: name.into(), value: value.as_bytes().to_vec(), expect }
}

fn write(ops: Vec<Op>) -> Write {
    Write { ops, ..Default::default() }
}

/// Panics, naming the broken promise, unless `store` keeps them all.
pub async fn check(store: &dyn Store) {
    let start = store.load().await.expect("an empty store loads");
    assert!(start.objects.is_empty(), "the store is empty at the start");
    let mut watch = store.watch(start.revision).await.expect("a watch from the current revision");

    let r1 = store.commit(write(vec![put("a", "1", Expect::Absent)])).await.expect("a create");
    assert!(r1 > start.revision, "a commit moves the revision");
    let again = store.commit(write(vec![put("a", "x", Expect::Absent)])).await;
    assert!(matches!(again, Err(StoreError::Conflict { kind: Kind::Workload, ref name }) if name == "a"), "a second create: {again:?}");
    let r2 = store.commit(write(vec![put("a", "2", Expect::Revision(r1))])).await.expect("an update at the current revision");
    let stale = store.commit(write(vec![put("a", "x", Expect::Revision(r1))])).await;
    assert!(matches!(stale, Err(StoreError::Conflict { .. })), "an update at an older revision: {stale:?}");
    // All or nothing: the second op's expectation fails, so the first is not written either.
    let half = store.commit(write(vec![put("b", "1", Expect::Absent), put("a", "x", Expect::Absent)])).await;
    assert!(matches!(half, Err(StoreError::Conflict { ref name, .. }) if name == "a"), "{half:?}");
    let r3 = store
        .commit(Write {
            ops: vec![Op::Delete { kind: Kind::Workload, name: "a".into(), expect: Expect::Revision(r2) }],
            epoch: Some((start.epoch, start.epoch + 1)),
            fence: None,
        })
        .await
        .expect("a delete at the current revision with an epoch");
    let epoch = store.commit(Write { epoch: Some((start.epoch, start.epoch + 5)), ..Default::default() }).await;
    assert!(epoch.is_err(), "the epoch moves only from its current value: {epoch:?}");
    let fence = store.campaign("conformance", CancellationToken::new()).await.expect("leads");
    let r4 = store
        .commit(Write { ops: vec![put("c", "1", Expect::Any)], epoch: None, fence: Some(fence) })
        .await
        .expect("a fenced write of the leader");

    let loaded = store.load().await.expect("loads");
    assert_eq!(loaded.revision, r4);
    assert_eq!(loaded.epoch, start.epoch + 1);
    let objects: Vec<_> = loaded.objects.iter().map(|o| (o.name.as_str(), o.revision, o.value.as_slice())).collect();
    assert_eq!(objects, [("c", r4, b"1".as_slice())], "only what committed is stored, at its revision");

    let mut seen: Vec<Batch> = Vec::new();
    while seen.last().map(|b| b.revision) != Some(r4) {
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), watch.next()).await;
        seen.push(next.expect("the watch delivers").expect("open").expect("a batch"));
    }
    let revisions: Vec<u64> = seen.iter().map(|b| b.revision).collect();
    assert_eq!(revisions, [r1, r2, r3, r4], "the watch delivers every commit once, in order");
    assert_eq!(seen[1].changes[0].value.as_deref(), Some(b"2".as_slice()));
    assert!(seen[2].changes[0].value.is_none() && seen[2].epoch == Some(start.epoch + 1), "{:?}", seen[2]);
    store.resign(fence).await;
}
