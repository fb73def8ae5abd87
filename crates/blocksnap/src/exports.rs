//! The NBD exports the engine allows: `vol-…` while the volume is attached (read-write), `snap-…`
//! for completed snapshots (read-only), each only to a client whose TLS-PSK identity is an NBD
//! credential of an account that may open it. The engine decides; this only adapts it to the NBD
//! server.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use blocksnap_engine::SnapshotReader;
use blocksnap_engine::{Engine, ExportHooks};
use blocksnap_nbd::tls::TlsConfig;
use blocksnap_nbd::{BlockDevice, Client, Export, ExportResolver, Extent, NbdServer, ServerConfig};

/// Where clients are told to reach the NBD listener (`--nbd-advertise HOST[:PORT]`, else the
/// address it listens on; `bound` is the listener's actual address, so port 0 works). When it
/// listens on every address (0.0.0.0, ::) and nothing is advertised, the API answers the host each
/// caller reached it at (the same machine), and start-up says so: a client behind a proxy or NAT
/// needs `--nbd-advertise`.
pub fn advertise(
    flag: Option<&str>,
    bound: SocketAddr,
    insecure_plaintext: bool,
) -> anyhow::Result<blocksnap_engine::NbdAdvertise> {
    use blocksnap_engine::{NbdAdvertise, NbdHost};
    let listen_host = bound.ip().to_string();
    let (host, port) = match flag.map(str::trim).filter(|f| !f.is_empty()) {
        Some(f) => {
            let (h, p) = parse_host_port(f)?;
            (NbdHost::Fixed(h), p.unwrap_or(bound.port()))
        }
        None if bound.ip().is_unspecified() => {
            tracing::warn!(
                nbd_listen = %bound,
                "NBD listens on every address and --nbd-advertise is not set: the NBD endpoint APIs answer the host name each client reached the HTTP API at; set --nbd-advertise HOST:PORT if clients reach NBD another way (a proxy, NAT, another name)"
            );
            (NbdHost::AsReached, bound.port())
        }
        None => (NbdHost::Fixed(listen_host.clone()), bound.port()),
    };
    Ok(NbdAdvertise { host, port, tls: !insecure_plaintext, listen_host })
}

/// `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address.
fn parse_host_port(s: &str) -> anyhow::Result<(String, Option<u16>)> {
    let bad = || anyhow::anyhow!("--nbd-advertise {s:?}: expected HOST or HOST:PORT (an IPv6 address in brackets)");
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(bad)?;
        match after {
            "" => (h, None),
            p => (h, Some(p.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else if s.parse::<std::net::Ipv6Addr>().is_ok() {
        (s, None)
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'_'))
        && (!host.contains(':') || host.parse::<std::net::Ipv6Addr>().is_ok());
    if !host_ok {
        return Err(bad());
    }
    let port = match port {
        None => None,
        Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad)?),
    };
    if host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_unspecified()) {
        anyhow::bail!("--nbd-advertise {s:?}: clients cannot connect to an unspecified address; name this host");
    }
    Ok((host.to_ascii_lowercase(), port))
}

/// Refuses what must not start: plaintext NBD beyond loopback.
pub fn check_listen(addr: SocketAddr, insecure_plaintext: bool) -> anyhow::Result<()> {
    if insecure_plaintext && !addr.ip().is_loopback() {
        anyhow::bail!(
            "refusing to serve plaintext NBD on {addr}: anyone who can reach it could read and write volumes. \
             Drop --nbd-insecure-plaintext to serve NBD over TLS with pre-shared keys (clients get theirs with \
             `blocksnap nbd-credentials`), or listen on a loopback address (127.0.0.1) for local development"
        );
    }
    Ok(())
}

/// The NBD server over the engine's exports: TLS-PSK with the engine's NBD credentials, or
/// (development only) plaintext serving every export to any local client.
pub fn server(engine: &Arc<Engine>, insecure_plaintext: bool) -> anyhow::Result<Arc<NbdServer>> {
    let resolver = Arc::new(Exports { engine: engine.clone(), authenticated: !insecure_plaintext });
    let mut config = ServerConfig::default();
    if insecure_plaintext {
        tracing::warn!(
            "NBD is plaintext and unauthenticated (--nbd-insecure-plaintext): every local user can read and write every attached volume and completed snapshot; for development only"
        );
    } else {
        let e = engine.clone();
        let tls = TlsConfig::psk(Arc::new(move |identity: &str| e.nbd_psk(identity)))
            .map_err(|e| anyhow::anyhow!("setting up NBD TLS: {e}"))?;
        config.tls = Some(Arc::new(tls));
        tracing::info!(
            "NBD requires TLS with a pre-shared key per account: `blocksnap nbd-credentials --out DIR` (with the account's AWS credentials) writes DIR/keys.psk for qemu and libnbd"
        );
    }
    Ok(Arc::new(NbdServer::with_config(resolver, config)))
}

pub struct Exports {
    pub engine: Arc<Engine>,
    /// False only in plaintext development mode, where clients have no identity.
    pub authenticated: bool,
}

impl Exports {
    /// The account a client authenticated as.
    fn account(&self, client: &Client) -> Option<String> {
        self.engine.nbd_account(client.identity.as_deref()?)
    }
}

impl ExportResolver for Exports {
    fn allowed(&self, client: &Client, name: &str) -> bool {
        if !self.authenticated {
            return true;
        }
        self.account(client).is_some_and(|a| self.engine.nbd_may_open(&a, name))
    }

    fn lookup(&self, client: &Client, name: &str) -> Option<Export> {
        if !self.allowed(client, name) {
            return None;
        }
        if name.starts_with("vol-") {
            let v = self.engine.attached_volume(name)?;
            let device: Arc<dyn BlockDevice> = v;
            return Some(Export::new(device, false));
        }
        if name.starts_with("snap-") {
            let r = self.engine.snapshot_reader(name)?;
            let device: Arc<dyn BlockDevice> = Arc::new(SnapshotDevice(r));
            return Some(Export::new(device, true));
        }
        None
    }

    fn list(&self, client: &Client) -> Vec<String> {
        if !self.authenticated {
            return self.engine.attached_volume_ids();
        }
        self.account(client).map(|a| self.engine.nbd_exports(&a)).unwrap_or_default()
    }
}

/// Ends live NBD connections when the engine revokes access, waiting (bounded) for in-flight
/// requests to finish so e.g. DetachVolume returns only once the volume is quiet.
pub struct NbdHooks {
    pub server: Arc<NbdServer>,
    pub runtime: tokio::runtime::Handle,
}

impl NbdHooks {
    fn wait<F: Future<Output = ()> + Send + 'static>(&self, what: &str, f: F) {
        let (tx, rx) = std::sync::mpsc::channel();
        self.runtime.spawn(async move {
            f.await;
            let _ = tx.send(());
        });
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            tracing::warn!("{what} took more than 30 s; continuing");
        }
    }
}

impl ExportHooks for NbdHooks {
    fn close_export(&self, name: &str) {
        let (server, name) = (self.server.clone(), name.to_string());
        self.wait("closing an NBD export", async move { server.close_export(&name).await });
    }

    fn access_changed(&self, name: &str) {
        let (server, name) = (self.server.clone(), name.to_string());
        self.wait("re-checking an NBD export's connections", async move { server.revalidate(&name).await });
    }

    fn credentials_revoked(&self, identities: &[String]) {
        let (server, ids) = (self.server.clone(), identities.to_vec());
        self.wait("closing revoked NBD credentials' connections", async move { server.close_identities(&ids).await });
    }
}

/// A completed snapshot as a read-only block device.
struct SnapshotDevice(SnapshotReader);

fn read_only() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::PermissionDenied, "snapshot exports are read-only")
}

impl BlockDevice for SnapshotDevice {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn read_only(&self) -> bool {
        true
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.0.read_at(offset, buf)
    }
    fn write_at(&self, _offset: u64, _buf: &[u8], _fua: bool) -> std::io::Result<()> {
        Err(read_only())
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn trim(&self, _offset: u64, _len: u64) -> std::io::Result<()> {
        Err(read_only())
    }
    fn write_zeroes(&self, _offset: u64, _len: u64, _may_punch_hole: bool, _fast_only: bool) -> std::io::Result<()> {
        Err(read_only())
    }
    fn block_status(&self, offset: u64, len: u64) -> std::io::Result<Vec<Extent>> {
        Ok(self
            .0
            .allocated(offset, len)?
            .into_iter()
            .map(|(len, data)| Extent { len, hole: !data, zero: !data })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blocksnap_engine::NbdHost;

    #[test]
    fn advertised_addresses() {
        let bound: SocketAddr = "0.0.0.0:10809".parse().unwrap_or_else(|_| unreachable!());
        let a = advertise(Some("nbd.example.org:10900"), bound, false).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((a.host, a.port, a.tls), (NbdHost::Fixed("nbd.example.org".into()), 10900, true));
        let a = advertise(Some("[fe80::1]"), bound, true).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((a.host, a.port, a.tls), (NbdHost::Fixed("fe80::1".into()), 10809, false));
        assert_eq!(advertise(Some("::1"), bound, false).map(|a| a.host).ok(), Some(NbdHost::Fixed("::1".into())));
        assert_eq!(advertise(None, bound, false).map(|a| a.host).ok(), Some(NbdHost::AsReached));
        let specific: SocketAddr = "10.1.2.3:999".parse().unwrap_or_else(|_| unreachable!());
        let a = advertise(None, specific, false).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((a.host, a.port), (NbdHost::Fixed("10.1.2.3".into()), 999));
        for bad in ["host:0", "host:x", "a b", "[::1", "[::1]x", "0.0.0.0:1", "h/x", "fe80::1:zz"] {
            assert!(advertise(Some(bad), bound, false).is_err(), "{bad}");
        }
    }
}
