//! Revocation races with connecting clients: once `revalidate` returns, no connection to the
//! export is left and none gets in, however the handshakes interleave with it (stress test of the
//! registry's generation/revocation counters).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use blocksnap_nbd::{Client as Peer, Export, ExportResolver, NbdServer};
use blocksnap_volume::VolumeStore;
use common::*;

/// Serves `vol-x` while the switch is on.
struct Switch {
    on: AtomicBool,
    export: Export,
}

impl ExportResolver for Switch {
    fn lookup(&self, _client: &Peer, name: &str) -> Option<Export> {
        let found = (name == "vol-x" && self.on.load(Ordering::SeqCst)).then(|| self.export.clone());
        // A slow lookup: widens the window between the decision and the registration.
        std::thread::sleep(std::time::Duration::from_micros(300));
        found
    }
    fn list(&self, _client: &Peer) -> Vec<String> {
        vec![]
    }
}

#[test]
fn revalidate_leaves_no_connection_behind() {
    let dir = tempfile::tempdir().unwrap();
    let store = VolumeStore::open(dir.path().join("vols")).unwrap();
    store.create("vol-x", 4 * MIB).unwrap();
    let switch =
        Arc::new(Switch { on: AtomicBool::new(true), export: Export::new(store.open_volume("vol-x").unwrap(), false) });
    let server = Arc::new(NbdServer::new(switch.clone()));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    rt.spawn(server.clone().serve(listener));
    let mut admitted = 0;
    for round in 0..40u64 {
        switch.on.store(true, Ordering::SeqCst);
        let clients: Vec<_> = (0..6)
            .map(|_| {
                std::thread::spawn(move || {
                    let mut kept = Vec::new();
                    for _ in 0..4 {
                        let mut c = Client::connect(port);
                        if c.go("vol-x").is_ok() {
                            kept.push(c);
                        }
                    }
                    kept
                })
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_micros(200 * (round % 10)));
        switch.on.store(false, Ordering::SeqCst);
        rt.block_on(server.revalidate("vol-x"));
        assert_eq!(server.connection_count(Some("vol-x")), 0, "round {round}: a connection survived revalidate");
        for t in clients {
            for mut c in t.join().unwrap() {
                admitted += 1;
                assert!(c.is_closed(), "round {round}: an admitted client was not closed");
            }
        }
        assert_eq!(server.connection_count(Some("vol-x")), 0, "round {round}: a connection got in after revalidate");
    }
    // The race was exercised: some clients got in before the switch went off.
    assert!(admitted > 0);
}
