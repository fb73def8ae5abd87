//! NBD over TLS-PSK with the real clients (qemu-io, nbdinfo): the client's identity reaches the
//! resolver, plaintext and wrong keys are refused, revoked identities are cut.

mod common;

use std::sync::Arc;

use blocksnap_nbd::tls::TlsConfig;
use blocksnap_nbd::{Client, Export, ExportResolver, NbdServer, ServerConfig};
use blocksnap_volume::VolumeStore;
use common::*;

const KEY: [u8; 32] = [7u8; 32];

/// `alice` may open `vol-a`; `bob` nothing.
struct PerIdentity(Export);

impl ExportResolver for PerIdentity {
    fn lookup(&self, client: &Client, name: &str) -> Option<Export> {
        (client.identity.as_deref() == Some("alice") && name == "vol-a").then(|| self.0.clone())
    }
    fn list(&self, client: &Client) -> Vec<String> {
        if client.identity.as_deref() == Some("alice") { vec!["vol-a".into()] } else { vec![] }
    }
}

struct Tls {
    dir: tempfile::TempDir,
    server: Arc<NbdServer>,
    port: u16,
    rt: tokio::runtime::Runtime,
}

fn start() -> Tls {
    let dir = tempfile::tempdir().unwrap();
    let store = VolumeStore::open(dir.path().join("vols")).unwrap();
    store.create("vol-a", 16 * MIB).unwrap();
    let export = Export::new(store.open_volume("vol-a").unwrap(), false);
    let lookup = Arc::new(|id: &str| matches!(id, "alice" | "bob").then(|| KEY.to_vec()));
    let config = ServerConfig { tls: Some(Arc::new(TlsConfig::psk(lookup).unwrap())), ..ServerConfig::default() };
    let server = Arc::new(NbdServer::with_config(Arc::new(PerIdentity(export)), config));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    rt.spawn(server.clone().serve(listener));
    for (user, key) in [("alice", KEY), ("bob", KEY), ("mallory", [9u8; 32])] {
        let d = dir.path().join(user);
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("keys.psk"), format!("{user}:{}\n", hex(&key))).unwrap();
    }
    Tls { dir, server, port, rt }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Tls {
    fn qemu_io(&self, user: &str, cmds: &[&str]) -> std::process::Output {
        let obj = format!(
            "tls-creds-psk,id=tls0,endpoint=client,dir={},username={user}",
            self.dir.path().join(user).display()
        );
        let opts = format!("driver=nbd,host=127.0.0.1,port={},export=vol-a,tls-creds=tls0", self.port);
        let mut args = vec!["--object", &obj, "--image-opts", &opts];
        for c in cmds {
            args.extend(["-c", c]);
        }
        run("qemu-io", &args)
    }
    fn nbdinfo_list(&self, user: &str) -> std::process::Output {
        let uri = format!(
            "nbds://{user}@127.0.0.1:{}/?tls-psk-file={}",
            self.port,
            self.dir.path().join(user).join("keys.psk").display()
        );
        run("nbdinfo", &["--list", &uri])
    }
}

#[test]
fn psk_identity_decides_what_opens() {
    let t = start();
    let out = t.qemu_io("alice", &["write -P 0x42 0 1M", "read -P 0x42 0 1M"]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("read 1048576/1048576"));
    // Authenticated but not allowed: looks like no such export.
    let out = t.qemu_io("bob", &["read 0 4k"]);
    assert!(!out.status.success());
    // Wrong key: the handshake fails.
    let out = t.qemu_io("mallory", &["read 0 4k"]);
    assert!(!out.status.success());
    // Plaintext: TLS required.
    let out = run("qemu-io", &["-f", "raw", "-c", "read 0 4k", &format!("nbd://127.0.0.1:{}/vol-a", t.port)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).to_lowercase().contains("tls"));
    if have("nbdinfo") {
        let out = t.nbdinfo_list("alice");
        assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("vol-a"));
        let out = t.nbdinfo_list("bob");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("vol-a"));
    }
}

#[test]
fn revoked_identity_is_cut() {
    let t = start();
    let obj =
        format!("tls-creds-psk,id=tls0,endpoint=client,dir={},username=alice", t.dir.path().join("alice").display());
    let opts = format!("driver=nbd,host=127.0.0.1,port={},export=vol-a,tls-creds=tls0", t.port);
    let mut p = std::process::Command::new("qemu-io")
        .args(["--object", &obj, "--image-opts", &opts])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the connection is in transmission.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while t.server.connection_count(Some("vol-a")) == 0 {
        assert!(std::time::Instant::now() < deadline, "qemu-io never connected");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    t.rt.block_on(t.server.close_identities(&["bob".to_string()]));
    assert_eq!(t.server.connection_count(Some("vol-a")), 1, "another identity's revocation leaves it alone");
    t.rt.block_on(t.server.close_identities(&["alice".to_string()]));
    assert_eq!(t.server.connection_count(Some("vol-a")), 0);
    use std::io::Write;
    p.stdin.as_mut().unwrap().write_all(b"read 0 4k\nquit\n").unwrap();
    let out = p.wait_with_output().unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("read 4096/4096"), "{out:?}");
}

/// An OpenSSL client with alice's key: TLS 1.3 with AES-128-GCM, and the server issues no session
/// tickets (a resumed session would skip the PSK lookup: the credential check and its revocation).
#[test]
fn tls13_without_session_tickets() {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};

    use openssl::ssl::{SslConnector, SslMethod, SslSessionCacheMode, SslVersion};

    let t = start();
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", t.port)).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    let mut hello = [0u8; 18];
    tcp.read_exact(&mut hello).unwrap();
    tcp.write_all(&3u32.to_be_bytes()).unwrap();
    let option =
        |code: u32| [&0x4948_4156_454F_5054u64.to_be_bytes()[..], &code.to_be_bytes(), &0u32.to_be_bytes()].concat();
    tcp.write_all(&option(5)).unwrap();
    let mut ack = [0u8; 20];
    tcp.read_exact(&mut ack).unwrap();
    assert_eq!(u32::from_be_bytes(ack[12..16].try_into().unwrap()), 1, "STARTTLS is acknowledged");

    static TICKETS: AtomicUsize = AtomicUsize::new(0);
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.set_min_proto_version(Some(SslVersion::TLS1_3)).unwrap();
    b.set_session_cache_mode(SslSessionCacheMode::CLIENT);
    b.set_new_session_callback(|_, _| {
        TICKETS.fetch_add(1, Ordering::SeqCst);
    });
    b.set_psk_client_callback(|_, _, identity, psk| {
        identity[..6].copy_from_slice(b"alice\0");
        psk[..KEY.len()].copy_from_slice(&KEY);
        Ok(KEY.len())
    });
    let mut cfg = b.build().configure().unwrap();
    cfg.set_verify_hostname(false);
    cfg.set_verify(openssl::ssl::SslVerifyMode::NONE);
    let mut s = cfg.connect("nbd", tcp).unwrap();
    assert_eq!(s.ssl().version_str(), "TLSv1.3");
    assert_eq!(s.ssl().current_cipher().map(|c| c.name()), Some("TLS_AES_128_GCM_SHA256"));
    // NBD_OPT_LIST inside TLS: its replies come after any ticket the server would send.
    s.write_all(&option(3)).unwrap();
    let mut reply = [0u8; 20];
    loop {
        s.read_exact(&mut reply).unwrap();
        let len = u32::from_be_bytes(reply[16..20].try_into().unwrap()) as usize;
        let mut data = vec![0u8; len];
        s.read_exact(&mut data).unwrap();
        if u32::from_be_bytes(reply[12..16].try_into().unwrap()) == 1 {
            break;
        }
        assert_eq!(&data[4..], b"vol-a");
    }
    assert_eq!(TICKETS.load(Ordering::SeqCst), 0, "the server sent session tickets");
}
