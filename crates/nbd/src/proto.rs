//! NBD wire constants and pure parsing / validation functions (no I/O), so
//! they can be property-tested on arbitrary bytes.

pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

// Handshake flags (server) and client flags.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
pub const CLIENT_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const CLIENT_NO_ZEROES: u32 = 1 << 1;

// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;

// Option replies.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
pub const REP_ERR_POLICY: u32 = (1 << 31) + 2;
pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
pub const REP_ERR_TLS_REQD: u32 = (1 << 31) + 5;
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
pub const REP_ERR_TOO_BIG: u32 = (1 << 31) + 9;

// Info types.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

// Transmission flags.
pub const TF_HAS_FLAGS: u16 = 1 << 0;
pub const TF_READ_ONLY: u16 = 1 << 1;
pub const TF_SEND_FLUSH: u16 = 1 << 2;
pub const TF_SEND_FUA: u16 = 1 << 3;
pub const TF_SEND_TRIM: u16 = 1 << 5;
pub const TF_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const TF_SEND_DF: u16 = 1 << 7;
pub const TF_CAN_MULTI_CONN: u16 = 1 << 8;
pub const TF_SEND_CACHE: u16 = 1 << 10;
pub const TF_SEND_FAST_ZERO: u16 = 1 << 11;

// Commands.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_CACHE: u16 = 5;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;

// Command flags.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
pub const CMD_FLAG_DF: u16 = 1 << 2;
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

// Structured reply types and flags.
pub const REPLY_FLAG_DONE: u16 = 1;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;

// base:allocation state bits.
pub const STATE_HOLE: u32 = 1 << 0;
pub const STATE_ZERO: u32 = 1 << 1;

// Errors.
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const ENOMEM: u32 = 12;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const EOVERFLOW: u32 = 75;
pub const ENOTSUP: u32 = 95;
pub const ESHUTDOWN: u32 = 108;

/// Block size constraints we advertise.
pub const MIN_BLOCK: u32 = 1;
pub const PREFERRED_BLOCK: u32 = 4096;
pub const MAX_PAYLOAD: u32 = 32 << 20;
/// Longest export name / query string the spec allows.
pub const MAX_STRING: usize = 4096;
/// The only meta context we serve and its id.
pub const BASE_ALLOCATION: &str = "base:allocation";
pub const BASE_ALLOCATION_ID: u32 = 1;

pub const REQUEST_HEADER_LEN: usize = 28;

/// A transmission request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    pub flags: u16,
    pub typ: u16,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

fn be16(b: &[u8], o: usize) -> u16 {
    u16::from_be_bytes([b[o], b[o + 1]])
}
fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn be64(b: &[u8], o: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[o..o + 8]);
    u64::from_be_bytes(x)
}

/// Parses a request header; `None` on a short buffer or bad magic (the
/// stream cannot be resynchronised: disconnect).
pub fn parse_request_header(b: &[u8]) -> Option<RequestHeader> {
    if b.len() < REQUEST_HEADER_LEN || be32(b, 0) != REQUEST_MAGIC {
        return None;
    }
    Some(RequestHeader {
        flags: be16(b, 4),
        typ: be16(b, 6),
        cookie: be64(b, 8),
        offset: be64(b, 16),
        length: be32(b, 24),
    })
}

/// Option header: (option, data length); `None` on bad magic.
pub fn parse_option_header(b: &[u8; 16]) -> Option<(u32, u32)> {
    (be64(b, 0) == IHAVEOPT).then(|| (be32(b, 8), be32(b, 12)))
}

/// Data of `NBD_OPT_INFO` / `NBD_OPT_GO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    pub name: String,
    pub infos: Vec<u16>,
}

/// Parses `NBD_OPT_INFO`/`GO` data; `None` => `NBD_REP_ERR_INVALID`.
pub fn parse_info_request(d: &[u8]) -> Option<InfoRequest> {
    let mut r = Reader(d);
    let name = r.string()?;
    let n = r.u16()? as usize;
    let mut infos = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        infos.push(r.u16()?);
    }
    r.0.is_empty().then_some(InfoRequest { name, infos })
}

/// Data of `NBD_OPT_LIST_META_CONTEXT` / `SET_META_CONTEXT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaRequest {
    pub name: String,
    pub queries: Vec<String>,
}

/// Parses meta-context option data; `None` => `NBD_REP_ERR_INVALID`.
pub fn parse_meta_request(d: &[u8]) -> Option<MetaRequest> {
    let mut r = Reader(d);
    let name = r.string()?;
    let n = r.u32()? as usize;
    let mut queries = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        queries.push(r.string()?);
    }
    r.0.is_empty().then_some(MetaRequest { name, queries })
}

/// Contexts of ours a query selects (only `base:allocation` exists).
pub fn meta_matches(query: &str, listing: bool) -> bool {
    query == BASE_ALLOCATION || (listing && query == "base:")
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| be16(b, 0))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| be32(b, 0))
    }
    fn string(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        if n > MAX_STRING {
            return None;
        }
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

/// What the connection negotiated, for validating commands.
#[derive(Debug, Clone, Copy)]
pub struct CmdContext {
    pub size: u64,
    pub read_only: bool,
    pub structured: bool,
    pub base_allocation: bool,
}

/// A validated command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Read { offset: u64, len: u32 },
    Write { offset: u64, len: u32, fua: bool },
    Disc,
    Flush,
    Trim { offset: u64, len: u32, fua: bool },
    Cache { offset: u64, len: u32 },
    WriteZeroes { offset: u64, len: u32, fua: bool, no_hole: bool, fast: bool },
    BlockStatus { offset: u64, len: u32, req_one: bool },
}

/// Why a request is refused: reply `errno`; with `disconnect`, the stream can
/// no longer be trusted (e.g. an oversized write payload we won't read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub errno: u32,
    pub disconnect: bool,
}

fn refuse(errno: u32) -> Refusal {
    Refusal { errno, disconnect: false }
}

/// Number of payload bytes that follow a request header on the wire.
pub fn payload_len(h: &RequestHeader) -> u32 {
    if h.typ == CMD_WRITE { h.length } else { 0 }
}

/// Validates a request against the negotiated context (spec: "Request
/// types", "Error values").
pub fn validate(h: &RequestHeader, ctx: &CmdContext) -> Result<Command, Refusal> {
    const KNOWN: u16 = CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_DF | CMD_FLAG_REQ_ONE | CMD_FLAG_FAST_ZERO;
    let allowed = CMD_FLAG_FUA
        | match h.typ {
            CMD_READ if ctx.structured => CMD_FLAG_DF,
            CMD_WRITE_ZEROES => CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
            CMD_BLOCK_STATUS => CMD_FLAG_REQ_ONE,
            _ => 0,
        };
    let (offset, len) = (h.offset, h.length);
    let in_range = offset.checked_add(u64::from(len)).is_some_and(|end| end <= ctx.size);
    let fua = h.flags & CMD_FLAG_FUA != 0;
    if h.typ == CMD_WRITE && len > MAX_PAYLOAD {
        // We will not read a payload that large: the stream is lost.
        return Err(Refusal { errno: EINVAL, disconnect: true });
    }
    if h.flags & !KNOWN != 0 || h.flags & !allowed != 0 {
        return Err(refuse(EINVAL));
    }
    let writes = matches!(h.typ, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
    if writes && ctx.read_only {
        return Err(refuse(EPERM));
    }
    match h.typ {
        CMD_READ => {
            if len > MAX_PAYLOAD || !in_range {
                return Err(refuse(EINVAL));
            }
            Ok(Command::Read { offset, len })
        }
        CMD_WRITE => {
            if !in_range {
                return Err(refuse(ENOSPC));
            }
            Ok(Command::Write { offset, len, fua })
        }
        CMD_DISC => Ok(Command::Disc),
        CMD_FLUSH => Ok(Command::Flush),
        CMD_TRIM => {
            if !in_range {
                return Err(refuse(EINVAL));
            }
            Ok(Command::Trim { offset, len, fua })
        }
        CMD_CACHE => {
            if !in_range {
                return Err(refuse(EINVAL));
            }
            Ok(Command::Cache { offset, len })
        }
        CMD_WRITE_ZEROES => {
            if !in_range {
                return Err(refuse(ENOSPC));
            }
            Ok(Command::WriteZeroes {
                offset,
                len,
                fua,
                no_hole: h.flags & CMD_FLAG_NO_HOLE != 0,
                fast: h.flags & CMD_FLAG_FAST_ZERO != 0,
            })
        }
        CMD_BLOCK_STATUS => {
            if !ctx.structured || !ctx.base_allocation || len == 0 || !in_range {
                return Err(refuse(EINVAL));
            }
            Ok(Command::BlockStatus { offset, len, req_one: h.flags & CMD_FLAG_REQ_ONE != 0 })
        }
        _ => Err(refuse(EINVAL)),
    }
}

// ---- encoders ----

pub fn option_reply(opt: u32, typ: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(20 + data.len());
    v.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    v.extend_from_slice(&opt.to_be_bytes());
    v.extend_from_slice(&typ.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

pub const SIMPLE_HEADER_LEN: usize = 16;
pub const CHUNK_HEADER_LEN: usize = 20;

pub fn put_simple_header(buf: &mut [u8], errno: u32, cookie: u64) {
    buf[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    buf[4..8].copy_from_slice(&errno.to_be_bytes());
    buf[8..16].copy_from_slice(&cookie.to_be_bytes());
}

pub fn simple_reply(errno: u32, cookie: u64) -> Vec<u8> {
    let mut v = vec![0u8; SIMPLE_HEADER_LEN];
    put_simple_header(&mut v, errno, cookie);
    v
}

pub fn put_chunk_header(buf: &mut [u8], flags: u16, typ: u16, cookie: u64, len: u32) {
    buf[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    buf[4..6].copy_from_slice(&flags.to_be_bytes());
    buf[6..8].copy_from_slice(&typ.to_be_bytes());
    buf[8..16].copy_from_slice(&cookie.to_be_bytes());
    buf[16..20].copy_from_slice(&len.to_be_bytes());
}

/// A final structured error chunk.
pub fn error_chunk(errno: u32, cookie: u64, msg: &str) -> Vec<u8> {
    let msg = &msg.as_bytes()[..msg.len().min(MAX_STRING)];
    let mut v = vec![0u8; CHUNK_HEADER_LEN];
    put_chunk_header(&mut v, REPLY_FLAG_DONE, REPLY_TYPE_ERROR, cookie, (6 + msg.len()) as u32);
    v.extend_from_slice(&errno.to_be_bytes());
    v.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    v.extend_from_slice(msg);
    v
}

/// A final block-status chunk for `base:allocation`.
pub fn block_status_chunk(cookie: u64, extents: &[(u32, u32)]) -> Vec<u8> {
    let len = 4 + 8 * extents.len();
    let mut v = vec![0u8; CHUNK_HEADER_LEN];
    put_chunk_header(&mut v, REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, cookie, len as u32);
    v.extend_from_slice(&BASE_ALLOCATION_ID.to_be_bytes());
    for (l, s) in extents {
        v.extend_from_slice(&l.to_be_bytes());
        v.extend_from_slice(&s.to_be_bytes());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ctx() -> CmdContext {
        CmdContext { size: 1 << 30, read_only: false, structured: true, base_allocation: true }
    }

    fn info(name: &str, infos: &[u16]) -> Vec<u8> {
        let mut v = (name.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(name.as_bytes());
        v.extend_from_slice(&(infos.len() as u16).to_be_bytes());
        for i in infos {
            v.extend_from_slice(&i.to_be_bytes());
        }
        v
    }

    #[test]
    fn info_request_roundtrip_and_bad_lengths() {
        let d = info("vol-x", &[INFO_BLOCK_SIZE, INFO_NAME]);
        assert_eq!(parse_info_request(&d), Some(InfoRequest { name: "vol-x".into(), infos: vec![3, 1] }));
        assert_eq!(parse_info_request(&d[..d.len() - 1]), None);
        let mut longer = d.clone();
        longer.push(0);
        assert_eq!(parse_info_request(&longer), None);
        assert_eq!(parse_info_request(&[0xff, 0xff, 0xff, 0xff]), None);
    }

    #[test]
    fn validation_rules() {
        let h = |typ, flags, offset, length| RequestHeader { flags, typ, cookie: 7, offset, length };
        let c = ctx();
        assert_eq!(validate(&h(99, 0, 0, 0), &c).unwrap_err().errno, EINVAL);
        assert_eq!(validate(&h(CMD_READ, 1 << 9, 0, 1), &c).unwrap_err().errno, EINVAL);
        assert_eq!(validate(&h(CMD_WRITE, 0, (1 << 30) - 1, 2), &c).unwrap_err().errno, ENOSPC);
        assert_eq!(validate(&h(CMD_READ, 0, u64::MAX, 2), &c).unwrap_err().errno, EINVAL);
        assert_eq!(
            validate(&h(CMD_READ, 0, 0, MAX_PAYLOAD + 1), &c).unwrap_err(),
            Refusal { errno: EINVAL, disconnect: false }
        );
        assert_eq!(
            validate(&h(CMD_WRITE, 0, 0, MAX_PAYLOAD + 1), &c).unwrap_err(),
            Refusal { errno: EINVAL, disconnect: true }
        );
        let ro = CmdContext { read_only: true, ..c };
        assert_eq!(validate(&h(CMD_WRITE, 0, 0, 1), &ro).unwrap_err().errno, EPERM);
        assert_eq!(validate(&h(CMD_TRIM, 0, 0, 1), &ro).unwrap_err().errno, EPERM);
        assert!(validate(&h(CMD_READ, CMD_FLAG_FUA, 0, 1), &ro).is_ok());
        let simple = CmdContext { structured: false, base_allocation: false, ..c };
        assert_eq!(validate(&h(CMD_BLOCK_STATUS, 0, 0, 1), &simple).unwrap_err().errno, EINVAL);
        assert_eq!(validate(&h(CMD_READ, CMD_FLAG_DF, 0, 1), &simple).unwrap_err().errno, EINVAL);
        // Trim/zero lengths may exceed the payload limit.
        assert!(validate(&h(CMD_TRIM, 0, 0, 2 * MAX_PAYLOAD), &c).is_ok());
        assert_eq!(
            validate(&h(CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO, 0, 4096), &c),
            Ok(Command::WriteZeroes { offset: 0, len: 4096, fua: false, no_hole: true, fast: true })
        );
    }

    proptest! {
        #[test]
        fn parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_info_request(&data);
            let _ = parse_meta_request(&data);
            if let Some(h) = parse_request_header(&data) {
                let _ = validate(&h, &ctx());
                let _ = validate(&h, &CmdContext { read_only: true, structured: false, base_allocation: false, size: 0 });
            }
            if data.len() >= 16 {
                let mut b = [0u8; 16];
                b.copy_from_slice(&data[..16]);
                let _ = parse_option_header(&b);
            }
        }

        #[test]
        fn valid_commands_stay_in_range(
            typ in 0u16..10, flags in any::<u16>(), offset in any::<u64>(), length in any::<u32>(),
            size in 0u64..(1 << 40), ro in any::<bool>(), structured in any::<bool>(),
        ) {
            let h = RequestHeader { flags, typ, cookie: 1, offset, length };
            let c = CmdContext { size, read_only: ro, structured, base_allocation: structured };
            match validate(&h, &c) {
                Ok(Command::Read { offset, len }) => {
                    prop_assert!(offset + u64::from(len) <= size);
                    prop_assert!(len <= MAX_PAYLOAD);
                }
                Ok(Command::Write { offset, len, .. }) => {
                    prop_assert!(!ro);
                    prop_assert!(offset + u64::from(len) <= size && len <= MAX_PAYLOAD);
                }
                Ok(Command::Trim { offset, len, .. } | Command::WriteZeroes { offset, len, .. }) => {
                    prop_assert!(!ro);
                    prop_assert!(offset + u64::from(len) <= size);
                }
                Ok(Command::BlockStatus { offset, len, .. } | Command::Cache { offset, len }) => {
                    prop_assert!(offset + u64::from(len) <= size);
                }
                Ok(Command::Disc | Command::Flush) => {}
                Err(r) => prop_assert!(r.errno == EINVAL || r.errno == EPERM || r.errno == ENOSPC),
            }
        }

        #[test]
        fn meta_request_roundtrip(name in "[a-z0-9-]{0,40}", qs in proptest::collection::vec("[a-z:]{0,20}", 0..5)) {
            let mut d = (name.len() as u32).to_be_bytes().to_vec();
            d.extend_from_slice(name.as_bytes());
            d.extend_from_slice(&(qs.len() as u32).to_be_bytes());
            for q in &qs {
                d.extend_from_slice(&(q.len() as u32).to_be_bytes());
                d.extend_from_slice(q.as_bytes());
            }
            prop_assert_eq!(parse_meta_request(&d), Some(MetaRequest { name, queries: qs }));
        }
    }
}
