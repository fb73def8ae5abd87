//! The catalog: durable rows for everything the engine owns (accounts, keys, volumes, instances, ...).
//!
//! The catalog knows rows, not API types: a row is `(kind, id, account, region, doc)` where `doc` is an
//! opaque document the engine serialises. Every state change is one [`Catalog::commit`] of a batch of
//! [`Change`]s, applied in a single transaction, so a process killed at any point restarts into either
//! the state before or the state after the batch.
//!
//! [`SqliteCatalog`] is the embedded default (WAL, `synchronous=NORMAL` plus a
//! group-committed fsync of the WAL, versioned migrations applied only by the data dir's owner). The trait
//! is the seam where a PostgreSQL catalog plugs in without touching the engine.

mod group_commit;
mod sqlite;

pub use sqlite::{OpenMode, SqliteCatalog};

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
}
