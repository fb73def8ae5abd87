//! The block store: chunk, segment and manifest I/O over an [`ObjectStore`].

use std::collections::{HashMap, HashSet};
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload};
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;
use tracing::{debug, info, trace, warn};

use crate::crypto::Codec;
use crate::error::{Result, StoreError};
use crate::id::{BlockId, SegmentId};
use crate::manifest::{self, Manifest, ManifestHeader, check_snapshot_id};
use crate::retry::{RetryPolicy, Retrying};
use crate::{BLOCK_SIZE, SEGMENT_BLOCKS, STORE_FORMAT, STORE_FORMATS, chunk, segment};

/// Concurrent object requests for segment and verify walks (COLD uses 64, PBS restores
/// plateau at 12–20; per-store limits for block traffic belong to the caller).
pub(crate) const IO_CONCURRENCY: usize = 16;
/// Id shards that serialise GC deletes against writers (see `BlockStore::shard`).
const SHARDS: usize = 64;

/// Served for [`BlockId::ZERO`] / [`BlockId::UNWRITTEN`] without an allocation (lives in .bss).
static ZEROS: [u8; BLOCK_SIZE] = [0; BLOCK_SIZE];

/// When a local store makes its writes durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// Never fsync (tests, scratch stores).
    None,
    /// One `syncfs` before and one after each manifest write (PBS's default "filesystem"
    /// level): every chunk and segment is durable before the manifest that commits them.
    #[default]
    Filesystem,
    /// fsync every object and its directory as it is written.
    EveryObject,
}

/// Options for [`BlockStore::open_local_with`].
#[derive(Debug, Clone, Default)]
pub struct LocalOptions {
    pub sync: SyncMode,
}

/// An S3 (or S3-compatible) backend.
#[cfg(feature = "s3")]
#[derive(Clone, Default)]
pub struct S3Config {
    pub bucket: String,
    /// Key prefix inside the bucket ("" for the bucket root).
    pub prefix: String,
    /// e.g. `http://127.0.0.1:9000` for MinIO / moto / s3s; `None` for AWS.
    pub endpoint: Option<String>,
    pub region: String,
    /// Static credentials; when `None` the usual `AWS_*` environment variables are used.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    pub allow_http: bool,
    pub virtual_hosted_style: bool,
    /// Use `If-None-Match: *` for create-only writes. Turn off for servers without it (the
    /// store then checks with HEAD first, which is safe for a single owning process).
    pub conditional_put: bool,
}

#[cfg(feature = "s3")]
impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("allow_http", &self.allow_http)
            .finish_non_exhaustive()
    }
}

/// Result of [`BlockStore::put_block`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutOutcome {
    pub id: BlockId,
    /// Bytes written to the backend (0 when nothing was uploaded).
    pub stored_bytes: u64,
    /// Nothing was uploaded: the chunk existed already, or the block is all zeros.
    pub already_present: bool,
}

/// How deeply [`BlockStore::verify`] checks chunks.
#[derive(Debug, Clone)]
pub enum VerifyMode {
    /// Header and CRC32C only; needs no key.
    Crc,
    /// Decrypt, decompress and re-derive every id.
    Full(Codec),
}

/// Result of [`BlockStore::verify`].
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub snapshot_id: String,
    /// Blocks in the volume (including unwritten and zero blocks).
    pub blocks: u64,
    /// Distinct stored chunks referenced.
    pub unique_chunks: u64,
    /// Chunks that passed.
    pub ok_chunks: u64,
    pub bytes_read: u64,
    pub missing: Vec<BlockId>,
    pub corrupt: Vec<(BlockId, String)>,
}

impl VerifyReport {
    /// True when every referenced chunk was present and passed.
    pub fn is_ok(&self) -> bool {
        self.missing.is_empty() && self.corrupt.is_empty()
    }
}

#[derive(Serialize, Deserialize)]
struct StoreMeta {
    format: u32,
    block_size: u64,
    segment_blocks: u64,
    hash: String,
    store_id: String,
    created_unix_ms: i64,
}

#[derive(Deserialize)]
struct StoreProbe {
    format: u32,
    block_size: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ObjKey {
    Chunk([u8; 32]),
    Segment([u8; 32]),
}

pub(crate) struct Inner {
    pub(crate) os: Arc<dyn ObjectStore>,
    prefix: Path,
    local_root: Option<PathBuf>,
    sync: SyncMode,
    create_supported: AtomicBool,
    shards: Vec<RwLock<()>>,
    /// Objects a writer found already present, with when: never swept within the grace window.
    pub(crate) recent_hits: Mutex<HashMap<ObjKey, Instant>>,
    pub(crate) gc_lock: tokio::sync::Mutex<()>,
    store_id: std::sync::OnceLock<String>,
    /// `store.json`'s format: decides the chunk directory layout.
    format: std::sync::OnceLock<u32>,
}

/// A region's snapshot store. Cheap to clone; all methods take `&self` and may run concurrently.
#[derive(Clone)]
pub struct BlockStore {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for BlockStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockStore")
            .field("backend", &self.inner.os.to_string())
            .field("prefix", &self.inner.prefix.as_ref())
            .field("store_id", &self.store_id())
            .finish()
    }
}

pub(crate) fn now_unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn is_not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

impl BlockStore {
    /// Open (creating if needed) a store in a local directory, syncing per [`SyncMode::Filesystem`].
    pub async fn open_local(dir: &FsPath) -> Result<Self> {
        Self::open_local_with(dir, LocalOptions::default()).await
    }

    /// Open (creating if needed) a store in a local directory.
    pub async fn open_local_with(dir: &FsPath, opts: LocalOptions) -> Result<Self> {
        tokio::fs::create_dir_all(dir).await?;
        let root = tokio::fs::canonicalize(dir).await?;
        let fs = LocalFileSystem::new_with_prefix(&root)?
            .with_automatic_cleanup(true)
            .with_fsync(opts.sync == SyncMode::EveryObject);
        let fs: Arc<dyn ObjectStore> = Arc::new(fs);
        Self::open_inner(Arc::new(Retrying::new(fs, RetryPolicy::default())), Path::default(), Some(root), opts.sync)
            .await
    }

    /// Open (creating if needed) a store in an S3 bucket.
    #[cfg(feature = "s3")]
    pub async fn open_s3(cfg: S3Config) -> Result<Self> {
        let (s3, prefix) = s3_backend(&cfg)?;
        Self::open(s3, prefix).await
    }

    /// Open (creating if needed) a store under `prefix` of any object store.
    pub async fn open(store: Arc<dyn ObjectStore>, prefix: Path) -> Result<Self> {
        Self::open_with_policy(store, prefix, RetryPolicy::default()).await
    }

    /// [`BlockStore::open`] with another retry policy for the backend's calls.
    pub async fn open_with_policy(store: Arc<dyn ObjectStore>, prefix: Path, policy: RetryPolicy) -> Result<Self> {
        Self::open_inner(Arc::new(Retrying::new(store, policy)), prefix, None, SyncMode::None).await
    }

    async fn open_inner(
        os: Arc<dyn ObjectStore>,
        prefix: Path,
        local_root: Option<PathBuf>,
        sync: SyncMode,
    ) -> Result<Self> {
        let s = BlockStore {
            inner: Arc::new(Inner {
                os,
                prefix,
                local_root,
                sync,
                create_supported: AtomicBool::new(true),
                shards: (0..SHARDS).map(|_| RwLock::new(())).collect(),
                recent_hits: Mutex::new(HashMap::new()),
                gc_lock: tokio::sync::Mutex::new(()),
                store_id: std::sync::OnceLock::new(),
                format: std::sync::OnceLock::new(),
            }),
        };
        let (store_id, format) = s.load_or_create_meta().await?;
        let _ = s.inner.store_id.set(store_id);
        let _ = s.inner.format.set(format);
        info!(store = ?s, "snapshot store opened");
        Ok(s)
    }

    async fn load_or_create_meta(&self) -> Result<(String, u32)> {
        let path = self.key("store.json");
        for _ in 0..2 {
            match self.inner.os.get(&path).await {
                Ok(r) => return parse_store_meta(&r.bytes().await?),
                Err(e) if is_not_found(&e) => {
                    let mut id = [0u8; 16];
                    rand::RngCore::fill_bytes(&mut rand::rng(), &mut id);
                    let meta = StoreMeta {
                        format: STORE_FORMAT,
                        block_size: BLOCK_SIZE as u64,
                        segment_blocks: SEGMENT_BLOCKS as u64,
                        hash: "sha256".into(),
                        store_id: hex::encode(id),
                        created_unix_ms: now_unix_ms(),
                    };
                    let bytes = serde_json::to_vec_pretty(&meta)
                        .map_err(|e| StoreError::Invalid(format!("store.json: {e}")))?;
                    if self.put_create(&path, Bytes::from(bytes)).await? {
                        info!(store_id = %meta.store_id, "created new snapshot store");
                        self.sync_barrier().await?;
                        return Ok((meta.store_id, STORE_FORMAT));
                    }
                    // Lost a creation race: read the winner's file.
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Incompatible("store.json appeared and vanished".into()))
    }

    /// Random id of this store, from `store.json`.
    pub fn store_id(&self) -> &str {
        self.inner.store_id.get().map_or("", String::as_str)
    }

    // ---- paths --------------------------------------------------------------------------

    fn key(&self, rel: &str) -> Path {
        if self.inner.prefix.as_ref().is_empty() {
            Path::from(rel)
        } else {
            Path::from(format!("{}/{rel}", self.inner.prefix.as_ref()))
        }
    }

    pub(crate) fn chunk_path(&self, id: &BlockId) -> Path {
        let h = id.to_hex();
        match self.inner.format.get() {
            Some(1) => self.key(&format!("chunks/{}/{}/{h}", &h[0..2], &h[2..4])),
            _ => self.key(&format!("chunks/{}/{h}", &h[0..2])),
        }
    }

    pub(crate) fn segment_path(&self, id: &SegmentId) -> Path {
        let h = id.to_hex();
        self.key(&format!("segs/{}/{h}", &h[0..2]))
    }

    fn manifest_path(&self, snapshot_id: &str) -> Path {
        self.key(&format!("snaps/{snapshot_id}.manifest"))
    }

    pub(crate) fn dir(&self, name: &str) -> Path {
        self.key(name)
    }

    /// The lock shard of an object id. Writers hold it shared from their existence check to the
    /// end of their upload; GC holds it exclusively while deleting, so a dedup hit can never be
    /// answered by an object that is about to disappear.
    pub(crate) fn shard(&self, id: &[u8; 32]) -> &RwLock<()> {
        &self.inner.shards[id[0] as usize % SHARDS]
    }

    pub(crate) fn shard_index(id: &[u8; 32]) -> usize {
        id[0] as usize % SHARDS
    }

    pub(crate) fn shard_at(&self, i: usize) -> &RwLock<()> {
        &self.inner.shards[i]
    }

    fn note_hit(&self, k: ObjKey) {
        // A poisoned map is still consistent (single inserts/removes): keep using it.
        self.inner.recent_hits.lock().unwrap_or_else(PoisonError::into_inner).insert(k, Instant::now());
    }

    // ---- primitive object ops -----------------------------------------------------------

    async fn exists(&self, path: &Path) -> Result<bool> {
        match self.inner.os.head(path).await {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The directory of a local store.
    pub(crate) fn local_root(&self) -> Option<PathBuf> {
        self.inner.local_root.clone()
    }

    /// The file behind `path` in a local store. Our keys are plain ASCII, so the object path is
    /// the file path; anything percent-encoded is left to object_store.
    fn local_file(&self, path: &Path) -> Option<PathBuf> {
        let root = self.inner.local_root.as_ref()?;
        (!path.as_ref().contains('%')).then(|| root.join(path.as_ref()))
    }

    /// Create-only write. Returns false if the object already existed.
    async fn put_create(&self, path: &Path, bytes: Bytes) -> Result<bool> {
        // Local stores write around the page cache (see `direct`).
        if let Some(dest) = self.local_file(path) {
            let sync = self.inner.sync == SyncMode::EveryObject;
            return Ok(tokio::task::spawn_blocking(move || crate::direct::put_create(&dest, &bytes, sync)).await??);
        }
        if self.inner.create_supported.load(Ordering::Relaxed) {
            let r = self.inner.os.put_opts(path, PutPayload::from(bytes.clone()), PutMode::Create.into()).await;
            match r {
                Ok(_) => return Ok(true),
                Err(object_store::Error::AlreadyExists { .. }) | Err(object_store::Error::Precondition { .. }) => {
                    return Ok(false);
                }
                Err(object_store::Error::NotImplemented { .. }) => {
                    warn!("backend lacks create-only puts; falling back to HEAD then PUT");
                    self.inner.create_supported.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(e.into()),
            }
        }
        // Fallback is safe for one owning process: objects are content-addressed, and the
        // manifest path is checked again by `write_manifest`.
        if self.exists(path).await? {
            return Ok(false);
        }
        self.inner.os.put_opts(path, PutPayload::from(bytes), PutMode::Overwrite.into()).await?;
        Ok(true)
    }

    async fn get_bytes(&self, path: &Path) -> std::result::Result<Bytes, object_store::Error> {
        self.inner.os.get(path).await?.bytes().await
    }

    /// Make everything written so far durable (local stores in [`SyncMode::Filesystem`]).
    async fn sync_barrier(&self) -> Result<()> {
        let (Some(root), SyncMode::Filesystem) = (&self.inner.local_root, self.inner.sync) else {
            return Ok(());
        };
        let root = root.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let dir = std::fs::File::open(&root)?;
            rustix::fs::syncfs(&dir).map_err(std::io::Error::from)
        })
        .await??;
        Ok(())
    }

    // ---- blocks -------------------------------------------------------------------------

    /// The id `codec` gives `plaintext` ([`BlockId::ZERO`] for all zeros). CPU work.
    pub fn block_id(&self, codec: &Codec, plaintext: &[u8]) -> BlockId {
        codec.block_id(plaintext)
    }

    /// Store one 512 KiB block. Hashing, compression and encryption run on the blocking pool;
    /// an existing chunk (dedup) costs one hash and one HEAD. Safe to call concurrently.
    pub async fn put_block(&self, codec: &Codec, plaintext: Bytes) -> Result<PutOutcome> {
        let (c, data) = (codec.clone(), plaintext.clone());
        let id = tokio::task::spawn_blocking(move || c.block_id(&data)).await?;
        self.put_block_with_id(codec, id, plaintext).await
    }

    /// [`put_block`](Self::put_block) for a caller that already hashed the block on its own
    /// thread (`id` must be [`block_id`](Self::block_id) of `plaintext` under `codec`; readers
    /// re-derive it, so a wrong id is caught, never served). Saves a thread hop per block.
    pub async fn put_block_with_id(&self, codec: &Codec, id: BlockId, plaintext: Bytes) -> Result<PutOutcome> {
        if plaintext.len() != BLOCK_SIZE {
            return Err(StoreError::Invalid(format!("block is {} bytes, must be {BLOCK_SIZE}", plaintext.len())));
        }
        if id.is_reserved() {
            return Ok(PutOutcome { id, stored_bytes: 0, already_present: true });
        }
        let path = self.chunk_path(&id);
        let _shared = self.shard(&id.0).read().await;
        let (created, n) = match self.local_file(&path) {
            // Local: existence check, encoding and the write in one blocking call.
            Some(dest) => {
                let (c, sync) = (codec.clone(), self.inner.sync == SyncMode::EveryObject);
                tokio::task::spawn_blocking(move || -> Result<(bool, u64)> {
                    if dest.try_exists()? {
                        return Ok((false, 0));
                    }
                    let mut len = 0;
                    let created = crate::direct::put_create_with(
                        &dest,
                        sync,
                        chunk::max_encoded_len(plaintext.len()),
                        |buf| -> Result<usize> {
                            len = chunk::encode_into(&c, &id, &plaintext, buf)?;
                            Ok(len)
                        },
                    )?;
                    Ok((created, len as u64))
                })
                .await??
            }
            None => {
                if self.exists(&path).await? {
                    (false, 0)
                } else {
                    let c = codec.clone();
                    let obj = tokio::task::spawn_blocking(move || chunk::encode(&c, &id, &plaintext)).await??;
                    let n = obj.len() as u64;
                    (self.put_create(&path, Bytes::from(obj)).await?, n)
                }
            }
        };
        if !created {
            self.note_hit(ObjKey::Chunk(id.0));
        }
        trace!(%id, created, bytes = n, "chunk put");
        Ok(PutOutcome { id, stored_bytes: if created { n } else { 0 }, already_present: !created })
    }

    /// Read, verify and decode a block. Reserved ids read as zeros without I/O.
    pub async fn get_block(&self, codec: &Codec, id: &BlockId) -> Result<Bytes> {
        if id.is_reserved() {
            return Ok(Bytes::from_static(&ZEROS));
        }
        let path = self.chunk_path(id);
        if let Some(file) = self.local_file(&path) {
            // Local: read around the page cache and decode in one blocking call.
            let (c, i) = (codec.clone(), *id);
            let plain = tokio::task::spawn_blocking(move || {
                read_local_chunk(&file, &i, |raw| chunk::decode(&c, &i, raw, BLOCK_SIZE))
            })
            .await??;
            return Ok(Bytes::from(plain));
        }
        let raw = match self.get_bytes(&path).await {
            Ok(b) => b,
            Err(e) if is_not_found(&e) => return Err(StoreError::BlockNotFound(*id)),
            Err(e) => return Err(e.into()),
        };
        let (c, id) = (codec.clone(), *id);
        let plain = tokio::task::spawn_blocking(move || chunk::decode(&c, &id, &raw, BLOCK_SIZE)).await??;
        Ok(Bytes::from(plain))
    }

    /// Whether a chunk exists (reserved ids are always "present").
    pub async fn has_block(&self, id: &BlockId) -> Result<bool> {
        if id.is_reserved() {
            return Ok(true);
        }
        self.exists(&self.chunk_path(id)).await
    }

    /// Copy a chunk byte-for-byte from another store (same lineage, e.g. cross-region copy).
    /// The chunk is checked (CRC, and the hash for unencrypted chunks) before it is written.
    /// Returns true if it was copied, false if already present here or reserved.
    pub async fn copy_block_from(&self, src: &BlockStore, id: &BlockId) -> Result<bool> {
        if id.is_reserved() {
            return Ok(false);
        }
        let path = self.chunk_path(id);
        let _shared = self.shard(&id.0).read().await;
        if self.exists(&path).await? {
            self.note_hit(ObjKey::Chunk(id.0));
            return Ok(false);
        }
        let from = src.chunk_path(id);
        let created = if let (Some(dest), Some(from)) = (self.local_file(&path), src.local_file(&from)) {
            // Local to local: read straight into the aligned write buffer, one blocking call.
            let (i, sync) = (*id, self.inner.sync == SyncMode::EveryObject);
            tokio::task::spawn_blocking(move || -> Result<bool> {
                read_local_chunk(&from, &i, |raw| -> Result<bool> {
                    check_copy(&i, raw)?;
                    Ok(crate::direct::put_create(&dest, raw, sync)?)
                })
            })
            .await??
        } else {
            let raw = match src.get_bytes(&from).await {
                Ok(b) => b,
                Err(e) if is_not_found(&e) => return Err(StoreError::BlockNotFound(*id)),
                Err(e) => return Err(e.into()),
            };
            let (r, i) = (raw.clone(), *id);
            tokio::task::spawn_blocking(move || check_copy(&i, &r)).await??;
            self.put_create(&path, raw).await?
        };
        if !created {
            self.note_hit(ObjKey::Chunk(id.0));
        }
        Ok(created)
    }

    /// Move a chunk aside to `quarantine/` (e.g. after `verify` found it corrupt) so the next
    /// `put_block` of that content uploads a good copy. Returns false if there was none.
    pub async fn quarantine_block(&self, id: &BlockId) -> Result<bool> {
        if id.is_reserved() {
            return Ok(false);
        }
        let from = self.chunk_path(id);
        let to = self.key(&format!("quarantine/{}.{}", id.to_hex(), now_unix_ms()));
        let _exclusive = self.shard(&id.0).write().await;
        match self.inner.os.copy(&from, &to).await {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        match self.inner.os.delete(&from).await {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
        self.inner.recent_hits.lock().unwrap_or_else(PoisonError::into_inner).remove(&ObjKey::Chunk(id.0));
        warn!(%id, quarantine = %to, "chunk quarantined");
        Ok(true)
    }

    // ---- segments and manifests ---------------------------------------------------------

    /// The `count` block ids of one segment of a manifest (reserved ids cost no I/O). The
    /// segment is verified against its id; a manifest's segment `i` holds blocks
    /// `i * SEGMENT_BLOCKS ..`, so two manifests can be compared segment by segment.
    pub async fn read_segment(&self, id: SegmentId, count: usize) -> Result<Vec<BlockId>> {
        if let Some(ids) = segment::reserved_ids(&id, count) {
            return Ok(ids);
        }
        let raw = match self.get_bytes(&self.segment_path(&id)).await {
            Ok(b) => b,
            Err(e) if is_not_found(&e) => {
                return Err(StoreError::corrupt("segment", id.to_hex(), "missing"));
            }
            Err(e) => return Err(e.into()),
        };
        let ids = segment::decode(&id, &raw)?;
        if ids.len() != count {
            return Err(StoreError::corrupt(
                "segment",
                id.to_hex(),
                format!("{} ids, manifest expects {count}", ids.len()),
            ));
        }
        Ok(ids)
    }

    pub(crate) async fn read_segment_any(&self, id: SegmentId) -> Result<Vec<BlockId>> {
        let raw = match self.get_bytes(&self.segment_path(&id)).await {
            Ok(b) => b,
            Err(e) if is_not_found(&e) => {
                return Err(StoreError::corrupt("segment", id.to_hex(), "missing"));
            }
            Err(e) => return Err(e.into()),
        };
        segment::decode(&id, &raw)
    }

    /// Commit a snapshot: write its segments, then (after a durability barrier) its manifest.
    /// Idempotent: rewriting an identical manifest succeeds; a different one under the same
    /// snapshot id fails with [`StoreError::ManifestExists`].
    pub async fn write_manifest(&self, m: &Manifest) -> Result<()> {
        m.validate()?;
        let blocks = m.blocks.clone();
        let encoded = tokio::task::spawn_blocking(move || {
            blocks.chunks(SEGMENT_BLOCKS).map(segment::encode).collect::<Result<Vec<_>>>()
        })
        .await??;
        let segments: Vec<SegmentId> = encoded.iter().map(|e| e.id).collect();
        let mut seen = HashSet::new();
        let uploads: Vec<(SegmentId, Vec<u8>)> =
            encoded.into_iter().filter_map(|e| e.bytes.map(|b| (e.id, b))).filter(|(id, _)| seen.insert(*id)).collect();
        let n_unique = uploads.len();
        let new_segments: usize = stream::iter(uploads)
            .map(|(id, bytes)| async move {
                let _shared = self.shard(&id.0).read().await;
                let created = self.put_create(&self.segment_path(&id), Bytes::from(bytes)).await?;
                if !created {
                    self.note_hit(ObjKey::Segment(id.0));
                }
                Ok::<_, StoreError>(usize::from(created))
            })
            .buffer_unordered(IO_CONCURRENCY)
            .try_fold(0, |a, b| async move { Ok(a + b) })
            .await?;

        let header = ManifestHeader {
            snapshot_id: m.snapshot_id.clone(),
            volume_id: m.volume_id.clone(),
            volume_size: m.volume_size,
            block_count: m.blocks.len() as u64,
            encryption: m.encryption.clone(),
            parent: m.parent.clone(),
            created_unix_ms: m.created_unix_ms,
            description: m.description.clone(),
            segments,
        };
        let bytes = manifest::to_bytes(&header)?;
        // Chunks and segments must be durable before the manifest that makes them reachable.
        self.sync_barrier().await?;
        let path = self.manifest_path(&m.snapshot_id);
        if !self.put_create(&path, Bytes::from(bytes.clone())).await? {
            let existing = self.get_bytes(&path).await?;
            if existing.as_ref() != bytes.as_slice() {
                return Err(StoreError::ManifestExists(m.snapshot_id.clone()));
            }
            debug!(snapshot = %m.snapshot_id, "identical manifest already committed");
        }
        self.sync_barrier().await?;
        info!(
            snapshot = %m.snapshot_id,
            blocks = m.blocks.len(),
            segments = header.segments.len(),
            unique_segments = n_unique,
            new_segments,
            "manifest committed"
        );
        Ok(())
    }

    /// Read a manifest's metadata and segment list (one GET).
    pub async fn read_manifest_header(&self, snapshot_id: &str) -> Result<ManifestHeader> {
        check_snapshot_id(snapshot_id)?;
        match self.get_bytes(&self.manifest_path(snapshot_id)).await {
            Ok(b) => manifest::from_bytes(snapshot_id, &b),
            Err(e) if is_not_found(&e) => Err(StoreError::ManifestNotFound(snapshot_id.into())),
            Err(e) => Err(e.into()),
        }
    }

    /// Read a manifest with its full block list (segments fetched concurrently and verified).
    pub async fn read_manifest(&self, snapshot_id: &str) -> Result<Manifest> {
        let h = self.read_manifest_header(snapshot_id).await?;
        let total = usize::try_from(h.block_count)
            .map_err(|_| StoreError::corrupt("manifest", snapshot_id, "too many blocks"))?;
        // Owned items: a closure over borrowed ones makes the future not `Send` for every lifetime
        // (rustc's higher-ranked inference), so callers could not spawn it.
        let parts: Vec<Vec<BlockId>> = stream::iter(h.segments.clone().into_iter().enumerate())
            .map(|(i, id)| {
                let count = (total - i * SEGMENT_BLOCKS).min(SEGMENT_BLOCKS);
                self.read_segment(id, count)
            })
            .buffered(IO_CONCURRENCY)
            .try_collect()
            .await?;
        let blocks: Vec<BlockId> = parts.into_iter().flatten().collect();
        Ok(Manifest {
            snapshot_id: h.snapshot_id,
            volume_id: h.volume_id,
            volume_size: h.volume_size,
            blocks,
            encryption: h.encryption,
            parent: h.parent,
            created_unix_ms: h.created_unix_ms,
            description: h.description,
        })
    }

    /// Delete a manifest (idempotent). Its space returns at the next GC.
    pub async fn delete_manifest(&self, snapshot_id: &str) -> Result<()> {
        check_snapshot_id(snapshot_id)?;
        match self.inner.os.delete(&self.manifest_path(snapshot_id)).await {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
        info!(snapshot = %snapshot_id, "manifest deleted");
        Ok(())
    }

    /// Snapshot ids of all committed manifests, sorted.
    pub async fn list_manifests(&self) -> Result<Vec<String>> {
        let prefix = self.dir("snaps");
        let metas: Vec<_> = self.inner.os.list(Some(&prefix)).try_collect().await?;
        let mut ids: Vec<String> = metas
            .iter()
            .filter_map(|m| m.location.filename())
            .filter_map(|f| f.strip_suffix(".manifest"))
            .filter(|id| check_snapshot_id(id).is_ok())
            .map(str::to_string)
            .collect();
        ids.sort();
        Ok(ids)
    }

    // ---- scrub --------------------------------------------------------------------------

    /// Read every distinct chunk of a snapshot and check it (see [`VerifyMode`]). Missing and
    /// corrupt chunks are reported, not returned as errors; backend failures are errors.
    pub async fn verify(&self, snapshot_id: &str, mode: VerifyMode) -> Result<VerifyReport> {
        let m = self.read_manifest(snapshot_id).await?;
        let mut ids: Vec<BlockId> = m.blocks.iter().copied().filter(|i| !i.is_reserved()).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut report = VerifyReport {
            snapshot_id: snapshot_id.to_string(),
            blocks: m.blocks.len() as u64,
            unique_chunks: ids.len() as u64,
            ..Default::default()
        };
        enum Outcome {
            Ok(u64),
            Missing,
            Corrupt(String),
        }
        let mode = &mode;
        let mut results = stream::iter(ids)
            .map(|id| async move {
                let raw = match self.get_bytes(&self.chunk_path(&id)).await {
                    Ok(b) => b,
                    Err(e) if is_not_found(&e) => return Ok((id, Outcome::Missing)),
                    Err(e) => return Err(StoreError::from(e)),
                };
                let n = raw.len() as u64;
                let mode = mode.clone();
                let checked = tokio::task::spawn_blocking(move || match &mode {
                    VerifyMode::Crc => chunk::check(&id, &raw).map(|_| ()),
                    VerifyMode::Full(codec) => chunk::decode(codec, &id, &raw, BLOCK_SIZE).map(|_| ()),
                })
                .await?;
                Ok((
                    id,
                    match checked {
                        Ok(()) => Outcome::Ok(n),
                        Err(e) => Outcome::Corrupt(e.to_string()),
                    },
                ))
            })
            .buffer_unordered(IO_CONCURRENCY);
        while let Some(r) = results.next().await {
            match r? {
                (_, Outcome::Ok(n)) => {
                    report.ok_chunks += 1;
                    report.bytes_read += n;
                }
                (id, Outcome::Missing) => {
                    warn!(snapshot = %snapshot_id, %id, "verify: chunk missing");
                    report.missing.push(id);
                }
                (id, Outcome::Corrupt(why)) => {
                    warn!(snapshot = %snapshot_id, %id, %why, "verify: chunk corrupt");
                    report.corrupt.push((id, why));
                }
            }
        }
        report.missing.sort_unstable();
        report.corrupt.sort_unstable_by_key(|c| c.0);
        info!(
            snapshot = %snapshot_id,
            chunks = report.unique_chunks,
            ok = report.ok_chunks,
            missing = report.missing.len(),
            corrupt = report.corrupt.len(),
            "verify finished"
        );
        Ok(report)
    }
}

/// The S3 backend of a bucket/prefix (shared by the snapshot store and the archive tier).
#[cfg(feature = "s3")]
pub(crate) fn s3_backend(cfg: &S3Config) -> Result<(Arc<dyn ObjectStore>, Path)> {
    use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
    let mut b = if cfg.access_key_id.is_some() { AmazonS3Builder::new() } else { AmazonS3Builder::from_env() };
    b = b
        .with_bucket_name(&cfg.bucket)
        .with_region(&cfg.region)
        .with_allow_http(cfg.allow_http)
        .with_virtual_hosted_style_request(cfg.virtual_hosted_style);
    if let Some(e) = &cfg.endpoint {
        b = b.with_endpoint(e);
    }
    if let Some(k) = &cfg.access_key_id {
        b = b.with_access_key_id(k);
    }
    if let Some(s) = &cfg.secret_access_key {
        b = b.with_secret_access_key(s);
    }
    if let Some(t) = &cfg.session_token {
        b = b.with_token(t);
    }
    if !cfg.conditional_put {
        b = b.with_conditional_put(S3ConditionalPut::Disabled);
    }
    // The HTTP client's own retries stay short: `Retrying` (over every backend) bounds the call.
    b = b.with_retry(object_store::RetryConfig {
        max_retries: 2,
        retry_timeout: std::time::Duration::from_secs(20),
        ..Default::default()
    });
    let s3 = b.build()?;
    let prefix = Path::parse(cfg.prefix.trim_matches('/')).map_err(object_store::Error::from)?;
    Ok((Arc::new(s3), prefix))
}

/// Read a local chunk file (see `direct::read_with`) and hand its bytes to `f`; a missing file is
/// [`StoreError::BlockNotFound`], an oversized one is corrupt.
fn read_local_chunk<T>(file: &FsPath, id: &BlockId, f: impl FnOnce(&[u8]) -> Result<T>) -> Result<T> {
    match crate::direct::read_with(file, chunk::max_encoded_len(BLOCK_SIZE), f) {
        Err(StoreError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => Err(StoreError::BlockNotFound(*id)),
        Err(StoreError::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
            Err(StoreError::corrupt("chunk", id.to_hex(), e.to_string()))
        }
        r => r,
    }
}

/// A chunk about to be copied byte for byte: structurally sound, and for unencrypted chunks
/// (whose id is the plaintext's hash) its content matches its name.
fn check_copy(id: &BlockId, raw: &[u8]) -> Result<()> {
    if !chunk::check(id, raw)?.encrypted {
        chunk::decode(&Codec::plain(), id, raw, BLOCK_SIZE)?;
    }
    Ok(())
}

fn parse_store_meta(bytes: &[u8]) -> Result<(String, u32)> {
    let probe: StoreProbe =
        serde_json::from_slice(bytes).map_err(|e| StoreError::corrupt("store.json", "store.json", e.to_string()))?;
    if !STORE_FORMATS.contains(&probe.format) {
        return Err(StoreError::Incompatible(format!(
            "store format {} (this build supports {STORE_FORMATS:?})",
            probe.format
        )));
    }
    if probe.block_size != BLOCK_SIZE as u64 {
        return Err(StoreError::Incompatible(format!(
            "store block size {} (this build uses {BLOCK_SIZE})",
            probe.block_size
        )));
    }
    let meta: StoreMeta =
        serde_json::from_slice(bytes).map_err(|e| StoreError::corrupt("store.json", "store.json", e.to_string()))?;
    if meta.segment_blocks != SEGMENT_BLOCKS as u64 || meta.hash != "sha256" {
        return Err(StoreError::Incompatible(format!(
            "store uses segment size {} and hash {:?}",
            meta.segment_blocks, meta.hash
        )));
    }
    Ok((meta.store_id, probe.format))
}
