//! NBD server for blocksnap: fixed-newstyle handshake, `GO`/`INFO`/
//! `EXPORT_NAME`/`LIST`/`ABORT`, structured replies with the
//! `base:allocation` meta context, and READ, WRITE (+FUA), FLUSH, TRIM,
//! WRITE_ZEROES (+NO_HOLE, FAST_ZERO), BLOCK_STATUS, CACHE, DISC. Requests on
//! one connection run concurrently on blocking threads and are answered out of
//! order by a single writer task. With [`tls::TlsConfig`] every client must
//! `STARTTLS` and authenticate with a pre-shared key first; the resolver sees
//! its identity ([`Client`]) and serves only what that identity may open.
//!
//! Metrics (labels `export`, `op`): `blocksnap_nbd_requests_total`,
//! `blocksnap_nbd_bytes_total`, `blocksnap_nbd_errors_total`,
//! `blocksnap_nbd_request_duration_seconds` (histogram); gauge
//! `blocksnap_nbd_connections` (label `export`).

#![forbid(unsafe_code)]

mod device;
mod metrics;
pub mod proto;
mod server;
pub mod tls;

pub use device::{BlockDevice, Client, Export, ExportResolver, Extent, StaticResolver, errno_of};
pub use server::{NbdServer, ServerConfig};
