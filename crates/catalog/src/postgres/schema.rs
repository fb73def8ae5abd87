//! The PostgreSQL catalog's schema: its migrations (append only) and the versioned
//! `blocksnap_schema` row, created and upgraded by the owner in one transaction.

use tokio_postgres::Client;

use crate::{CatalogError, Result};

use super::MIGRATE_LOCK_KEY;

/// Ordered schema migrations; the index + 1 is the schema version in `blocksnap_schema`.
/// Append only: never edit a migration that has shipped.
pub(super) const MIGRATIONS: &[&str] = &[
    // v1: one table of typed rows (the engine owns the document format inside `doc`); ids sort by
    // bytes as in SQLite (collation "C"). `blocksnap_flush` is the row a group-commit leader updates to
    // force a WAL flush.
    r#"CREATE TABLE rows (
        kind    text COLLATE "C" NOT NULL,
        id      text COLLATE "C" NOT NULL,
        account text NOT NULL,
        region  text NOT NULL,
        doc     text NOT NULL,
        PRIMARY KEY (kind, id)
    );
    CREATE INDEX rows_by_owner ON rows (kind, account, region);
    CREATE TABLE blocksnap_flush (one boolean PRIMARY KEY DEFAULT true CHECK (one), n bigint NOT NULL);
    INSERT INTO blocksnap_flush (n) VALUES (0);"#,
    // v2: several nodes (ARCHITECTURE.md, "Several nodes"). `node`: one row per node, refreshed by its
    // heartbeat. `cluster_leader`: the node whose writer session (pid + start time) holds the owner
    // lock; it names the leader only while that session still holds the lock.
    r#"CREATE TABLE node (
        id            text COLLATE "C" PRIMARY KEY,
        advertise_api text NOT NULL,
        nbd           text NOT NULL,
        zones         text[] NOT NULL DEFAULT '{}',
        free_bytes    bigint NOT NULL DEFAULT 0,
        started_at    timestamptz NOT NULL,
        heartbeat     timestamptz NOT NULL
    );
    CREATE TABLE cluster_leader (
        one           boolean PRIMARY KEY DEFAULT true CHECK (one),
        node_id       text NOT NULL,
        pid           integer NOT NULL,
        backend_start text NOT NULL,
        since         timestamptz NOT NULL
    );"#,
    // v3: the random id of the data dir each node runs on (recorded in that dir's `catalog` file):
    // a second process started with the same node id on another data dir is refused while the row's
    // heartbeat is fresh (its volumes' bytes are in the first one's dir). NULL: a row written
    // before v3, claimed by the next heartbeat of that node.
    r#"ALTER TABLE node ADD COLUMN dir_id text;"#,
];

/// Version and id of an existing schema; `None` for an empty database.
pub(super) async fn read_schema(client: &impl tokio_postgres::GenericClient) -> Result<Option<(i64, String)>> {
    let exists: bool = client.query_one("SELECT to_regclass('blocksnap_schema') IS NOT NULL", &[]).await?.get(0);
    if !exists {
        return Ok(None);
    }
    let r = client.query_one("SELECT version::bigint, catalog_id FROM blocksnap_schema", &[]).await?;
    Ok(Some((r.get(0), r.get(1))))
}

/// Refuse a schema this binary cannot read as is (non-owners never create or migrate).
pub(super) async fn check_version(client: &impl tokio_postgres::GenericClient) -> Result<String> {
    let supported = MIGRATIONS.len() as i64;
    match read_schema(client).await? {
        None => Err(CatalogError::NeedsUpgrade { found: 0, supported }),
        Some((v, _)) if v > supported => Err(CatalogError::TooNew { found: v, supported }),
        Some((v, _)) if v < supported => Err(CatalogError::NeedsUpgrade { found: v, supported }),
        Some((_, id)) => Ok(id),
    }
}

/// Bring the schema up to `migrations.len()`: the pending migrations and the new version in one
/// transaction (an interrupted upgrade leaves the old version intact). A newer schema is refused
/// before anything is written. Returns the catalog id.
pub(super) async fn migrate(client: &mut Client, migrations: &[&str]) -> Result<String> {
    let supported = migrations.len() as i64;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK_KEY]).await?;
    let (version, id) = match read_schema(&tx).await? {
        Some((v, _)) if v > supported => {
            tx.rollback().await?;
            return Err(CatalogError::TooNew { found: v, supported });
        }
        Some((v, id)) if v == supported => {
            // Nothing written; ends the transaction (and its lock) now.
            tx.commit().await?;
            return Ok(id);
        }
        Some((v, id)) => {
            tracing::info!(from = v, to = supported, "upgrading the catalog schema");
            (v, id)
        }
        None => {
            tracing::info!(version = supported, "creating the catalog");
            tx.batch_execute(
                "CREATE TABLE blocksnap_schema (
                     one boolean PRIMARY KEY DEFAULT true CHECK (one),
                     version integer NOT NULL,
                     catalog_id text NOT NULL,
                     created timestamptz NOT NULL DEFAULT now());
                 INSERT INTO blocksnap_schema (version, catalog_id) VALUES (0, gen_random_uuid()::text);",
            )
            .await?;
            let id: String = tx.query_one("SELECT catalog_id FROM blocksnap_schema", &[]).await?.get(0);
            (0, id)
        }
    };
    for sql in migrations.iter().skip(version as usize) {
        tx.batch_execute(sql).await?;
    }
    tx.execute("UPDATE blocksnap_schema SET version = $1", &[&(supported as i32)]).await?;
    tx.commit().await?;
    Ok(id)
}
