//! The interface the server needs from storage, and its implementation for a
//! live [`blocksnap_volume::Volume`].

use std::io;
use std::sync::Arc;

use blocksnap_volume::Volume;

/// One run of a block-status answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub len: u64,
    /// Not allocated (reported as `NBD_STATE_HOLE`).
    pub hole: bool,
    /// Reads as zeros (reported as `NBD_STATE_ZERO`).
    pub zero: bool,
}

/// A block device served over NBD. Methods are synchronous and are called on
/// blocking threads, concurrently from many requests and connections. The
/// server checks ranges against the size negotiated at connect time; the
/// device re-checks against its current size. Errors map to NBD errors by
/// `raw_os_error()` when it is one of NBD's values, else by kind
/// (`PermissionDenied`→EPERM, `InvalidInput`→EINVAL, `StorageFull`→ENOSPC,
/// `Unsupported`→ENOTSUP, `OutOfMemory`→ENOMEM, otherwise EIO).
pub trait BlockDevice: Send + Sync + 'static {
    fn size(&self) -> u64;
    fn read_only(&self) -> bool {
        false
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Fast path, called on the async executor for small reads: read only if
    /// it can complete without waiting for the disk (e.g. the range is
    /// cached). `Ok(false)`: the server calls `read_at` on a blocking thread.
    fn try_read_at(&self, _offset: u64, _buf: &mut [u8]) -> io::Result<bool> {
        Ok(false)
    }
    /// Fast path, called on the async executor for small writes without FUA:
    /// write only if that needs no waiting on locks, commits or the disk
    /// beyond a buffered write. `Ok(false)`: `write_at` on a blocking thread.
    fn try_write_at(&self, _offset: u64, _buf: &[u8]) -> io::Result<bool> {
        Ok(false)
    }
    /// With `fua`, the data is durable when this returns.
    fn write_at(&self, offset: u64, buf: &[u8], fua: bool) -> io::Result<()>;
    /// Makes every completed write durable.
    fn flush(&self) -> io::Result<()>;
    /// Discards a range (it may then read as anything; ours reads zeros).
    fn trim(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Zeroes a range. `may_punch_hole`: deallocating is fine. `fast_only`:
    /// fail with `ErrorKind::Unsupported` rather than do it slowly.
    fn write_zeroes(&self, offset: u64, len: u64, may_punch_hole: bool, fast_only: bool) -> io::Result<()>;
    /// Allocation status of the range, in order, starting at `offset`;
    /// may stop short of `len` but must return at least one extent.
    fn block_status(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>>;
    /// Hint to prefetch a range (e.g. hydrate it); default does nothing.
    fn cache(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
}

impl BlockDevice for Volume {
    fn size(&self) -> u64 {
        Volume::size(self)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        Ok(Volume::read_at(self, offset, buf)?)
    }
    fn write_at(&self, offset: u64, buf: &[u8], fua: bool) -> io::Result<()> {
        Ok(Volume::write_at(self, offset, buf, fua)?)
    }
    fn try_read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<bool> {
        Ok(Volume::try_read_cached(self, offset, buf)?)
    }
    fn cache(&self, offset: u64, len: u64) -> io::Result<()> {
        Ok(Volume::prefetch(self, offset, len)?)
    }
    fn try_write_at(&self, offset: u64, buf: &[u8]) -> io::Result<bool> {
        Ok(Volume::try_write_fast(self, offset, buf)?)
    }
    fn flush(&self) -> io::Result<()> {
        Ok(Volume::flush(self)?)
    }
    fn trim(&self, offset: u64, len: u64) -> io::Result<()> {
        Ok(Volume::trim(self, offset, len)?)
    }
    fn write_zeroes(&self, offset: u64, len: u64, may_punch_hole: bool, fast_only: bool) -> io::Result<()> {
        Ok(Volume::write_zeroes_opts(self, offset, len, may_punch_hole, fast_only)?)
    }
    fn block_status(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        Ok(Volume::block_status(self, offset, len)?
            .into_iter()
            .map(|e| Extent { len: e.len, hole: e.hole, zero: e.zero })
            .collect())
    }
}

/// What a resolver hands out for an export name.
#[derive(Clone)]
pub struct Export {
    pub device: Arc<dyn BlockDevice>,
    /// Refuse writes (snapshot exports).
    pub read_only: bool,
    /// Sent as `NBD_INFO_DESCRIPTION` when asked.
    pub description: Option<String>,
}

impl Export {
    pub fn new(device: Arc<dyn BlockDevice>, read_only: bool) -> Export {
        Export { device, read_only, description: None }
    }
}

/// Who is on the other end of a connection, as far as the transport proved it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Client {
    /// The TLS-PSK identity whose key the client proved it holds; `None` on a
    /// plaintext connection (which has proved nothing).
    pub identity: Option<String>,
}

/// Maps export names to devices for one client. Called from async tasks:
/// keep it quick. An export the client may not open must look exactly like
/// one that does not exist (`None`, and absent from `list`).
pub trait ExportResolver: Send + Sync + 'static {
    /// `None` => the client gets `NBD_REP_ERR_UNKNOWN`.
    fn lookup(&self, client: &Client, name: &str) -> Option<Export>;
    /// Names for `NBD_OPT_LIST`: only what `client` may open.
    fn list(&self, client: &Client) -> Vec<String>;
    /// Whether `client` may still use `name`: asked for live connections by
    /// [`crate::NbdServer::revalidate`] when who may open it changed.
    fn allowed(&self, client: &Client, name: &str) -> bool {
        self.lookup(client, name).is_some()
    }
}

/// NBD error number for a device error.
pub fn errno_of(e: &io::Error) -> u32 {
    use crate::proto::*;
    if let Some(code) = e.raw_os_error() {
        let code = code as u32;
        if [EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP, ESHUTDOWN].contains(&code) {
            return code;
        }
        // EDQUOT and EFBIG are ENOSPC for the client (spec).
        if code == 122 || code == 27 {
            return ENOSPC;
        }
        if code == 30 {
            return EPERM; // EROFS
        }
    }
    match e.kind() {
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => EPERM,
        io::ErrorKind::InvalidInput => EINVAL,
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded | io::ErrorKind::FileTooLarge => ENOSPC,
        io::ErrorKind::Unsupported => ENOTSUP,
        io::ErrorKind::OutOfMemory => ENOMEM,
        _ => EIO,
    }
}

/// A resolver over a fixed, mutable table of exports (tests, tools).
#[derive(Default)]
pub struct StaticResolver {
    exports: std::sync::RwLock<std::collections::BTreeMap<String, Export>>,
}

impl StaticResolver {
    pub fn new() -> StaticResolver {
        StaticResolver::default()
    }

    pub fn insert(&self, name: &str, export: Export) {
        self.exports.write().unwrap_or_else(std::sync::PoisonError::into_inner).insert(name.to_string(), export);
    }

    pub fn remove(&self, name: &str) -> Option<Export> {
        self.exports.write().unwrap_or_else(std::sync::PoisonError::into_inner).remove(name)
    }
}

/// Serves every export to every client (tests, tools).
impl ExportResolver for StaticResolver {
    fn lookup(&self, _client: &Client, name: &str) -> Option<Export> {
        self.exports.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(name).cloned()
    }

    fn list(&self, _client: &Client) -> Vec<String> {
        self.exports.read().unwrap_or_else(std::sync::PoisonError::into_inner).keys().cloned().collect()
    }
}
