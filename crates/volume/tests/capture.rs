//! Copy-before-write: a frozen epoch reads back exactly the bytes of the cut, whatever is written
//! after it, also after a restart in the middle.

use blocksnap_volume::{BLOCK_SIZE, VolumeStore};

const B: usize = BLOCK_SIZE as usize;

#[test]
fn frozen_blocks_keep_their_bytes_across_writes_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let store = VolumeStore::open(dir.path().to_path_buf()).unwrap();
    store.create("vol-1", 8 * BLOCK_SIZE).unwrap();
    let v = store.open_volume("vol-1").unwrap();
    v.write_at(0, &vec![0xaa; B], false).unwrap();
    v.write_at(3 * BLOCK_SIZE + 10, &[0xbb; 100], false).unwrap();

    let (epoch, set) = {
        let g = v.gate().unwrap();
        let (epoch, set) = v.swap_epoch(&g).unwrap();
        v.begin_capture(&g, epoch, &set).unwrap();
        (epoch, set)
    };
    assert_eq!(set.iter().collect::<Vec<_>>(), vec![0, 3]);

    // Writes after the cut: block 0 changes entirely, block 3 partly, block 5 (not frozen) too.
    v.write_at(0, &vec![0x11; B], true).unwrap();
    v.write_zeroes(3 * BLOCK_SIZE, 50, true).unwrap();
    v.write_at(5 * BLOCK_SIZE, &[0x55; 10], false).unwrap();

    let mut buf = vec![0u8; B];
    v.read_frozen_block(epoch, 0, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0xaa), "block 0 must read as of the cut");
    v.read_frozen_block(epoch, 3, &mut buf).unwrap();
    assert!(buf[..10].iter().all(|&b| b == 0) && buf[10..110].iter().all(|&b| b == 0xbb));

    // The live volume has the new bytes.
    let mut live = vec![0u8; 16];
    v.read_at(0, &mut live).unwrap();
    assert!(live.iter().all(|&b| b == 0x11));

    // "Crash": drop every handle, reopen, resume from the log.
    drop(v);
    drop(store);
    let store = VolumeStore::open(dir.path().to_path_buf()).unwrap();
    let v = store.open_volume("vol-1").unwrap();
    v.resume_capture(epoch, 8 * BLOCK_SIZE, &set).unwrap();
    v.read_frozen_block(epoch, 0, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0xaa), "captured bytes survive a restart");
    // Block 3 was captured too; writing it again must not capture the newer bytes.
    v.write_at(3 * BLOCK_SIZE + 10, &[0xcc; 100], false).unwrap();
    v.read_frozen_block(epoch, 3, &mut buf).unwrap();
    assert!(buf[10..110].iter().all(|&b| b == 0xbb));

    v.end_capture(epoch).unwrap();
    assert!(!dir.path().join("vol-1").join(format!("capture.{epoch}.log")).exists());
    assert!(v.read_frozen_block(epoch, 0, &mut buf).is_err());
}

#[test]
fn torn_log_tail_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let store = VolumeStore::open(dir.path().to_path_buf()).unwrap();
    store.create("vol-2", 4 * BLOCK_SIZE).unwrap();
    let v = store.open_volume("vol-2").unwrap();
    v.write_at(0, &vec![0x42; 2 * B], false).unwrap();
    let (epoch, set) = {
        let g = v.gate().unwrap();
        let (e, s) = v.swap_epoch(&g).unwrap();
        v.begin_capture(&g, e, &s).unwrap();
        (e, s)
    };
    v.write_at(0, &[1; 8], false).unwrap();
    drop(v);
    drop(store);
    // Append garbage as if a second record was torn by a crash.
    let log = dir.path().join("vol-2").join(format!("capture.{epoch}.log"));
    let mut bytes = std::fs::read(&log).unwrap();
    bytes.extend_from_slice(&[0x42, 0x4e, 0x43, 0x4c, 1, 0, 0, 0, 0, 0, 8, 0]);
    std::fs::write(&log, &bytes).unwrap();

    let store = VolumeStore::open(dir.path().to_path_buf()).unwrap();
    let v = store.open_volume("vol-2").unwrap();
    v.resume_capture(epoch, 4 * BLOCK_SIZE, &set).unwrap();
    let mut buf = vec![0u8; B];
    v.read_frozen_block(epoch, 0, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0x42));
    // Block 1 was never captured: it reads from the data file, unchanged since the cut.
    v.read_frozen_block(epoch, 1, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0x42));
}

#[test]
fn prepared_cut_freezes_writes_made_until_the_gate() {
    let dir = tempfile::tempdir().unwrap();
    let store = VolumeStore::open(dir.path().to_path_buf()).unwrap();
    store.create("vol-3", 8 * BLOCK_SIZE).unwrap();
    let v = store.open_volume("vol-3").unwrap();
    v.write_at(0, &[1; 16], false).unwrap();
    let prepared = v.prepare_cut().unwrap();
    // A write between prepare and the gate belongs to the frozen epoch.
    v.write_at(2 * BLOCK_SIZE, &[2; 16], false).unwrap();
    let (epoch, set) = {
        let g = v.gate().unwrap();
        v.commit_cut(&g, prepared).unwrap()
    };
    v.finish_cut().unwrap();
    assert_eq!(set.iter().collect::<Vec<_>>(), vec![0, 2]);
    v.write_at(4 * BLOCK_SIZE, &[4; 16], false).unwrap();
    assert_eq!(v.changed_blocks().iter().collect::<Vec<_>>(), vec![4]);
    let frozen = v.frozen_epochs().unwrap();
    assert_eq!(frozen.len(), 1);
    assert_eq!(frozen[0].0, epoch);
    assert_eq!(frozen[0].1.iter().collect::<Vec<_>>(), vec![0, 2], "the frozen file keeps the cut's set");
    // Reopen: the active file is the new epoch's.
    drop(v);
    drop(store);
    let store = VolumeStore::open(dir.path().to_path_buf()).unwrap();
    let v = store.open_volume("vol-3").unwrap();
    assert_eq!(v.epoch(), epoch + 1);
    assert_eq!(v.changed_blocks().iter().collect::<Vec<_>>(), vec![4]);

    // An abandoned prepare changes nothing.
    let p = v.prepare_cut().unwrap();
    v.abandon_cut(p).unwrap();
    assert_eq!(v.frozen_epochs().unwrap().len(), 1);
    v.write_at(5 * BLOCK_SIZE, &[5; 16], false).unwrap();
    assert_eq!(v.changed_blocks().iter().collect::<Vec<_>>(), vec![4, 5]);
}

#[test]
fn a_lost_cut_rename_recovers_as_a_superset() {
    // Simulate the crash the cut does not fsync against: after the cut the directory still holds the
    // old active file (the frozen epoch's inode) and the prepared next file.
    let dir = tempfile::tempdir().unwrap();
    let store = VolumeStore::open(dir.path().to_path_buf()).unwrap();
    store.create("vol-4", 8 * BLOCK_SIZE).unwrap();
    let v = store.open_volume("vol-4").unwrap();
    v.write_at(0, &[1; 16], false).unwrap();
    let vdir = dir.path().join("vol-4");
    let p = v.prepare_cut().unwrap();
    let epoch = p.epoch;
    // Keep a copy of the pre-rename state of the directory.
    let active_before = std::fs::read(vdir.join("changes.bitmap")).unwrap();
    let (e, set) = {
        let g = v.gate().unwrap();
        v.commit_cut(&g, p).unwrap()
    };
    assert_eq!(e, epoch);
    assert_eq!(set.iter().collect::<Vec<_>>(), vec![0]);
    v.write_at(3 * BLOCK_SIZE, &[3; 16], false).unwrap(); // new epoch's bit, in the renamed file
    let next_after = std::fs::read(vdir.join("changes.bitmap")).unwrap();
    drop(v);
    drop(store);
    // "Lose" the rename: the old active file is back, the new one is still named changes.next.
    std::fs::write(vdir.join("changes.bitmap"), &active_before).unwrap();
    std::fs::write(vdir.join("changes.next"), &next_after).unwrap();
    let store = VolumeStore::open(dir.path().to_path_buf()).unwrap();
    let v = store.open_volume("vol-4").unwrap();
    assert_eq!(v.epoch(), epoch + 1, "continues after the frozen epoch");
    let changed: Vec<u32> = v.changed_blocks().iter().collect();
    assert!(changed.contains(&3), "the post-cut write's bit survives: {changed:?}");
    assert!(changed.contains(&0), "the old bits are kept (over-report): {changed:?}");
    assert_eq!(v.frozen_epochs().unwrap()[0].1.iter().collect::<Vec<_>>(), vec![0]);
}

#[test]
fn a_staged_cut_freezes_later_writes_survives_resize_and_restarts_as_a_superset() {
    let dir = tempfile::tempdir().unwrap();
    let store = VolumeStore::open(dir.path().to_path_buf()).unwrap();
    store.create("vol-5", 8 * BLOCK_SIZE).unwrap();
    let v = store.open_volume("vol-5").unwrap();
    v.write_at(0, &[1; 16], false).unwrap();
    v.stage_cut().unwrap();
    // Staged, not frozen: the current epoch's link is not listed.
    assert!(v.frozen_epochs().unwrap().is_empty());
    // A write after staging still belongs to the epoch the staged cut freezes.
    v.write_at(2 * BLOCK_SIZE, &[2; 16], false).unwrap();
    assert_eq!(cut_and_release(&v), vec![0, 2]);

    // Staged, then grown: the staged cut is for the old bitmap and is not used.
    v.write_at(3 * BLOCK_SIZE, &[3; 16], false).unwrap();
    v.stage_cut().unwrap();
    v.resize(16 * BLOCK_SIZE).unwrap();
    v.write_at(12 * BLOCK_SIZE, &[12; 16], false).unwrap();
    assert_eq!(cut_and_release(&v), vec![3, 12]);

    // Crash with a staged cut: after the restart nothing is lost (over-reporting is safe).
    v.write_at(5 * BLOCK_SIZE, &[5; 16], false).unwrap();
    v.flush().unwrap();
    v.stage_cut().unwrap();
    v.write_at(6 * BLOCK_SIZE, &[6; 16], false).unwrap();
    v.flush().unwrap();
    drop(v);
    drop(store);
    let store = VolumeStore::open(dir.path().to_path_buf()).unwrap();
    let v = store.open_volume("vol-5").unwrap();
    let mut all: Vec<u32> = v.changed_blocks().iter().collect();
    for (e, s) in v.frozen_epochs().unwrap() {
        all.extend(s.iter());
        // What the engine does with an epoch no snapshot owns.
        let _ = v.end_capture(e);
        v.restore_epoch(e).unwrap();
    }
    all.sort();
    all.dedup();
    assert_eq!(all, vec![5, 6]);
    assert_eq!(v.changed_blocks().iter().collect::<Vec<_>>(), vec![5, 6]);
    assert!(v.frozen_epochs().unwrap().is_empty());
    // And the next cut after the restart works.
    let (_, set) = cut(&v);
    assert_eq!(set.iter().collect::<Vec<_>>(), vec![5, 6]);
}

/// Prepare (or take the staged cut) and commit under the gate.
fn cut(v: &blocksnap_volume::Volume) -> (u64, roaring::RoaringBitmap) {
    let p = v.prepare_cut().unwrap();
    let g = v.gate().unwrap();
    v.commit_cut(&g, p).unwrap()
}

/// A cut whose snapshot completes at once: returns the frozen blocks.
fn cut_and_release(v: &blocksnap_volume::Volume) -> Vec<u32> {
    let (epoch, set) = cut(v);
    v.release_epoch(epoch).unwrap();
    v.end_capture(epoch).unwrap();
    set.iter().collect()
}

#[test]
fn staging_never_re_prepares_a_cut_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let store = VolumeStore::open(dir.path().to_path_buf()).unwrap();
    store.create("vol-6", 4 * BLOCK_SIZE).unwrap();
    let v = store.open_volume("vol-6").unwrap();
    v.write_at(0, &[1; B], false).unwrap();
    let p = v.prepare_cut().unwrap();
    // Background staging while the cut is between prepare and commit: must do nothing.
    v.stage_cut().unwrap();
    let (epoch, _) = {
        let g = v.gate().unwrap();
        v.commit_cut(&g, p).unwrap()
    };
    v.write_at(0, &[2; B], false).unwrap(); // copy-before-write records the frozen bytes
    v.stage_cut().unwrap(); // stages the next epoch, leaves this epoch's capture alone
    let mut buf = vec![0u8; B];
    v.read_frozen_block(epoch, 0, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 1), "the frozen block still reads the cut's bytes");
    assert_eq!(cut(&v).1.iter().collect::<Vec<_>>(), vec![0]);
}
