//! S3 round trip against a local S3-compatible server. Never skipped: `tests/run` starts
//! `moto_server` (S3 mode) once and passes `BLOCKSNAP_S3_ENDPOINT=http://127.0.0.1:PORT`; without
//! that variable the test starts its own `moto_server` (which must be on PATH) and fails if it cannot.
//! `cargo test -p blocksnap-store --test s3`

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use blocksnap_store::{BLOCK_SIZE, BlockId, BlockStore, Codec, DataKey, Manifest, S3Config, VerifyMode};
use bytes::Bytes;
use rand::RngCore;

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
