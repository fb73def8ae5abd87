//! Faults below the store: a fault-injecting object store (errors, slow puts, hung puts, a store
//! that disappears mid-upload) under a real `BlockStore`. Uploads retry transient failures with
//! backoff and succeed; a store that hangs or is gone makes the call fail within the policy's
//! bound (so an upload ends in `error`), never wait forever; and it works again once the store is back.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use blocksnap_store::{BLOCK_SIZE, BlockId, BlockStore, Codec, Manifest, RetryPolicy, VerifyMode};
use bytes::Bytes;
use object_store::memory::InMemory;
use object_store::path::Path;

mod common;
use common::{FaultStore, Faults};

/// Quick retries so the bounds are short in tests: worst case ≈ 3 × 300 ms + 2 × 40 ms.
const POLICY: RetryPolicy = RetryPolicy {
    attempts: 3,
    initial_backoff: Duration::from_millis(20),
    max_backoff: Duration::from_millis(40),
    attempt_timeout: Duration::from_millis(300),
};
const BOUND: Duration = Duration::from_secs(5);

async fn faulty_store() -> (BlockStore, Arc<Faults>) {
    let (os, f) = FaultStore::new(InMemory::new());
    let store = BlockStore::open_with_policy(os, Path::from("region"), POLICY).await.unwrap();
    (store, f)
}

fn block(seed: u8) -> Bytes {
    Bytes::from((0..BLOCK_SIZE).map(|i| (i as u8).wrapping_mul(seed | 1).wrapping_add(seed)).collect::<Vec<_>>())
}

#[tokio::test]
async fn transient_put_failures_are_retried_and_the_upload_completes() {
    let (store, f) = faulty_store().await;
    let codec = Codec::plain();
    f.fail_puts.store(2, Ordering::SeqCst);
    let a = store.put_block(&codec, block(1)).await.expect("two failures are within three attempts");
    assert_eq!(f.puts_failed.load(Ordering::SeqCst), 2);
    assert_eq!(store.get_block(&codec, &a.id).await.unwrap(), block(1));
    // A manifest put retried after a failure is committed once, with the same content.
    f.fail_puts.store(1, Ordering::SeqCst);
    let m = manifest("snap-retry", vec![a.id]);
    store.write_manifest(&m).await.unwrap();
    assert_eq!(store.read_manifest("snap-retry").await.unwrap(), m);
    assert!(store.verify("snap-retry", VerifyMode::Full(codec)).await.unwrap().is_ok());
}

#[tokio::test]
async fn persistent_failures_give_up_within_the_bound() {
    let (store, f) = faulty_store().await;
    f.fail_puts.store(u32::MAX, Ordering::SeqCst);
    let t = Instant::now();
    let r = store.put_block(&Codec::plain(), block(2)).await;
    assert!(r.is_err(), "a put that always fails must fail, not loop");
    assert!(t.elapsed() < BOUND, "gave up after {:?}", t.elapsed());
    assert_eq!(f.puts_failed.load(Ordering::SeqCst), POLICY.attempts, "exactly the policy's attempts");
}

#[tokio::test]
async fn a_hung_store_times_out_and_works_again_when_it_answers() {
    let (store, f) = faulty_store().await;
    f.hang_puts.store(true, Ordering::SeqCst);
    let t = Instant::now();
    let r = store.put_block(&Codec::plain(), block(3)).await;
    let err = r.expect_err("a hung put must time out");
    assert!(err.to_string().contains("no answer within"), "{err}");
    assert!(t.elapsed() < BOUND, "gave up after {:?}", t.elapsed());
    f.hang_puts.store(false, Ordering::SeqCst);
    let a = store.put_block(&Codec::plain(), block(3)).await.unwrap();
    assert_eq!(store.get_block(&Codec::plain(), &a.id).await.unwrap(), block(3));
}

#[tokio::test]
async fn slow_puts_are_slow_not_failed() {
    let (store, f) = faulty_store().await;
    f.put_delay_ms.store(100, Ordering::SeqCst); // well under the attempt timeout
    let puts = (10..18).map(|s| {
        let store = store.clone();
        async move { store.put_block(&Codec::plain(), block(s)).await }
    });
    for r in futures::future::join_all(puts).await {
        r.unwrap();
    }
    assert_eq!(f.puts_failed.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_store_that_disappears_mid_upload_fails_the_upload_and_keeps_what_was_written() {
    let (store, f) = faulty_store().await;
    let codec = Codec::plain();
    f.gone_after_puts.store(3, Ordering::SeqCst);
    let mut ids = Vec::new();
    let t = Instant::now();
    let mut failed = None;
    for s in 20..40 {
        match store.put_block(&codec, block(s)).await {
            Ok(p) => ids.push(p.id),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let e = failed.expect("the upload must fail once the store has gone");
    assert!(t.elapsed() < BOUND, "gave up after {:?}", t.elapsed());
    assert!(!e.to_string().is_empty());
    assert_eq!(ids.len(), 3, "the puts before the store went were acknowledged");
    // The store comes back: what was acknowledged is there, and the upload can be done again.
    f.gone.store(false, Ordering::SeqCst);
    for (k, id) in ids.iter().enumerate() {
        assert_eq!(store.get_block(&codec, id).await.unwrap(), block(20 + k as u8));
    }
    let p = store.put_block(&codec, block(23)).await.unwrap();
    store.write_manifest(&manifest("snap-again", vec![ids[0], ids[1], ids[2], p.id])).await.unwrap();
    assert!(store.verify("snap-again", VerifyMode::Full(codec)).await.unwrap().is_ok());
}

fn manifest(id: &str, blocks: Vec<BlockId>) -> Manifest {
    Manifest {
        snapshot_id: id.into(),
        volume_id: "vol-faults".into(),
        volume_size: (blocks.len() * BLOCK_SIZE) as u64,
        blocks,
        encryption: None,
        parent: None,
        created_unix_ms: 1,
        description: String::new(),
    }
}
