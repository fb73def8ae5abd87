//! Interop with real NBD clients: qemu-io, qemu-img, nbdinfo, nbdcopy.

mod common;

use common::*;

#[test]
fn qemu_io_write_flush_read_back() {
    let h = Harness::new();
    let url = h.url("vol-x");
    run_ok("qemu-io", &["-f", "raw", "-c", "write -P 0xab 0 1M", "-c", "flush", &url]);
    // A second process (new connection) sees the data.
    let out = run_ok("qemu-io", &["-f", "raw", "-c", "read -P 0xab 0 1M", "-c", "read -P 0 1M 1M", &url]);
    assert!(!out.contains("Pattern verification failed"), "{out}");
    // It reached the volume itself.
    let v = h.store.open_volume("vol-x").unwrap();
    let mut b = vec![0u8; 4096];
    v.read_at(4096, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0xab));
    // And its blocks were tracked (1 MiB = blocks 0 and 1).
    assert_eq!(v.changed_blocks().iter().collect::<Vec<_>>(), vec![0, 1]);
}

#[test]
fn qemu_img_convert_and_compare() {
    let h = Harness::new();
    let reference = h.dir.path().join("ref.raw");
    run_ok("qemu-img", &["create", "-f", "raw", reference.to_str().unwrap(), "64M"]);
    let r = reference.to_str().unwrap();
    run_ok(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x11 0 3M", "-c", "write -P 0x22 10M 4k", "-c", "write -P 0x33 63M 1M", r],
    );
    let url = h.url("vol-x");
    run_ok("qemu-img", &["convert", "-n", "-f", "raw", "-O", "raw", r, &url]);
    run_ok("qemu-img", &["compare", "-f", "raw", "-F", "raw", r, &url]);
    // A difference is noticed.
    run_ok("qemu-io", &["-f", "raw", "-c", "write -P 0x44 20M 512", &url]);
    let out = run("qemu-img", &["compare", "-f", "raw", "-F", "raw", r, &url]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn qemu_img_map_reports_holes_and_zeros() {
    let h = Harness::new();
    let url = h.url("vol-x");
    run_ok(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x5a 4M 1M", "-c", "write -P 0x5a 8M 1M", "-c", "write -z 8M 1M", &url],
    );
    let out = run_ok("qemu-img", &["map", "--output=json", "-f", "raw", &url]);
    let map: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let data: Vec<(u64, u64)> = map
        .iter()
        .filter(|e| e["data"] == true)
        .map(|e| (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap()))
        .collect();
    assert_eq!(data, vec![(4 * MIB, MIB)], "{out}");
    let zero_total: u64 = map.iter().filter(|e| e["zero"] == true).map(|e| e["length"].as_u64().unwrap()).sum();
    assert_eq!(zero_total, 63 * MIB);
}

#[test]
fn unknown_export_is_refused() {
    let h = Harness::new();
    let out = run("qemu-io", &["-f", "raw", "-c", "read 0 4k", &h.url("vol-nope")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("export"));
}

#[test]
fn read_only_export_refuses_writes() {
    let h = Harness::new();
    let url = h.url("ro-x");
    // qemu sees a read-only export and refuses to open it for writing...
    let out = run("qemu-io", &["-f", "raw", "-c", "write -P 1 0 4k", &url]);
    assert!(!out.status.success() || String::from_utf8_lossy(&out.stdout).contains("failed"));
    // ...but reads work.
    run_ok("qemu-io", &["-r", "-f", "raw", "-c", "read -P 0 0 1M", &url]);
    // And the raw protocol answers EPERM.
    let mut c = Client::connect(h.port);
    let (_, flags) = c.go("ro-x").unwrap();
    assert_ne!(flags & blocksnap_nbd::proto::TF_READ_ONLY, 0);
    c.request(blocksnap_nbd::proto::CMD_WRITE, 0, 9, 0, 4, b"abcd");
    assert_eq!(c.simple_reply(), (blocksnap_nbd::proto::EPERM, 9));
    let mut b = [9u8; 4];
    h.store.open_volume("vol-x").unwrap().read_at(0, &mut b).unwrap();
    assert_eq!(b, [0; 4]);
}

#[test]
fn nbdinfo_and_nbdcopy_multi_connection() {
    if !have("nbdcopy") || !have("nbdinfo") {
        eprintln!("SKIP: libnbd-bin (nbdcopy, nbdinfo) not installed");
        return;
    }
    let h = Harness::new();
    let url = h.url("vol-x");
    let info = run_ok("nbdinfo", &[&url]);
    for want in ["can_multi_conn: true", "can_fua: true", "can_zero: true", "can_fast_zero: true", "base:allocation"] {
        assert!(info.contains(want), "missing {want}: {info}");
    }
    let list = run_ok("nbdinfo", &["--list", &format!("nbd://127.0.0.1:{}", h.port)]);
    assert!(list.contains("vol-x") && list.contains("ro-x"));

    // Random-ish source with a hole in it.
    let src = h.dir.path().join("src.raw");
    let mut data = vec![0u8; 64 * MIB as usize];
    let mut x: u32 = 12345;
    for (i, chunk) in data.chunks_mut(4096).enumerate() {
        if (16..32).contains(&(i / 256)) {
            continue; // 16 MiB .. 32 MiB stays zero
        }
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        chunk.fill((x >> 24) as u8);
    }
    std::fs::write(&src, &data).unwrap();
    run_ok("nbdcopy", &["--connections=4", "--requests=16", src.to_str().unwrap(), &url]);
    let back = h.dir.path().join("back.raw");
    run_ok("nbdcopy", &["--connections=4", &url, back.to_str().unwrap()]);
    assert!(std::fs::read(&back).unwrap() == data, "round trip through 4 connections differs");
    // The zero range is reported as zero.
    let map = run_ok("nbdinfo", &["--map", &url]);
    assert!(map.contains("zero"), "{map}");
}

#[test]
fn close_export_with_client_connected() {
    let h = Harness::new();
    let mut c = Client::connect(h.port);
    c.go("vol-x").unwrap();
    c.request(blocksnap_nbd::proto::CMD_WRITE, 0, 1, 0, 4, b"live");
    assert_eq!(c.simple_reply(), (0, 1));
    assert_eq!(h.server.connection_count(Some("vol-x")), 1);
    // Detach: the resolver forgets it, then live connections are closed.
    h.resolver.remove("vol-x");
    h.rt.block_on(h.server.close_export("vol-x"));
    assert!(c.is_closed());
    assert_eq!(h.server.connection_count(None), 0);
    let out = run("qemu-io", &["-f", "raw", "-c", "read 0 4k", &h.url("vol-x")]);
    assert!(!out.status.success());
    // Other exports are unaffected.
    run_ok("qemu-io", &["-r", "-f", "raw", "-c", "read -P 0x6c 0 1", &h.url("ro-x")]);
}

#[test]
fn flushed_writes_survive_a_reopen() {
    let h = Harness::new();
    let url = h.url("vol-x");
    run_ok("qemu-io", &["-f", "raw", "-c", "write -P 0x77 5M 1536k", "-c", "write -z 20M 1M", "-c", "flush", &url]);
    // Reopen the store from disk, as after a restart: data and change bits are there.
    let again = blocksnap_volume::VolumeStore::open(h.dir.path().join("vols")).unwrap();
    let v = again.open_volume("vol-x").unwrap();
    let mut b = vec![0u8; 1536 << 10];
    v.read_at(5 * MIB, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0x77));
    let changed = v.changed_blocks();
    for blk in [10, 11, 12, 40, 41] {
        assert!(changed.contains(blk), "block {blk} not marked: {changed:?}");
    }
    assert!(!v.bitmap_was_damaged());
}
