#![allow(dead_code)]
//! Shared test harness: an in-process server over a temp VolumeStore, and a
//! tiny blocking NBD client for raw-socket tests.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use blocksnap_nbd::proto::*;
use blocksnap_nbd::{Export, NbdServer, StaticResolver};
use blocksnap_volume::VolumeStore;

pub const MIB: u64 = 1 << 20;

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub store: Arc<VolumeStore>,
    pub resolver: Arc<StaticResolver>,
    pub server: Arc<NbdServer>,
    pub port: u16,
    pub rt: tokio::runtime::Runtime,
}

impl Harness {
    /// Server with `vol-x` (rw, 64 MiB) and `ro-x` (the same volume, read-only).
    pub fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(VolumeStore::open(dir.path().join("vols")).unwrap());
        let resolver = Arc::new(StaticResolver::new());
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let server = Arc::new(NbdServer::new(resolver.clone()));
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let port = listener.local_addr().unwrap().port();
        rt.spawn(server.clone().serve(listener));
        let h = Harness { dir, store, resolver, server, port, rt };
        h.add_volume("vol-x", 64 * MIB);
        let v = h.store.open_volume("vol-x").unwrap();
        h.resolver.insert("ro-x", Export::new(v, true));
        h
    }

    pub fn add_volume(&self, name: &str, size: u64) {
        self.store.create(name, size).unwrap();
        let v = self.store.open_volume(name).unwrap();
        self.resolver.insert(name, Export::new(v, false));
    }

    pub fn url(&self, export: &str) -> String {
        format!("nbd://127.0.0.1:{}/{}", self.port, export)
    }
}

pub fn have(tool: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().is_ok_and(|o| o.status.success())
}

pub fn run(cmd: &str, args: &[&str]) -> Output {
    let out = Command::new(cmd).args(args).output().unwrap();
    eprintln!(
        "$ {cmd} {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn run_ok(cmd: &str, args: &[&str]) -> String {
    let out = run(cmd, args);
    assert!(out.status.success(), "{cmd} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Blocking raw NBD client.
pub struct Client {
    pub s: TcpStream,
}

pub struct OptReply {
    pub typ: u32,
    pub data: Vec<u8>,
}

impl Client {
    /// Connects and reads the greeting; does not send client flags.
    pub fn connect_raw(port: u16) -> Client {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut c = Client { s };
        let g = c.read_n(18);
        assert_eq!(&g[0..8], &NBDMAGIC.to_be_bytes());
        assert_eq!(&g[8..16], &IHAVEOPT.to_be_bytes());
        assert_eq!(u16::from_be_bytes([g[16], g[17]]), 3);
        c
    }

    pub fn connect(port: u16) -> Client {
        let mut c = Client::connect_raw(port);
        c.send(&3u32.to_be_bytes());
        c
    }

    pub fn send(&mut self, b: &[u8]) {
        self.s.write_all(b).unwrap();
    }

    pub fn read_n(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.s.read_exact(&mut v).unwrap();
        v
    }

    /// True once the server has closed the connection.
    pub fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.s.read(&mut b), Ok(0) | Err(_))
    }

    pub fn send_opt(&mut self, opt: u32, data: &[u8]) {
        let mut v = IHAVEOPT.to_be_bytes().to_vec();
        v.extend_from_slice(&opt.to_be_bytes());
        v.extend_from_slice(&(data.len() as u32).to_be_bytes());
        v.extend_from_slice(data);
        self.send(&v);
    }

    pub fn read_opt_reply(&mut self, opt: u32) -> OptReply {
        let h = self.read_n(20);
        assert_eq!(&h[0..8], &OPT_REPLY_MAGIC.to_be_bytes());
        assert_eq!(u32::from_be_bytes(h[8..12].try_into().unwrap()), opt);
        let typ = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
        OptReply { typ, data: self.read_n(len) }
    }

    /// Sends an option and collects replies up to the final one.
    pub fn opt(&mut self, opt: u32, data: &[u8]) -> Vec<OptReply> {
        self.send_opt(opt, data);
        let mut out = Vec::new();
        loop {
            let r = self.read_opt_reply(opt);
            let done = r.typ == REP_ACK || r.typ & (1 << 31) != 0;
            out.push(r);
            if done {
                return out;
            }
        }
    }

    pub fn structured(&mut self) {
        assert_eq!(self.opt(OPT_STRUCTURED_REPLY, &[])[0].typ, REP_ACK);
    }

    pub fn set_meta(&mut self, export: &str, queries: &[&str]) -> Vec<OptReply> {
        let mut d = (export.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(export.as_bytes());
        d.extend_from_slice(&(queries.len() as u32).to_be_bytes());
        for q in queries {
            d.extend_from_slice(&(q.len() as u32).to_be_bytes());
            d.extend_from_slice(q.as_bytes());
        }
        self.opt(OPT_SET_META_CONTEXT, &d)
    }

    /// NBD_OPT_GO; Ok((size, transmission flags)) or Err(error reply type).
    pub fn go(&mut self, export: &str) -> Result<(u64, u16), u32> {
        let mut d = (export.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(export.as_bytes());
        d.extend_from_slice(&1u16.to_be_bytes());
        d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        let mut info = None;
        for r in self.opt(OPT_GO, &d) {
            if r.typ & (1 << 31) != 0 {
                return Err(r.typ);
            }
            if r.typ == REP_INFO && u16::from_be_bytes([r.data[0], r.data[1]]) == INFO_EXPORT {
                let size = u64::from_be_bytes(r.data[2..10].try_into().unwrap());
                let flags = u16::from_be_bytes([r.data[10], r.data[11]]);
                info = Some((size, flags));
            }
        }
        Ok(info.unwrap())
    }

    pub fn request(&mut self, typ: u16, flags: u16, cookie: u64, offset: u64, len: u32, payload: &[u8]) {
        let mut v = REQUEST_MAGIC.to_be_bytes().to_vec();
        v.extend_from_slice(&flags.to_be_bytes());
        v.extend_from_slice(&typ.to_be_bytes());
        v.extend_from_slice(&cookie.to_be_bytes());
        v.extend_from_slice(&offset.to_be_bytes());
        v.extend_from_slice(&len.to_be_bytes());
        v.extend_from_slice(payload);
        self.send(&v);
    }

    /// Reads a simple reply header: (errno, cookie).
    pub fn simple_reply(&mut self) -> (u32, u64) {
        let h = self.read_n(16);
        assert_eq!(&h[0..4], &SIMPLE_REPLY_MAGIC.to_be_bytes(), "not a simple reply");
        (u32::from_be_bytes(h[4..8].try_into().unwrap()), u64::from_be_bytes(h[8..16].try_into().unwrap()))
    }

    /// Reads one structured chunk: (flags, type, cookie, payload).
    pub fn chunk(&mut self) -> (u16, u16, u64, Vec<u8>) {
        let h = self.read_n(20);
        assert_eq!(&h[0..4], &STRUCTURED_REPLY_MAGIC.to_be_bytes(), "not a chunk");
        let flags = u16::from_be_bytes([h[4], h[5]]);
        let typ = u16::from_be_bytes([h[6], h[7]]);
        let cookie = u64::from_be_bytes(h[8..16].try_into().unwrap());
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
        (flags, typ, cookie, self.read_n(len))
    }
}
