//! Integration tests against a real local directory store.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use blocksnap_store::{
    BLOCK_SIZE, BlockId, BlockStore, Codec, DataKey, EncryptionInfo, LocalOptions, Manifest, StoreError, SyncMode,
    VerifyMode,
};
use bytes::Bytes;
use rand::RngCore;

fn random_block() -> Bytes {
    let mut v = vec![0u8; BLOCK_SIZE];
    rand::rng().fill_bytes(&mut v);
    Bytes::from(v)
}

/// Text-like data: compresses well.
fn compressible_block(seed: u64) -> Bytes {
    let mut v = Vec::with_capacity(BLOCK_SIZE);
    let mut i = seed;
    while v.len() < BLOCK_SIZE {
        v.extend_from_slice(format!("SECRET-PATTERN-{i:08} lorem ipsum dolor sit amet; ").as_bytes());
        i += 1;
    }
    v.truncate(BLOCK_SIZE);
    Bytes::from(v)
}

async fn open(dir: &Path) -> BlockStore {
    BlockStore::open_local_with(dir, LocalOptions { sync: SyncMode::None }).await.unwrap()
}

fn chunk_file(root: &Path, id: &BlockId) -> PathBuf {
    let h = id.to_hex();
    root.join("chunks").join(&h[0..2]).join(&h)
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn age(path: &Path, by: Duration) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - by).unwrap();
}

fn fake_id(n: u32) -> BlockId {
    let mut b = [0x5au8; 32];
    b[..4].copy_from_slice(&n.to_be_bytes());
    BlockId(b)
}

fn manifest(id: &str, blocks: Vec<BlockId>) -> Manifest {
    Manifest {
        snapshot_id: id.into(),
        volume_id: "vol-0123456789abcdef0".into(),
        volume_size: blocks.len() as u64 * BLOCK_SIZE as u64,
        blocks,
        encryption: None,
        parent: None,
        created_unix_ms: 1_700_000_000_000,
        description: "test".into(),
    }
}

#[tokio::test]
async fn round_trip_plain_and_encrypted() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlockStore::open_local(dir.path()).await.unwrap();
    assert!(dir.path().join("store.json").exists());
    let codecs = [Codec::plain(), Codec::encrypted(&DataKey::generate()).unwrap()];
    for codec in &codecs {
        for data in [random_block(), compressible_block(1)] {
            let out = store.put_block(codec, data.clone()).await.unwrap();
            assert!(!out.already_present);
            assert!(out.stored_bytes > 0);
            assert_eq!(out.id, store.block_id(codec, &data));
            assert!(store.has_block(&out.id).await.unwrap());
            assert_eq!(store.get_block(codec, &out.id).await.unwrap(), data);
        }
    }
    // Unencrypted ids are SHA-256 of the plaintext (the EBS direct-API checksum).
    let data = compressible_block(9);
    let id = store.put_block(&codecs[0], data.clone()).await.unwrap().id;
    let sha = sha256_reference(&data);
    assert_eq!(id.0, sha);
    // Reopening validates and keeps the store id.
    let sid = store.store_id().to_string();
    let again = open(dir.path()).await;
    assert_eq!(again.store_id(), sid);
    assert_eq!(again.get_block(&codecs[0], &id).await.unwrap(), data);
}

fn sha256_reference(data: &[u8]) -> [u8; 32] {
    // Independent reference implementation: coreutils.
    use std::process::Command;
    let tmp = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tmp.path(), data).unwrap();
    let out = Command::new("sha256sum").arg(tmp.path()).output().unwrap();
    let hex = String::from_utf8(out.stdout).unwrap();
    let mut b = [0u8; 32];
    hex::decode_to_slice(&hex[..64], &mut b).unwrap();
    b
}

#[tokio::test]
async fn dedup_stores_one_object() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let codec = Codec::plain();
    let data = random_block();
    let a = store.put_block(&codec, data.clone()).await.unwrap();
    let b = store.put_block(&codec, data.clone()).await.unwrap();
    assert_eq!(a.id, b.id);
    assert!(!a.already_present && b.already_present);
    assert_eq!(b.stored_bytes, 0);
    // Concurrent puts of the same block: still one object.
    let puts: Vec<_> = (0..8)
        .map(|_| {
            let (s, c, d) = (store.clone(), codec.clone(), compressible_block(77));
            tokio::spawn(async move { s.put_block(&c, d).await })
        })
        .collect();
    let mut fresh = 0;
    for p in puts {
        if !p.await.unwrap().unwrap().already_present {
            fresh += 1;
        }
    }
    assert_eq!(fresh, 1);
    assert_eq!(files_under(&dir.path().join("chunks")).len(), 2);
    // Same plaintext under two encrypted lineages: two different ids, no cross-lineage dedup.
    let k1 = Codec::encrypted(&DataKey::generate()).unwrap();
    let k2 = Codec::encrypted(&DataKey::generate()).unwrap();
    let e1 = store.put_block(&k1, data.clone()).await.unwrap();
    let e2 = store.put_block(&k2, data.clone()).await.unwrap();
    assert_ne!(e1.id, e2.id);
    assert_ne!(e1.id, a.id);
    assert!(!e2.already_present);
}

#[tokio::test]
async fn zero_block_is_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    for codec in [Codec::plain(), Codec::encrypted(&DataKey::generate()).unwrap()] {
        let out = store.put_block(&codec, Bytes::from(vec![0u8; BLOCK_SIZE])).await.unwrap();
        assert_eq!(out.id, BlockId::ZERO);
        assert_eq!(out.stored_bytes, 0);
        let z = store.get_block(&codec, &BlockId::ZERO).await.unwrap();
        assert_eq!(z.len(), BLOCK_SIZE);
        assert!(z.iter().all(|b| *b == 0));
        let u = store.get_block(&codec, &BlockId::UNWRITTEN).await.unwrap();
        assert!(u.len() == BLOCK_SIZE && u.iter().all(|b| *b == 0));
    }
    assert!(files_under(&dir.path().join("chunks")).is_empty());
    // A block with a single non-zero byte is real data.
    let mut v = vec![0u8; BLOCK_SIZE];
    v[BLOCK_SIZE - 1] = 1;
    let out = store.put_block(&Codec::plain(), Bytes::from(v)).await.unwrap();
    assert!(!out.id.is_reserved());
    assert!(out.stored_bytes < 1000, "sparse block compresses");
}

#[tokio::test]
async fn wrong_block_length_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let r = store.put_block(&Codec::plain(), Bytes::from(vec![1u8; 4096])).await;
    assert!(matches!(r, Err(StoreError::Invalid(_))));
}

#[tokio::test]
async fn compressed_flag_only_when_smaller() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    for codec in [Codec::plain(), Codec::encrypted(&DataKey::generate()).unwrap()] {
        let extra = if codec.is_encrypted() { 12 + 16 } else { 0 };
        let rnd = store.put_block(&codec, random_block()).await.unwrap();
        let raw = std::fs::read(chunk_file(dir.path(), &rnd.id)).unwrap();
        assert_eq!(&raw[0..4], b"BSNC");
        assert_eq!(raw[6] & 1, 0, "random data must not be flagged compressed");
        assert_eq!(raw.len(), 20 + extra + BLOCK_SIZE);
        assert_eq!(rnd.stored_bytes, raw.len() as u64);
        assert_eq!(raw[6] & 2 != 0, codec.is_encrypted());

        let txt = store.put_block(&codec, compressible_block(5)).await.unwrap();
        let raw = std::fs::read(chunk_file(dir.path(), &txt.id)).unwrap();
        assert_eq!(raw[6] & 1, 1, "text must be compressed");
        assert!(raw.len() < BLOCK_SIZE / 4, "compressed to {}", raw.len());
    }
}

#[tokio::test]
async fn encrypted_chunks_hide_plaintext_and_need_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let key = DataKey::generate();
    let codec = Codec::encrypted(&key).unwrap();
    // Compressible and incompressible blocks, both carrying a known pattern.
    let mut rnd = random_block().to_vec();
    rnd[1000..1000 + 23].copy_from_slice(b"SECRET-PATTERN-00000001");
    for data in [compressible_block(1), Bytes::from(rnd)] {
        let id = store.put_block(&codec, data.clone()).await.unwrap().id;
        let raw = std::fs::read(chunk_file(dir.path(), &id)).unwrap();
        assert!(!raw.windows(15).any(|w| w == b"SECRET-PATTERN-"), "plaintext visible in encrypted chunk");
        // Id is not the plaintext hash.
        assert_ne!(id, Codec::plain().block_id(&data));
        // Right key (fresh codec from the same key bytes) reads it back.
        let again = Codec::encrypted(&DataKey::from_bytes(*key.as_bytes())).unwrap();
        assert_eq!(store.get_block(&again, &id).await.unwrap(), data);
        // Wrong key: authentication failure, never data.
        let wrong = Codec::encrypted(&DataKey::generate()).unwrap();
        assert!(matches!(store.get_block(&wrong, &id).await, Err(StoreError::Decrypt(_))));
        // No key at all.
        assert!(matches!(store.get_block(&Codec::plain(), &id).await, Err(StoreError::CodecMismatch { .. })));
    }
    // And a plain chunk read with a key is refused too.
    let pid = store.put_block(&Codec::plain(), random_block()).await.unwrap().id;
    assert!(matches!(store.get_block(&codec, &pid).await, Err(StoreError::CodecMismatch { .. })));
}

#[tokio::test]
async fn corrupted_chunk_is_an_error_not_wrong_data() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let plain = Codec::plain();
    let enc = Codec::encrypted(&DataKey::generate()).unwrap();
    let cases = [
        (plain.clone(), random_block()),
        (plain.clone(), compressible_block(3)),
        (enc.clone(), random_block()),
        (enc.clone(), compressible_block(3)),
    ];
    for (codec, data) in cases {
        let id = store.put_block(&codec, data).await.unwrap().id;
        let path = chunk_file(dir.path(), &id);
        let orig = std::fs::read(&path).unwrap();
        for at in [6usize, 9, 25, orig.len() / 2, orig.len() - 1] {
            let mut bad = orig.clone();
            bad[at] ^= 0x40;
            std::fs::write(&path, &bad).unwrap();
            let r = store.get_block(&codec, &id).await;
            assert!(r.is_err(), "flip at {at} read back as data");
        }
        // A chunk whose CRC was recomputed after tampering is still caught (hash / GCM tag).
        let mut bad = orig.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let crc = crc32c_of(&bad);
        bad[16..20].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(&path, &bad).unwrap();
        assert!(store.get_block(&codec, &id).await.is_err());
        std::fs::write(&path, &orig).unwrap();
        assert!(store.get_block(&codec, &id).await.is_ok());
    }
}

fn crc32c_of(obj: &[u8]) -> u32 {
    // Mirrors the documented format: CRC32C over bytes [0,16) ++ [20..).
    let mut v = obj[..16].to_vec();
    v.extend_from_slice(&obj[20..]);
    crc32c(&v)
}

fn crc32c(data: &[u8]) -> u32 {
    // Bitwise reference implementation (Castagnoli, reflected).
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
}

#[tokio::test]
async fn verify_reports_and_quarantine_repairs() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let codec = Codec::encrypted(&DataKey::generate()).unwrap();
    let blocks: Vec<Bytes> = (0..4).map(|i| compressible_block(i * 1000)).collect();
    let mut ids = Vec::new();
    for b in &blocks {
        ids.push(store.put_block(&codec, b.clone()).await.unwrap().id);
    }
    ids.push(BlockId::UNWRITTEN);
    ids.push(BlockId::ZERO);
    ids.push(ids[0]);
    ids.push(ids[1]);
    store.write_manifest(&manifest("snap-v", ids.clone())).await.unwrap();
    let r = store.verify("snap-v", VerifyMode::Full(codec.clone())).await.unwrap();
    assert!(r.is_ok(), "{r:?}");
    assert_eq!((r.blocks, r.unique_chunks, r.ok_chunks), (8, 4, 4));

    // Damage one chunk, delete another.
    let p0 = chunk_file(dir.path(), &ids[0]);
    let mut raw = std::fs::read(&p0).unwrap();
    let n = raw.len();
    raw[n - 3] ^= 1;
    std::fs::write(&p0, &raw).unwrap();
    std::fs::remove_file(chunk_file(dir.path(), &ids[1])).unwrap();
    for mode in [VerifyMode::Crc, VerifyMode::Full(codec.clone())] {
        let r = store.verify("snap-v", mode).await.unwrap();
        assert!(!r.is_ok());
        assert_eq!(r.missing, vec![ids[1]]);
        assert_eq!(r.corrupt.len(), 1);
        assert_eq!(r.corrupt[0].0, ids[0]);
    }
    // Quarantine moves the bad copy aside; the next put of that block repairs the store.
    assert!(store.quarantine_block(&ids[0]).await.unwrap());
    assert_eq!(files_under(&dir.path().join("quarantine")).len(), 1);
    let again = store.put_block(&codec, blocks[0].clone()).await.unwrap();
    assert!(!again.already_present);
    store.put_block(&codec, blocks[1].clone()).await.unwrap();
    let r = store.verify("snap-v", VerifyMode::Full(codec)).await.unwrap();
    assert!(r.is_ok(), "{r:?}");
}

#[tokio::test]
async fn manifest_round_trip_segments_and_dedup() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    // 2,500 blocks = 3 segments (1024, 1024, 452), with unwritten and zero runs.
    let mut blocks: Vec<BlockId> = (0..2500).map(fake_id).collect();
    for b in blocks.iter_mut().take(300).skip(100) {
        *b = BlockId::UNWRITTEN;
    }
    blocks[2000] = BlockId::ZERO;
    let mut m1 = manifest("snap-00000000000000001", blocks.clone());
    m1.encryption = Some(EncryptionInfo {
        kms_key_arn: "arn:aws:kms:us-east-1:111122223333:key/abc".into(),
        wrapped_key: vec![0xde, 0xad, 0xbe, 0xef],
    });
    m1.description = "first \"snap\" ✓".into();
    store.write_manifest(&m1).await.unwrap();
    assert_eq!(store.read_manifest(&m1.snapshot_id).await.unwrap(), m1);
    let segs = dir.path().join("segs");
    assert_eq!(files_under(&segs).len(), 3);

    // Second snapshot shares the first 2,048 blocks and changes one in the last segment.
    let mut blocks2 = blocks.clone();
    blocks2[2400] = fake_id(999_999);
    let mut m2 = manifest("snap-00000000000000002", blocks2);
    m2.parent = Some(m1.snapshot_id.clone());
    store.write_manifest(&m2).await.unwrap();
    assert_eq!(files_under(&segs).len(), 4, "only the changed segment is new");
    assert_eq!(store.read_manifest(&m2.snapshot_id).await.unwrap(), m2);
    let h = store.read_manifest_header(&m2.snapshot_id).await.unwrap();
    assert_eq!(h.segments.len(), 3);
    assert_eq!(h.parent.as_deref(), Some(m1.snapshot_id.as_str()));

    // An empty 1 GiB volume needs no segment objects at all.
    let empty = manifest("snap-empty", vec![BlockId::UNWRITTEN; 2048]);
    store.write_manifest(&empty).await.unwrap();
    assert_eq!(files_under(&segs).len(), 4);
    assert_eq!(store.read_manifest("snap-empty").await.unwrap(), empty);

    // Rewriting the same manifest is idempotent; a different one is refused.
    store.write_manifest(&m1).await.unwrap();
    let mut other = m1.clone();
    other.description = "changed".into();
    assert!(matches!(store.write_manifest(&other).await, Err(StoreError::ManifestExists(_))));
    // Inconsistent block count is refused before anything is written.
    let mut bad = m1.clone();
    bad.snapshot_id = "snap-bad".into();
    bad.volume_size += BLOCK_SIZE as u64;
    assert!(matches!(store.write_manifest(&bad).await, Err(StoreError::Invalid(_))));
    assert!(matches!(store.read_manifest("snap-bad").await, Err(StoreError::ManifestNotFound(_))));

    // A damaged segment makes the manifest unreadable rather than wrong.
    let seg_file = files_under(&segs).into_iter().next().unwrap();
    let mut raw = std::fs::read(&seg_file).unwrap();
    raw[20] ^= 1;
    std::fs::write(&seg_file, raw).unwrap();
    let r1 = store.read_manifest(&m1.snapshot_id).await;
    let r2 = store.read_manifest(&m2.snapshot_id).await;
    assert!(r1.is_err() || r2.is_err());
}

#[tokio::test]
async fn list_and_delete_manifests() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    assert!(store.list_manifests().await.unwrap().is_empty());
    for id in ["snap-c", "snap-a", "snap-b"] {
        store.write_manifest(&manifest(id, vec![fake_id(1); 4])).await.unwrap();
    }
    assert_eq!(store.list_manifests().await.unwrap(), vec!["snap-a", "snap-b", "snap-c"]);
    store.delete_manifest("snap-b").await.unwrap();
    store.delete_manifest("snap-b").await.unwrap();
    assert_eq!(store.list_manifests().await.unwrap(), vec!["snap-a", "snap-c"]);
    assert!(matches!(store.read_manifest("snap-b").await, Err(StoreError::ManifestNotFound(_))));
    assert!(matches!(store.read_manifest("../etc/passwd").await, Err(StoreError::Invalid(_))));
}

#[tokio::test]
async fn gc_sweeps_old_garbage_and_keeps_live_and_young() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let codec = Codec::plain();
    let hour = Duration::from_secs(3600);
    let live = store.put_block(&codec, random_block()).await.unwrap().id;
    let old_garbage = store.put_block(&codec, random_block()).await.unwrap().id;
    let young_garbage = store.put_block(&codec, random_block()).await.unwrap().id;
    let reused = store.put_block(&codec, random_block()).await.unwrap().id;
    let reused_data = store.get_block(&codec, &reused).await.unwrap();
    store.write_manifest(&manifest("snap-live", vec![live, BlockId::ZERO])).await.unwrap();
    store.write_manifest(&manifest("snap-gone", vec![old_garbage, live])).await.unwrap();
    store.delete_manifest("snap-gone").await.unwrap();
    for id in [live, old_garbage, reused] {
        age(&chunk_file(dir.path(), &id), 2 * hour);
    }
    for seg in files_under(&dir.path().join("segs")) {
        age(&seg, 2 * hour);
    }
    // An uploader reuses the old unreferenced chunk (dedup hit) just before GC.
    assert!(store.put_block(&codec, reused_data).await.unwrap().already_present);

    let report = store.gc(hour).await.unwrap();
    assert_eq!(report.manifests, 1);
    assert_eq!(report.live_chunks, 1);
    assert_eq!(report.chunks_removed, 1, "{report:?}");
    assert!(report.chunk_bytes_removed >= BLOCK_SIZE as u64);
    assert_eq!(report.segments_removed, 1, "snap-gone's segment");
    assert_eq!(report.kept_young, 2, "young + reused: {report:?}");
    assert!(store.has_block(&live).await.unwrap());
    assert!(!store.has_block(&old_garbage).await.unwrap());
    assert!(store.has_block(&young_garbage).await.unwrap());
    assert!(store.has_block(&reused).await.unwrap());
    assert!(store.read_manifest("snap-live").await.is_ok());

    // Extra roots protect chunks no manifest references (e.g. hydrating volumes).
    let mut roots = HashSet::new();
    roots.insert(young_garbage);
    let r = store.gc_with_roots(Duration::ZERO, &roots).await.unwrap();
    assert!(store.has_block(&young_garbage).await.unwrap());
    assert!(!store.has_block(&reused).await.unwrap(), "{r:?}");
    // With zero grace everything unreferenced goes; the live snapshot still reads.
    store.gc(Duration::ZERO).await.unwrap();
    assert!(!store.has_block(&young_garbage).await.unwrap());
    assert_eq!(files_under(&dir.path().join("chunks")).len(), 1);
    assert!(store.verify("snap-live", VerifyMode::Full(codec)).await.unwrap().is_ok());
}

#[tokio::test]
async fn store_json_mismatch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()).await);
    let path = dir.path().join("store.json");
    let orig = std::fs::read_to_string(&path).unwrap();
    assert!(orig.contains("\"format\": 2"), "{orig}");
    let v3 = orig.replace("\"format\": 2", "\"format\": 3");
    std::fs::write(&path, v3).unwrap();
    let r = BlockStore::open_local(dir.path()).await;
    assert!(matches!(r, Err(StoreError::Incompatible(_))), "{r:?}");
    let bs = orig.replace("524288", "4194304");
    std::fs::write(&path, bs).unwrap();
    let r = BlockStore::open_local(dir.path()).await;
    assert!(matches!(r, Err(StoreError::Incompatible(_))), "{r:?}");
    std::fs::write(&path, "not json").unwrap();
    assert!(BlockStore::open_local(dir.path()).await.is_err());
    std::fs::write(&path, orig).unwrap();
    assert!(BlockStore::open_local(dir.path()).await.is_ok());
}

#[tokio::test]
async fn copy_between_stores_keeps_ids() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (src, dst) = (open(d1.path()).await, open(d2.path()).await);
    assert_ne!(src.store_id(), dst.store_id());
    let codec = Codec::encrypted(&DataKey::generate()).unwrap();
    let data = compressible_block(42);
    let id = src.put_block(&codec, data.clone()).await.unwrap().id;
    assert!(dst.copy_block_from(&src, &id).await.unwrap());
    assert!(!dst.copy_block_from(&src, &id).await.unwrap());
    assert!(!dst.copy_block_from(&src, &BlockId::ZERO).await.unwrap());
    assert_eq!(dst.get_block(&codec, &id).await.unwrap(), data);
    assert_eq!(std::fs::read(chunk_file(d1.path(), &id)).unwrap(), std::fs::read(chunk_file(d2.path(), &id)).unwrap());
    // A corrupt source chunk is not propagated.
    let pid = src.put_block(&Codec::plain(), random_block()).await.unwrap().id;
    let p = chunk_file(d1.path(), &pid);
    let mut raw = std::fs::read(&p).unwrap();
    raw[100] ^= 1;
    std::fs::write(&p, raw).unwrap();
    assert!(dst.copy_block_from(&src, &pid).await.is_err());
    assert!(!dst.has_block(&pid).await.unwrap());
    assert!(matches!(dst.copy_block_from(&src, &fake_id(7)).await, Err(StoreError::BlockNotFound(_))));
}

#[tokio::test]
async fn format_1_stores_keep_their_two_level_chunk_layout() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()).await);
    let path = dir.path().join("store.json");
    let v1 = std::fs::read_to_string(&path).unwrap().replace("\"format\": 2", "\"format\": 1");
    std::fs::write(&path, v1).unwrap();
    let store = open(dir.path()).await;
    let codec = Codec::plain();
    let data = Bytes::from(vec![9u8; BLOCK_SIZE]);
    let out = store.put_block(&codec, data.clone()).await.unwrap();
    let h = out.id.to_hex();
    assert!(dir.path().join("chunks").join(&h[0..2]).join(&h[2..4]).join(&h).is_file());
    assert_eq!(store.get_block(&codec, &out.id).await.unwrap(), data);
}

fn bytes_under(dir: &Path) -> u64 {
    files_under(dir).iter().map(|p| std::fs::metadata(p).unwrap().len()).sum()
}

/// The tally of created chunks counts each object once (not dedup hits, not zero blocks, not a
/// copy of a chunk already there), with its size on disk; a GC run lists every chunk, so the
/// listed figures minus the removed ones are what the store holds after it.
#[tokio::test]
async fn chunk_tally_and_gc_listing_match_the_disk() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (src, dst) = (open(d1.path()).await, open(d2.path()).await);
    let codec = Codec::plain();
    assert_eq!(src.chunks_created(), blocksnap_store::ChunkTally::default());
    let a = src.put_block(&codec, random_block()).await.unwrap().id;
    let b = src.put_block(&codec, compressible_block(9)).await.unwrap().id;
    let again = store_again(&src, &codec, b).await;
    assert!(again.already_present);
    src.put_block(&codec, Bytes::from(vec![0u8; BLOCK_SIZE])).await.unwrap();
    let t = src.chunks_created();
    assert_eq!(t.chunks, 2);
    assert_eq!(t.bytes, bytes_under(&d1.path().join("chunks")));

    assert!(dst.copy_block_from(&src, &a).await.unwrap());
    assert!(!dst.copy_block_from(&src, &a).await.unwrap());
    assert_eq!(dst.chunks_created().chunks, 1);
    assert_eq!(dst.chunks_created().bytes, bytes_under(&d2.path().join("chunks")));

    // `a` is referenced, `b` is garbage: the sweep lists both and removes `b`.
    src.write_manifest(&manifest("snap-a", vec![a])).await.unwrap();
    let r = src.gc(Duration::ZERO).await.unwrap();
    assert_eq!((r.chunks_listed, r.chunk_bytes_listed), (t.chunks, t.bytes), "{r:?}");
    assert_eq!(r.chunks_removed, 1);
    assert_eq!(r.chunk_bytes_listed - r.chunk_bytes_removed, bytes_under(&d1.path().join("chunks")));
    assert_eq!(src.chunks_created(), t, "a sweep creates nothing");
}

async fn store_again(s: &BlockStore, codec: &Codec, id: BlockId) -> blocksnap_store::PutOutcome {
    let data = s.get_block(codec, &id).await.unwrap();
    s.put_block(codec, data).await.unwrap()
}

/// Stress: many writers at once, half of them racing on the same contents (dedup: one creates, the
/// others hit) and copies racing with puts into the same store; the tally ends equal to what is on
/// disk, each object counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chunk_tally_is_exact_under_concurrent_writers() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (src, dst) = (open(d1.path()).await, open(d2.path()).await);
    let codec = Codec::plain();
    let shared: Vec<Bytes> = (0..16).map(compressible_block).collect();
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let (s, d, c, shared) = (src.clone(), dst.clone(), codec.clone(), shared.clone());
        tasks.push(tokio::spawn(async move {
            for (i, block) in shared.iter().enumerate() {
                // Every writer puts every shared block (7 of 8 are dedup hits) and one of its own.
                let id = s.put_block(&c, block.clone()).await.unwrap().id;
                s.put_block(&c, compressible_block(1000 + w * 100 + i as u64)).await.unwrap();
                // Copies of the same chunk race with puts of the same content in the other store.
                if w % 2 == 0 {
                    d.copy_block_from(&s, &id).await.unwrap();
                } else {
                    d.put_block(&c, block.clone()).await.unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (t1, t2) = (src.chunks_created(), dst.chunks_created());
    assert_eq!(t1.chunks as usize, files_under(&d1.path().join("chunks")).len());
    assert_eq!(t1.chunks, 16 + 8 * 16);
    assert_eq!(t1.bytes, bytes_under(&d1.path().join("chunks")));
    assert_eq!(t2.chunks, 16);
    assert_eq!(t2.bytes, bytes_under(&d2.path().join("chunks")));
}
