//! Lazy hydration: a restored volume reads the source's bytes at once, fetches each block once,
//! takes writes during hydration, and a flushed write survives a restart in the middle.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use blocksnap_volume::{BLOCK_SIZE, BlockSource, VolumeStore};
use roaring::RoaringBitmap;

const B: usize = BLOCK_SIZE as usize;

/// Block n reads as the byte n+1 repeated; counts fetches.
struct Source(Arc<AtomicUsize>);

impl BlockSource for Source {
    fn fetch(&self, block: u32) -> std::io::Result<Option<Vec<u8>>> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(Some(vec![block as u8 + 1; B]))
    }
}

#[test]
fn reads_fetch_once_writes_work_and_flushed_writes_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = VolumeStore::open(dir.path().to_path_buf()).unwrap();
    store.create("vol-h", 8 * BLOCK_SIZE).unwrap();
    let v = store.open_volume("vol-h").unwrap();
    let fetches = Arc::new(AtomicUsize::new(0));
    let mut pending = RoaringBitmap::new();
    pending.insert_range(0..6); // blocks 6, 7 read as zeros (never written in the snapshot)
    v.start_hydration(Box::new(Source(fetches.clone())), pending).unwrap();

    let mut buf = vec![0u8; 4096];
    v.read_at(BLOCK_SIZE + 100, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 2), "block 1 reads the source's bytes at once");
    v.read_at(BLOCK_SIZE, &mut buf).unwrap();
    assert_eq!(fetches.load(Ordering::SeqCst), 1, "each block is fetched once");

    // Block status: pending blocks are data, never-written ones holes.
    let map = v.block_status(0, 8 * BLOCK_SIZE).unwrap();
    assert!(!map[0].hole && map[0].len == 6 * BLOCK_SIZE, "{map:?}");
    assert!(map.last().unwrap().hole);

    // A partial write to a pending block keeps the rest of the block; a whole-block write fetches nothing.
    v.write_at(2 * BLOCK_SIZE + 10, &[0xaa; 10], false).unwrap();
    v.write_at(3 * BLOCK_SIZE, &vec![0xbb; B], false).unwrap();
    assert_eq!(fetches.load(Ordering::SeqCst), 2);
    v.flush().unwrap();

    // Crash: drop, reopen, resume. Blocks 0, 4, 5 are still pending.
    drop(v);
    drop(store);
    let store = VolumeStore::open(dir.path().to_path_buf()).unwrap();
    let v = store.open_volume("vol-h").unwrap();
    assert!(v.resume_hydration(Box::new(Source(fetches.clone()))).unwrap());
    assert_eq!(v.hydration_remaining(), 3);
    let mut blk = vec![0u8; B];
    v.read_at(2 * BLOCK_SIZE, &mut blk).unwrap();
    assert!(
        blk[..10].iter().all(|&b| b == 3)
            && blk[10..20].iter().all(|&b| b == 0xaa)
            && blk[20..].iter().all(|&b| b == 3)
    );
    v.read_at(3 * BLOCK_SIZE, &mut blk).unwrap();
    assert!(blk.iter().all(|&b| b == 0xbb), "a flushed write is never overwritten by a re-fetch");

    while v.hydrate_next().unwrap() {}
    assert_eq!(v.hydration_remaining(), 0);
    assert!(!dir.path().join("vol-h").join("hydration.map").exists());
    v.read_at(5 * BLOCK_SIZE, &mut blk).unwrap();
    assert!(blk.iter().all(|&b| b == 6));
    v.read_at(7 * BLOCK_SIZE, &mut blk).unwrap();
    assert!(blk.iter().all(|&b| b == 0));
    // After hydration no map: a reopen does not resume.
    drop(v);
    drop(store);
    let store = VolumeStore::open(dir.path().to_path_buf()).unwrap();
    let v = store.open_volume("vol-h").unwrap();
    assert!(!v.resume_hydration(Box::new(Source(fetches))).unwrap());
}

#[test]
fn concurrent_hydrators_and_readers_fetch_every_block_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = VolumeStore::open(dir.path().to_path_buf()).unwrap();
    let n = 64u32;
    store.create("vol-c", n as u64 * BLOCK_SIZE).unwrap();
    let v = store.open_volume("vol-c").unwrap();
    let fetches = Arc::new(AtomicUsize::new(0));
    let mut pending = RoaringBitmap::new();
    pending.insert_range(0..n);
    v.start_hydration(Box::new(Source(fetches.clone())), pending).unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| while v.hydrate_next().unwrap() {});
        }
        // A reader touching blocks from the end while the hydrators go from the start.
        s.spawn(|| {
            let mut buf = vec![0u8; 4096];
            for b in (0..n).rev() {
                v.read_at(b as u64 * BLOCK_SIZE + 4096, &mut buf).unwrap();
                assert!(buf.iter().all(|&x| x == b as u8 + 1), "block {b}");
            }
        });
    });
    assert_eq!(fetches.load(Ordering::SeqCst), n as usize, "each block fetched once");
    assert_eq!(v.hydration_remaining(), 0);
    assert!(!dir.path().join("vol-c").join("hydration.map").exists());
    let mut blk = vec![0u8; B];
    for b in 0..n {
        v.read_at(b as u64 * BLOCK_SIZE, &mut blk).unwrap();
        assert!(blk.iter().all(|&x| x == b as u8 + 1), "block {b}");
    }
}
