//! S3 round trip against a local S3-compatible server. Never skipped: `tests/run` starts
//! `moto_server` (S3 mode) once and passes `BLOCKSNAP_S3_ENDPOINT=http://127.0.0.1:PORT`; without
//! that variable the test starts its own `moto_server` (which must be on PATH) and fails if it cannot.
//! Also against that server: large objects (archive packs) go in multipart uploads whose parts are
//! retried one by one and which are aborted when they fail, and no manifest in the bucket ever names
//! an object that is not there, whatever fails when (faults injected in front of the real backend).
//! `cargo test -p blocksnap-store --test s3`

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use blocksnap_store::{
    ArchiveStore, BLOCK_SIZE, BlockId, BlockStore, Codec, DataKey, MIN_PART_SIZE, Manifest, MultipartPolicy,
    RetryPolicy, S3Config, SEGMENT_BLOCKS, StoreError, VerifyMode,
};
use bytes::Bytes;
use object_store::ObjectStoreExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use rand::RngCore;

mod common;
use common::{FaultStore, Faults};

struct Moto(Option<Child>);
impl Drop for Moto {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap()
}

/// moto accepts unsigned requests: create the bucket with one raw HTTP PUT.
fn create_bucket(addr: &str, bucket: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let req = format!("PUT /{bucket} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    resp.starts_with("HTTP/1.1 200")
}

/// The S3 endpoint to use (`http://host:port`) and the server this test started, if any.
fn s3_server() -> (String, Moto) {
    if let Ok(e) = std::env::var("BLOCKSNAP_S3_ENDPOINT") {
        return (e, Moto(None));
    }
    let port = free_port();
    let child = Command::new("moto_server")
        .args(["-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start moto_server ({e}): install it (pip install 'moto[server]') or set BLOCKSNAP_S3_ENDPOINT"
            )
        });
    (format!("http://127.0.0.1:{port}"), Moto(Some(child)))
}

#[tokio::test]
async fn s3_round_trip() {
    let (endpoint, _moto) = s3_server();
    let addr = endpoint.trim_start_matches("http://").trim_end_matches('/').to_string();
    let bucket = format!("snaps-{:08x}", rand::random::<u32>());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !create_bucket(&addr, &bucket) {
        assert!(Instant::now() < deadline, "the S3 server at {endpoint} did not answer within 30 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    let cfg = S3Config {
        bucket: bucket.clone(),
        prefix: "region/us-east-1".into(),
        endpoint: Some(endpoint.clone()),
        region: "us-east-1".into(),
        access_key_id: Some("test".into()),
        secret_access_key: Some("test".into()),
        allow_http: true,
        conditional_put: true,
        ..Default::default()
    };
    let store = BlockStore::open_s3(cfg.clone()).await.unwrap();
    let codec = Codec::encrypted(&DataKey::generate()).unwrap();
    let mut v = vec![0u8; BLOCK_SIZE];
    rand::rng().fill_bytes(&mut v);
    let data = Bytes::from(v);
    let a = store.put_block(&codec, data.clone()).await.unwrap();
    assert!(!a.already_present);
    assert!(store.put_block(&codec, data.clone()).await.unwrap().already_present);
    assert_eq!(store.get_block(&codec, &a.id).await.unwrap(), data);
    let blocks = vec![a.id, BlockId::UNWRITTEN, BlockId::ZERO, a.id];
    let m = Manifest {
        snapshot_id: "snap-s3".into(),
        volume_id: "vol-s3".into(),
        volume_size: (blocks.len() * BLOCK_SIZE) as u64,
        blocks,
        encryption: None,
        parent: None,
        created_unix_ms: 1,
        description: String::new(),
    };
    store.write_manifest(&m).await.unwrap();
    store.write_manifest(&m).await.unwrap();
    // Create-only puts (If-None-Match) really refuse to replace a committed manifest.
    let mut other = m.clone();
    other.description = "different".into();
    assert!(matches!(store.write_manifest(&other).await, Err(blocksnap_store::StoreError::ManifestExists(_))));
    // Reopen: store.json is found and validated.
    let again = BlockStore::open_s3(cfg).await.unwrap();
    assert_eq!(again.store_id(), store.store_id());
    assert_eq!(again.list_manifests().await.unwrap(), vec!["snap-s3"]);
    assert_eq!(again.read_manifest("snap-s3").await.unwrap(), m);
    assert!(again.verify("snap-s3", VerifyMode::Full(codec.clone())).await.unwrap().is_ok());
    again.delete_manifest("snap-s3").await.unwrap();
    let r = again.gc(Duration::ZERO).await.unwrap();
    assert_eq!((r.chunks_removed, r.segments_removed), (1, 1), "{r:?}");
    assert!(!again.has_block(&a.id).await.unwrap());
}

// ---- faults in front of the real S3 server --------------------------------------------------------

/// Quick retries so the tests stay short: three attempts, 20-40 ms apart.
const POLICY: RetryPolicy = RetryPolicy {
    attempts: 3,
    initial_backoff: Duration::from_millis(20),
    max_backoff: Duration::from_millis(40),
    attempt_timeout: Duration::from_secs(30),
};

/// A new bucket on the S3 server (and the server, when this test started it).
fn new_bucket() -> (S3Config, Moto) {
    let (endpoint, moto) = s3_server();
    let addr = endpoint.trim_start_matches("http://").trim_end_matches('/').to_string();
    let bucket = format!("snaps-{:08x}", rand::random::<u32>());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !create_bucket(&addr, &bucket) {
        assert!(Instant::now() < deadline, "the S3 server at {endpoint} did not answer within 30 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    let cfg = S3Config {
        bucket,
        prefix: String::new(),
        endpoint: Some(endpoint),
        region: "us-east-1".into(),
        access_key_id: Some("test".into()),
        secret_access_key: Some("test".into()),
        allow_http: true,
        conditional_put: true,
        ..Default::default()
    };
    (cfg, moto)
}

fn faulty(cfg: &S3Config) -> (Arc<FaultStore<AmazonS3>>, Arc<Faults>) {
    let s3 = AmazonS3Builder::new()
        .with_bucket_name(&cfg.bucket)
        .with_region(&cfg.region)
        .with_endpoint(cfg.endpoint.as_deref().unwrap_or_default())
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .with_allow_http(true)
        .with_retry(object_store::RetryConfig { max_retries: 0, ..Default::default() })
        .build()
        .unwrap();
    FaultStore::new(s3)
}

/// The bucket's unfinished multipart uploads, from S3's ListMultipartUploads (moto accepts it unsigned).
fn unfinished_uploads(cfg: &S3Config) -> usize {
    let endpoint = cfg.endpoint.as_deref().unwrap_or_default();
    let addr = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut s = TcpStream::connect(addr).unwrap();
    let req = format!("GET /{}?uploads HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n", cfg.bucket);
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "ListMultipartUploads: {resp}");
    resp.matches("<UploadId>").count()
}

fn random_blocks(n: usize) -> Vec<Bytes> {
    (0..n)
        .map(|_| {
            let mut v = vec![0u8; BLOCK_SIZE];
            rand::rng().fill_bytes(&mut v);
            Bytes::from(v)
        })
        .collect()
}

fn manifest(id: &str, blocks: Vec<BlockId>) -> Manifest {
    Manifest {
        snapshot_id: id.into(),
        volume_id: "vol-s3".into(),
        volume_size: (blocks.len() * BLOCK_SIZE) as u64,
        blocks,
        encryption: None,
        parent: None,
        created_unix_ms: 1,
        description: String::new(),
    }
}

/// Parts of 5 MiB (S3's smallest) from 5 MiB on: a 12 MiB pack is three parts.
const SMALL_PARTS: MultipartPolicy =
    MultipartPolicy { threshold: MIN_PART_SIZE, part_size: MIN_PART_SIZE, concurrency: 2 };

#[tokio::test]
async fn archive_packs_go_in_parts_each_retried_and_read_back_byte_for_byte() {
    let (cfg, _moto) = new_bucket();
    let std = BlockStore::open_s3(S3Config { prefix: "std".into(), ..cfg.clone() }).await.unwrap();
    let codec = Codec::plain();
    let data = random_blocks(24); // incompressible: one 12 MiB pack
    let mut ids = Vec::new();
    for b in &data {
        ids.push(std.put_block(&codec, b.clone()).await.unwrap().id);
    }
    let m = manifest("snap-parts", ids.clone());
    std.write_manifest(&m).await.unwrap();

    let (s3, f) = faulty(&cfg);
    let archive = ArchiveStore::open_multipart(s3, Path::from("arch"), POLICY, SMALL_PARTS).await.unwrap();
    f.fail_parts.store(1, Ordering::SeqCst);
    let ix = archive.archive_from(&std, &m, &codec, &|_, _| {}).await.unwrap();
    assert_eq!(ix.parts.len(), 1);
    let pack_len = ix.parts[0].len;
    assert!(pack_len > 2 * MIN_PART_SIZE as u64 && pack_len <= 3 * MIN_PART_SIZE as u64, "{pack_len}");
    // One multipart upload (the pack; the 1 KiB index is one PUT) of three parts, one of them tried
    // twice, completed once, nothing aborted.
    let count = |c: &AtomicU32| c.load(Ordering::SeqCst);
    assert_eq!(
        (count(&f.creates), count(&f.parts_ok), count(&f.parts_failed), count(&f.completes), count(&f.aborts)),
        (1, 3, 1, 1, 0)
    );
    // The server holds one object made of three parts (S3's multipart ETag ends in "-3").
    let plain = AmazonS3Builder::new()
        .with_bucket_name(&cfg.bucket)
        .with_region("us-east-1")
        .with_endpoint(cfg.endpoint.as_deref().unwrap_or_default())
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .with_allow_http(true)
        .build()
        .unwrap();
    let head = plain.head(&Path::from("arch/snap-parts/part.0")).await.unwrap();
    assert_eq!(head.size, pack_len);
    assert!(head.e_tag.as_deref().unwrap_or_default().trim_matches('"').ends_with("-3"), "{:?}", head.e_tag);
    assert_eq!(unfinished_uploads(&cfg), 0);
    // Byte for byte: the pack checks against the index's SHA-256, and every block comes back.
    assert!(archive.verify("snap-parts", VerifyMode::Full(codec.clone())).await.unwrap().is_ok());
    let back = BlockStore::open_s3(S3Config { prefix: "back".into(), ..cfg.clone() }).await.unwrap();
    let ix = archive.read_index("snap-parts").await.unwrap();
    assert_eq!(archive.restore_into(&ix, &back, &codec, None, &|_, _| {}).await.unwrap(), 24);
    for (id, want) in ids.iter().zip(&data) {
        assert_eq!(&back.get_block(&codec, id).await.unwrap(), want);
    }
}

#[tokio::test]
async fn a_multipart_upload_that_fails_is_aborted_and_commits_nothing() {
    let (cfg, _moto) = new_bucket();
    let std = BlockStore::open_s3(S3Config { prefix: "std".into(), ..cfg.clone() }).await.unwrap();
    let codec = Codec::plain();
    let mut ids = Vec::new();
    for b in random_blocks(12) {
        ids.push(std.put_block(&codec, b).await.unwrap().id);
    }
    let m = manifest("snap-abort", ids);
    std.write_manifest(&m).await.unwrap();
    let (s3, f) = faulty(&cfg);
    let archive = ArchiveStore::open_multipart(s3, Path::from("arch"), POLICY, SMALL_PARTS).await.unwrap();
    f.fail_parts.store(u32::MAX, Ordering::SeqCst);
    assert!(archive.archive_from(&std, &m, &codec, &|_, _| {}).await.is_err());
    // The first part was tried the policy's three times; the upload was aborted; no index.
    assert!(f.parts_failed.load(Ordering::SeqCst) >= POLICY.attempts);
    assert_eq!((f.completes.load(Ordering::SeqCst), f.aborts.load(Ordering::SeqCst)), (0, 1));
    assert_eq!(unfinished_uploads(&cfg), 0, "no parts left in the bucket");
    assert!(matches!(archive.read_index("snap-abort").await, Err(StoreError::ArchiveNotFound(_))));
    // It works once the server does.
    f.fail_parts.store(0, Ordering::SeqCst);
    archive.archive_from(&std, &m, &codec, &|_, _| {}).await.unwrap();
    assert!(archive.verify("snap-abort", VerifyMode::Full(codec)).await.unwrap().is_ok());
}

/// Chunk uploads that fail are retried with backoff; a server that goes mid-upload fails the upload;
/// and whatever happened, every manifest in the bucket names only objects that are there.
#[tokio::test]
async fn no_manifest_in_the_bucket_names_a_missing_object() {
    let (cfg, _moto) = new_bucket();
    let (s3, f) = faulty(&cfg);
    let store = BlockStore::open_with_policy(s3, Path::from("r"), POLICY).await.unwrap();
    let codec = Codec::plain();
    let data = random_blocks(12);

    // Transient failures: each failed put is tried again, and the upload commits.
    f.fail_puts.store(2, Ordering::SeqCst);
    let mut good = Vec::new();
    for b in &data[..4] {
        good.push(store.put_block(&codec, b.clone()).await.unwrap().id);
    }
    assert_eq!(f.puts_failed.load(Ordering::SeqCst), 2, "two failed tries, both retried");
    store.write_manifest(&manifest("snap-good", good.clone())).await.unwrap();

    // The server goes mid-upload (after two more chunks): the upload fails, and its blocks
    // written so far never get a manifest (the upload commits only after every put answered).
    f.gone_after_puts.store(2, Ordering::SeqCst);
    let mut partial = Vec::new();
    let mut failed = false;
    for b in &data[4..] {
        match store.put_block(&codec, b.clone()).await {
            Ok(p) => partial.push(p.id),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed && partial.len() == 2, "{} puts before the server went", partial.len());
    f.gone.store(false, Ordering::SeqCst);

    // Every block uploaded, then the server goes between the segments and the manifest: the
    // manifest is not written (segments first, manifest last).
    let mut all = good.clone();
    for b in &data[4..] {
        all.push(store.put_block(&codec, b.clone()).await.unwrap().id);
    }
    let mut blocks = all.clone();
    blocks.resize(SEGMENT_BLOCKS + 3, BlockId::UNWRITTEN); // two segments
    blocks[SEGMENT_BLOCKS + 1] = all[7];
    f.gone_after_puts.store(1, Ordering::SeqCst);
    assert!(store.write_manifest(&manifest("snap-cut-off", blocks.clone())).await.is_err());
    f.gone.store(false, Ordering::SeqCst);

    // The bucket, read through a store without faults: one manifest, whole.
    let clean = BlockStore::open_s3(S3Config { prefix: "r".into(), ..cfg.clone() }).await.unwrap();
    assert_eq!(clean.list_manifests().await.unwrap(), vec!["snap-good"]);
    for id in clean.list_manifests().await.unwrap() {
        let r = clean.verify(&id, VerifyMode::Full(codec.clone())).await.unwrap();
        assert!(r.is_ok(), "{id} names missing or damaged objects: {r:?}");
    }
    // Once the server answers, the same snapshot commits.
    store.write_manifest(&manifest("snap-cut-off", blocks)).await.unwrap();
    assert!(clean.verify("snap-cut-off", VerifyMode::Full(codec)).await.unwrap().is_ok());
}

/// An index of more than 5 MiB (112,640 written blocks, 52 bytes each) goes in parts too; archiving
/// the same snapshot again finds it (HEAD) and uploads nothing.
#[tokio::test]
async fn a_large_archive_index_goes_in_parts_and_is_found_again() {
    let (cfg, _moto) = new_bucket();
    let std = BlockStore::open_s3(S3Config { prefix: "std".into(), ..cfg.clone() }).await.unwrap();
    let codec = Codec::plain();
    let id = std.put_block(&codec, random_blocks(1).remove(0)).await.unwrap().id;
    let m = manifest("snap-big-index", vec![id; 55 * 2048]); // 55 GiB, one distinct block
    std.write_manifest(&m).await.unwrap();
    let (s3, f) = faulty(&cfg);
    let archive = ArchiveStore::open_multipart(s3, Path::from("arch"), POLICY, SMALL_PARTS).await.unwrap();
    let ix = archive.archive_from(&std, &m, &codec, &|_, _| {}).await.unwrap();
    assert_eq!(ix.entries.len(), 55 * 2048);
    let count = |c: &AtomicU32| c.load(Ordering::SeqCst);
    assert_eq!((count(&f.creates), count(&f.parts_ok), count(&f.completes)), (1, 2, 1), "the index in two parts");
    assert_eq!(archive.read_index("snap-big-index").await.unwrap(), ix);
    assert_eq!(archive.archive_from(&std, &m, &codec, &|_, _| {}).await.unwrap(), ix);
    assert_eq!(count(&f.creates), 1, "the committed index was found, nothing uploaded again");
    assert!(archive.verify("snap-big-index", VerifyMode::Full(codec)).await.unwrap().is_ok());
}
