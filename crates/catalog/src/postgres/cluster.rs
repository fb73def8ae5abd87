//! Membership of several nodes sharing one PostgreSQL catalog: each node's row in `node` (its
//! heartbeat), and who leads. The leader is the process whose catalog writer holds the owner lock
//! ([`super::OWNER_LOCK_KEY`]); `cluster_leader` names it together with that writer's session, and
//! is believed only while that same session still holds the lock (`pg_locks`), so a leader that died
//! is never followed, whatever its row says.
//!
//! A [`Membership`] is one plain connection per node, holding no lock: it runs on the caller's
//! runtime (the node's), reconnects after a failure, and never writes the catalog's rows.

use std::time::Duration;

use postgres_openssl::MakeTlsConnector;
use tokio_postgres::Client;

use super::{CALL_TIMEOUT, OWNER_LOCK_KEY, client_config};
use crate::{CatalogError, OpenMode, Result};

/// What a node says about itself at each heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub id: String,
    /// The URL other nodes forward API calls to.
    pub advertise_api: String,
    /// Where its NBD exports are served (`host:port`).
    pub nbd: String,
    /// The availability zones it serves (configuration; empty: any).
    pub zones: Vec<String>,
    /// Free bytes of its data dir's filesystem.
    pub free_bytes: i64,
    /// The random id of the data dir it runs on (`dir=` in `DATA/catalog`).
    pub dir_id: String,
}

/// Why [`Membership::heartbeat`] did not write: the node's row is another data dir's.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeTaken {
    /// The data dir id the row names.
    pub dir_id: String,
    /// How long ago that node's last heartbeat was.
    pub heartbeat_age: Duration,
}

/// The current leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    pub node_id: String,
    pub advertise_api: String,
}

/// A node's membership connection (see the module docs).
pub struct Membership {
    config: tokio_postgres::Config,
    tls: MakeTlsConnector,
    client: tokio::sync::Mutex<Option<Client>>,
}

/// `pg_locks` row of the owner lock in this database (an advisory lock on a bigint key: its high
/// half in `classid`, its low half in `objid`).
pub(super) const OWNER_LOCK_ROW: &str = "l.locktype = 'advisory' AND l.granted
    AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
    AND l.classid = ($1::bigint >> 32)::oid AND l.objid = ($1::bigint & 4294967295)::oid";

impl Membership {
    /// Settings only: connects on first use (call inside a tokio runtime).
    pub fn new(url: &str) -> Result<Self> {
        let (config, tls) = client_config(url, OpenMode::Shared)?;
        Ok(Membership { config, tls, client: tokio::sync::Mutex::new(None) })
    }

    /// Run `f` on the connection (made if needed), bounded by [`CALL_TIMEOUT`]; a failed call drops
    /// the connection so the next one reconnects.
    async fn with<T>(
        &self,
        f: impl AsyncFnOnce(&Client) -> std::result::Result<T, tokio_postgres::Error>,
    ) -> Result<T> {
        let mut slot = self.client.lock().await;
        let r = tokio::time::timeout(CALL_TIMEOUT, async {
            if slot.as_ref().is_none_or(Client::is_closed) {
                let (client, conn) = self.config.connect(self.tls.clone()).await?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "membership connection ended");
                    }
                });
                *slot = Some(client);
            }
            match slot.as_ref() {
                Some(c) => f(c).await.map_err(CatalogError::from),
                None => Err(CatalogError::Closed),
            }
        })
        .await
        .unwrap_or(Err(CatalogError::Timeout(CALL_TIMEOUT)));
        if r.is_err() {
            *slot = None;
        }
        r
    }

    /// Publish this node's record and refresh its heartbeat (the table exists once the first leader
    /// migrated the schema; before that this fails and the caller retries), unless the row of this
    /// node id names another data dir: then nothing is written and the row's owner is returned. With
    /// `replace_stale`, a row whose heartbeat is older than that is taken over (the operator said
    /// its data dir is gone); a fresh one never is.
    pub async fn heartbeat(
        &self,
        node: &NodeRecord,
        started_at: std::time::SystemTime,
        replace_stale: Option<Duration>,
    ) -> Result<std::result::Result<(), NodeTaken>> {
        let started = started_at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        let replace = replace_stale.is_some();
        let stale = replace_stale.unwrap_or_default().as_secs_f64();
        self.with(async |c| {
            let wrote = c
                .query_opt(
                    "INSERT INTO node (id, advertise_api, nbd, zones, free_bytes, started_at, heartbeat, dir_id)
                     VALUES ($1, $2, $3, $4, $5, to_timestamp($6), now(), $7)
                     ON CONFLICT (id) DO UPDATE SET advertise_api = $2, nbd = $3, zones = $4, free_bytes = $5,
                         started_at = to_timestamp($6), heartbeat = now(), dir_id = $7
                     WHERE node.dir_id IS NULL OR node.dir_id = $7
                        OR ($8 AND node.heartbeat < now() - make_interval(secs => $9))
                     RETURNING 1",
                    &[
                        &node.id,
                        &node.advertise_api,
                        &node.nbd,
                        &node.zones,
                        &node.free_bytes,
                        &started,
                        &node.dir_id,
                        &replace,
                        &stale,
                    ],
                )
                .await?;
            if wrote.is_some() {
                return Ok(Ok(()));
            }
            let r = c
                .query_one(
                    "SELECT coalesce(dir_id, ''), extract(epoch FROM (now() - heartbeat))::float8
                     FROM node WHERE id = $1",
                    &[&node.id],
                )
                .await?;
            let age: f64 = r.get(1);
            Ok(Err(NodeTaken { dir_id: r.get(0), heartbeat_age: Duration::from_secs_f64(age.max(0.0)) }))
        })
        .await
    }

    /// The live leader, if any: the `cluster_leader` row whose session holds the owner lock now (and
    /// whose node has published its address). `None` also while a new leader has the lock but has
    /// not claimed it yet (a moment).
    pub async fn leader(&self) -> Result<Option<Leader>> {
        let sql = format!(
            "SELECT c.node_id, n.advertise_api FROM cluster_leader c JOIN node n ON n.id = c.node_id
             WHERE EXISTS (SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                           WHERE {OWNER_LOCK_ROW} AND l.pid = c.pid AND a.backend_start::text = c.backend_start)"
        );
        self.with(async |c| {
            let row = c.query_opt(&sql, &[&OWNER_LOCK_KEY]).await?;
            Ok(row.map(|r| Leader { node_id: r.get(0), advertise_api: r.get(1) }))
        })
        .await
    }

    /// The catalog's id (`blocksnap_schema`), once the first leader has created the schema.
    pub async fn catalog_id(&self) -> Result<Option<String>> {
        self.with(async |c| {
            let exists: bool = c.query_one("SELECT to_regclass('blocksnap_schema') IS NOT NULL", &[]).await?.get(0);
            if !exists {
                return Ok(None);
            }
            Ok(Some(c.query_one("SELECT catalog_id FROM blocksnap_schema", &[]).await?.get(0)))
        })
        .await
    }

    /// Whether any session holds the owner lock (a leader, or one that is starting).
    pub async fn owner_lock_held(&self) -> Result<bool> {
        let sql = format!("SELECT EXISTS (SELECT 1 FROM pg_locks l WHERE {OWNER_LOCK_ROW})");
        self.with(async |c| Ok(c.query_one(&sql, &[&OWNER_LOCK_KEY]).await?.get(0))).await
    }

    /// Every node's record and the age of its heartbeat.
    pub async fn nodes(&self) -> Result<Vec<(NodeRecord, Duration)>> {
        self.with(async |c| {
            let rows = c
                .query(
                    "SELECT id, advertise_api, nbd, zones, free_bytes,
                            extract(epoch FROM (now() - heartbeat))::float8, coalesce(dir_id, '')
                     FROM node ORDER BY id",
                    &[],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| {
                    let age: f64 = r.get(5);
                    (
                        NodeRecord {
                            id: r.get(0),
                            advertise_api: r.get(1),
                            nbd: r.get(2),
                            zones: r.get(3),
                            free_bytes: r.get(4),
                            dir_id: r.get(6),
                        },
                        Duration::from_secs_f64(age.max(0.0)),
                    )
                })
                .collect())
        })
        .await
    }
}
