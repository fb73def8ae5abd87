//! Several nodes on one PostgreSQL catalog (ARCHITECTURE.md, "Several nodes").
//!
//! One node leads: it holds the catalog's owner lock on its writer session and runs the engine (the
//! control plane and every background job). The others are followers: they publish their
//! membership row, forward every API call to the leader ([`forward`]) and poll for the lock; the
//! one that gets it opens the catalog through the normal start path and leads. A leader whose
//! session ends is fenced: its catalog refuses every call and the process exits (non-zero: a
//! supervisor restarts it as a follower).

pub mod forward;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use blocksnap_catalog::{CatalogError, Leader, Membership, NodeRecord, PgCatalog};
use tokio::sync::watch;

/// How often a node refreshes its membership row.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// How often a follower looks for a leader (and tries to become one when there is none).
pub const ELECTION_POLL: Duration = Duration::from_millis(250);
/// How often the leader proves its session still holds the leadership, and the bound on each proof:
/// shorter than the server's detection of a lost leader (TCP keepalives: 5 s idle + 3 × 2 s), so a
/// leader cut off from the server stops before a follower can take over, yet long enough that a
/// busy server does not fence a healthy leader.
const FENCE_POLL: Duration = Duration::from_millis(250);
const FENCE_BOUND: Duration = Duration::from_secs(5);
/// The exit status of a leader that lost its leadership (a supervisor restarts it as a follower).
pub const EXIT_FENCED: i32 = 3;
/// A node row whose heartbeat is older than this is stale: its process is gone (or cut off for
/// longer than any fence), so `--replace-node` may take it over for another data dir.
pub const NODE_STALE: Duration = Duration::from_secs(15);

/// [`NODE_STALE`], or `BLOCKSNAP_NODE_STALE_MS` (tests: a takeover without a 15 s wait).
fn node_stale() -> Duration {
    std::env::var("BLOCKSNAP_NODE_STALE_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(NODE_STALE, Duration::from_millis)
}

/// This node, as the flags and the configuration file describe it.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: String,
    pub advertise_api: String,
    pub nbd: String,
    pub zones: Vec<String>,
    pub data_dir: PathBuf,
    /// `--replace-node`: this node's previous data dir is gone; take over its row once stale.
    pub replace: bool,
}

impl NodeConfig {
    /// `None` without a node id (a single node: nothing changes).
    pub fn resolve(
        flag: Option<String>,
        file: &crate::config::Config,
        (listen, https): (SocketAddr, bool),
        nbd_listen: SocketAddr,
        data_dir: &Path,
    ) -> anyhow::Result<Option<NodeConfig>> {
        let Some(id) = flag.or_else(|| file.node_id.as_ref().map(ToString::to_string)) else {
            return Ok(None);
        };
        let id = id.trim().to_string();
        let valid = !id.is_empty()
            && id.len() <= 63
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if !valid {
            anyhow::bail!("--node-id {id:?}: use a small integer or a name of letters, digits, '-', '_' or '.'");
        }
        let advertise_api = match &file.advertise_api {
            Some(url) => {
                let url = url.trim_end_matches('/').to_string();
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    anyhow::bail!("advertise_api {url:?}: expected an http:// or https:// URL");
                }
                url
            }
            None if listen.ip().is_unspecified() => anyhow::bail!(
                "--listen {listen} is not an address other nodes can reach: set advertise_api in the configuration file"
            ),
            None => format!("{}://{listen}", if https { "https" } else { "http" }),
        };
        Ok(Some(NodeConfig {
            id,
            advertise_api,
            nbd: nbd_listen.to_string(),
            zones: file.zones.clone(),
            data_dir: data_dir.to_path_buf(),
            replace: false,
        }))
    }

    fn record(&self, dir_id: &str) -> NodeRecord {
        NodeRecord {
            dir_id: dir_id.to_string(),
            id: self.id.clone(),
            advertise_api: self.advertise_api.clone(),
            nbd: self.nbd.clone(),
            zones: self.zones.clone(),
            free_bytes: free_bytes(&self.data_dir).unwrap_or(0),
        }
    }
}

fn free_bytes(dir: &Path) -> Option<i64> {
    let s = rustix::fs::statvfs(dir).ok()?;
    i64::try_from(s.f_bavail.saturating_mul(s.f_frsize)).ok()
}

/// A cluster needs every served region's snapshot store (and archive tier) where every node reaches
/// it: a bucket, or the configured shared directory. A local directory would hold snapshots only
/// one node can read, so it is refused before anything starts.
pub fn check_shared_storage(file: &crate::config::Config, served: &[String]) -> anyhow::Result<()> {
    if file.shared_dir.is_some() {
        return Ok(());
    }
    let local_stores: Vec<&str> = served.iter().filter(|r| !file.stores.contains_key(*r)).map(String::as_str).collect();
    let local_archives: Vec<&str> = served
        .iter()
        .filter(|r| file.archives.get(*r).is_none_or(|a| a.bucket.is_none()))
        .map(String::as_str)
        .collect();
    if !local_stores.is_empty() || !local_archives.is_empty() {
        anyhow::bail!(
            "several nodes need shared snapshot storage: every served region needs a bucket \
             ([stores.<region>] and [archives.<region>] with `bucket`), or set `shared_dir` to a directory \
             every node mounts; local snapshot stores: [{}], local archive tiers: [{}] \
             (limit the served regions with `regions = [...]`)",
            local_stores.join(", "),
            local_archives.join(", ")
        );
    }
    Ok(())
}

/// A running node: its membership and who it follows.
pub struct Node {
    pub config: NodeConfig,
    members: Arc<Membership>,
    leader: watch::Sender<Option<Leader>>,
    /// This data dir's id, once the node's row was claimed for it (heartbeats wait for it).
    dir_id: std::sync::OnceLock<String>,
}

impl Node {
    /// Start the heartbeat (call inside the node's runtime).
    pub fn start(config: NodeConfig, url: &str) -> anyhow::Result<Arc<Node>> {
        let members = Arc::new(Membership::new(url).context("the cluster's membership connection")?);
        let (leader, _) = watch::channel(None);
        let node = Arc::new(Node { config, members, leader, dir_id: std::sync::OnceLock::new() });
        let n = node.clone();
        tokio::spawn(async move {
            let started = SystemTime::now();
            let mut tick = tokio::time::interval(HEARTBEAT);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut failing = false;
            loop {
                tick.tick().await;
                let Some(dir_id) = n.dir_id.get() else { continue };
                match n.members.heartbeat(&n.config.record(dir_id), started, None).await {
                    Ok(Ok(())) => failing = false,
                    Ok(Err(taken)) => {
                        // Only after this process was silent for NODE_STALE and another data dir
                        // was started as this node with --replace-node.
                        tracing::error!(node_id = %n.config.id, other_dir_id = %taken.dir_id, "this node's row was taken over by another data dir (--replace-node): stopping now");
                        std::process::exit(EXIT_FENCED);
                    }
                    // Before the first leader created the schema, or while the server is away.
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e, "cluster heartbeat failed; retrying");
                    }
                    Err(_) => {}
                }
            }
        });
        Ok(node)
    }

    /// Publish this node's record now (a new leader does, before it claims the leadership, so
    /// followers find its address at once).
    pub async fn announce(&self) -> anyhow::Result<()> {
        let dir_id = self.dir_id.get().context("this node's row was never claimed")?;
        match self.members.heartbeat(&self.config.record(dir_id), SystemTime::now(), None).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(taken)) => Err(self.refusal(dir_id, &taken)),
            Err(e) => Err(anyhow::Error::from(e).context("publishing this node's record")),
        }
    }

    /// Claim this node's row for this data dir (`--replace-node`: even a stale row of another
    /// one). `Ok(false)`: not now (no schema yet, the server away).
    async fn claim(&self, dir_id: &str) -> anyhow::Result<bool> {
        let replace = self.config.replace.then_some(node_stale());
        match self.members.heartbeat(&self.config.record(dir_id), SystemTime::now(), replace).await {
            Ok(Ok(())) => {
                let _ = self.dir_id.set(dir_id.to_string());
                tracing::info!(node_id = %self.config.id, dir_id, "this node's row is this data dir's");
                Ok(true)
            }
            Ok(Err(taken)) => Err(self.refusal(dir_id, &taken)),
            Err(e) => {
                tracing::debug!(error = %e, "could not claim this node's row yet");
                Ok(false)
            }
        }
    }

    /// Why this data dir may not run as this node: the node's row is another data dir's.
    fn refusal(&self, dir_id: &str, taken: &blocksnap_catalog::NodeTaken) -> anyhow::Error {
        let (id, other, age) = (&self.config.id, &taken.dir_id, taken.heartbeat_age.as_secs());
        if taken.heartbeat_age < node_stale() {
            anyhow::anyhow!(
                "node {id} is running in another process on another data dir (data dir id {other}, last                  heartbeat {age} s ago; this data dir's id is {dir_id}): give every process its own --node-id, or                  stop the other process first{}",
                if self.config.replace {
                    format!(" (--replace-node only takes over a node silent for {} s)", node_stale().as_secs())
                } else {
                    String::new()
                }
            )
        } else {
            anyhow::anyhow!(
                "node {id} last ran on another data dir (data dir id {other}, last heartbeat {age} s ago; this                  data dir's id is {dir_id}) and its volumes' bytes are there: start node {id} on that data dir                  again, or give this one another --node-id; if that data dir is lost for good, start this one                  with --replace-node (node {id}'s volumes' bytes are lost: restore them from snapshots)"
            )
        }
    }

    /// Who this node forwards to (`None`: nobody leads now).
    pub fn leader(&self) -> watch::Receiver<Option<Leader>> {
        self.leader.subscribe()
    }

    /// Follow until this node wins the election; returns the catalog it now owns. Polls every
    /// [`ELECTION_POLL`]: a live leader is published to the forwarder; without one, and with the lock
    /// free, this node tries to take it (without waiting: another candidate may win).
    ///
    /// `bind` is called once the catalog exists, with its id: the data dir is bound to it as this
    /// node (so `admin` commands work on a follower's dir, and a dir of another catalog or node is
    /// refused at once) and answers the dir's random id and whether the binding is new. Then the
    /// node's row is claimed for that id before any heartbeat: a row of another data dir is refused
    /// (`unbind` undoes a new binding first), so two processes never run as one node. Before the
    /// schema has the column (a v2 catalog), the claim waits for this node's own lead.
    pub async fn wait_to_lead(
        &self,
        url: &str,
        bind: impl Fn(&str) -> anyhow::Result<(String, bool)>,
        unbind: impl Fn() -> anyhow::Result<()>,
    ) -> anyhow::Result<Arc<PgCatalog>> {
        let mut tick = tokio::time::interval(ELECTION_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut announced: Option<String> = None;
        let mut bound: Option<(String, bool)> = None;
        let claim = async |bound: &Option<(String, bool)>| -> anyhow::Result<bool> {
            let Some((dir_id, new)) = bound else { return Ok(false) };
            match self.claim(dir_id).await {
                Err(e) if *new => {
                    unbind()?;
                    Err(e)
                }
                r => r,
            }
        };
        loop {
            tick.tick().await;
            if bound.is_none()
                && let Ok(Some(id)) = self.members.catalog_id().await
            {
                bound = Some(bind(&id)?);
            }
            if self.dir_id.get().is_none() {
                claim(&bound).await?;
            }
            let current = match self.members.leader().await {
                Ok(Some(l)) if l.node_id == self.config.id => {
                    tracing::error!(node_id = %l.node_id, "another process leads with this node's id: give every node its own --node-id");
                    None
                }
                Ok(l) => l,
                // No schema yet (nobody has led), or the server is away: nobody to forward to.
                Err(_) => None,
            };
            if current.as_ref().map(|l| &l.node_id) != announced.as_ref() {
                match &current {
                    Some(l) => tracing::info!(leader = %l.node_id, advertise_api = %l.advertise_api, "following"),
                    None => tracing::info!("no leader"),
                }
                announced = current.as_ref().map(|l| l.node_id.clone());
            }
            self.leader.send_if_modified(|l| {
                let changed = *l != current;
                *l = current.clone();
                changed
            });
            if current.is_some() || matches!(self.members.owner_lock_held().await, Ok(true)) {
                continue;
            }
            let u = url.to_string();
            match tokio::task::spawn_blocking(move || PgCatalog::open_candidate(&u)).await? {
                Ok(Some(c)) => {
                    // The schema is current now: bind and claim, or stop here.
                    if bound.is_none() {
                        bound = Some(bind(c.catalog_id())?);
                    }
                    if self.dir_id.get().is_none() && !claim(&bound).await? {
                        anyhow::bail!("could not claim node {}'s row in the catalog", self.config.id);
                    }
                    self.leader.send_replace(None);
                    tracing::info!(node_id = %self.config.id, "won the election: leading");
                    return Ok(Arc::new(c));
                }
                Ok(None) => {}
                Err(e @ (CatalogError::TooNew { .. } | CatalogError::Config(_))) => return Err(e.into()),
                Err(e) => tracing::warn!(error = %e, "could not take the leadership; retrying"),
            }
        }
    }
}

/// The leader's fence: every [`FENCE_POLL`], prove the session holding the leadership lives; if
/// not, stop at once (exit [`EXIT_FENCED`]): another node may already lead, and this process's
/// memory is no longer the catalog's.
pub fn spawn_fence(catalog: Arc<PgCatalog>) -> anyhow::Result<()> {
    watch_leadership(
        move || catalog.check_fence(FENCE_BOUND).map_err(|e| e.to_string()),
        FENCE_POLL,
        FENCE_BOUND,
        |why| {
            tracing::error!(error = %why, "lost the cluster's leadership: stopping now (a supervisor restarts this node as a follower)");
            std::process::exit(EXIT_FENCED);
        },
    )
}

/// Run `prove` every `poll` on a thread of its own, and call `lost` once a proof fails, or none
/// has come back within `poll + bound` (+ a margin for scheduling). The watch is a second thread,
/// so the bound holds whatever `prove` does: a proof stuck on a starved runtime or a lock is no
/// proof.
fn watch_leadership(
    prove: impl Fn() -> Result<(), String> + Send + 'static,
    poll: Duration,
    bound: Duration,
    lost: impl FnOnce(String) + Send + 'static,
) -> anyhow::Result<()> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<(), String>>(1);
    std::thread::Builder::new()
        .name("cluster-fence-proof".into())
        .spawn(move || {
            loop {
                std::thread::sleep(poll);
                let r = prove();
                let failed = r.is_err();
                if tx.send(r).is_err() || failed {
                    return;
                }
            }
        })
        .context("starting the cluster fence")?;
    let limit = poll + bound + Duration::from_millis(500);
    std::thread::Builder::new()
        .name("cluster-fence".into())
        .spawn(move || {
            let why = loop {
                match rx.recv_timeout(limit) {
                    Ok(Ok(())) => {}
                    Ok(Err(why)) => break why,
                    Err(_) => break format!("no proof of the cluster's leadership within {limit:?}"),
                }
            };
            lost(why);
        })
        .context("starting the cluster fence")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// The fence's bound holds even when a proof never returns (a starved runtime, a stuck lock).
    #[test]
    fn fence_bound_holds_when_a_proof_hangs() {
        let (poll, bound) = (Duration::from_millis(20), Duration::from_millis(200));
        let (tx, rx) = std::sync::mpsc::channel();
        let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let c = calls.clone();
        let prove = move || {
            // Two good proofs, then one that never answers.
            if c.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= 2 {
                std::thread::sleep(Duration::from_secs(3600));
            }
            Ok(())
        };
        watch_leadership(prove, poll, bound, move |why| tx.send(why).unwrap()).unwrap();
        let why = rx.recv_timeout(Duration::from_secs(30)).expect("the fence fired");
        assert!(why.contains("no proof"), "{why}");
        assert!(calls.load(std::sync::atomic::Ordering::SeqCst) >= 3);
        // A failed proof fires it too, with its reason.
        let (tx, rx) = std::sync::mpsc::channel();
        watch_leadership(|| Err("session ended".into()), poll, bound, move |why| tx.send(why).unwrap()).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(30)).unwrap(), "session ended");
    }

    fn config(text: &str) -> Config {
        toml::from_str(text).unwrap()
    }

    fn resolve(flag: Option<&str>, file: &Config, listen: &str) -> anyhow::Result<Option<NodeConfig>> {
        NodeConfig::resolve(
            flag.map(str::to_string),
            file,
            (listen.parse().unwrap(), false),
            "127.0.0.2:10809".parse().unwrap(),
            Path::new("/nonexistent"),
        )
    }

    #[test]
    fn node_id_and_advertised_api() {
        assert!(resolve(None, &Config::default(), "127.0.0.1:4566").unwrap().is_none(), "no id: a single node");
        let n = resolve(None, &config("node_id = 2"), "10.0.0.2:4566").unwrap().unwrap();
        assert_eq!((n.id.as_str(), n.advertise_api.as_str()), ("2", "http://10.0.0.2:4566"));
        let file = config("node_id = \"east-1\"\nadvertise_api = \"https://node-a.example:4566/\"");
        let n = resolve(Some("7"), &file, "0.0.0.0:4566").unwrap().unwrap();
        assert_eq!((n.id.as_str(), n.advertise_api.as_str()), ("7", "https://node-a.example:4566"), "the flag wins");
        let n = resolve(None, &file, "0.0.0.0:4566").unwrap().unwrap();
        assert_eq!(n.id, "east-1");
        // Every address is nowhere the other nodes can reach: advertise_api is needed.
        let e = resolve(Some("1"), &Config::default(), "0.0.0.0:4566").unwrap_err().to_string();
        assert!(e.contains("advertise_api"), "{e}");
        for bad in ["", "a b", "x/y", &"n".repeat(64)] {
            assert!(resolve(Some(bad), &Config::default(), "127.0.0.1:4566").is_err(), "{bad:?}");
        }
        let e = resolve(Some("1"), &config("advertise_api = \"node-a:4566\""), "127.0.0.1:4566").unwrap_err();
        assert!(e.to_string().contains("http"), "{e}");
    }

    #[test]
    fn several_nodes_need_shared_snapshot_storage() {
        let regions = vec!["us-east-1".to_string(), "eu-west-1".to_string()];
        let e = check_shared_storage(&Config::default(), &regions).unwrap_err().to_string();
        assert!(e.contains("us-east-1, eu-west-1"), "{e}");
        let bucket = |r: &str, kind: &str| format!("[{kind}.{r}]\nbucket = \"b\"\n");
        let stores_only = config(&format!("{}{}", bucket("us-east-1", "stores"), bucket("eu-west-1", "stores")));
        let e = check_shared_storage(&stores_only, &regions).unwrap_err().to_string();
        assert!(
            e.contains("local archive tiers: [us-east-1, eu-west-1]") && e.contains("local snapshot stores: []"),
            "{e}"
        );
        let all: String =
            ["stores", "archives"].iter().flat_map(|k| regions.iter().map(move |r| bucket(r, k))).collect();
        check_shared_storage(&config(&all), &regions).unwrap();
        check_shared_storage(&config("shared_dir = \"/mnt/shared\""), &regions).unwrap();
    }
}
