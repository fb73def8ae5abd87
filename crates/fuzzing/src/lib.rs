//! Fuzz harnesses: one function per target, taking arbitrary bytes. `fuzz/` (cargo-fuzz, outside
//! the workspace) wraps each in a libFuzzer target; `tests/corpus.rs` replays the checked-in corpus
//! (`fuzz/corpus/<target>/`) and the reproducers of past findings (`fuzz/regressions/<target>/`)
//! with `cargo test`, so a regression fails the ordinary test suite.
//!
//! A harness must never panic, hang or allocate without bound on any input: the parsers it drives
//! answer bad input with an error.

#![forbid(unsafe_code)]

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use blocksnap_engine::model::Ctx;
use blocksnap_engine::{Engine, EngineConfig};
use blocksnap_nbd::tls::TlsConfig;
use blocksnap_nbd::{BlockDevice, Export, Extent, NbdServer, ServerConfig, StaticResolver};
use blocksnap_store::{BlockId, Codec, DataKey, decode};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};

/// A harness: takes any bytes, never panics.
pub type Harness = fn(&[u8]);

/// Every target: name (as in `fuzz/fuzz_targets/<name>.rs`) and harness.
pub const TARGETS: &[(&str, Harness)] = &[
    ("sigv4", sigv4),
    ("ec2_query", ec2_query),
    ("json", json),
    ("nbd", nbd),
    ("store_manifest", store_manifest),
    ("store_segment", store_segment),
    ("store_chunk", store_chunk),
    ("ebs_rest", ebs_rest),
    ("store_blocklog", store_blocklog),
    ("store_archive_index", store_archive_index),
    ("dlm_rest", dlm_rest),
    ("rbin_rest", rbin_rest),
];

/// `METHOD URI\nname: value\n…\n\nbody` as the HTTP harnesses read it (`None`: the URI does not parse).
fn http_request(data: &[u8]) -> Option<(Method, Uri, HeaderMap, &[u8])> {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[][..]),
    };
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split('\n');
    let first = lines.next().unwrap_or_default();
    let (m, u) = first.split_once(' ').unwrap_or(("GET", first));
    let method = Method::from_bytes(m.as_bytes()).unwrap_or(Method::GET);
    let uri = u.parse::<Uri>().ok()?;
    let mut headers = HeaderMap::new();
    for line in lines {
        if let Some((k, v)) = line.split_once(':')
            && let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(k.trim().as_bytes()), HeaderValue::from_str(v.trim()))
        {
            headers.append(name, value);
        }
    }
    Some((method, uri, headers, body))
}

// ---- SigV4 ---------------------------------------------------------------------------------------

/// `METHOD URI\nname: value\n…\n\nbody`: the header and presigned-query parsers, then (if they
/// accept) verification with a fixed secret at the request's own time, so re-signing runs.
pub fn sigv4(data: &[u8]) {
    let Some((method, uri, headers, body)) = http_request(data) else { return };
    if let Ok(parsed) = blocksnap_sigv4::parse(&method, &uri, &headers) {
        let _ = parsed.covers_body(body);
        let _ = blocksnap_sigv4::verify(&parsed, "fuzz-secret", &method, &uri, &headers, body, parsed.request_time);
    }
}

// ---- the API's request parsers (EC2 Query, JSON 1.1) against a real engine ----------------------

struct Api {
    _dir: tempfile::TempDir,
    engine: Engine,
    ctx: Ctx,
}

fn api() -> &'static Api {
    static API: OnceLock<Api> = OnceLock::new();
    API.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("fuzz harness setup: tempdir: {e}"));
        let catalog = blocksnap_catalog::SqliteCatalog::open(&dir.path().join("catalog.db"))
            .unwrap_or_else(|e| panic!("fuzz harness setup: catalog: {e}"));
        let engine = Engine::open(Arc::new(catalog), EngineConfig::default(), None)
            .unwrap_or_else(|e| panic!("fuzz harness setup: engine: {e}"));
        engine
            .ensure_root(Some(("AKIAFUZZROOT00000001".into(), "fuzz-secret".into())))
            .unwrap_or_else(|e| panic!("fuzz harness setup: root: {e}"));
        let account = engine.root_account().unwrap_or_default();
        Api { _dir: dir, engine, ctx: Ctx { account, region: "us-east-1".into() } }
    })
}

/// An EC2 Query POST body: parameters, routing, the action's parse and validation.
pub fn ec2_query(data: &[u8]) {
    let a = api();
    let _ = blocksnap_api::fuzz::ec2_query(&a.engine, &a.ctx, data);
}

/// The JSON 1.1 operations the JSON fuzzer drives: the read-only operations the Lightsail and KMS
/// front ends route (the harness keeps the engine's state from growing).
pub fn json_targets() -> &'static [String] {
    static TARGETS: OnceLock<Vec<String>> = OnceLock::new();
    TARGETS.get_or_init(blocksnap_api::fuzz::json_targets)
}

/// First byte: which operation (of [`json_targets`]); the rest: its JSON body.
pub fn json(data: &[u8]) {
    let Some((&sel, body)) = data.split_first() else { return };
    let targets = json_targets();
    let Some(target) = targets.get(usize::from(sel) % targets.len().max(1)) else { return };
    let a = api();
    let _ = blocksnap_api::fuzz::json(&a.engine, &a.ctx, target, body);
}

/// An EBS direct APIs request as `METHOD URI\nname: value\n…\n\nbody` (as [`sigv4`]), past
/// authentication: routing and every header, query and body parse.
pub fn ebs_rest(data: &[u8]) {
    let Some((method, uri, headers, body)) = http_request(data) else { return };
    let _ = blocksnap_api::fuzz::ebs_request(&method, &uri, &headers, bytes::Bytes::copy_from_slice(body));
}

/// A Data Lifecycle Manager request as `METHOD URI\n…\n\nbody` (as [`sigv4`]), past
/// authentication: routing, the policy document's parse and the engine's validation (schedules,
/// cron expressions, retention, copy rules), nothing created.
pub fn dlm_rest(data: &[u8]) {
    let Some((method, uri, _, body)) = http_request(data) else { return };
    let a = api();
    let _ = blocksnap_api::fuzz::dlm_request(&a.engine, &a.ctx, &method, &uri, body);
}

/// A Recycle Bin request as `METHOD URI\n…\n\nbody` (as [`sigv4`]), past authentication: routing,
/// the rule document's parse and CreateRule's validation, the read-only calls; nothing is created.
pub fn rbin_rest(data: &[u8]) {
    let Some((method, uri, _, body)) = http_request(data) else { return };
    let a = api();
    let _ = blocksnap_api::fuzz::rbin_request(&a.engine, &a.ctx, &method, &uri, body);
}

// ---- NBD: handshake and transmission through the real server ------------------------------------

/// A small in-memory disk.
struct MemDisk(Mutex<Vec<u8>>);

const DISK_SIZE: u64 = 1 << 20;

impl MemDisk {
    fn range(&self, offset: u64, len: u64) -> io::Result<std::ops::Range<usize>> {
        match offset.checked_add(len) {
            Some(end) if end <= DISK_SIZE => Ok(offset as usize..end as usize),
            _ => Err(io::Error::from(io::ErrorKind::InvalidInput)),
        }
    }
    fn disk(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl BlockDevice for MemDisk {
    fn size(&self) -> u64 {
        DISK_SIZE
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let r = self.range(offset, buf.len() as u64)?;
        buf.copy_from_slice(&self.disk()[r]);
        Ok(())
    }
    fn write_at(&self, offset: u64, buf: &[u8], _fua: bool) -> io::Result<()> {
        let r = self.range(offset, buf.len() as u64)?;
        self.disk()[r].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn trim(&self, offset: u64, len: u64) -> io::Result<()> {
        self.write_zeroes(offset, len, true, false)
    }
    fn write_zeroes(&self, offset: u64, len: u64, _may_punch_hole: bool, _fast_only: bool) -> io::Result<()> {
        let r = self.range(offset, len)?;
        self.disk()[r].fill(0);
        Ok(())
    }
    fn block_status(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        self.range(offset, len)?;
        Ok(vec![Extent { len, hole: false, zero: false }])
    }
}

struct Nbd {
    rt: tokio::runtime::Runtime,
    plain: Arc<NbdServer>,
    tls: Arc<NbdServer>,
}

/// The TLS-only server's one credential (`fuzz:4242…42` in a `keys.psk`): fixed, so a recorded
/// client's ClientHello (`fuzz/corpus/nbd/seed-starttls-clienthello*`) carries a binder that
/// verifies and the handshake goes past it.
pub const NBD_PSK_IDENTITY: &str = "fuzz";
pub const NBD_PSK_KEY: [u8; 32] = [0x42; 32];

static PSK_LOOKUPS: AtomicUsize = AtomicUsize::new(0);

/// How many PSK identities the TLS-only server looked up so far: the inputs that got through the
/// pre-TLS options and into the TLS handshake as far as the ClientHello's PSK extension.
pub fn nbd_psk_lookups() -> usize {
    PSK_LOOKUPS.load(Ordering::Relaxed)
}

fn nbd_servers() -> &'static Nbd {
    static NBD: OnceLock<Nbd> = OnceLock::new();
    NBD.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("fuzz harness setup: runtime: {e}"));
        let exports = Arc::new(StaticResolver::new());
        let disk: Arc<dyn BlockDevice> = Arc::new(MemDisk(Mutex::new(vec![0; DISK_SIZE as usize])));
        exports.insert("fuzz", Export::new(disk.clone(), false));
        exports.insert("ro", Export::new(disk, true));
        let tls = TlsConfig::psk(Arc::new(|id: &str| {
            PSK_LOOKUPS.fetch_add(1, Ordering::Relaxed);
            (id == NBD_PSK_IDENTITY).then(|| NBD_PSK_KEY.to_vec())
        }))
        .unwrap_or_else(|e| panic!("fuzz harness setup: tls: {e}"));
        let config = ServerConfig { tls: Some(Arc::new(tls)), ..ServerConfig::default() };
        Nbd {
            rt,
            plain: Arc::new(NbdServer::new(exports.clone())),
            tls: Arc::new(NbdServer::with_config(exports, config)),
        }
    })
}

/// What a client sends, from its first byte (client flags, options, then requests) until EOF; the
/// server's replies go nowhere. Each input goes to a plaintext server and to a TLS-only one: there
/// the options before `NBD_OPT_STARTTLS` (refused, `STARTTLS` with data, `EXPORT_NAME`, `ABORT`,
/// too many) and whatever follows `STARTTLS`, which the TLS handshake reads as a ClientHello.
pub fn nbd(data: &[u8]) {
    let n = nbd_servers();
    let rd = io::Cursor::new(data.to_vec());
    n.rt.block_on(n.plain.clone().serve_connection(rd, tokio::io::sink(), "fuzz".into()));
    let stream = tokio::io::join(io::Cursor::new(data.to_vec()), tokio::io::sink());
    n.rt.block_on(n.tls.clone().serve_stream(stream, "fuzz-tls".into()));
}

// ---- the store's decoders: what a damaged or hostile bucket holds -------------------------------

const SNAP: &str = "snap-0123456789abcdef0";

/// First byte even: a whole manifest object; odd: a manifest body in a valid envelope (checksum
/// right), so the body's own checks are reached.
pub fn store_manifest(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let _ = if mode % 2 == 0 { decode::manifest(SNAP, rest) } else { decode::manifest_body(SNAP, rest) };
}

/// A segment object under its true id (a consistent writer) and under a wrong one.
pub fn store_segment(data: &[u8]) {
    let _ = decode::segment(&decode::segment_id(data), data);
    let _ = decode::segment(&blocksnap_store::SegmentId([0; 32]), data);
}

/// An archive index as stored (first byte even) or with its checksum made right, as a hostile
/// writer would (odd): the structural checks past the SHA-256.
pub fn store_archive_index(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let _ = if mode % 2 == 0 { decode::archive_index(SNAP, rest) } else { decode::archive_index_resealed(SNAP, rest) };
}

/// A block log as a crash or a hostile disk leaves it.
pub fn store_blocklog(data: &[u8]) {
    let _ = blocksnap_store::blocklog::decode(data);
}

/// A chunk object with its CRC made right (as a hostile writer would): the structural check, then
/// a full decode with a plain and with an encrypted codec, output bounded to one block.
pub fn store_chunk(data: &[u8]) {
    let mut obj = data.to_vec();
    decode::fix_chunk_crc(&mut obj);
    let id = BlockId([0x5a; 32]);
    let _ = decode::chunk_check(&id, &obj);
    let _ = decode::chunk(&Codec::plain(), &id, &obj, blocksnap_store::BLOCK_SIZE);
    if let Ok(codec) = Codec::encrypted(&DataKey::from_bytes([7; 32])) {
        let _ = decode::chunk(&codec, &id, &obj, blocksnap_store::BLOCK_SIZE);
    }
}
