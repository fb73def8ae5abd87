use super::*;
use std::fs;
use std::sync::Arc;
use std::time::Instant;

use roaring::RoaringBitmap;

use crate::gate::WriterGuard;

const MIB: u64 = 1 << 20;

fn store() -> (tempfile::TempDir, VolumeStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = VolumeStore::open(dir.path().join("vols")).unwrap();
    (dir, s)
}

fn on_disk_bits(s: &VolumeStore, id: &str, size: u64) -> RoaringBitmap {
    let l = cbt::load(&s.root().join(id).join(cbt::ACTIVE_NAME), cbt::nblocks_for(size)).unwrap();
    cbt::words_to_roaring(&l.words)
}

fn blocks(v: &[u32]) -> RoaringBitmap {
    v.iter().copied().collect()
}

#[test]
fn create_read_write_persist() {
    let (dir, s) = store();
    s.create("vol-a", 8 * MIB).unwrap();
    assert!(matches!(s.create("vol-a", 8 * MIB), Err(Error::AlreadyExists(_))));
    assert!(matches!(s.create("../x", MIB), Err(Error::InvalidId(_))));
    assert!(matches!(s.create("vol-b", 1000), Err(Error::InvalidSize(_))));
    let v = s.open_volume("vol-a").unwrap();
    assert!(Arc::ptr_eq(&v, &s.open_volume("vol-a").unwrap()));
    assert_eq!(v.size(), 8 * MIB);
    let mut buf = vec![1u8; 4096];
    v.read_at(0, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    v.write_at(MIB + 10, b"hello", true).unwrap();
    v.write_at(7 * MIB, &vec![0xab; MIB as usize], false).unwrap();
    v.flush().unwrap();
    assert!(matches!(v.write_at(8 * MIB - 2, b"abc", false), Err(Error::OutOfRange { .. })));
    assert!(matches!(v.read_at(u64::MAX - 1, &mut buf), Err(Error::OutOfRange { .. })));
    drop(v);
    drop(s);

    let s = VolumeStore::open(dir.path().join("vols")).unwrap();
    assert_eq!(s.list().unwrap(), vec!["vol-a".to_string()]);
    let v = s.open_volume("vol-a").unwrap();
    let mut five = [0u8; 5];
    v.read_at(MIB + 10, &mut five).unwrap();
    assert_eq!(&five, b"hello");
    let mut tail = vec![0u8; MIB as usize];
    v.read_at(7 * MIB, &mut tail).unwrap();
    assert!(tail.iter().all(|&b| b == 0xab));
    // Blocks 2 (1 MiB) and 14, 15 (7..8 MiB) changed, and that survived.
    assert_eq!(v.changed_blocks(), blocks(&[2, 14, 15]));
    assert!(!v.bitmap_was_damaged());
}

#[test]
fn bit_is_durable_before_write_returns() {
    let (_d, s) = store();
    s.create("vol-a", 64 * MIB).unwrap();
    let v = s.open_volume("vol-a").unwrap();
    v.write_at(3 * BLOCK_SIZE + 5, b"x", false).unwrap();
    // Straddles blocks 9 and 10.
    v.write_at(10 * BLOCK_SIZE - 2, b"abcd", false).unwrap();
    v.write_zeroes(20 * BLOCK_SIZE, 1, true).unwrap();
    v.trim(30 * BLOCK_SIZE, BLOCK_SIZE + 1).unwrap();
    assert_eq!(on_disk_bits(&s, "vol-a", 64 * MIB), blocks(&[3, 9, 10, 20, 30, 31]));
}

#[test]
fn concurrent_writers_group_commit() {
    let (_d, s) = store();
    let size = 256 * MIB;
    s.create("vol-a", size).unwrap();
    let v = s.open_volume("vol-a").unwrap();
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let v = v.clone();
            std::thread::spawn(move || {
                for i in 0..64u64 {
                    let block = (i * 8 + t) % (size / BLOCK_SIZE);
                    v.write_at(block * BLOCK_SIZE + 4096, &[t as u8 + 1; 4096], false).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let expect: RoaringBitmap = (0..(size / BLOCK_SIZE) as u32).collect();
    assert_eq!(on_disk_bits(&s, "vol-a", size), expect);
    assert_eq!(v.changed_blocks(), expect);
}

/// Stress of the bitmap's group commit across cuts: writers, cuts and abandoned snapshots
/// returning their bits (no gate: they race the cuts) at once. Afterwards every block written is
/// in the changed set of an epoch, and every epoch's file on disk holds its whole set.
#[test]
fn group_commit_across_cuts_and_restores() {
    let (_d, s) = store();
    let size = 64 * MIB;
    let nblocks = size / BLOCK_SIZE;
    s.create("vol-a", size).unwrap();
    let v = s.open_volume("vol-a").unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<u64>();
    let writers: Vec<_> = (0..4u64)
        .map(|t| {
            let v = v.clone();
            std::thread::spawn(move || {
                for i in 0..200u64 {
                    let block = (i * 37 + t * 11) % nblocks;
                    v.write_at(block * BLOCK_SIZE, &[t as u8 + 1; 512], false).unwrap();
                }
            })
        })
        .collect();
    let restorer = {
        let v = v.clone();
        std::thread::spawn(move || {
            for e in rx {
                v.restore_epoch(e).unwrap();
            }
        })
    };
    let mut kept = Vec::new();
    for i in 0..20 {
        let (epoch, set) = {
            let g = v.gate().unwrap();
            v.swap_epoch(&g).unwrap()
        };
        // Every other snapshot is abandoned: its bits go back while writes and cuts go on.
        if i % 2 == 0 {
            tx.send(epoch).unwrap();
        } else {
            kept.push((epoch, set));
        }
    }
    drop(tx);
    for w in writers {
        w.join().unwrap();
    }
    restorer.join().unwrap();
    let on_disk: std::collections::HashMap<u64, RoaringBitmap> = v.frozen_epochs().unwrap().into_iter().collect();
    let mut all = v.changed_blocks();
    for (epoch, set) in &kept {
        let file = &on_disk[epoch];
        assert!((set - file).is_empty(), "epoch {epoch}: {:?} changed but not in its file", set - file);
        all |= set;
    }
    let active = on_disk_bits(&s, "vol-a", size);
    assert!((v.changed_blocks() - &active).is_empty(), "the active file lacks changed blocks");
    let written: RoaringBitmap =
        (0..4u64).flat_map(|t| (0..200u64).map(move |i| ((i * 37 + t * 11) % nblocks) as u32)).collect();
    assert!((written - all).is_empty(), "a written block is in no epoch's changed set");
}

#[test]
fn damaged_bitmap_reads_all_dirty() {
    let (dir, s) = store();
    // 40,000 blocks = 2 bitmap pages.
    let size = 40_000 * BLOCK_SIZE;
    s.create("vol-a", size).unwrap();
    s.open_volume("vol-a").unwrap().write_at(0, b"x", false).unwrap();
    drop(s);
    let path = dir.path().join("vols/vol-a").join(cbt::ACTIVE_NAME);

    // Flip a bit in the second page: only its blocks become dirty.
    let mut bytes = fs::read(&path).unwrap();
    bytes[cbt::PAGE_SIZE * 2 + 100] ^= 0x10;
    fs::write(&path, &bytes).unwrap();
    let s = VolumeStore::open(dir.path().join("vols")).unwrap();
    let v = s.open_volume("vol-a").unwrap();
    assert!(v.bitmap_was_damaged());
    let per_page = (cbt::WORDS_PER_PAGE * 64) as u32;
    let mut expect: RoaringBitmap = (per_page..40_000).collect();
    expect.insert(0);
    assert_eq!(v.changed_blocks(), expect);
    // The conservative reading was written back and is valid now.
    assert_eq!(on_disk_bits(&s, "vol-a", size), expect);
    drop(v);
    drop(s);

    // Corrupt header: everything dirty.
    let mut bytes = fs::read(&path).unwrap();
    bytes[30] ^= 1;
    fs::write(&path, &bytes).unwrap();
    let s = VolumeStore::open(dir.path().join("vols")).unwrap();
    let v = s.open_volume("vol-a").unwrap();
    assert_eq!(v.changed_blocks().len(), 40_000);
    drop(v);
    drop(s);

    // Missing file: everything dirty.
    fs::remove_file(&path).unwrap();
    let s = VolumeStore::open(dir.path().join("vols")).unwrap();
    assert_eq!(s.open_volume("vol-a").unwrap().changed_blocks().len(), 40_000);
}

#[test]
fn epoch_swap_freeze_release_restore() {
    let (dir, s) = store();
    s.create("vol-a", 16 * MIB).unwrap();
    let v = s.open_volume("vol-a").unwrap();
    v.write_at(BLOCK_SIZE, b"a", false).unwrap();
    v.write_at(3 * BLOCK_SIZE, b"b", false).unwrap();
    assert_eq!(v.epoch(), 0);
    let (old, set) = {
        let g = v.gate().unwrap();
        v.swap_epoch(&g).unwrap()
    };
    assert_eq!((old, set), (0, blocks(&[1, 3])));
    assert_eq!(v.epoch(), 1);
    assert!(v.changed_blocks().is_empty());
    v.write_at(5 * BLOCK_SIZE, b"c", false).unwrap();
    assert_eq!(on_disk_bits(&s, "vol-a", 16 * MIB), blocks(&[5]));

    // Another volume's gate is refused.
    s.create("vol-b", MIB).unwrap();
    let other = s.open_volume("vol-b").unwrap();
    assert!(matches!(v.swap_epoch(&other.gate().unwrap()), Err(Error::WrongGate)));

    // Survives a restart: epoch 1 active, epoch 0 frozen.
    drop((v, other));
    drop(s);
    let s = VolumeStore::open(dir.path().join("vols")).unwrap();
    let v = s.open_volume("vol-a").unwrap();
    assert_eq!(v.epoch(), 1);
    assert_eq!(v.changed_blocks(), blocks(&[5]));
    assert_eq!(v.frozen_epochs().unwrap(), vec![(0, blocks(&[1, 3]))]);

    // Abandoned snapshot: its blocks go back into the current epoch.
    v.restore_epoch(0).unwrap();
    assert_eq!(v.changed_blocks(), blocks(&[1, 3, 5]));
    assert_eq!(on_disk_bits(&s, "vol-a", 16 * MIB), blocks(&[1, 3, 5]));
    assert!(v.frozen_epochs().unwrap().is_empty());

    let (old, _) = {
        let g = v.gate().unwrap();
        v.swap_epoch(&g).unwrap()
    };
    assert_eq!(old, 1);
    v.release_epoch(1).unwrap();
    assert!(v.frozen_epochs().unwrap().is_empty());
    assert_eq!(v.epoch(), 2);
}

#[test]
fn gate_blocks_writers_until_released() {
    let (_d, s) = store();
    s.create("vol-a", MIB).unwrap();
    let v = s.open_volume("vol-a").unwrap();
    let g = v.gate().unwrap();
    let v2 = v.clone();
    let t = std::thread::spawn(move || v2.write_at(0, b"late", false).unwrap());
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(!t.is_finished());
    let (_, set) = v.swap_epoch(&g).unwrap();
    assert!(set.is_empty(), "the gated write must land in the next epoch");
    drop(g);
    t.join().unwrap();
    assert_eq!(v.changed_blocks(), blocks(&[0]));
}

#[test]
fn resize_grows_only() {
    let (dir, s) = store();
    s.create("vol-a", MIB).unwrap();
    let v = s.open_volume("vol-a").unwrap();
    v.write_at(0, b"keep", false).unwrap();
    assert!(matches!(s.resize("vol-a", 512 * 1024), Err(Error::Shrink { .. })));
    s.resize("vol-a", 4 * MIB).unwrap();
    assert_eq!(v.size(), 4 * MIB);
    let mut buf = vec![1u8; MIB as usize];
    v.read_at(3 * MIB, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    v.write_at(4 * MIB - 4, b"tail", false).unwrap();
    assert_eq!(v.changed_blocks(), blocks(&[0, 7]));
    drop(v);
    drop(s);
    let s = VolumeStore::open(dir.path().join("vols")).unwrap();
    let v = s.open_volume("vol-a").unwrap();
    assert_eq!(v.size(), 4 * MIB);
    assert!(!v.bitmap_was_damaged());
    assert_eq!(v.changed_blocks(), blocks(&[0, 7]));
    let mut four = [0u8; 4];
    v.read_at(0, &mut four).unwrap();
    assert_eq!(&four, b"keep");
}

#[test]
fn delete_removes_everything() {
    let (dir, s) = store();
    s.create("vol-a", MIB).unwrap();
    let v = s.open_volume("vol-a").unwrap();
    s.delete("vol-a").unwrap();
    assert!(!dir.path().join("vols/vol-a").exists());
    assert!(matches!(s.open_volume("vol-a"), Err(Error::NotFound(_))));
    assert!(matches!(s.delete("vol-a"), Err(Error::NotFound(_))));
    assert!(matches!(v.write_at(0, b"x", false), Err(Error::Deleted(_))));
    assert!(s.list().unwrap().is_empty());
    s.create("vol-a", 2 * MIB).unwrap();
    assert_eq!(s.open_volume("vol-a").unwrap().size(), 2 * MIB);
}

#[test]
fn leftovers_are_cleaned_on_open() {
    let (dir, s) = store();
    drop(s);
    let root = dir.path().join("vols");
    fs::create_dir(root.join(".tmp-vol-x")).unwrap();
    fs::create_dir(root.join(".del-vol-y")).unwrap();
    let s = VolumeStore::open(root.clone()).unwrap();
    assert!(s.list().unwrap().is_empty());
    assert!(!root.join(".tmp-vol-x").exists());
    assert!(!root.join(".del-vol-y").exists());
}

#[test]
fn block_status_is_truthful() {
    let (_d, s) = store();
    s.create("vol-a", 8 * MIB).unwrap();
    let v = s.open_volume("vol-a").unwrap();
    assert_eq!(v.block_status(0, 8 * MIB).unwrap(), vec![Extent { len: 8 * MIB, hole: true, zero: true }]);
    v.write_at(MIB, &vec![7u8; MIB as usize], false).unwrap();
    let ext = v.block_status(0, 8 * MIB).unwrap();
    assert_eq!(ext.iter().map(|e| e.len).sum::<u64>(), 8 * MIB);
    assert_eq!(ext[0], Extent { len: MIB, hole: true, zero: true });
    assert_eq!(ext[1], Extent { len: MIB, hole: false, zero: false });
    assert!(ext[2].hole);
    // Punch it away again; it reads as zeros.
    v.trim(MIB, MIB).unwrap();
    assert_eq!(v.block_status(0, 8 * MIB).unwrap(), vec![Extent { len: 8 * MIB, hole: true, zero: true }]);
    let mut buf = vec![1u8; MIB as usize];
    v.read_at(MIB, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    // Zeroing without a hole keeps or allocates, still reads zero.
    v.write_at(0, &[9u8; 4096], false).unwrap();
    v.write_zeroes(0, 4096, false).unwrap();
    v.read_at(0, &mut buf[..4096]).unwrap();
    assert!(buf[..4096].iter().all(|&b| b == 0));
    // Clipped at the end.
    assert_eq!(v.block_status(8 * MIB - 10, 100).unwrap()[0].len, 10);
}

#[test]
fn tracking_disabled_marks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = VolumeStore::open_with(dir.path().to_path_buf(), StoreOptions { change_tracking: false }).unwrap();
    s.create("vol-a", MIB).unwrap();
    let v = s.open_volume("vol-a").unwrap();
    v.write_at(0, b"x", false).unwrap();
    assert!(v.changed_blocks().is_empty());
}

#[test]
fn fast_paths_never_skip_the_bitmap_or_the_gate() {
    let (_d, s) = store();
    s.create("vol-a", 4 * MIB).unwrap();
    let v = s.open_volume("vol-a").unwrap();
    // First write to a block must go the slow way (bitmap commit).
    assert!(!v.try_write_fast(0, b"fast").unwrap());
    v.write_at(0, b"slow", false).unwrap();
    assert!(v.try_write_fast(4, b"fast").unwrap());
    assert!(!v.try_write_fast(BLOCK_SIZE, b"x").unwrap());
    // No fast writes while the gate is held.
    {
        let _g = v.gate().unwrap();
        assert!(!v.try_write_fast(8, b"x").unwrap());
    }
    assert!(matches!(v.try_write_fast(4 * MIB, b"x"), Err(Error::OutOfRange { .. })));
    let mut b = [0u8; 8];
    // Just written, so cached.
    assert!(v.try_read_cached(0, &mut b).unwrap());
    assert_eq!(&b, b"slowfast");
    assert_eq!(v.changed_blocks(), blocks(&[0]));
}

#[test]
fn sequential_writers_mark_ahead() {
    let (_d, s) = store();
    s.create("vol-a", 64 * MIB).unwrap();
    let v = s.open_volume("vol-a").unwrap();
    v.write_at(0, &[1u8; 4096], false).unwrap();
    assert_eq!(v.changed_blocks(), blocks(&[0]));
    // Continues the previous write into a new block: marks 16 blocks.
    v.write_at(4096, &vec![1u8; BLOCK_SIZE as usize], false).unwrap();
    let expect: RoaringBitmap = (0..=16).collect();
    assert_eq!(v.changed_blocks(), expect);
    assert_eq!(on_disk_bits(&s, "vol-a", 64 * MIB), expect);
    // A random write marks only its own block.
    v.write_at(40 * BLOCK_SIZE, b"r", false).unwrap();
    assert!(v.changed_blocks().contains(40) && !v.changed_blocks().contains(41));
    // Never past the end.
    v.write_at(127 * BLOCK_SIZE - 4096, &[1u8; 4096], false).unwrap();
    v.write_at(127 * BLOCK_SIZE, &[1u8; 4096], false).unwrap();
    assert_eq!(v.changed_blocks().max(), Some(127));
}

#[test]
fn clean_close_drops_a_staged_cut_and_reopens_clean() {
    let (dir, s) = store();
    s.create("vol-a", 8 * MIB).unwrap();
    let v = s.open_volume("vol-a").unwrap();
    v.write_at(MIB, &[7u8; 4096], false).unwrap();
    v.stage_cut().unwrap();
    assert_eq!(s.close_all(), 0);
    drop(v);
    drop(s);
    let s = VolumeStore::open(dir.path().join("vols")).unwrap();
    let v = s.open_volume("vol-a").unwrap();
    assert!(!v.bitmap_was_damaged(), "a clean stop leaves nothing to recover");
    assert!(v.frozen_epochs().unwrap().is_empty());
    assert_eq!(v.changed_blocks(), blocks(&[2]));
    assert_eq!(v.epoch(), 0);
}

#[test]
fn a_staged_cut_left_by_a_crash_keeps_its_bits() {
    let (dir, s) = store();
    s.create("vol-a", 8 * MIB).unwrap();
    let v = s.open_volume("vol-a").unwrap();
    v.write_at(MIB, &[7u8; 4096], false).unwrap();
    v.stage_cut().unwrap();
    drop(v);
    drop(s); // no close_all: as after kill -9
    let s = VolumeStore::open(dir.path().join("vols")).unwrap();
    let v = s.open_volume("vol-a").unwrap();
    assert!(v.bitmap_was_damaged());
    assert_eq!(v.changed_blocks(), blocks(&[2]));
    assert_eq!(v.epoch(), 1, "continues after the frozen epoch, in a file of its own");
}

#[test]
fn a_bitmap_of_a_newer_format_is_refused_untouched() {
    let (_d, s) = store();
    s.create("vol-a", 8 * MIB).unwrap();
    let path = s.root().join("vol-a").join(cbt::ACTIVE_NAME);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8..12].copy_from_slice(&(cbt::FORMAT_VERSION + 1).to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let err = s.open_volume("vol-a").unwrap_err().to_string();
    assert!(err.contains("newer"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "the newer file was rewritten");
    assert!(!s.root().join("vol-a").join("changes.bitmap.tmp").exists());
}

/// A write that never finishes (a hung disk, a stuck client) must not hang a cut: the drain gives up
/// at its deadline with `Busy`, every gate opens again, the prepared cut is abandoned without
/// touching the changed set, and once the writer is gone the next cut works and freezes its block.
#[test]
fn a_cut_that_cannot_drain_is_abandoned_cleanly() {
    let (_dir, s) = store();
    s.create("vol-a", 8 * MIB).unwrap();
    s.create("vol-b", 8 * MIB).unwrap();
    let (a, b) = (s.open_volume("vol-a").unwrap(), s.open_volume("vol-b").unwrap());
    a.write_at(0, &[1u8; 4096], false).unwrap();
    let before = a.changed_blocks();
    let stuck = gate::WriterGuard::new(&b.gate);
    let (pa, pb) = (a.prepare_cut().unwrap(), b.prepare_cut().unwrap());
    let deadline = Instant::now() + std::time::Duration::from_millis(50);
    let r = Volume::gate_all(&[&a, &b], deadline);
    assert!(matches!(r, Err(Error::Busy(ref id)) if id == "vol-b"), "the drain must give up on vol-b");
    drop(r);
    a.abandon_cut(pa).unwrap();
    b.return_cut(pb).unwrap();
    // Both gates are open: writers pass on both volumes while the stuck one is still inside.
    a.write_at(MIB, &[2u8; 4096], false).unwrap();
    assert!(WriterGuard::try_new(&b.gate).is_some());
    assert!(a.changed_blocks().is_superset(&before));
    drop(stuck);
    let p = a.prepare_cut().unwrap();
    let g = Volume::gate_all(&[&a], Instant::now() + DRAIN_TIMEOUT).unwrap();
    let (_, frozen) = a.commit_cut(&g[0], p).unwrap();
    assert_eq!(frozen, blocks(&[0, 2]));
    // The returned cut of vol-b was kept staged and is taken by its next cut.
    b.write_at(3 * MIB, &[3u8; 4096], false).unwrap();
    let p = b.prepare_cut().unwrap();
    let g = Volume::gate_all(&[&b], Instant::now() + DRAIN_TIMEOUT).unwrap();
    let (_, frozen) = b.commit_cut(&g[0], p).unwrap();
    assert_eq!(frozen, blocks(&[6]));
}
