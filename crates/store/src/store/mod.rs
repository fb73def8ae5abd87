//! The block store: chunk, segment and manifest I/O over an [`ObjectStore`].

use std::collections::{HashMap, HashSet};
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

mod blocks;
mod manifests;
mod verify;

pub use verify::{VerifyMode, VerifyReport};

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

/// A number of chunk objects and their bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChunkTally {
    pub chunks: u64,
    pub bytes: u64,
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
    /// Chunks this handle created, and their bytes (monotonic; see [`BlockStore::chunks_created`]).
    created_chunks: AtomicU64,
    created_chunk_bytes: AtomicU64,
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
                created_chunks: AtomicU64::new(0),
                created_chunk_bytes: AtomicU64::new(0),
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

    /// How many chunk objects this handle has created since it was opened, and their bytes
    /// (never decreasing; a dedup hit creates nothing). With a count from a listing and the
    /// value of this tally at that moment, a caller keeps the store's size current without
    /// listing again (the engine's per-region totals).
    pub fn chunks_created(&self) -> ChunkTally {
        ChunkTally {
            chunks: self.inner.created_chunks.load(Ordering::Acquire),
            bytes: self.inner.created_chunk_bytes.load(Ordering::Acquire),
        }
    }

    fn note_created(&self, bytes: u64) {
        // Bytes first: a reader that sees the new count sees (at least) its bytes.
        self.inner.created_chunk_bytes.fetch_add(bytes, Ordering::AcqRel);
        self.inner.created_chunks.fetch_add(1, Ordering::AcqRel);
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

    // ---- segments and manifests ---------------------------------------------------------

    // ---- scrub --------------------------------------------------------------------------
}

/// The S3 backend of a bucket/prefix (shared by the snapshot store and the archive tier).
#[cfg(feature = "s3")]
pub(crate) fn s3_backend(cfg: &S3Config) -> Result<(Arc<object_store::aws::AmazonS3>, Path)> {
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
