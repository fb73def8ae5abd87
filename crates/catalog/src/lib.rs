//! The catalog: durable rows for everything the engine owns (accounts, keys, volumes, instances, ...).
//!
//! The catalog knows rows, not API types: a row is `(kind, id, account, region, doc)` where `doc` is an
//! opaque document the engine serialises. Every state change is one [`Catalog::commit`] of a batch of
//! [`Change`]s, applied in a single transaction, so a process killed at any point restarts into either
//! the state before or the state after the batch.
//!
//! [`SqliteCatalog`] is the embedded default (WAL, `synchronous=NORMAL` plus a
//! group-committed fsync of the WAL, versioned migrations applied only by the data dir's owner).
//! [`PgCatalog`] keeps the same rows in a PostgreSQL database (asynchronous commits made durable by a
//! group-committed WAL flush, an advisory lock for its one owner); see `postgres/`.

#![forbid(unsafe_code)]

mod group_commit;
#[cfg(not(loom))]
mod postgres;
mod sqlite;

#[cfg(not(loom))]
pub use postgres::{CALL_TIMEOUT, Leader, Membership, NodeRecord, NodeTaken, OWNER_LOCK_KEY, PgCatalog, redact};
pub use sqlite::SqliteCatalog;

/// How a process opens the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// The data dir's owner (it holds the data dir lock): creates the database and applies
    /// pending migrations, in one transaction. A PostgreSQL owner also holds the database's owner
    /// lock for its life.
    Owner,
    /// Another process writing beside the owner (e.g. `blocksnap admin create-account` while the
    /// server runs): the database serialises the writes; the schema must already be current,
    /// since only the owner upgrades.
    Shared,
    /// Read-only tools (`blocksnap admin verify`): nothing is written; the schema must be current.
    ReadOnly,
}

/// One stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub kind: String,
    pub id: String,
    pub account: String,
    pub region: String,
    pub doc: String,
}

/// One element of an atomic batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put(Row),
    Delete { kind: String, id: String },
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog database error: {0}")]
    Db(#[from] rusqlite::Error),
    #[error(
        "catalog schema version {found} was written by a newer blocksnap (this binary reads up to {supported}); \
         run the newer binary, nothing was changed"
    )]
    TooNew { found: i64, supported: i64 },
    #[error(
        "catalog schema version {found} is older than this binary's ({supported}); it is upgraded when \
         `blocksnap serve` starts on the data dir"
    )]
    NeedsUpgrade { found: i64, supported: i64 },
    #[error("no catalog at {}", .0.display())]
    Missing(std::path::PathBuf),
    #[error("catalog io error: {0}")]
    Io(#[from] std::io::Error),
    #[cfg(not(loom))]
    #[error("PostgreSQL catalog: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("PostgreSQL refused the change: {0}")]
    Refused(String),
    #[error("catalog configuration: {0}")]
    Config(String),
    #[error("the PostgreSQL catalog is in use by another blocksnap ({0}); stop it first or use another database")]
    OwnerHeld(String),
    #[error("the catalog stopped accepting calls: {0}; restart blocksnap to reload it")]
    Poisoned(String),
    #[error("the catalog did not answer within {} s", .0.as_secs())]
    Timeout(std::time::Duration),
    #[error("the catalog is open read-only")]
    ReadOnly,
    #[error("the catalog is closed")]
    Closed,
}

pub type Result<T> = std::result::Result<T, CatalogError>;

/// Durable storage of rows. `commit` applies a batch atomically (visible to later reads, surviving a
/// crash of the process) and returns its sequence number; `sync(seq)` returns once that batch and all
/// before it are durable on disk. Splitting the two lets concurrent callers share one fsync
/// (group commit): nobody is answered before `sync` returns.
pub trait Catalog: Send + Sync + 'static {
    /// Every row of a kind (the engine loads its state at start).
    fn load_kind(&self, kind: &str) -> Result<Vec<Row>>;
    /// One row by kind and id.
    fn get(&self, kind: &str, id: &str) -> Result<Option<Row>>;
    /// Apply a batch atomically; returns its sequence number.
    fn commit(&self, changes: &[Change]) -> Result<u64>;
    /// Make every batch up to `seq` durable.
    fn sync(&self, seq: u64) -> Result<()>;
    /// Prove this process still owns the catalog, just before it removes bytes that only the owner
    /// may judge orphaned (objects no row of its memory wants): a cluster's leader asks the server
    /// (another node may lead now and own rows this memory lacks). One owner per file or database
    /// otherwise: nothing to prove beyond a poisoned catalog.
    fn still_owner(&self) -> Result<()> {
        Ok(())
    }
}
