//! The NBD exports the engine allows: `vol-…` while the volume is attached (read-write), `snap-…`
//! for completed snapshots (read-only). The engine decides; this only adapts it to the NBD server.

use std::sync::Arc;
use std::time::Duration;

use blocksnap_engine::SnapshotReader;
use blocksnap_engine::{Engine, ExportHooks};
use blocksnap_nbd::{BlockDevice, Export, ExportResolver, Extent, NbdServer};

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
        if name.starts_with("snap-") {
            let r = self.engine.snapshot_reader(name)?;
            let device: Arc<dyn BlockDevice> = Arc::new(SnapshotDevice(r));
            return Some(Export::new(device, true));
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
