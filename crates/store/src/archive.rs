//! The archive tier: a snapshot as one full, self-contained object set in a region's archive store
//! (another directory or bucket than its snapshot store).
//!
//! A snapshot in the standard store is incremental: its manifest names chunks that other snapshots
//! share. Archiving copies every block the snapshot references into pack objects of its own, compressed
//! harder (zstd level [`ARCHIVE_ZSTD_LEVEL`] instead of 1), and commits them with an index. Nothing in
//! an archive refers to anything outside it, so the standard store's copy (its manifest, and with it
//! every chunk no other manifest references) can go, and deleting the archive is deleting its objects:
//! no mark and sweep.
//!
//! ## Object layout (archive store format 1)
//!
//! ```text
//! <root>/archive.json              {"format":1,"kind":"blocksnap.archive-store","store_id":…}
//! <root>/<snapshot-id>/part.<n>    pack n: chunk objects (chunk format 1) back to back
//! <root>/<snapshot-id>/index       the archive index (format 1, below): the commit point
//! ```
//!
//! Packs are written first (each at most [`PART_BYTES`]), the index last and create-only: an archive
//! without an index is an unfinished write, removed when the job starts again or by the owner's
//! cleanup. Local archive stores fsync every object and its directory before the write returns.
//!
//! A pack holds each distinct block of the snapshot once, as a chunk object exactly as the standard
//! store writes them (magic, CRC32C, zstd, AES-256-GCM under the lineage's key with the header and
//! block id as AAD): an encrypted snapshot stays encrypted under the same data key, whose wrapped
//! form the index carries; readers check the CRC, the tag and re-derive every id.
//!
//! ### Index (little-endian)
//! ```text
//! 0   magic "BSAI"            4
//! 4   version u16 = 1
//! 6   flags u16 = 0
//! 8   header_len u32          length of the JSON header
//! 12  part_count u32
//! 16  entry_count u32
//! 20  header [header_len]     JSON: snapshot_id, volume_id, volume_size, block_count, encryption
//!                             (kms_key_arn, wrapped_key_hex) or null, parent, created_unix_ms,
//!                             description, zstd_level
//!     parts   part_count  × (len u64 | sha256 [32])                          40 bytes each
//!     entries entry_count × (block u32 | id [32] | part u32 | offset u64 | len u32)   52 bytes each
//!     sha256 [32]             over every byte before it
//! ```
//! One entry per block that is not [`BlockId::UNWRITTEN`], in strictly increasing block order. A
//! [`BlockId::ZERO`] block has part `u32::MAX`, offset 0 and length 0; every other entry names a
//! chunk object inside its pack. Blocks with the same id share one object.

use std::collections::HashMap;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};
use object_store::local::LocalFileSystem;
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::crypto::Codec;
use crate::error::{Result, StoreError};
use crate::id::BlockId;
use crate::manifest::{EncryptionInfo, Manifest, block_count, check_snapshot_id};
use crate::retry::{MultipartPolicy, RetryPolicy, Retrying};
use crate::store::{BlockStore, VerifyMode, VerifyReport, now_unix_ms};
use crate::{BLOCK_SIZE, chunk};

/// Version of `archive.json` and the layout under it.
pub const ARCHIVE_STORE_FORMAT: u32 = 1;
/// zstd level of archived chunks: slower to write than the standard store's level 1, smaller, and
/// written once per archived snapshot.
pub const ARCHIVE_ZSTD_LEVEL: i32 = 12;
/// Largest pack object.
pub const PART_BYTES: usize = 32 << 20;

const INDEX_MAGIC: &[u8; 4] = b"BSAI";
const INDEX_VERSION: u16 = 1;
const FIXED_LEN: usize = 20;
const PART_REC: usize = 40;
const ENTRY_REC: usize = 52;
const NO_PART: u32 = u32::MAX;
/// Blocks read from the standard store and encoded at once while archiving.
const ARCHIVE_CONCURRENCY: usize = 8;
/// Largest JSON header accepted (the description is at most 255 characters).
const MAX_HEADER_LEN: usize = 64 << 10;

/// What an archive says about its snapshot (what a manifest says, without the block list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveHeader {
    pub snapshot_id: String,
    pub volume_id: String,
    pub volume_size: u64,
    pub block_count: u64,
    pub encryption: Option<EncryptionInfo>,
    pub parent: Option<String>,
    pub created_unix_ms: i64,
    pub description: String,
    pub zstd_level: i32,
}

/// One pack object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartInfo {
    pub len: u64,
    pub sha256: [u8; 32],
}

/// Where a block's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveEntry {
    pub block: u32,
    pub id: BlockId,
    /// `u32::MAX` for [`BlockId::ZERO`].
    pub part: u32,
    pub offset: u64,
    pub len: u32,
}

/// A committed archive's index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveIndex {
    pub header: ArchiveHeader,
    pub parts: Vec<PartInfo>,
    pub entries: Vec<ArchiveEntry>,
}

impl ArchiveIndex {
    /// The snapshot's full block list (as its manifest had it).
    pub fn blocks(&self) -> Vec<BlockId> {
        let n = usize::try_from(self.header.block_count).unwrap_or(0);
        let mut out = vec![BlockId::UNWRITTEN; n];
        for e in &self.entries {
            if let Some(b) = out.get_mut(e.block as usize) {
                *b = e.id;
            }
        }
        out
    }

    /// Bytes of the pack objects.
    pub fn pack_bytes(&self) -> u64 {
        self.parts.iter().map(|p| p.len).sum()
    }

    /// The manifest this archive restores.
    pub fn manifest(&self) -> Manifest {
        let h = &self.header;
        Manifest {
            snapshot_id: h.snapshot_id.clone(),
            volume_id: h.volume_id.clone(),
            volume_size: h.volume_size,
            blocks: self.blocks(),
            encryption: h.encryption.clone(),
            parent: h.parent.clone(),
            created_unix_ms: h.created_unix_ms,
            description: h.description.clone(),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderJson {
    snapshot_id: String,
    volume_id: String,
    volume_size: u64,
    block_count: u64,
    encryption: Option<EncJson>,
    parent: Option<String>,
    created_unix_ms: i64,
    description: String,
    zstd_level: i32,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EncJson {
    kms_key_arn: String,
    wrapped_key_hex: String,
}

fn sha256(b: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b).as_ref());
    out
}

fn json_err(e: serde_json::Error) -> StoreError {
    StoreError::Invalid(format!("archive index serialization: {e}"))
}

/// Serialize an index to its object bytes.
pub(crate) fn encode_index(ix: &ArchiveIndex) -> Result<Vec<u8>> {
    let h = &ix.header;
    let header = serde_json::to_vec(&HeaderJson {
        snapshot_id: h.snapshot_id.clone(),
        volume_id: h.volume_id.clone(),
        volume_size: h.volume_size,
        block_count: h.block_count,
        encryption: h
            .encryption
            .as_ref()
            .map(|e| EncJson { kms_key_arn: e.kms_key_arn.clone(), wrapped_key_hex: hex::encode(&e.wrapped_key) }),
        parent: h.parent.clone(),
        created_unix_ms: h.created_unix_ms,
        description: h.description.clone(),
        zstd_level: h.zstd_level,
    })
    .map_err(json_err)?;
    let too_big = |what: &str| StoreError::Invalid(format!("archive index: too many {what}"));
    let mut out =
        Vec::with_capacity(FIXED_LEN + header.len() + ix.parts.len() * PART_REC + ix.entries.len() * ENTRY_REC + 32);
    out.extend_from_slice(INDEX_MAGIC);
    out.extend_from_slice(&INDEX_VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&u32::try_from(header.len()).map_err(|_| too_big("header bytes"))?.to_le_bytes());
    out.extend_from_slice(&u32::try_from(ix.parts.len()).map_err(|_| too_big("parts"))?.to_le_bytes());
    out.extend_from_slice(&u32::try_from(ix.entries.len()).map_err(|_| too_big("entries"))?.to_le_bytes());
    out.extend_from_slice(&header);
    for p in &ix.parts {
        out.extend_from_slice(&p.len.to_le_bytes());
        out.extend_from_slice(&p.sha256);
    }
    for e in &ix.entries {
        out.extend_from_slice(&e.block.to_le_bytes());
        out.extend_from_slice(e.id.as_bytes());
        out.extend_from_slice(&e.part.to_le_bytes());
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.len.to_le_bytes());
    }
    let digest = sha256(&out);
    out.extend_from_slice(&digest);
    Ok(out)
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}
fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Parse and validate index bytes stored for the snapshot `name`. Every length is checked against
/// the input before anything is allocated from it; a damaged index is an error, never a panic.
pub(crate) fn decode_index(name: &str, b: &[u8]) -> Result<ArchiveIndex> {
    let bad = |reason: String| StoreError::corrupt("archive index", name, reason);
    if b.len() < FIXED_LEN + 32 {
        return Err(bad(format!("{} bytes, shorter than the fixed header and checksum", b.len())));
    }
    if &b[0..4] != INDEX_MAGIC {
        return Err(bad("bad magic".into()));
    }
    let version = le_u16(b, 4);
    if version != INDEX_VERSION {
        return Err(StoreError::Incompatible(format!(
            "archive index {name} has version {version}, this build reads {INDEX_VERSION}"
        )));
    }
    if le_u16(b, 6) != 0 {
        return Err(bad(format!("unknown flags {:#x}", le_u16(b, 6))));
    }
    let (body, digest) = b.split_at(b.len() - 32);
    if sha256(body) != digest {
        return Err(bad("SHA-256 mismatch".into()));
    }
    let header_len = le_u32(b, 8) as usize;
    let part_count = le_u32(b, 12) as usize;
    let entry_count = le_u32(b, 16) as usize;
    if header_len > MAX_HEADER_LEN {
        return Err(bad(format!("header of {header_len} bytes")));
    }
    let want = (FIXED_LEN as u128)
        + header_len as u128
        + (part_count as u128) * PART_REC as u128
        + (entry_count as u128) * ENTRY_REC as u128;
    if want != body.len() as u128 {
        return Err(bad(format!("{} bytes before the checksum, the counts need {want}", body.len())));
    }
    let h: HeaderJson =
        serde_json::from_slice(&body[FIXED_LEN..FIXED_LEN + header_len]).map_err(|e| bad(format!("header: {e}")))?;
    if h.snapshot_id != name {
        return Err(bad(format!("contains snapshot id {:?}", h.snapshot_id)));
    }
    if h.block_count != block_count(h.volume_size) || h.block_count > u64::from(u32::MAX) {
        return Err(bad(format!("block count {} for volume size {}", h.block_count, h.volume_size)));
    }
    let encryption = match h.encryption {
        None => None,
        Some(e) => Some(EncryptionInfo {
            kms_key_arn: e.kms_key_arn,
            wrapped_key: hex::decode(&e.wrapped_key_hex).map_err(|err| bad(format!("wrapped key hex: {err}")))?,
        }),
    };
    let mut at = FIXED_LEN + header_len;
    let mut parts = Vec::with_capacity(part_count);
    for _ in 0..part_count {
        let mut sha = [0u8; 32];
        sha.copy_from_slice(&body[at + 8..at + 40]);
        parts.push(PartInfo { len: le_u64(body, at), sha256: sha });
        at += PART_REC;
    }
    let max_chunk = chunk::max_encoded_len(BLOCK_SIZE) as u64;
    let mut entries = Vec::with_capacity(entry_count);
    let mut prev: Option<u32> = None;
    for _ in 0..entry_count {
        let mut id = [0u8; 32];
        id.copy_from_slice(&body[at + 4..at + 36]);
        let e = ArchiveEntry {
            block: le_u32(body, at),
            id: BlockId(id),
            part: le_u32(body, at + 36),
            offset: le_u64(body, at + 40),
            len: le_u32(body, at + 48),
        };
        at += ENTRY_REC;
        if prev.is_some_and(|p| e.block <= p) || u64::from(e.block) >= h.block_count {
            return Err(bad(format!("block {} out of order or past the end", e.block)));
        }
        prev = Some(e.block);
        if e.id == BlockId::UNWRITTEN {
            return Err(bad(format!("block {} is listed but unwritten", e.block)));
        }
        if e.id == BlockId::ZERO {
            if e.part != NO_PART || e.offset != 0 || e.len != 0 {
                return Err(bad(format!("zero block {} has a location", e.block)));
            }
        } else {
            let part =
                parts.get(e.part as usize).ok_or_else(|| bad(format!("block {}: no part {}", e.block, e.part)))?;
            let end = e.offset.checked_add(u64::from(e.len));
            if e.len == 0 || u64::from(e.len) > max_chunk || end.is_none_or(|end| end > part.len) {
                return Err(bad(format!("block {}: {} bytes at {} outside its part", e.block, e.len, e.offset)));
            }
        }
        entries.push(e);
    }
    Ok(ArchiveIndex {
        header: ArchiveHeader {
            snapshot_id: h.snapshot_id,
            volume_id: h.volume_id,
            volume_size: h.volume_size,
            block_count: h.block_count,
            encryption,
            parent: h.parent,
            created_unix_ms: h.created_unix_ms,
            description: h.description,
            zstd_level: h.zstd_level,
        },
        parts,
        entries,
    })
}

/// Where a region's archive lives.
#[derive(Debug, Clone)]
pub enum ArchiveLocation {
    Local(PathBuf),
    #[cfg(feature = "s3")]
    S3(crate::S3Config),
}

#[derive(Serialize, Deserialize)]
struct StoreMeta {
    format: u32,
    kind: String,
    store_id: String,
    created_unix_ms: i64,
}

/// A region's archive store. Cheap to clone.
#[derive(Clone)]
pub struct ArchiveStore {
    os: Arc<Retrying>,
    prefix: Path,
}

impl std::fmt::Debug for ArchiveStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveStore")
            .field("backend", &self.os.to_string())
            .field("prefix", &self.prefix.as_ref())
            .finish()
    }
}

fn is_not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

impl ArchiveStore {
    /// Open (creating if needed) the archive store at `loc`.
    pub async fn open_at(loc: &ArchiveLocation) -> Result<Self> {
        match loc {
            ArchiveLocation::Local(dir) => Self::open_local(dir).await,
            #[cfg(feature = "s3")]
            ArchiveLocation::S3(cfg) => {
                let (s3, prefix) = crate::store::s3_backend(cfg)?;
                Self::open_multipart(s3, prefix, RetryPolicy::default(), MultipartPolicy::default()).await
            }
        }
    }

    /// Open (creating if needed) an archive store in a local directory; every write is fsynced
    /// (file and directory) before it returns.
    pub async fn open_local(dir: &FsPath) -> Result<Self> {
        tokio::fs::create_dir_all(dir).await?;
        let root = tokio::fs::canonicalize(dir).await?;
        let fs = LocalFileSystem::new_with_prefix(&root)?.with_automatic_cleanup(true).with_fsync(true);
        Self::open(Arc::new(fs), Path::default()).await
    }

    /// Open (creating if needed) an archive store under `prefix` of any object store.
    pub async fn open(os: Arc<dyn ObjectStore>, prefix: Path) -> Result<Self> {
        Self::open_retrying(Retrying::new(os, RetryPolicy::default()), prefix).await
    }

    /// Open (creating if needed) an archive store under `prefix` of a backend with S3's multipart
    /// calls: packs (and large indexes) are uploaded in parts per `parts` (see [`Retrying::put_large`]).
    pub async fn open_multipart<T: ObjectStore + MultipartStore>(
        backend: Arc<T>,
        prefix: Path,
        policy: RetryPolicy,
        parts: MultipartPolicy,
    ) -> Result<Self> {
        Self::open_retrying(Retrying::with_multipart(backend, policy, parts), prefix).await
    }

    async fn open_retrying(os: Retrying, prefix: Path) -> Result<Self> {
        let s = ArchiveStore { os: Arc::new(os), prefix };
        s.load_or_create_meta().await?;
        info!(store = ?s, "archive store opened");
        Ok(s)
    }

    fn key(&self, rel: &str) -> Path {
        if self.prefix.as_ref().is_empty() {
            Path::from(rel)
        } else {
            Path::from(format!("{}/{rel}", self.prefix.as_ref()))
        }
    }

    fn index_path(&self, snapshot_id: &str) -> Path {
        self.key(&format!("{snapshot_id}/index"))
    }

    fn part_path(&self, snapshot_id: &str, n: usize) -> Path {
        self.key(&format!("{snapshot_id}/part.{n}"))
    }

    async fn load_or_create_meta(&self) -> Result<()> {
        let path = self.key("archive.json");
        match self.os.get(&path).await {
            Ok(r) => {
                let bytes = r.bytes().await?;
                let meta: StoreMeta = serde_json::from_slice(&bytes)
                    .map_err(|e| StoreError::corrupt("archive.json", "archive.json", e.to_string()))?;
                if meta.format != ARCHIVE_STORE_FORMAT || meta.kind != "blocksnap.archive-store" {
                    return Err(StoreError::Incompatible(format!(
                        "archive store format {} kind {:?} (this build reads format {ARCHIVE_STORE_FORMAT})",
                        meta.format, meta.kind
                    )));
                }
                Ok(())
            }
            Err(e) if is_not_found(&e) => {
                let mut id = [0u8; 16];
                rand::RngCore::fill_bytes(&mut rand::rng(), &mut id);
                let meta = StoreMeta {
                    format: ARCHIVE_STORE_FORMAT,
                    kind: "blocksnap.archive-store".into(),
                    store_id: hex::encode(id),
                    created_unix_ms: now_unix_ms(),
                };
                let bytes = serde_json::to_vec_pretty(&meta).map_err(json_err)?;
                match self.os.put_opts(&path, PutPayload::from(bytes), PutMode::Create.into()).await {
                    Ok(_)
                    | Err(object_store::Error::AlreadyExists { .. })
                    | Err(object_store::Error::Precondition { .. }) => Ok(()),
                    Err(e) => Err(e.into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The committed index of a snapshot's archive ([`StoreError::ArchiveNotFound`] without one).
    pub async fn read_index(&self, snapshot_id: &str) -> Result<ArchiveIndex> {
        check_snapshot_id(snapshot_id)?;
        match self.os.get(&self.index_path(snapshot_id)).await {
            Ok(r) => decode_index(snapshot_id, &r.bytes().await?),
            Err(e) if is_not_found(&e) => Err(StoreError::ArchiveNotFound(snapshot_id.into())),
            Err(e) => Err(e.into()),
        }
    }

    /// Snapshot ids with anything in this store (committed or not), sorted.
    pub async fn list(&self) -> Result<Vec<String>> {
        let listed = self.os.list_with_delimiter(Some(&self.prefix)).await?;
        let mut ids: Vec<String> = listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .filter(|id| check_snapshot_id(id).is_ok())
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Remove a snapshot's archive: the index first (the archive is then gone, whatever remains),
    /// then its packs and anything an interrupted write left. Idempotent.
    pub async fn delete(&self, snapshot_id: &str) -> Result<()> {
        check_snapshot_id(snapshot_id)?;
        match self.os.delete(&self.index_path(snapshot_id)).await {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
        self.delete_leftovers(snapshot_id).await?;
        info!(snapshot = snapshot_id, "archive deleted");
        Ok(())
    }

    async fn delete_leftovers(&self, snapshot_id: &str) -> Result<()> {
        let dir = self.key(snapshot_id);
        let objects: Vec<_> = self.os.list(Some(&dir)).try_collect().await?;
        for o in objects {
            match self.os.delete(&o.location).await {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Bytes of every object of a snapshot's archive (packs, index, leftovers).
    pub async fn stored_bytes(&self, snapshot_id: &str) -> Result<u64> {
        check_snapshot_id(snapshot_id)?;
        let objects: Vec<_> = self.os.list(Some(&self.key(snapshot_id))).try_collect().await?;
        Ok(objects.iter().map(|o| o.size).sum())
    }

    /// Archive the snapshot `m` of the standard store `src`: every distinct block is read (checked
    /// and decoded with `codec`), encoded again at [`ARCHIVE_ZSTD_LEVEL`] under the same codec and
    /// packed; the index commits. An existing committed archive of the snapshot is returned as it
    /// is; an unfinished one is removed first. `progress(done, total)` counts distinct blocks.
    pub async fn archive_from(
        &self,
        src: &BlockStore,
        m: &Manifest,
        codec: &Codec,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<ArchiveIndex> {
        m.validate()?;
        match self.read_index(&m.snapshot_id).await {
            Ok(ix) => return Ok(ix),
            Err(StoreError::ArchiveNotFound(_)) => {}
            Err(e) => return Err(e),
        }
        self.delete_leftovers(&m.snapshot_id).await?;
        let mut first_of: HashMap<BlockId, usize> = HashMap::new();
        let mut unique: Vec<BlockId> = Vec::new();
        for id in m.blocks.iter().filter(|i| !i.is_reserved()) {
            if !first_of.contains_key(id) {
                first_of.insert(*id, unique.len());
                unique.push(*id);
            }
        }
        let total = unique.len() as u64;
        let mut located: Vec<(u32, u64, u32)> = Vec::with_capacity(unique.len());
        let mut parts: Vec<PartInfo> = Vec::new();
        let mut buf: Vec<u8> = Vec::with_capacity(PART_BYTES.min(unique.len() * BLOCK_SIZE / 2 + 1));
        let mut encoded = stream::iter(unique.clone())
            .map(|id| {
                let (src, codec) = (src.clone(), codec.clone());
                async move {
                    let plain = src.get_block(&codec, &id).await?;
                    let obj =
                        tokio::task::spawn_blocking(move || chunk::encode_at(&codec, &id, &plain, ARCHIVE_ZSTD_LEVEL))
                            .await??;
                    Ok::<_, StoreError>(obj)
                }
            })
            .buffered(ARCHIVE_CONCURRENCY);
        let mut done = 0u64;
        while let Some(obj) = encoded.next().await {
            let obj = obj?;
            if !buf.is_empty() && buf.len() + obj.len() > PART_BYTES {
                parts.push(self.put_part(&m.snapshot_id, parts.len(), std::mem::take(&mut buf)).await?);
            }
            let len = u32::try_from(obj.len()).map_err(|_| StoreError::Invalid("chunk larger than 4 GiB".into()))?;
            let part = u32::try_from(parts.len()).map_err(|_| StoreError::Invalid("too many parts".into()))?;
            located.push((part, buf.len() as u64, len));
            buf.extend_from_slice(&obj);
            done += 1;
            if done.is_multiple_of(16) || done == total {
                progress(done, total);
            }
        }
        drop(encoded);
        if !buf.is_empty() {
            parts.push(self.put_part(&m.snapshot_id, parts.len(), buf).await?);
        }
        let entries: Vec<ArchiveEntry> = m
            .blocks
            .iter()
            .enumerate()
            .filter(|(_, id)| **id != BlockId::UNWRITTEN)
            .map(|(i, id)| {
                let (part, offset, len) = match first_of.get(id) {
                    Some(u) => located[*u],
                    None => (NO_PART, 0, 0),
                };
                ArchiveEntry { block: i as u32, id: *id, part, offset, len }
            })
            .collect();
        let ix = ArchiveIndex {
            header: ArchiveHeader {
                snapshot_id: m.snapshot_id.clone(),
                volume_id: m.volume_id.clone(),
                volume_size: m.volume_size,
                block_count: m.blocks.len() as u64,
                encryption: m.encryption.clone(),
                parent: m.parent.clone(),
                created_unix_ms: m.created_unix_ms,
                description: m.description.clone(),
                zstd_level: ARCHIVE_ZSTD_LEVEL,
            },
            parts,
            entries,
        };
        let bytes = encode_index(&ix)?;
        let index_path = self.index_path(&m.snapshot_id);
        if self.os.uses_parts(bytes.len()) {
            // An index of ~160,000 blocks or more (80 GiB written) goes in parts, and a multipart
            // upload cannot be create-only: check first. The archive job of a snapshot has one
            // owner, so nothing else writes this index meanwhile.
            match self.os.head(&index_path).await {
                Ok(_) => return self.read_index(&m.snapshot_id).await,
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(e.into()),
            }
            self.os.put_large(&index_path, Bytes::from(bytes)).await?;
        } else {
            match self.os.put_opts(&index_path, PutPayload::from(bytes), PutMode::Create.into()).await {
                Ok(_) => {}
                Err(object_store::Error::AlreadyExists { .. }) | Err(object_store::Error::Precondition { .. }) => {
                    return self.read_index(&m.snapshot_id).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        info!(
            snapshot = %m.snapshot_id,
            blocks = ix.entries.len(),
            distinct = total,
            parts = ix.parts.len(),
            bytes = ix.pack_bytes(),
            "archive committed"
        );
        Ok(ix)
    }

    async fn put_part(&self, snapshot_id: &str, n: usize, bytes: Vec<u8>) -> Result<PartInfo> {
        let info = PartInfo { len: bytes.len() as u64, sha256: sha256(&bytes) };
        self.os.put_large(&self.part_path(snapshot_id, n), Bytes::from(bytes)).await?;
        Ok(info)
    }

    /// Read a pack and check it against its index record.
    async fn read_part(&self, ix: &ArchiveIndex, n: usize) -> Result<Bytes> {
        let name = &ix.header.snapshot_id;
        let info = ix.parts.get(n).ok_or_else(|| StoreError::corrupt("archive pack", name, format!("no part {n}")))?;
        let bytes = match self.os.get(&self.part_path(name, n)).await {
            Ok(r) => r.bytes().await?,
            Err(e) if is_not_found(&e) => {
                return Err(StoreError::corrupt("archive pack", format!("{name}/part.{n}"), "missing"));
            }
            Err(e) => return Err(e.into()),
        };
        let b2 = bytes.clone();
        let sha = tokio::task::spawn_blocking(move || sha256(&b2)).await?;
        if bytes.len() as u64 != info.len || sha != info.sha256 {
            return Err(StoreError::corrupt(
                "archive pack",
                format!("{name}/part.{n}"),
                format!("{} bytes, SHA-256 does not match the index", bytes.len()),
            ));
        }
        Ok(bytes)
    }

    /// Put the archived blocks (all of them, or those of `only`) back into the standard store `dst`,
    /// each checked and decoded first. Returns the number of blocks stored. The caller writes the
    /// manifest ([`ArchiveIndex::manifest`]) afterwards.
    pub async fn restore_into(
        &self,
        ix: &ArchiveIndex,
        dst: &BlockStore,
        codec: &Codec,
        only: Option<&std::collections::HashSet<BlockId>>,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<u64> {
        let mut by_part: Vec<Vec<ArchiveEntry>> = vec![Vec::new(); ix.parts.len()];
        let mut seen = std::collections::HashSet::new();
        for e in &ix.entries {
            if e.part != NO_PART && only.is_none_or(|o| o.contains(&e.id)) && seen.insert(e.id) {
                by_part[e.part as usize].push(*e);
            }
        }
        let total = seen.len() as u64;
        let mut done = 0u64;
        for (n, entries) in by_part.into_iter().enumerate() {
            if entries.is_empty() {
                continue;
            }
            let pack = self.read_part(ix, n).await?;
            let mut puts = stream::iter(entries)
                .map(|e| {
                    let (pack, codec, dst) = (pack.clone(), codec.clone(), dst.clone());
                    async move {
                        let (c2, id) = (codec.clone(), e.id);
                        let plain = tokio::task::spawn_blocking(move || {
                            let at = e.offset as usize;
                            chunk::decode(&c2, &id, &pack[at..at + e.len as usize], BLOCK_SIZE)
                        })
                        .await??;
                        dst.put_block_with_id(&codec, id, Bytes::from(plain)).await
                    }
                })
                .buffer_unordered(ARCHIVE_CONCURRENCY);
            while let Some(r) = puts.next().await {
                r?;
                done += 1;
                if done.is_multiple_of(16) || done == total {
                    progress(done, total);
                }
            }
        }
        Ok(done)
    }

    /// Check a snapshot's archive: index, every pack's SHA-256, and every chunk (CRC, or a full
    /// decode and id check with [`VerifyMode::Full`]).
    pub async fn verify(&self, snapshot_id: &str, mode: VerifyMode) -> Result<VerifyReport> {
        let ix = self.read_index(snapshot_id).await?;
        let mut report =
            VerifyReport { snapshot_id: snapshot_id.to_string(), blocks: ix.header.block_count, ..Default::default() };
        let mut seen = std::collections::HashSet::new();
        for n in 0..ix.parts.len() {
            let entries: Vec<ArchiveEntry> =
                ix.entries.iter().filter(|e| e.part as usize == n && seen.insert(e.id)).copied().collect();
            report.unique_chunks += entries.len() as u64;
            let pack = match self.read_part(&ix, n).await {
                Ok(p) => p,
                Err(StoreError::Corrupt { reason, .. }) => {
                    warn!(snapshot = snapshot_id, part = n, %reason, "verify: archive pack damaged");
                    for e in entries {
                        report.corrupt.push((e.id, format!("pack {n}: {reason}")));
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            report.bytes_read += pack.len() as u64;
            let mode = mode.clone();
            let checked = tokio::task::spawn_blocking(move || {
                entries
                    .into_iter()
                    .map(|e| {
                        let obj = &pack[e.offset as usize..e.offset as usize + e.len as usize];
                        let r = match &mode {
                            VerifyMode::Crc => chunk::check(&e.id, obj).map(|_| ()),
                            VerifyMode::Full(codec) => chunk::decode(codec, &e.id, obj, BLOCK_SIZE).map(|_| ()),
                        };
                        (e.id, r.err().map(|err| err.to_string()))
                    })
                    .collect::<Vec<_>>()
            })
            .await?;
            for (id, err) in checked {
                match err {
                    None => report.ok_chunks += 1,
                    Some(why) => report.corrupt.push((id, why)),
                }
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::DataKey;

    fn index() -> ArchiveIndex {
        ArchiveIndex {
            header: ArchiveHeader {
                snapshot_id: "snap-0123456789abcdef0".into(),
                volume_id: "vol-0123456789abcdef0".into(),
                volume_size: 4 * BLOCK_SIZE as u64,
                block_count: 4,
                encryption: Some(EncryptionInfo { kms_key_arn: "arn:k".into(), wrapped_key: vec![9; 61] }),
                parent: Some("snap-00000000000000001".into()),
                created_unix_ms: 1_700_000_000_000,
                description: "d".into(),
                zstd_level: ARCHIVE_ZSTD_LEVEL,
            },
            parts: vec![PartInfo { len: 100, sha256: [7; 32] }],
            entries: vec![
                ArchiveEntry { block: 0, id: BlockId([5; 32]), part: 0, offset: 0, len: 60 },
                ArchiveEntry { block: 2, id: BlockId::ZERO, part: NO_PART, offset: 0, len: 0 },
                ArchiveEntry { block: 3, id: BlockId([6; 32]), part: 0, offset: 60, len: 40 },
            ],
        }
    }

    #[test]
    fn index_round_trip_and_every_damage_is_an_error() {
        let ix = index();
        let b = encode_index(&ix).unwrap();
        assert_eq!(decode_index(&ix.header.snapshot_id, &b).unwrap(), ix);
        assert_eq!(ix.blocks(), vec![BlockId([5; 32]), BlockId::UNWRITTEN, BlockId::ZERO, BlockId([6; 32])]);
        assert!(decode_index("snap-other", &b).is_err());
        for i in 0..b.len() {
            let mut d = b.clone();
            d[i] ^= 0x01;
            assert!(decode_index(&ix.header.snapshot_id, &d).is_err(), "flip at {i} undetected");
        }
        for n in 0..b.len() {
            assert!(decode_index(&ix.header.snapshot_id, &b[..n]).is_err(), "truncation at {n} accepted");
        }
    }

    /// A hostile writer recomputes the checksum: the structural checks still hold.
    #[test]
    fn structurally_bad_indexes_are_refused() {
        let name = "snap-0123456789abcdef0";
        let reseal = |mut b: Vec<u8>| {
            b.truncate(b.len() - 32);
            let d = sha256(&b);
            b.extend_from_slice(&d);
            b
        };
        let mut cases: Vec<ArchiveIndex> = Vec::new();
        let mut ix = index();
        ix.entries[2].offset = 61; // past the part's end
        cases.push(ix);
        let mut ix = index();
        ix.entries.swap(0, 1); // out of order
        cases.push(ix);
        let mut ix = index();
        ix.entries[0].part = 3; // no such part
        cases.push(ix);
        let mut ix = index();
        ix.entries[1].len = 5; // a zero block with bytes
        cases.push(ix);
        let mut ix = index();
        ix.entries[2].block = 4; // past the volume
        cases.push(ix);
        let mut ix = index();
        ix.header.block_count = 5; // does not fit the size
        cases.push(ix);
        for (i, ix) in cases.iter().enumerate() {
            let b = reseal(encode_index(ix).unwrap());
            assert!(matches!(decode_index(name, &b), Err(StoreError::Corrupt { .. })), "case {i} accepted");
        }
        // Counts that promise more records than there are bytes.
        let mut b = encode_index(&index()).unwrap();
        b[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_index(name, &reseal(b)).is_err());
    }

    fn block(seed: u8) -> Vec<u8> {
        // Compressible but not trivially: a repeating 61-byte pattern.
        (0..BLOCK_SIZE).map(|i| (i % 61) as u8 ^ seed).collect()
    }

    async fn archive_round_trip(codec: Codec) {
        let dir = tempfile::tempdir().unwrap();
        let std = BlockStore::open_local(&dir.path().join("std")).await.unwrap();
        let arc = ArchiveStore::open_local(&dir.path().join("arc")).await.unwrap();
        let mut blocks = vec![BlockId::UNWRITTEN; 6];
        for (i, seed) in [(0usize, 1u8), (1, 2), (3, 1), (4, 3)] {
            blocks[i] = std.put_block(&codec, Bytes::from(block(seed))).await.unwrap().id;
        }
        blocks[5] = BlockId::ZERO;
        let m = Manifest {
            snapshot_id: "snap-0aaaaaaaaaaaaaaaa".into(),
            volume_id: "vol-0aaaaaaaaaaaaaaaa".into(),
            volume_size: 6 * BLOCK_SIZE as u64,
            blocks: blocks.clone(),
            encryption: None,
            parent: None,
            created_unix_ms: 1,
            description: String::new(),
        };
        std.write_manifest(&m).await.unwrap();
        let ix = arc.archive_from(&std, &m, &codec, &|_, _| {}).await.unwrap();
        assert_eq!(ix.blocks(), blocks);
        assert_eq!(ix.entries.len(), 5);
        // Blocks 0 and 3 are the same: stored once.
        assert_eq!((ix.entries[0].part, ix.entries[0].offset), (ix.entries[2].part, ix.entries[2].offset));
        assert_eq!(arc.read_index(&m.snapshot_id).await.unwrap(), ix);
        assert_eq!(arc.list().await.unwrap(), vec![m.snapshot_id.clone()]);
        assert!(arc.verify(&m.snapshot_id, VerifyMode::Full(codec.clone())).await.unwrap().is_ok());
        // Again: the committed archive is returned as it is.
        assert_eq!(arc.archive_from(&std, &m, &codec, &|_, _| {}).await.unwrap(), ix);

        // Into an empty store, then read back.
        let other = BlockStore::open_local(&dir.path().join("other")).await.unwrap();
        assert_eq!(arc.restore_into(&ix, &other, &codec, None, &|_, _| {}).await.unwrap(), 3);
        other.write_manifest(&ix.manifest()).await.unwrap();
        let back = other.read_manifest(&m.snapshot_id).await.unwrap();
        assert_eq!(back, m);
        for (i, seed) in [(0usize, 1u8), (1, 2), (3, 1), (4, 3)] {
            assert_eq!(other.get_block(&codec, &back.blocks[i]).await.unwrap().as_ref(), &block(seed)[..]);
        }
        arc.delete(&m.snapshot_id).await.unwrap();
        assert!(matches!(arc.read_index(&m.snapshot_id).await, Err(StoreError::ArchiveNotFound(_))));
        assert!(arc.list().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn plain_archive_round_trip() {
        archive_round_trip(Codec::plain()).await;
    }

    #[tokio::test]
    async fn encrypted_archive_round_trip() {
        archive_round_trip(Codec::encrypted(&DataKey::generate()).unwrap()).await;
    }

    #[tokio::test]
    async fn damaged_packs_are_errors() {
        let codec = Codec::plain();
        let dir = tempfile::tempdir().unwrap();
        let std = BlockStore::open_local(&dir.path().join("std")).await.unwrap();
        let arc = ArchiveStore::open_local(&dir.path().join("arc")).await.unwrap();
        let id = std.put_block(&codec, Bytes::from(block(4))).await.unwrap().id;
        let m = Manifest {
            snapshot_id: "snap-0bbbbbbbbbbbbbbbb".into(),
            volume_id: "vol-0bbbbbbbbbbbbbbbb".into(),
            volume_size: BLOCK_SIZE as u64,
            blocks: vec![id],
            encryption: None,
            parent: None,
            created_unix_ms: 1,
            description: String::new(),
        };
        let ix = arc.archive_from(&std, &m, &codec, &|_, _| {}).await.unwrap();
        let pack = dir.path().join("arc").join(&m.snapshot_id).join("part.0");
        let mut bytes = std::fs::read(&pack).unwrap();
        bytes[30] ^= 0xff;
        std::fs::write(&pack, &bytes).unwrap();
        let report = arc.verify(&m.snapshot_id, VerifyMode::Crc).await.unwrap();
        assert_eq!(report.corrupt.len(), 1);
        let other = BlockStore::open_local(&dir.path().join("other")).await.unwrap();
        assert!(matches!(
            arc.restore_into(&ix, &other, &codec, None, &|_, _| {}).await,
            Err(StoreError::Corrupt { .. })
        ));
        std::fs::remove_file(&pack).unwrap();
        assert!(arc.restore_into(&ix, &other, &codec, None, &|_, _| {}).await.is_err());
        // A damaged index.
        let index = dir.path().join("arc").join(&m.snapshot_id).join("index");
        std::fs::write(&index, b"BSAI garbage").unwrap();
        assert!(matches!(arc.read_index(&m.snapshot_id).await, Err(StoreError::Corrupt { .. })));
    }

    #[tokio::test]
    async fn an_unfinished_archive_is_replaced() {
        let codec = Codec::plain();
        let dir = tempfile::tempdir().unwrap();
        let std = BlockStore::open_local(&dir.path().join("std")).await.unwrap();
        let arc = ArchiveStore::open_local(&dir.path().join("arc")).await.unwrap();
        let id = std.put_block(&codec, Bytes::from(block(5))).await.unwrap().id;
        let m = Manifest {
            snapshot_id: "snap-0cccccccccccccccc".into(),
            volume_id: "vol-0cccccccccccccccc".into(),
            volume_size: BLOCK_SIZE as u64,
            blocks: vec![id],
            encryption: None,
            parent: None,
            created_unix_ms: 1,
            description: String::new(),
        };
        // A crash after a pack and before the index.
        let left = dir.path().join("arc").join(&m.snapshot_id);
        std::fs::create_dir_all(&left).unwrap();
        std::fs::write(left.join("part.0"), b"half a pack").unwrap();
        std::fs::write(left.join("part.7"), b"another").unwrap();
        assert!(matches!(arc.read_index(&m.snapshot_id).await, Err(StoreError::ArchiveNotFound(_))));
        let ix = arc.archive_from(&std, &m, &codec, &|_, _| {}).await.unwrap();
        assert!(!left.join("part.7").exists());
        assert!(arc.verify(&m.snapshot_id, VerifyMode::Full(codec)).await.unwrap().is_ok());
        assert_eq!(
            arc.stored_bytes(&m.snapshot_id).await.unwrap(),
            ix.pack_bytes() + std::fs::metadata(left.join("index")).unwrap().len()
        );
    }
}
