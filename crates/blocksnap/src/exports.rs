//! The NBD exports the engine allows: `vol-…` while the volume is attached (read-write), `snap-…`
//! for completed snapshots (read-only). The engine decides; this only adapts it to the NBD server.

use std::sync::Arc;
use std::time::Duration;

use blocksnap_engine::{Engine, ExportHooks};
use blocksnap_nbd::{BlockDevice, Export, ExportResolver, NbdServer};

pub struct Exports {
    pub engine: Arc<Engine>,
}

impl ExportResolver for Exports {
    fn lookup(&self, name: &str) -> Option<Export> {
        if name.starts_with("vol-") {
            let v = self.engine.attached_volume(name)?;
            let device: Arc<dyn BlockDevice> = v;
            return Some(Export::new(device, false));
        }
        None
    }

    fn list(&self) -> Vec<String> {
        self.engine.attached_volume_ids()
    }
}

/// Closes an export's live connections when the engine says so, waiting (bounded) for in-flight
/// requests to finish so DetachVolume returns only once the volume is quiet.
pub struct CloseOnDetach {
    pub server: Arc<NbdServer>,
    pub runtime: tokio::runtime::Handle,
}

impl ExportHooks for CloseOnDetach {
    fn close_export(&self, name: &str) {
        let (tx, rx) = std::sync::mpsc::channel();
        let server = self.server.clone();
        let name = name.to_string();
        self.runtime.spawn(async move {
            server.close_export(&name).await;
            let _ = tx.send(());
        });
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            tracing::warn!("closing an NBD export took more than 30 s; continuing");
        }
    }
}
