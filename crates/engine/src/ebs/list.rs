//! ListSnapshotBlocks and ListChangedBlocks: pages of block indexes with block tokens, read from
//! the manifests segment by segment. A manifest lists its segment ids in volume order and a
//! segment id is the hash of its 1,024 block ids, so equal segment ids mean 512 MiB with no
//! change and reserved ones (never written, all zeros) hold no block: a listing reads only the
//! segments that can hold what it returns, and a diff costs O(changed segments), not O(volume).

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use blocksnap_store::{BlockId, BlockStore, ManifestHeader, SEGMENT_BLOCKS, SegmentId};
use futures::StreamExt;

use super::{token, validation};
use crate::engine::{Engine, State};
use crate::error::{EngineError, Result};
use crate::model::{Ctx, Millis, Snapshot, SnapshotState, now_millis};

/// Blocks per page when the caller gives no MaxResults.
pub const DEFAULT_MAX_RESULTS: u32 = 10_000;
/// Segments read at once while listing.
const SEGMENT_READS: usize = 32;
/// Segments (pairs, for a diff) one page reads at most: 128 segments are 64 GiB of volume. A page
/// may hold fewer blocks than MaxResults (as documented) and names where to go on, so every call's
/// work is bounded whatever the volume size and however sparse the changes.
const SEGMENTS_PER_PAGE: usize = 128;
const CACHED_HEADERS: usize = 256;
/// 2,048 segments: 64 MiB of ids, the block lists of a fully written 1 TiB snapshot.
const CACHED_SEGMENTS: usize = 2048;

/// ListSnapshotBlocks.
#[derive(Debug, Clone, Default)]
pub struct ListBlocks {
    pub snapshot_id: String,
    pub starting_block_index: Option<i64>,
    pub next_token: Option<String>,
    pub max_results: Option<i64>,
}

/// ListChangedBlocks.
#[derive(Debug, Clone, Default)]
pub struct ListChangedBlocks {
    pub first_snapshot_id: Option<String>,
    pub second_snapshot_id: String,
    pub starting_block_index: Option<i64>,
    pub next_token: Option<String>,
    pub max_results: Option<i64>,
}

/// A page of ListSnapshotBlocks: `(index, token)` pairs.
#[derive(Debug, Clone)]
pub struct BlockPage {
    pub blocks: Vec<(u32, String)>,
    pub expiry: Millis,
    pub volume_size_gib: u64,
    pub next_token: Option<String>,
}

/// One block that differs: the tokens of the block in each snapshot that has it.
#[derive(Debug, Clone)]
pub struct ChangedBlock {
    pub index: u32,
    pub first_token: Option<String>,
    pub second_token: Option<String>,
}

/// A page of ListChangedBlocks.
#[derive(Debug, Clone)]
pub struct ChangedPage {
    pub blocks: Vec<ChangedBlock>,
    pub expiry: Millis,
    pub volume_size_gib: u64,
    pub next_token: Option<String>,
}

/// A small bounded map, oldest entry out first. Manifests and segments never change once
/// written (ids are never reused), so entries never go stale.
struct Bounded<K, V> {
    map: HashMap<K, V>,
    order: VecDeque<K>,
    cap: usize,
}

impl<K: Eq + Hash + Clone, V: Clone> Bounded<K, V> {
    fn new(cap: usize) -> Self {
        Bounded { map: HashMap::new(), order: VecDeque::new(), cap }
    }
    fn get(&self, k: &K) -> Option<V> {
        self.map.get(k).cloned()
    }
    fn put(&mut self, k: K, v: V) {
        if self.map.insert(k.clone(), v).is_none() {
            self.order.push_back(k);
            while self.order.len() > self.cap {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }
}

/// A segment of a region's store.
type SegmentKey = (String, SegmentId);

/// Manifest headers (keyed by region/snapshot) and decoded segments the listings read.
pub(crate) struct Cache {
    headers: Mutex<Bounded<String, Arc<ManifestHeader>>>,
    segments: Mutex<Bounded<SegmentKey, Arc<Vec<BlockId>>>>,
}

impl Default for Cache {
    fn default() -> Self {
        Cache { headers: Mutex::new(Bounded::new(CACHED_HEADERS)), segments: Mutex::new(Bounded::new(CACHED_SEGMENTS)) }
    }
}

fn internal(what: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError::Internal(format!("{what}: {e}"))
}

impl Cache {
    async fn header(&self, store: &BlockStore, region: &str, id: &str) -> Result<Arc<ManifestHeader>> {
        let key = format!("{region}/{id}");
        if let Some(h) = self.headers.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(h);
        }
        let h = Arc::new(store.read_manifest_header(id).await.map_err(|e| internal("reading a manifest", e))?);
        self.headers.lock().unwrap_or_else(|p| p.into_inner()).put(key, h.clone());
        Ok(h)
    }

    /// The block ids of segment `index` of a manifest (`None` past its end).
    async fn segment(
        &self,
        store: &BlockStore,
        region: &str,
        h: &ManifestHeader,
        index: usize,
    ) -> Result<Option<Arc<Vec<BlockId>>>> {
        let Some(id) = h.segments.get(index).copied() else { return Ok(None) };
        let count = (h.block_count as usize).saturating_sub(index * SEGMENT_BLOCKS).min(SEGMENT_BLOCKS);
        let key = (region.to_string(), id);
        if let Some(s) = self.segments.lock().unwrap_or_else(|p| p.into_inner()).get(&key)
            && s.len() == count
        {
            return Ok(Some(s));
        }
        let ids = Arc::new(store.read_segment(id, count).await.map_err(|e| internal("reading a segment", e))?);
        if !id.is_reserved() {
            self.segments.lock().unwrap_or_else(|p| p.into_inner()).put(key, ids.clone());
        }
        Ok(Some(ids))
    }
}

fn present(id: &BlockId) -> bool {
    !id.is_reserved()
}

fn page_size(max: Option<i64>) -> Result<usize> {
    match max {
        None => Ok(DEFAULT_MAX_RESULTS as usize),
        Some(n) if (100..=10_000).contains(&n) => Ok(n as usize),
        Some(n) => Err(validation("INVALID_PARAMETER_VALUE", format!("MaxResults must be 100 to 10000, not {n}."))),
    }
}

/// Where a page starts: the page token wins over StartingBlockIndex, as documented.
fn start_index(token: &Option<String>, starting: Option<i64>) -> Result<u64> {
    if let Some(t) = token {
        return crate::describe::decode_token(t)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| validation("INVALID_PAGE_TOKEN", "The page token is not one this service issued."));
    }
    match starting {
        None => Ok(0),
        Some(i) if i >= 0 => Ok(i as u64),
        Some(i) => {
            Err(validation("INVALID_PARAMETER_VALUE", format!("StartingBlockIndex must not be negative ({i}).")))
        }
    }
}

/// Keep the segments one page may read; the first one left over, where the next page starts.
fn budget(candidates: &mut Vec<usize>) -> Option<usize> {
    let resume = candidates.get(SEGMENTS_PER_PAGE).copied();
    candidates.truncate(SEGMENTS_PER_PAGE);
    resume
}

fn next_token(next: u64) -> String {
    crate::describe::encode_token(&format!("{next:010}"))
}

/// The first snapshot of a chain of parents (bounded: a damaged catalog cannot loop it).
fn lineage_root<'a>(st: &'a State, s: &'a Snapshot) -> &'a str {
    let mut cur = s;
    for _ in 0..100_000 {
        match cur.parent.as_deref().and_then(|p| st.snapshots.get(p)) {
            Some(p) => cur = p,
            None => break,
        }
    }
    &cur.id
}

fn related(st: &State, a: &Snapshot, b: &Snapshot) -> bool {
    let same_volume = a.volume_id == b.volume_id && a.volume_id != crate::copy::COPY_VOLUME_ID;
    same_volume || lineage_root(st, a) == lineage_root(st, b)
}

impl Engine {
    fn readable_completed(&self, st: &State, ctx: &Ctx, id: &str) -> Result<Snapshot> {
        let s = self.ebs_readable(st, ctx, id)?;
        if s.state != SnapshotState::Completed {
            return Err(validation(
                "INVALID_PARAMETER_VALUE",
                format!("Snapshot {id} is {}: its blocks can be listed once it is completed.", s.state.as_str()),
            ));
        }
        Ok(s)
    }

    fn token_expiry(&self) -> (u32, Millis) {
        let secs = (now_millis().max(0) as u64 / 1000).saturating_add(self.config.block_token_ttl.as_secs());
        let secs = u32::try_from(secs).unwrap_or(u32::MAX);
        (secs, i64::from(secs) * 1000)
    }

    /// ListSnapshotBlocks: the written blocks of a completed snapshot, from a block index on.
    pub async fn ebs_list_blocks(&self, ctx: &Ctx, req: ListBlocks) -> Result<BlockPage> {
        let snap = {
            let st = self.lock();
            self.readable_completed(&st, ctx, &req.snapshot_id)?
        };
        let max = page_size(req.max_results)?;
        let start = start_index(&req.next_token, req.starting_block_index)?;
        let key = token::TokenKey::new(&self.ebs_token_key_async().await?);
        let store = self.store(&snap.region).await?;
        let cache = &self.jobs.direct.cache;
        let h = cache.header(&store, &snap.region, &snap.id).await?;
        let (expiry_secs, expiry) = self.token_expiry();
        let mut page =
            BlockPage { blocks: Vec::new(), expiry, volume_size_gib: snap.volume_size_gib as u64, next_token: None };
        let first_seg = (start / SEGMENT_BLOCKS as u64) as usize;
        let mut candidates: Vec<usize> = (first_seg..h.segments.len())
            .filter(|i| !h.segments[*i].is_reserved())
            .take(SEGMENTS_PER_PAGE + 1)
            .collect();
        let resume = budget(&mut candidates);
        let mut reads = futures::stream::iter(candidates)
            .map(|i| {
                let (store, region, h) = (store.clone(), snap.region.clone(), h.clone());
                async move { cache.segment(&store, &region, &h, i).await.map(|s| (i, s)) }
            })
            .buffered(SEGMENT_READS);
        'segments: while let Some(r) = reads.next().await {
            let (seg, ids) = r?;
            let Some(ids) = ids else { continue };
            for (j, id) in ids.iter().enumerate() {
                let index = (seg * SEGMENT_BLOCKS + j) as u64;
                if index < start || !present(id) {
                    continue;
                }
                if page.blocks.len() == max {
                    page.next_token = Some(next_token(index));
                    break 'segments;
                }
                let index = index as u32;
                page.blocks.push((index, token::mint(&key, &snap.id, index, expiry_secs, id)));
            }
        }
        if page.next_token.is_none()
            && let Some(seg) = resume
        {
            page.next_token = Some(next_token((seg * SEGMENT_BLOCKS) as u64));
        }
        Ok(page)
    }

    /// ListChangedBlocks: blocks that differ between two snapshots of one lineage (or every
    /// written block of the second when no first is given).
    pub async fn ebs_list_changed_blocks(&self, ctx: &Ctx, req: ListChangedBlocks) -> Result<ChangedPage> {
        let (first, second) = {
            let st = self.lock();
            let second = self.readable_completed(&st, ctx, &req.second_snapshot_id)?;
            let first = match &req.first_snapshot_id {
                None => None,
                Some(f) => {
                    let first = self.readable_completed(&st, ctx, f)?;
                    if !related(&st, &first, &second) {
                        return Err(validation(
                            "UNRELATED_SNAPSHOTS",
                            format!(
                                "Snapshots {} and {} are not of the same volume or snapshot lineage.",
                                first.id, second.id
                            ),
                        ));
                    }
                    if first.wrapped_data_key != second.wrapped_data_key {
                        return Err(validation(
                            "UNRELATED_SNAPSHOTS",
                            format!(
                                "Snapshots {} and {} are encrypted under different data keys (another KMS key or encryption state): their blocks cannot be compared.",
                                first.id, second.id
                            ),
                        ));
                    }
                    Some(first)
                }
            };
            (first, second)
        };
        let max = page_size(req.max_results)?;
        let start = start_index(&req.next_token, req.starting_block_index)?;
        let key = token::TokenKey::new(&self.ebs_token_key_async().await?);
        let store = self.store(&second.region).await?;
        let cache = &self.jobs.direct.cache;
        let h2 = cache.header(&store, &second.region, &second.id).await?;
        let h1 = match &first {
            Some(f) => Some(cache.header(&store, &f.region, &f.id).await?),
            None => None,
        };
        let (expiry_secs, expiry) = self.token_expiry();
        let mut page = ChangedPage {
            blocks: Vec::new(),
            expiry,
            volume_size_gib: second.volume_size_gib as u64,
            next_token: None,
        };
        let nsegs = h2.segments.len().max(h1.as_ref().map_or(0, |h| h.segments.len()));
        let first_seg = (start / SEGMENT_BLOCKS as u64) as usize;
        let seg_len = |h: &ManifestHeader, i: usize| {
            (h.block_count as usize).saturating_sub(i * SEGMENT_BLOCKS).min(SEGMENT_BLOCKS)
        };
        let candidates: Vec<usize> = (first_seg..nsegs)
            .filter(|&i| {
                let b = h2.segments.get(i).copied().unwrap_or(SegmentId::UNWRITTEN);
                let a = h1.as_ref().and_then(|h| h.segments.get(i).copied()).unwrap_or(SegmentId::UNWRITTEN);
                let same_len = h1.as_ref().is_none_or(|h1| seg_len(h1, i) == seg_len(&h2, i));
                // Nothing to compare when neither has a block, or both have the same ids.
                let nothing = a.is_reserved() && b.is_reserved();
                let same = a == b && same_len;
                !(nothing || same)
            })
            .take(SEGMENTS_PER_PAGE + 1)
            .collect();
        let mut candidates = candidates;
        let resume = budget(&mut candidates);
        let (first_id, region) = (first.as_ref().map(|f| f.id.clone()), second.region.clone());
        let mut reads = futures::stream::iter(candidates)
            .map(|i| {
                let (store, region, h1, h2) = (store.clone(), region.clone(), h1.clone(), h2.clone());
                async move {
                    let b = cache.segment(&store, &region, &h2, i).await?;
                    let a = match &h1 {
                        Some(h1) => cache.segment(&store, &region, h1, i).await?,
                        None => None,
                    };
                    Ok::<_, EngineError>((i, a, b))
                }
            })
            .buffered(SEGMENT_READS);
        'segments: while let Some(r) = reads.next().await {
            let (seg, a, b) = r?;
            let n = a.as_ref().map_or(0, |v| v.len()).max(b.as_ref().map_or(0, |v| v.len()));
            for j in 0..n {
                let index = (seg * SEGMENT_BLOCKS + j) as u64;
                if index < start {
                    continue;
                }
                let ia = a.as_ref().and_then(|v| v.get(j)).copied().unwrap_or(BlockId::UNWRITTEN);
                let ib = b.as_ref().and_then(|v| v.get(j)).copied().unwrap_or(BlockId::UNWRITTEN);
                let (pa, pb) = (present(&ia), present(&ib));
                if !(pa || pb) || ia == ib {
                    continue;
                }
                if page.blocks.len() == max {
                    page.next_token = Some(next_token(index));
                    break 'segments;
                }
                let index = index as u32;
                page.blocks.push(ChangedBlock {
                    index,
                    first_token: match (&first_id, pa) {
                        (Some(f), true) => Some(token::mint(&key, f, index, expiry_secs, &ia)),
                        _ => None,
                    },
                    second_token: pb.then(|| token::mint(&key, &second.id, index, expiry_secs, &ib)),
                });
            }
        }
        if page.next_token.is_none()
            && let Some(seg) = resume
        {
            page.next_token = Some(next_token((seg * SEGMENT_BLOCKS) as u64));
        }
        Ok(page)
    }
}
