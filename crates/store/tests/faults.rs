//! Faults below the store: a fault-injecting object store (errors, slow puts, hung puts, a store
//! that disappears mid-upload) under a real `BlockStore`. Uploads retry transient failures with
//! backoff and succeed; a store that hangs or is gone makes the call fail within the policy's
//! bound (so an upload ends in `error`), never wait forever; and it works again once the store is back.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use blocksnap_store::{BLOCK_SIZE, BlockId, BlockStore, Codec, Manifest, RetryPolicy, VerifyMode};
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult,
};

/// Injects faults in front of an in-memory store.
#[derive(Debug, Default)]
struct Faults {
    /// The next N puts fail with a transient error.
    fail_puts: AtomicU32,
    /// Every put sleeps this long first (ms).
    put_delay_ms: AtomicU64,
    /// Puts never answer while set.
    hang_puts: AtomicBool,
    /// Every call fails (the store has gone) while set.
    gone: AtomicBool,
    /// After this many more successful puts, the store goes (0: never).
    gone_after_puts: AtomicU32,
    puts_failed: AtomicU32,
    puts_ok: AtomicU32,
}

#[derive(Debug)]
struct FaultStore {
    inner: InMemory,
    f: Arc<Faults>,
}

impl fmt::Display for FaultStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultStore")
    }
}

fn transient(what: &str) -> object_store::Error {
    object_store::Error::Generic { store: "faults", source: format!("injected: {what}").into() }
}

impl FaultStore {
    fn check_gone(&self) -> object_store::Result<()> {
        if self.f.gone.load(Ordering::SeqCst) { Err(transient("connection refused")) } else { Ok(()) }
    }
}

#[async_trait]
impl ObjectStore for FaultStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.check_gone()?;
        let delay = self.f.put_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        while self.f.hang_puts.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if self.f.fail_puts.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            self.f.puts_failed.fetch_add(1, Ordering::SeqCst);
            return Err(transient("put failed"));
        }
        let r = self.inner.put_opts(location, payload, opts).await?;
        self.f.puts_ok.fetch_add(1, Ordering::SeqCst);
        if self.f.gone_after_puts.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)) == Ok(1) {
            self.f.gone.store(true, Ordering::SeqCst);
        }
        Ok(r)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.check_gone()?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        self.check_gone()?;
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.check_gone()?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        self.check_gone()?;
        self.inner.copy_opts(from, to, options).await
    }
}

/// Quick retries so the bounds are short in tests: worst case ≈ 3 × 300 ms + 2 × 40 ms.
const POLICY: RetryPolicy = RetryPolicy {
    attempts: 3,
    initial_backoff: Duration::from_millis(20),
    max_backoff: Duration::from_millis(40),
    attempt_timeout: Duration::from_millis(300),
};
const BOUND: Duration = Duration::from_secs(5);

async fn faulty_store() -> (BlockStore, Arc<Faults>) {
    let f = Arc::new(Faults::default());
    let os = Arc::new(FaultStore { inner: InMemory::new(), f: f.clone() });
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
