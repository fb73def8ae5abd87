use std::path::{Path, PathBuf};
use std::sync::{Mutex, TryLockError};

use rusqlite::{Connection, OptionalExtension, params};

use crate::group_commit::GroupCommit;
use crate::{Catalog, CatalogError, Change, OpenMode, Result, Row};

/// Ordered schema migrations; the index + 1 is the schema version recorded in `PRAGMA user_version`.
/// Append only: never edit a migration that has shipped.
const MIGRATIONS: &[&str] = &[
    // v1: one table of typed rows; the engine owns the document format inside `doc`.
    "CREATE TABLE rows (
        kind    TEXT NOT NULL,
        id      TEXT NOT NULL,
        account TEXT NOT NULL,
        region  TEXT NOT NULL,
        doc     TEXT NOT NULL,
        PRIMARY KEY (kind, id)
    ) WITHOUT ROWID;
    CREATE INDEX rows_by_owner ON rows (kind, account, region);",
];

/// Commits between two checkpoints of the WAL into the database file (SQLite's own automatic
/// checkpoint runs every 1000 WAL pages; a commit writes a few pages).
const CHECKPOINT_EVERY: u64 = 256;

/// The embedded catalog: one SQLite database in WAL mode.
///
/// Commits write the WAL without fsync (`synchronous=NORMAL`: a killed process loses nothing);
/// `sync` then fdatasyncs the WAL once for every commit made so far, leader/follower style, so
/// concurrent requests share one fsync.
///
/// Nothing in `commit` waits for the disk but the WAL write itself: the owner turns SQLite's
/// automatic checkpoint off (it would run inside a commit, with two fsyncs, while the engine holds
/// its lock) and checkpoints from `sync` instead, on a connection of its own, after every
/// [`CHECKPOINT_EVERY`] commits (`PASSIVE`: never waits for, nor blocks, the writer).
pub struct SqliteCatalog {
    conn: Mutex<Connection>,
    path: PathBuf,
    wal_path: PathBuf,
    /// The WAL file, opened on the first sync (it exists once anything was committed).
    wal: Mutex<Option<std::fs::File>>,
    group: GroupCommit,
    /// The owner's checkpoints (others keep SQLite's automatic ones).
    checkpoint: Option<Mutex<Checkpointer>>,
}

#[derive(Default)]
struct Checkpointer {
    /// Opened on the first checkpoint.
    conn: Option<Connection>,
    /// The commit sequence number the last checkpoint covered.
    at: u64,
}

impl SqliteCatalog {
    /// Open as the data dir's owner (see [`OpenMode::Owner`]).
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_mode(path, OpenMode::Owner)
    }

    pub fn open_mode(path: &Path, mode: OpenMode) -> Result<Self> {
        if mode != OpenMode::Owner && !path.exists() {
            return Err(CatalogError::Missing(path.to_path_buf()));
        }
        let conn = match mode {
            OpenMode::ReadOnly => Connection::open_with_flags(
                path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?,
            OpenMode::Owner | OpenMode::Shared => Connection::open(path)?,
        };
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        // A newer schema is refused before anything (even the journal mode) is written.
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > Self::schema_version() {
            return Err(CatalogError::TooNew { found: version, supported: Self::schema_version() });
        }
        if mode != OpenMode::ReadOnly {
            // WAL lets `blocksnap admin` write while the server runs.
            conn.pragma_update(None, "journal_mode", "WAL")?;
            // Durability comes from `sync` (group commit on the WAL file), not from each commit.
            conn.pragma_update(None, "synchronous", "NORMAL")?;
        }
        if mode == OpenMode::Owner {
            // Checkpoints run from `sync`, never inside a commit (see the type's docs).
            conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        }
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let cat = SqliteCatalog {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
            wal_path: PathBuf::from(wal),
            wal: Mutex::new(None),
            group: GroupCommit::new(),
            checkpoint: (mode == OpenMode::Owner).then(|| Mutex::new(Checkpointer::default())),
        };
        match mode {
            OpenMode::Owner => cat.migrate()?,
            OpenMode::Shared | OpenMode::ReadOnly => cat.check_version()?,
        }
        Ok(cat)
    }

    /// The schema version this binary writes.
    pub fn schema_version() -> i64 {
        MIGRATIONS.len() as i64
    }

    /// Refuse a schema this binary cannot read as is (newer, or older and not yet upgraded).
    fn check_version(&self) -> Result<()> {
        let version: i64 = self.lock().query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let supported = Self::schema_version();
        if version > supported {
            return Err(CatalogError::TooNew { found: version, supported });
        }
        if version < supported {
            return Err(CatalogError::NeedsUpgrade { found: version, supported });
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a half-applied transaction (SQLite rolls back),
        // so a poisoned lock is still safe to use.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// fdatasync the WAL through a kept handle (SQLite keeps the same file while a connection is open).
    fn sync_wal(&self) -> std::io::Result<()> {
        let mut wal = self.wal.lock().unwrap_or_else(|p| p.into_inner());
        if wal.is_none() {
            *wal = Some(std::fs::File::open(&self.wal_path)?);
        }
        let result = wal.as_ref().map_or(Ok(()), |f| f.sync_data());
        if result.is_err() {
            // Reopen next time (the WAL may have been recreated).
            *wal = None;
        }
        result
    }

    fn migrate(&self) -> Result<()> {
        migrate(&mut self.lock(), MIGRATIONS)
    }

    /// Copy the WAL into the database file once [`CHECKPOINT_EVERY`] commits have accumulated, on
    /// the checkpointer's own connection (so a commit never waits for it: `PASSIVE` takes no
    /// writer lock). One caller at a time; the others skip. A checkpoint that fails is retried
    /// at a later sync; the WAL stays valid meanwhile.
    fn maybe_checkpoint(&self) {
        let Some(cp) = &self.checkpoint else { return };
        let mut cp = match cp.try_lock() {
            Ok(g) => g,
            Err(TryLockError::WouldBlock) => return,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
        };
        let now = self.group.last();
        if now < cp.at.saturating_add(CHECKPOINT_EVERY) {
            return;
        }
        if cp.conn.is_none() {
            match Connection::open(&self.path) {
                Ok(c) => cp.conn = Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "opening the catalog's checkpoint connection");
                    return;
                }
            }
        }
        let Some(conn) = &cp.conn else { return };
        match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(0)) {
            Ok(_) => cp.at = now,
            Err(e) => tracing::warn!(error = %e, "checkpointing the catalog's WAL"),
        }
    }
}

/// Bring the schema up to `migrations.len()`: every pending migration and the new version in one
/// transaction (an upgrade interrupted at any point leaves the old version intact), taken with
/// the write lock first so two openers cannot both migrate.
fn migrate(conn: &mut Connection, migrations: &[&str]) -> Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let supported = migrations.len() as i64;
    if version > supported {
        return Err(CatalogError::TooNew { found: version, supported });
    }
    if version == supported {
        return Ok(());
    }
    if version == 0 {
        tracing::info!(version = supported, "creating the catalog");
    } else {
        tracing::info!(from = version, to = supported, "upgrading the catalog schema");
    }
    for sql in migrations.iter().skip(version as usize) {
        tx.execute_batch(sql)?;
    }
    tx.pragma_update(None, "user_version", supported)?;
    tx.commit()?;
    Ok(())
}

fn row_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row { kind: r.get(0)?, id: r.get(1)?, account: r.get(2)?, region: r.get(3)?, doc: r.get(4)? })
}

impl Catalog for SqliteCatalog {
    fn load_kind(&self, kind: &str) -> Result<Vec<Row>> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare_cached("SELECT kind, id, account, region, doc FROM rows WHERE kind = ?1 ORDER BY id")?;
        let rows = stmt.query_map(params![kind], row_from)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    fn get(&self, kind: &str, id: &str) -> Result<Option<Row>> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare_cached("SELECT kind, id, account, region, doc FROM rows WHERE kind = ?1 AND id = ?2")?;
        Ok(stmt.query_row(params![kind, id], row_from).optional()?)
    }

    fn commit(&self, changes: &[Change]) -> Result<u64> {
        if changes.is_empty() {
            return Ok(self.group.last());
        }
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        {
            let mut put = tx.prepare_cached(
                "INSERT INTO rows (kind, id, account, region, doc) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (kind, id) DO UPDATE SET account = ?3, region = ?4, doc = ?5",
            )?;
            let mut del = tx.prepare_cached("DELETE FROM rows WHERE kind = ?1 AND id = ?2")?;
            for c in changes {
                match c {
                    Change::Put(r) => {
                        put.execute(params![r.kind, r.id, r.account, r.region, r.doc])?;
                    }
                    Change::Delete { kind, id } => {
                        del.execute(params![kind, id])?;
                    }
                }
            }
        }
        tx.commit()?;
        // Numbered while the connection lock is held: sequence order is commit order.
        Ok(self.group.committed())
    }

    fn sync(&self, upto: u64) -> Result<()> {
        // One fdatasync of the WAL covers every commit made so far.
        self.group.sync(upto, || self.sync_wal()).map_err(CatalogError::Io)?;
        self.maybe_checkpoint();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, doc: &str) -> Row {
        Row { kind: "volume".into(), id: id.into(), account: "1".into(), region: "r".into(), doc: doc.into() }
    }

    #[test]
    fn batch_is_atomic_and_persistent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.db");
        {
            let c = SqliteCatalog::open(&path).unwrap();
            c.commit(&[Change::Put(row("a", "1")), Change::Put(row("b", "2"))]).unwrap();
            c.commit(&[Change::Put(row("a", "3")), Change::Delete { kind: "volume".into(), id: "b".into() }]).unwrap();
        }
        let c = SqliteCatalog::open(&path).unwrap();
        let rows = c.load_kind("volume").unwrap();
        assert_eq!(rows, vec![row("a", "3")]);
        assert_eq!(c.get("volume", "b").unwrap(), None);
    }

    #[test]
    fn refuses_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.db");
        drop(SqliteCatalog::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        assert!(matches!(SqliteCatalog::open(&path), Err(CatalogError::TooNew { found: 99, .. })));
        assert!(matches!(
            SqliteCatalog::open_mode(&path, OpenMode::ReadOnly),
            Err(CatalogError::TooNew { found: 99, .. })
        ));
    }

    #[test]
    fn upgrade_is_atomic_and_keeps_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.db");
        {
            let c = SqliteCatalog::open(&path).unwrap();
            c.commit(&[Change::Put(row("a", "1"))]).unwrap();
        }
        let version = |conn: &Connection| conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0)).unwrap();
        let mut conn = Connection::open(&path).unwrap();
        // A later migration that fails halfway: nothing of it stays, the version is unchanged.
        let broken = [MIGRATIONS[0], "CREATE TABLE extra (x TEXT); INSERT INTO nowhere VALUES (1);"];
        assert!(migrate(&mut conn, &broken).is_err());
        assert_eq!(version(&conn), 1);
        let extra: i64 =
            conn.query_row("SELECT count(*) FROM sqlite_master WHERE name = 'extra'", [], |r| r.get(0)).unwrap();
        assert_eq!(extra, 0, "a failed upgrade left part of itself");
        // A good one: applied once, rows kept.
        let good = [MIGRATIONS[0], "ALTER TABLE rows ADD COLUMN note TEXT NOT NULL DEFAULT '';"];
        migrate(&mut conn, &good).unwrap();
        migrate(&mut conn, &good).unwrap();
        assert_eq!(version(&conn), 2);
        let doc: String = conn.query_row("SELECT doc FROM rows WHERE id = 'a'", [], |r| r.get(0)).unwrap();
        assert_eq!(doc, "1");
        drop(conn);
        // And this binary (schema 1) now refuses it, untouched.
        let before = std::fs::read(&path).unwrap();
        assert!(matches!(SqliteCatalog::open(&path), Err(CatalogError::TooNew { found: 2, supported: 1 })));
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[test]
    fn only_the_owner_creates_or_upgrades() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.db");
        assert!(matches!(SqliteCatalog::open_mode(&path, OpenMode::Shared), Err(CatalogError::Missing(_))));
        assert!(!path.exists());
        // An older (here: empty, version 0) database is refused by the non-owners, upgraded by the owner.
        drop(Connection::open(&path).unwrap());
        assert!(matches!(
            SqliteCatalog::open_mode(&path, OpenMode::Shared),
            Err(CatalogError::NeedsUpgrade { found: 0, .. })
        ));
        assert!(matches!(
            SqliteCatalog::open_mode(&path, OpenMode::ReadOnly),
            Err(CatalogError::NeedsUpgrade { found: 0, .. })
        ));
        let owner = SqliteCatalog::open(&path).unwrap();
        owner.commit(&[Change::Put(row("a", "1"))]).unwrap();
        let shared = SqliteCatalog::open_mode(&path, OpenMode::Shared).unwrap();
        shared.commit(&[Change::Put(row("b", "2"))]).unwrap();
        let ro = SqliteCatalog::open_mode(&path, OpenMode::ReadOnly).unwrap();
        assert_eq!(ro.load_kind("volume").unwrap().len(), 2);
        assert!(ro.commit(&[Change::Put(row("c", "3"))]).is_err());
    }
}

#[cfg(test)]
mod sync_tests {
    use super::*;

    #[test]
    fn sync_is_shared_and_ordered() {
        let dir = tempfile::tempdir().unwrap();
        let c = std::sync::Arc::new(SqliteCatalog::open(&dir.path().join("c.db")).unwrap());
        let row = |i: usize| Row {
            kind: "k".into(),
            id: i.to_string(),
            account: "a".into(),
            region: "r".into(),
            doc: "{}".into(),
        };
        let s1 = c.commit(&[Change::Put(row(1))]).unwrap();
        let s2 = c.commit(&[Change::Put(row(2))]).unwrap();
        assert!(s2 > s1);
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let c = c.clone();
                std::thread::spawn(move || {
                    let s = c.commit(&[Change::Put(row(10 + i))]).unwrap();
                    c.sync(s).unwrap();
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        c.sync(s2).unwrap();
        drop(c);
        let c = SqliteCatalog::open(&dir.path().join("c.db")).unwrap();
        assert_eq!(c.load_kind("k").unwrap().len(), 10);
    }

    /// The owner's WAL is checkpointed from `sync`, not inside commits: after many commits the WAL
    /// holds only the frames since the last checkpoint, and the rows are all there.
    #[test]
    fn wal_is_checkpointed_from_sync() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let c = SqliteCatalog::open(&path).unwrap();
        let auto: i64 = c.lock().query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0)).unwrap();
        assert_eq!(auto, 0, "no checkpoint inside a commit");
        let n = 3 * CHECKPOINT_EVERY as usize;
        for i in 0..n {
            let r =
                Row { kind: "k".into(), id: i.to_string(), account: "a".into(), region: "r".into(), doc: "{}".into() };
            let s = c.commit(&[Change::Put(r)]).unwrap();
            c.sync(s).unwrap();
        }
        let other = Connection::open(&path).unwrap();
        let (log, done): (i64, i64) =
            other.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get(1)?, r.get(2)?))).unwrap();
        assert!(log < n as i64, "the WAL was restarted after a checkpoint: {log} frames for {n} commits");
        assert!(done <= log);
        assert_eq!(c.load_kind("k").unwrap().len(), n);
    }
}
