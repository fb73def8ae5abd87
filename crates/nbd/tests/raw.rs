//! Raw-socket protocol tests: malformed input, limits, errors, concurrency.

mod common;

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use blocksnap_nbd::proto::*;
use blocksnap_nbd::{Export, NbdServer, StaticResolver};
use common::*;
use proptest::prelude::*;

#[test]
fn bad_client_flags_are_dropped() {
    let h = Harness::new();
    let mut c = Client::connect_raw(h.port);
    c.send(&(1u32 << 7 | 1).to_be_bytes());
    assert!(c.is_closed());
    // Not fixed-newstyle: dropped too.
    let mut c = Client::connect_raw(h.port);
    c.send(&0u32.to_be_bytes());
    assert!(c.is_closed());
}

#[test]
fn bad_option_magic_is_dropped() {
    let h = Harness::new();
    let mut c = Client::connect(h.port);
    c.send(&[0xde; 16]);
    assert!(c.is_closed());
}

#[test]
fn unknown_and_invalid_options_keep_the_session() {
    let h = Harness::new();
    let mut c = Client::connect(h.port);
    assert_eq!(c.opt(0x4242, b"junk")[0].typ, REP_ERR_UNSUP);
    // Extended headers are not offered (qemu probes and falls back).
    assert_eq!(c.opt(11, &[])[0].typ, REP_ERR_UNSUP);
    // Meta contexts need structured replies first.
    assert_eq!(c.set_meta("vol-x", &[BASE_ALLOCATION])[0].typ, REP_ERR_INVALID);
    // Truncated GO data.
    assert_eq!(c.opt(OPT_GO, &[0, 0, 0, 9, b'v'])[0].typ, REP_ERR_INVALID);
    assert_eq!(c.opt(OPT_LIST, b"x")[0].typ, REP_ERR_INVALID);
    assert_eq!(c.opt(OPT_STARTTLS, &[])[0].typ, REP_ERR_POLICY);
    // Oversized option data is consumed and refused.
    assert_eq!(c.opt(OPT_LIST, &vec![0u8; 100_000])[0].typ, REP_ERR_TOO_BIG);
    let list = c.opt(OPT_LIST, &[]);
    assert_eq!(list.iter().filter(|r| r.typ == REP_SERVER).count(), 2);
    assert_eq!(c.go("vol-nope"), Err(REP_ERR_UNKNOWN));
    c.structured();
    let r = c.set_meta("vol-x", &[BASE_ALLOCATION, "qemu:dirty-bitmap:x"]);
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].typ, REP_META_CONTEXT);
    assert_eq!(&r[0].data[4..], BASE_ALLOCATION.as_bytes());
    assert_eq!(c.go("vol-x").map(|(s, _)| s), Ok(64 * MIB));
    c.request(CMD_DISC, 0, 0, 0, 0, &[]);
    assert!(c.is_closed());
}

#[test]
fn export_name_option_and_abort() {
    let h = Harness::new();
    let mut c = Client::connect(h.port);
    c.send_opt(OPT_EXPORT_NAME, b"vol-x");
    // NO_ZEROES was negotiated: size + flags only.
    let r = c.read_n(10);
    assert_eq!(u64::from_be_bytes(r[0..8].try_into().unwrap()), 64 * MIB);
    c.request(CMD_READ, 0, 5, 0, 8, &[]);
    assert_eq!(c.simple_reply(), (0, 5));
    assert_eq!(c.read_n(8), vec![0; 8]);

    // Unknown name through EXPORT_NAME can only be answered by closing.
    let mut c = Client::connect(h.port);
    c.send_opt(OPT_EXPORT_NAME, b"nope");
    assert!(c.is_closed());

    let mut c = Client::connect(h.port);
    assert_eq!(c.opt(OPT_ABORT, &[])[0].typ, REP_ACK);
    assert!(c.is_closed());
}

#[test]
fn command_errors() {
    let h = Harness::new();
    let mut c = Client::connect(h.port);
    c.go("vol-x").unwrap();
    let size = 64 * MIB;
    // Unknown command: EINVAL, session continues.
    c.request(77, 0, 1, 0, 0, &[]);
    assert_eq!(c.simple_reply(), (EINVAL, 1));
    // Unknown flag.
    c.request(CMD_FLUSH, 1 << 12, 2, 0, 0, &[]);
    assert_eq!(c.simple_reply(), (EINVAL, 2));
    // Out of range.
    c.request(CMD_WRITE, 0, 3, size - 2, 4, b"abcd");
    assert_eq!(c.simple_reply(), (ENOSPC, 3));
    c.request(CMD_READ, 0, 4, size, 1, &[]);
    assert_eq!(c.simple_reply(), (EINVAL, 4));
    c.request(CMD_TRIM, 0, 5, u64::MAX - 10, 100, &[]);
    assert_eq!(c.simple_reply(), (EINVAL, 5));
    // Oversized read: EINVAL, still usable.
    c.request(CMD_READ, 0, 6, 0, 33 << 20, &[]);
    assert_eq!(c.simple_reply(), (EINVAL, 6));
    // Block status without negotiation.
    c.request(CMD_BLOCK_STATUS, 0, 7, 0, 4096, &[]);
    assert_eq!(c.simple_reply(), (EINVAL, 7));
    // Everything fine afterwards.
    c.request(CMD_WRITE, CMD_FLAG_FUA, 8, 4096, 4, b"okay");
    assert_eq!(c.simple_reply(), (0, 8));
    c.request(CMD_FLUSH, 0, 9, 0, 0, &[]);
    assert_eq!(c.simple_reply(), (0, 9));
    c.request(CMD_CACHE, 0, 10, 0, 4096, &[]);
    assert_eq!(c.simple_reply(), (0, 10));
    c.request(CMD_READ, 0, 11, 4096, 4, &[]);
    assert_eq!(c.simple_reply(), (0, 11));
    assert_eq!(c.read_n(4), b"okay");
    // Oversized write: EINVAL and disconnect (we won't read 64 MiB).
    c.request(CMD_WRITE, 0, 12, 0, 64 << 20, &[]);
    assert_eq!(c.simple_reply(), (EINVAL, 12));
    assert!(c.is_closed());
}

#[test]
fn structured_reads_zeroes_and_block_status() {
    let h = Harness::new();
    let mut c = Client::connect(h.port);
    c.structured();
    c.set_meta("vol-x", &[BASE_ALLOCATION]);
    c.go("vol-x").unwrap();
    c.request(CMD_WRITE, 0, 1, MIB, 4096, &[7u8; 4096]);
    assert_eq!(c.simple_reply(), (0, 1));
    c.request(CMD_READ, CMD_FLAG_DF, 2, MIB, 4096, &[]);
    let (flags, typ, cookie, p) = c.chunk();
    assert_eq!((flags, typ, cookie), (REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, 2));
    assert_eq!(u64::from_be_bytes(p[0..8].try_into().unwrap()), MIB);
    assert!(p[8..].iter().all(|&b| b == 7));
    // Structured read errors are error chunks.
    c.request(CMD_READ, 0, 3, 64 * MIB, 1, &[]);
    let (flags, typ, cookie, p) = c.chunk();
    assert_eq!((flags, typ, cookie), (REPLY_FLAG_DONE, REPLY_TYPE_ERROR, 3));
    assert_eq!(u32::from_be_bytes(p[0..4].try_into().unwrap()), EINVAL);

    let status = |c: &mut Client, cookie, off, len, flags| {
        c.request(CMD_BLOCK_STATUS, flags, cookie, off, len, &[]);
        let (f, typ, ck, p) = c.chunk();
        assert_eq!((f, typ, ck), (REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, cookie));
        assert_eq!(u32::from_be_bytes(p[0..4].try_into().unwrap()), BASE_ALLOCATION_ID);
        p[4..]
            .chunks(8)
            .map(|d| (u32::from_be_bytes(d[0..4].try_into().unwrap()), u32::from_be_bytes(d[4..8].try_into().unwrap())))
            .collect::<Vec<_>>()
    };
    let hz = STATE_HOLE | STATE_ZERO;
    let ext = status(&mut c, 4, 0, 4 << 20, 0);
    assert_eq!(ext[0], (1 << 20, hz));
    assert_eq!(ext[1].1, 0, "written range is data");
    assert_eq!(ext.iter().map(|e| u64::from(e.0)).sum::<u64>(), 4 * MIB);
    assert_eq!(status(&mut c, 5, 0, 4 << 20, CMD_FLAG_REQ_ONE), vec![(1 << 20, hz)]);

    // Zeroing with a hole punched, then with NO_HOLE | FAST_ZERO.
    c.request(CMD_WRITE_ZEROES, CMD_FLAG_FUA, 6, 0, 4 << 20, &[]);
    assert_eq!(c.simple_reply(), (0, 6));
    assert_eq!(status(&mut c, 7, 0, 4 << 20, 0), vec![(4 << 20, hz)]);
    c.request(CMD_WRITE, 0, 8, 0, 4096, &[1u8; 4096]);
    assert_eq!(c.simple_reply(), (0, 8));
    c.request(CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO, 9, 0, 4096, &[]);
    let (e, _) = c.simple_reply();
    assert!(e == 0 || e == ENOTSUP, "errno {e}");
    c.request(CMD_TRIM, 0, 10, 0, 4096, &[]);
    assert_eq!(c.simple_reply(), (0, 10));
    c.request(CMD_READ, 0, 11, 0, 4096, &[]);
    let (_, _, _, p) = c.chunk();
    assert!(p[8..].iter().all(|&b| b == 0));
}

#[test]
fn pipelined_requests_all_answered() {
    let h = Harness::new();
    let mut c = Client::connect(h.port);
    c.go("vol-x").unwrap();
    // 200 writes sent without waiting, then 200 reads.
    let mut batch = Vec::new();
    for i in 0..200u64 {
        let mut v = REQUEST_MAGIC.to_be_bytes().to_vec();
        v.extend_from_slice(&0u16.to_be_bytes());
        v.extend_from_slice(&CMD_WRITE.to_be_bytes());
        v.extend_from_slice(&i.to_be_bytes());
        v.extend_from_slice(&(i * 65536).to_be_bytes());
        v.extend_from_slice(&4096u32.to_be_bytes());
        v.extend_from_slice(&[i as u8; 4096]);
        batch.extend_from_slice(&v);
    }
    c.send(&batch);
    let mut seen: Vec<u64> = (0..200)
        .map(|_| c.simple_reply())
        .map(|(e, k)| {
            assert_eq!(e, 0);
            k
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..200).collect::<Vec<_>>());
    for i in 0..200u64 {
        c.request(CMD_READ, 0, 1000 + i, i * 65536, 4096, &[]);
    }
    for _ in 0..200 {
        let (e, k) = c.simple_reply();
        assert_eq!(e, 0);
        let d = c.read_n(4096);
        assert!(d.iter().all(|&b| b == (k - 1000) as u8));
    }
}

#[test]
fn client_vanishing_mid_write_leaves_volume_intact() {
    let h = Harness::new();
    {
        let mut c = Client::connect(h.port);
        c.go("vol-x").unwrap();
        c.request(CMD_WRITE, 0, 1, 0, 4096, &[0xee; 100]);
        c.s.flush().unwrap();
    } // dropped: half a payload
    {
        let mut c = Client::connect(h.port);
        c.go("vol-x").unwrap();
        c.send(&REQUEST_MAGIC.to_be_bytes()[..3]);
    } // dropped mid-header
    std::thread::sleep(Duration::from_millis(100));
    let mut c = Client::connect(h.port);
    c.go("vol-x").unwrap();
    c.request(CMD_READ, 0, 2, 0, 4096, &[]);
    assert_eq!(c.simple_reply(), (0, 2));
    assert_eq!(c.read_n(4096), vec![0; 4096]);
    assert!(h.store.open_volume("vol-x").unwrap().changed_blocks().is_empty());
}

#[test]
fn handshake_timeout_drops_idle_clients() {
    let resolver = Arc::new(StaticResolver::new());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = Arc::new(NbdServer::with_config(
        resolver,
        blocksnap_nbd::ServerConfig { handshake_timeout: Duration::from_millis(200), ..Default::default() },
    ));
    let l = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = l.local_addr().unwrap().port();
    rt.spawn(server.clone().serve(l));
    let mut c = Client::connect_raw(port);
    assert!(c.is_closed());
    rt.block_on(server.shutdown());
}

/// Handshake bytes up to and including a GO for `vol-x` with structured
/// replies and base:allocation.
fn good_prefix() -> Vec<u8> {
    let opt = |o: u32, d: &[u8]| {
        let mut v = IHAVEOPT.to_be_bytes().to_vec();
        v.extend_from_slice(&o.to_be_bytes());
        v.extend_from_slice(&(d.len() as u32).to_be_bytes());
        v.extend_from_slice(d);
        v
    };
    let mut v = 3u32.to_be_bytes().to_vec();
    v.extend(opt(OPT_STRUCTURED_REPLY, &[]));
    let mut meta = 5u32.to_be_bytes().to_vec();
    meta.extend_from_slice(b"vol-x");
    meta.extend_from_slice(&1u32.to_be_bytes());
    meta.extend_from_slice(&(BASE_ALLOCATION.len() as u32).to_be_bytes());
    meta.extend_from_slice(BASE_ALLOCATION.as_bytes());
    v.extend(opt(OPT_SET_META_CONTEXT, &meta));
    let mut go = 5u32.to_be_bytes().to_vec();
    go.extend_from_slice(b"vol-x");
    go.extend_from_slice(&0u16.to_be_bytes());
    v.extend(opt(OPT_GO, &go));
    v
}

fn fuzz_session(input: Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let store = blocksnap_volume::VolumeStore::open(dir.path().to_path_buf()).unwrap();
    store.create("vol-x", 4 * MIB).unwrap();
    let resolver = Arc::new(StaticResolver::new());
    resolver.insert("vol-x", Export::new(store.open_volume("vol-x").unwrap(), false));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let server = Arc::new(NbdServer::new(resolver));
        let (client, srv) = tokio::io::duplex(1 << 16);
        let (srd, swr) = tokio::io::split(srv);
        let task = tokio::spawn(server.serve_connection(srd, swr, "fuzz".into()));
        let (mut crd, mut cwr) = tokio::io::split(client);
        let drain = tokio::spawn(async move {
            let mut sink = Vec::new();
            let _ = crd.read_to_end(&mut sink).await;
        });
        let _ = cwr.write_all(&input).await;
        let _ = cwr.shutdown().await;
        drop(cwr);
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("session must end when input ends")
            .expect("session must not panic");
        let _ = drain.await;
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_after_handshake_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut input = good_prefix();
        input.extend(tail);
        fuzz_session(input);
    }

    #[test]
    fn arbitrary_requests_never_panic(reqs in proptest::collection::vec(
        (0u16..10, any::<u16>(), 0u64..(8 << 20), 0u32..(1 << 20)), 1..20)) {
        let mut input = good_prefix();
        for (i, (typ, flags, off, len)) in reqs.into_iter().enumerate() {
            input.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
            input.extend_from_slice(&(flags & 0x1f).to_be_bytes());
            input.extend_from_slice(&typ.to_be_bytes());
            input.extend_from_slice(&(i as u64).to_be_bytes());
            input.extend_from_slice(&off.to_be_bytes());
            input.extend_from_slice(&len.to_be_bytes());
            if typ == CMD_WRITE {
                input.extend(std::iter::repeat_n(0x5a, len as usize));
            }
        }
        fuzz_session(input);
    }

    #[test]
    fn arbitrary_handshake_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        fuzz_session(bytes);
    }
}
