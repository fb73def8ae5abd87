//! Serves every volume of a VolumeStore directory over NBD (read-write).
//!
//! cargo run --release -p blocksnap-nbd --example serve_dir -- \
//!     --dir D --listen 127.0.0.1:10809 [--create NAME:SIZE[K|M|G]]... [--no-tracking] [--no-inline]
//!     [--tls-psk FILE]
//!
//! `--tls-psk FILE` (qemu's `keys.psk` format, `identity:hexkey` lines): TLS-PSK required, any
//! identity in the file opens every export.

use std::path::PathBuf;
use std::sync::Arc;

use blocksnap_nbd::{Client, Export, ExportResolver, NbdServer, ServerConfig};
use blocksnap_volume::{StoreOptions, VolumeStore};

struct StoreResolver(VolumeStore);

impl ExportResolver for StoreResolver {
    fn lookup(&self, _client: &Client, name: &str) -> Option<Export> {
        let v = self.0.open_volume(name).ok()?;
        Some(Export::new(v, false))
    }
    fn list(&self, _client: &Client) -> Vec<String> {
        self.0.list().unwrap_or_default()
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: serve_dir --dir D [--listen ADDR] [--create NAME:SIZE]... [--no-tracking] [--no-inline] [--tls-psk FILE]"
    );
    std::process::exit(2)
}

fn parse_size(s: &str) -> Option<u64> {
    let (num, mul) = match s.char_indices().last()? {
        (i, 'K' | 'k') => (&s[..i], 1u64 << 10),
        (i, 'M' | 'm') => (&s[..i], 1 << 20),
        (i, 'G' | 'g') => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mul)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let mut dir = None;
    let mut listen = "127.0.0.1:10809".to_string();
    let mut creates = Vec::new();
    let mut tracking = true;
    let mut inline = true;
    let mut psk_file = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--dir" => dir = Some(PathBuf::from(args.next().unwrap_or_else(|| usage()))),
            "--listen" => listen = args.next().unwrap_or_else(|| usage()),
            "--create" => creates.push(args.next().unwrap_or_else(|| usage())),
            "--no-tracking" => tracking = false,
            "--no-inline" => inline = false,
            "--tls-psk" => psk_file = Some(PathBuf::from(args.next().unwrap_or_else(|| usage()))),
            _ => usage(),
        }
    }
    let dir = dir.unwrap_or_else(|| usage());
    let store = VolumeStore::open_with(dir, StoreOptions { change_tracking: tracking })?;
    for c in creates {
        let (name, size) = c.split_once(':').unwrap_or_else(|| usage());
        let size = parse_size(size).unwrap_or_else(|| usage());
        if !store.exists(name) {
            store.create(name, size)?;
        }
    }
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    eprintln!("serving on {}", listener.local_addr()?);
    let mut config = ServerConfig { inline_io: inline, ..ServerConfig::default() };
    if let Some(f) = psk_file {
        let mut keys = std::collections::HashMap::new();
        for line in std::fs::read_to_string(f)?.lines() {
            let (id, hex) = line.trim().split_once(':').ok_or("keys file: identity:hexkey lines")?;
            let key = (0..hex.len())
                .step_by(2)
                .map(|i| hex.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
                .collect::<Option<Vec<u8>>>()
                .ok_or("keys file: bad hex key")?;
            keys.insert(id.to_string(), key);
        }
        let tls = blocksnap_nbd::tls::TlsConfig::psk(Arc::new(move |id: &str| keys.get(id).cloned()))?;
        config.tls = Some(Arc::new(tls));
    }
    let server = Arc::new(NbdServer::with_config(Arc::new(StoreResolver(store)), config));
    let s2 = server.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        s2.shutdown().await;
    });
    server.serve(listener).await?;
    Ok(())
}
