//! The `blocksnap` binary: `serve` runs the service; `admin` manages accounts.

#![forbid(unsafe_code)]

mod api_client;
mod catalog;
mod cli;
mod cluster;
mod config;
mod datadir;
mod exports;
mod http_server;
mod https;
mod nbd_credentials;
mod telemetry;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use blocksnap_catalog::OpenMode;
use blocksnap_engine::{Engine, EngineConfig, Storage};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "blocksnap", version, about = "Block volumes and snapshots behind the AWS EC2 and Lightsail APIs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct DataDir {
    /// Where the catalog, volumes and snapshot stores live.
    #[arg(long, env = "BLOCKSNAP_DATA_DIR", default_value = "./blocksnap-data")]
    data_dir: PathBuf,
    /// The catalog: `sqlite` (DATA/catalog.db, the default) or a PostgreSQL URL
    /// (`postgres://user:password@host:port/db`, or `postgresql:///db?host=/socket/dir`). The data dir
    /// records a PostgreSQL catalog on first use, so later commands on it need not repeat it.
    #[arg(long, env = "BLOCKSNAP_CATALOG")]
    catalog: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (HTTP API and NBD server).
    Serve {
        #[command(flatten)]
        data: DataDir,
        /// HTTP address for the AWS APIs.
        #[arg(long, env = "BLOCKSNAP_LISTEN", default_value = "127.0.0.1:4566")]
        listen: SocketAddr,
        /// Serve the HTTP API over TLS (HTTPS) with this PEM certificate chain (leaf first).
        #[arg(long, env = "BLOCKSNAP_TLS_CERT", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The PEM private key of --tls-cert.
        #[arg(long, env = "BLOCKSNAP_TLS_KEY", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// NBD address for volume and snapshot exports.
        #[arg(long, env = "BLOCKSNAP_NBD_LISTEN", default_value = "127.0.0.1:10809")]
        nbd_listen: SocketAddr,
        /// Where clients reach the NBD listener, `HOST[:PORT]` (port default: --nbd-listen's): what
        /// the API tells them (DescribeNbdEndpoints, nbd-credentials). Default: --nbd-listen's
        /// address; when that is every address (0.0.0.0, ::), the host each client reached the
        /// HTTP API at. Set it behind a proxy or NAT, or when clients use another name.
        #[arg(long, env = "BLOCKSNAP_NBD_ADVERTISE", value_name = "HOST:PORT")]
        nbd_advertise: Option<String>,
        /// Development only: serve NBD without TLS and without authentication (every local
        /// client may open every export). Refused unless --nbd-listen is a loopback address.
        #[arg(long, env = "BLOCKSNAP_NBD_INSECURE_PLAINTEXT")]
        nbd_insecure_plaintext: bool,
        /// Optional TOML configuration (regions, stores, catalog, limits).
        #[arg(long, env = "BLOCKSNAP_CONFIG")]
        config: Option<PathBuf>,
        /// Address for Prometheus `/metrics` and `/health` (unauthenticated: keep it on loopback),
        /// or `off`. Default 127.0.0.1:4567, skipped with a warning if taken.
        #[arg(long, env = "BLOCKSNAP_METRICS_LISTEN")]
        metrics_listen: Option<telemetry::MetricsListen>,
        /// Run as this node of a cluster (a small integer or a name; or `node_id` in the config file):
        /// needs a PostgreSQL catalog and shared snapshot storage. One node leads, the others forward
        /// API calls to it (ARCHITECTURE.md, "Several nodes").
        #[arg(long, env = "BLOCKSNAP_NODE_ID")]
        node_id: Option<String>,
        /// This node's previous data dir is lost for good: let this data dir take over the node's
        /// row once its heartbeat is stale (15 s). The old dir's volumes' bytes are gone with it.
        #[arg(long)]
        replace_node: bool,
    },
    /// Get NBD credentials (a TLS pre-shared key) for the calling account through the HTTP API,
    /// signed with the standard AWS credential chain, and write the files NBD clients need.
    NbdCredentials(nbd_credentials::Args),
    #[command(flatten)]
    Operator(cli::Command),
    /// Administration.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Read every completed snapshot back from its store and check it (CRC, decryption, content
    /// ids). Read-only: safe while the server runs. Exits 1 if anything is missing or corrupt.
    Verify {
        #[command(flatten)]
        data: DataDir,
        /// Only this region (default: every region with snapshots).
        #[arg(long)]
        region: Option<String>,
        /// Optional TOML configuration (for regions whose store is a bucket).
        #[arg(long, env = "BLOCKSNAP_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Create an isolated account and print its id and keys. Works while the server runs (the
    /// rows are written beside it through SQLite's locking and the server reads them on first use);
    /// otherwise it takes the data dir's lock for the moment it writes.
    CreateAccount {
        #[command(flatten)]
        data: DataDir,
        /// A label for the account.
        #[arg(long, default_value = "account")]
        name: String,
    },
    /// List access keys (id, account, account name; never secrets). Works while the server runs.
    ListKeys {
        #[command(flatten)]
        data: DataDir,
        /// Only the keys of this account.
        #[arg(long)]
        account: Option<String>,
    },
    /// Give an account another access key and print it (rotate in two steps: create-key, switch
    /// clients, delete-key the old one). Works while the server runs.
    CreateKey {
        #[command(flatten)]
        data: DataDir,
        /// The account (12 digits, from `list-keys` or `create-account`).
        #[arg(long)]
        account: String,
    },
    /// Replace an access key by a new one of the same account and print it: the old key stops
    /// working at once, also for a running server. The root account's key is set by
    /// BLOCKSNAP_ROOT_ACCESS_KEY_ID/BLOCKSNAP_ROOT_SECRET_ACCESS_KEY when those are set (the next start
    /// makes it the root's only key again).
    RotateKey {
        #[command(flatten)]
        data: DataDir,
        /// The access key id to replace.
        access_key_id: String,
    },
    /// Delete an access key: requests signed with it are refused at once, also by a running server.
    DeleteKey {
        #[command(flatten)]
        data: DataDir,
        /// The access key id to delete.
        access_key_id: String,
    },
    /// Delete an account through the running server, with the root account's AWS credentials (the
    /// standard chain, as `nbd-credentials`): its access keys and NBD credentials are revoked and its
    /// live NBD connections closed before this returns. An account that still owns volumes,
    /// instances or snapshots is refused (delete them first).
    DeleteAccount {
        /// The account (12 digits).
        account: String,
        #[command(flatten)]
        api: api_client::ApiArgs,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::NbdCredentials(args) => nbd_credentials::run(args),
        Command::Operator(cmd) => std::process::exit(cli::run(cmd)),
        Command::Serve {
            data,
            listen,
            tls_cert,
            tls_key,
            nbd_listen,
            nbd_advertise,
            nbd_insecure_plaintext,
            config,
            metrics_listen,
            node_id,
            replace_node,
        } => serve(
            &data,
            (listen, tls_cert.zip(tls_key)),
            (nbd_listen, nbd_advertise, nbd_insecure_plaintext),
            metrics_listen.unwrap_or(telemetry::MetricsListen::Default),
            config.as_deref(),
            (node_id, replace_node),
        ),
        Command::Admin { command: AdminCommand::Verify { data, region, config } } => {
            verify(&data, region, config.as_deref())
        }
        Command::Admin { command: AdminCommand::CreateAccount { data, name } } => create_account(&data, &name),
        Command::Admin { command: AdminCommand::ListKeys { data, account } } => {
            let (_lock, engine) = admin_engine(&data)?;
            for k in engine.list_access_keys(account.as_deref()) {
                let root = if k.root { " root" } else { "" };
                println!("{} {} {}{root}", k.access_key_id, k.account, k.account_name);
            }
            Ok(())
        }
        Command::Admin { command: AdminCommand::CreateKey { data, account } } => {
            let (_lock, engine) = admin_engine(&data)?;
            print_key(&engine.create_access_key(&account)?);
            Ok(())
        }
        Command::Admin { command: AdminCommand::RotateKey { data, access_key_id } } => {
            let (_lock, engine) = admin_engine(&data)?;
            print_key(&engine.rotate_access_key(&access_key_id)?);
            eprintln!("# {access_key_id} is deleted");
            Ok(())
        }
        Command::Admin { command: AdminCommand::DeleteAccount { account, api } } => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let v = runtime.block_on(api_client::call(
                &api,
                "BlocksnapAdmin_20261130",
                "DeleteAccount",
                serde_json::json!({ "AccountId": account }),
            ))?;
            println!(
                "# deleted account {account}: {} access key(s), {} NBD credential(s) revoked",
                v["DeletedAccessKeys"], v["RevokedNbdCredentials"]
            );
            Ok(())
        }
        Command::Admin { command: AdminCommand::DeleteKey { data, access_key_id } } => {
            let (_lock, engine) = admin_engine(&data)?;
            let key = engine.delete_access_key(&access_key_id)?;
            println!("# deleted {} of account {}", key.access_key_id, key.account);
            Ok(())
        }
    }
}

/// The engine of an admin command that writes the catalog: the owner role when nobody holds the dir
/// (it may be new: create it, migrate the catalog); beside the running owner otherwise (its schema is
/// current, SQLite serialises the write, the server reads keys from the catalog on each request).
fn admin_engine(data: &DataDir) -> anyhow::Result<(Option<datadir::DataDirLock>, Engine)> {
    let data_dir = data.data_dir.as_path();
    Ok(match datadir::DataDirLock::acquire(data_dir) {
        Ok(lock) => {
            let found = datadir::check_format(data_dir)?;
            let choice = catalog::choose(data_dir, data.catalog.as_deref())?;
            let engine = open_engine(data_dir, &choice, EngineConfig::default(), None)?;
            if found != Some(datadir::DATA_DIR_FORMAT) {
                datadir::record_format(&lock, data_dir)?;
            }
            (Some(lock), engine)
        }
        Err(datadir::LockError::Held { .. }) => {
            datadir::check_format(data_dir)?;
            // The owner may be starting: it creates or upgrades the catalog (and binds the dir to a
            // PostgreSQL one) first. Wait for that (bounded) rather than migrate beside it.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            let catalog = loop {
                let r = catalog::choose(data_dir, data.catalog.as_deref())
                    .and_then(|choice| catalog::open(data_dir, &choice, OpenMode::Shared));
                match r {
                    Err(e) if std::time::Instant::now() < deadline && owner_not_ready(&e) => {
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                    r => break r.context("opening the catalog")?,
                }
            };
            (None, Engine::open(catalog, EngineConfig::default(), None)?)
        }
        Err(e) => return Err(e.into()),
    })
}

/// A catalog the starting owner has not created, upgraded or bound yet.
fn owner_not_ready(e: &anyhow::Error) -> bool {
    use blocksnap_catalog::CatalogError;
    matches!(e.downcast_ref::<CatalogError>(), Some(CatalogError::Missing(_) | CatalogError::NeedsUpgrade { .. }))
        || e.to_string().contains("is not bound to the PostgreSQL catalog")
}

fn print_key(key: &blocksnap_engine::model::AccessKey) {
    println!("# account {}", key.account);
    println!("export AWS_ACCESS_KEY_ID={}", key.access_key_id);
    println!("export AWS_SECRET_ACCESS_KEY={}", key.secret_access_key);
}

fn create_account(data: &DataDir, name: &str) -> anyhow::Result<()> {
    let (_lock, engine) = admin_engine(data)?;
    let (_account, key) = engine.create_account(name)?;
    print_key(&key);
    Ok(())
}

fn verify(data: &DataDir, region: Option<String>, config: Option<&Path>) -> anyhow::Result<()> {
    let data_dir = data.data_dir.as_path();
    let file_cfg = match config {
        Some(p) => config::Config::load(p)?,
        None => config::Config::default(),
    };
    let cfg = EngineConfig {
        s3_stores: file_cfg.stores.iter().map(|(r, s)| (r.clone(), s.to_store_config())).collect(),
        archive_stores: file_cfg.archive_locations()?,
        ..EngineConfig::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let volumes = blocksnap_volume::VolumeStore::open_shared(data_dir.join("volumes"))?;
    let storage = Storage {
        volumes: Arc::new(volumes),
        snapshot_root: data_dir.join("snapshots"),
        runtime: runtime.handle().clone(),
    };
    // Read-only: no lock, no recovery, no migration; the running owner (if any) is undisturbed.
    datadir::check_format(data_dir)?;
    datadir::check_local_stores(data_dir)?;
    let choice = catalog::choose(data_dir, data.catalog.as_deref().or(file_cfg.catalog.as_deref()))?;
    let catalog = catalog::open(data_dir, &choice, OpenMode::ReadOnly).context("opening the catalog")?;
    let engine = Engine::open(catalog, cfg, Some(storage))?;
    let regions = match region {
        Some(r) => vec![r],
        None => engine.snapshot_regions(),
    };
    let mut bad = 0;
    for r in regions {
        for rep in runtime.block_on(engine.verify_snapshots(&r))? {
            if rep.is_ok() {
                println!("{r} {} ok blocks={} chunks={}", rep.snapshot_id, rep.blocks, rep.ok_chunks);
            } else {
                bad += 1;
                println!(
                    "{r} {} FAILED missing={} corrupt={} {:?}",
                    rep.snapshot_id,
                    rep.missing.len(),
                    rep.corrupt.len(),
                    rep.corrupt.first()
                );
            }
        }
    }
    if bad > 0 {
        anyhow::bail!("{bad} snapshot(s) failed verification");
    }
    Ok(())
}

/// Open the engine as the data dir's owner: call only while holding its [`datadir::DataDirLock`].
fn open_engine(
    data_dir: &Path,
    choice: &catalog::Choice,
    cfg: EngineConfig,
    storage: Option<Storage>,
) -> anyhow::Result<Engine> {
    let catalog = catalog::open(data_dir, choice, OpenMode::Owner).context("opening the catalog")?;
    Ok(Engine::open(catalog, cfg, storage)?)
}

/// Write the generated root credentials beside the data, readable by the owner only.
fn save_credentials(data_dir: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join("root-credentials");
    let tmp = data_dir.join("root-credentials.tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

fn serve(
    data: &DataDir,
    (listen, http_tls): (SocketAddr, Option<(PathBuf, PathBuf)>),
    (nbd_listen, nbd_advertise, nbd_insecure_plaintext): (SocketAddr, Option<String>, bool),
    metrics_listen: telemetry::MetricsListen,
    config: Option<&Path>,
    (node_id, replace_node): (Option<String>, bool),
) -> anyhow::Result<()> {
    let data_dir = data.data_dir.as_path();
    exports::check_listen(nbd_listen, nbd_insecure_plaintext)?;
    let file_cfg = match config {
        Some(p) => config::Config::load(p)?,
        None => config::Config::default(),
    };
    let http_tls = match (http_tls, &file_cfg.tls_cert, &file_cfg.tls_key) {
        (Some((cert, key)), _, _) => Some(https::load(&cert, &key)?),
        (None, Some(cert), Some(key)) => Some(https::load(cert, key)?),
        (None, None, None) => None,
        (None, _, _) => anyhow::bail!("the configuration file sets one of tls_cert and tls_key: set both, or neither"),
    };
    let mut cfg = EngineConfig::default();
    if let Some(r) = &file_cfg.regions {
        cfg.regions = r.clone();
    }
    let mut node_cfg =
        cluster::NodeConfig::resolve(node_id, &file_cfg, (listen, http_tls.is_some()), nbd_listen, data_dir)?;
    match &mut node_cfg {
        Some(nc) => nc.replace = replace_node,
        None if replace_node => anyhow::bail!("--replace-node needs --node-id (or node_id in the configuration file)"),
        None => {}
    }
    if node_cfg.is_some() {
        cluster::check_shared_storage(&file_cfg, &cfg.regions)?;
    }
    cfg.s3_stores = file_cfg.stores.iter().map(|(region, s)| (region.clone(), s.to_store_config())).collect();
    cfg.archive_stores = file_cfg.archive_locations()?;
    // EBS direct APIs: block token lifetime, and (for tests) the length of a Timeout minute.
    let env_u64 = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    if let Some(s) = env_u64("BLOCKSNAP_EBS_BLOCK_TOKEN_SECS") {
        cfg.block_token_ttl = std::time::Duration::from_secs(s);
    }
    if let Some(n) = env_u64("BLOCKSNAP_EBS_MAX_INFLIGHT") {
        cfg.ebs_max_inflight = n as usize;
    }
    if let Some(ms) = env_u64("BLOCKSNAP_EBS_MINUTE_MS") {
        cfg.direct_minute = std::time::Duration::from_millis(ms.max(1));
    }
    // Tests only: the root account may move this process's clock forward (crates/engine/src/clock.rs).
    cfg.test_clock = std::env::var("BLOCKSNAP_TEST_CLOCK").is_ok_and(|v| v == "1");
    if cfg.test_clock {
        tracing::warn!("BLOCKSNAP_TEST_CLOCK=1: the root account can move this server's clock forward (tests only)");
    }
    // The listeners first: a port clash ends here, before the data dir is touched.
    let bind = |addr: SocketAddr, what: &str| -> anyhow::Result<std::net::TcpListener> {
        let l = std::net::TcpListener::bind(addr).with_context(|| format!("binding {what} {addr}"))?;
        l.set_nonblocking(true)?;
        Ok(l)
    };
    let http_listener = bind(listen, "HTTP")?;
    let nbd_listener = bind(nbd_listen, "NBD")?;
    cfg.nbd = exports::advertise(
        nbd_advertise.as_deref().or(file_cfg.nbd_advertise.as_deref()),
        nbd_listener.local_addr()?,
        nbd_insecure_plaintext,
    )?;
    if let Some(nc) = node_cfg.as_mut() {
        // A call may reach this node through another (forwarding keeps the Host header), so "the
        // host the caller reached" is not this node's: a cluster node names its NBD address.
        let blocksnap_engine::NbdHost::Fixed(host) = &cfg.nbd.host else {
            anyhow::bail!(
                "--nbd-listen {nbd_listen} is every address: a cluster node must name the address clients reach its NBD listener at with --nbd-advertise HOST[:PORT]"
            );
        };
        nc.nbd =
            if host.contains(':') { format!("[{host}]:{}", cfg.nbd.port) } else { format!("{host}:{}", cfg.nbd.port) };
    }
    let metrics_listener = telemetry::bind(metrics_listen)?;
    if !listen.ip().is_loopback() && http_tls.is_none() {
        tracing::warn!(%listen, "the HTTP API listens beyond loopback without TLS: SigV4 authenticates requests but does not hide them (bodies, volume ids, KMS plaintexts); use --tls-cert/--tls-key or a TLS-terminating proxy");
    }
    // One owner per data dir: nothing in it is read, created or repaired before the lock is held.
    let lock = datadir::DataDirLock::acquire(data_dir)?;
    let lock_path = lock.path().to_path_buf();
    // Formats next: a dir written by a newer blocksnap is refused before anything is read or repaired.
    let found_format = datadir::check_format(data_dir)?;
    datadir::check_local_stores(data_dir)?;
    let choice = catalog::choose(data_dir, data.catalog.as_deref().or(file_cfg.catalog.as_deref()))?;
    let existed = data_dir.join("catalog.db").exists() || data_dir.join(catalog::RECORD_NAME).exists();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    // Watch SIGTERM/SIGINT from here on: a stop during start-up ends it cleanly too.
    let mut stop = {
        let _rt = runtime.enter();
        StopSignal::new()?
    };
    let volumes =
        Arc::new(blocksnap_volume::VolumeStore::open(data_dir.join("volumes")).context("opening the volume store")?);
    let storage = Storage {
        volumes: volumes.clone(),
        // A cluster's shared directory (checked above) holds the local stores every node reads.
        snapshot_root: file_cfg.shared_dir.as_ref().map_or_else(|| data_dir.join("snapshots"), |d| d.join("snapshots")),
        runtime: runtime.handle().clone(),
    };
    // Without a metrics listener nothing is recorded (the facade's calls are no-ops). Served from
    // here on, also while a cluster's node follows.
    let metrics_task = match metrics_listener {
        Some(l) => {
            let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .context("installing the metrics recorder")?;
            let _rt = runtime.enter();
            let l = tokio::net::TcpListener::from_std(l)?;
            tracing::info!(metrics_listen = %l.local_addr()?, "serving /metrics and /health");
            let render: Arc<dyn Fn() -> String + Send + Sync> = Arc::new(move || prometheus.render());
            let app = telemetry::router(render);
            Some(tokio::spawn(async move { axum::serve(l, app).await }))
        }
        None => None,
    };
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let mut http_listener = Some(http_listener);
    // A cluster's node serves its HTTP listener at once (forwarding to the leader) and leads when it
    // wins the election; then the normal start path below runs on the catalog it owns.
    let (engine, cluster_node) = match &node_cfg {
        None => (Arc::new(open_engine(data_dir, &choice, cfg, Some(storage))?), None),
        Some(nc) => {
            let catalog::Choice::Postgres { url } = &choice else {
                anyhow::bail!(
                    "--node-id needs a PostgreSQL catalog shared by every node (--catalog postgres://…); \
                     a SQLite catalog belongs to one machine"
                );
            };
            let (node, dispatch, task) = {
                let _rt = runtime.enter();
                let node = cluster::Node::start(nc.clone(), url)?;
                let wait = std::env::var("BLOCKSNAP_CLUSTER_FORWARD_WAIT_MS")
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
                    .map_or(cluster::forward::DEFAULT_WAIT, std::time::Duration::from_millis);
                let dispatch = cluster::forward::Dispatch::new(&nc.id, node.leader(), wait)?;
                let http = tokio::net::TcpListener::from_std(http_listener.take().context("HTTP listener")?)?;
                let task = spawn_http(http, http_tls.clone(), dispatch.router(), stopping.clone())?;
                (node, dispatch, task)
            };
            tracing::info!(node_id = %nc.id, %listen, advertise_api = %nc.advertise_api, "cluster node up: forwarding API calls to the leader until this node leads");
            // Whether this data dir was bound to the node just now (a first start on it).
            let new_binding = std::cell::Cell::new(false);
            let won = runtime.block_on(async {
                tokio::select! {
                    r = node.wait_to_lead(
                        url,
                        |id| {
                            let bound = catalog::bind_follower(data_dir, url, id, &nc.id)?;
                            new_binding.set(bound.1);
                            Ok(bound)
                        },
                        || catalog::unbind_new(data_dir),
                    ) => Some(r),
                    () = stop.wait() => None,
                }
            });
            let Some(won) = won else {
                let _ = stopping_tx.send(true);
                let _ = runtime.block_on(async { tokio::time::timeout(STOP_GRACE, task).await });
                runtime.shutdown_timeout(std::time::Duration::from_secs(2));
                tracing::info!("blocksnap stopped");
                return Ok(());
            };
            let pg = won?;
            cluster::spawn_fence(pg.clone())?;
            let catalog: Arc<dyn blocksnap_catalog::Catalog> = pg.clone();
            let engine =
                Arc::new(Engine::open(catalog, EngineConfig { node_id: Some(nc.id.clone()), ..cfg }, Some(storage))?);
            let adopt = || -> anyhow::Result<()> {
                let n = engine.adopt_unplaced_volumes()?;
                tracing::info!(node_id = %nc.id, volumes = n, "this data dir was a single node's: its volumes are this node's now");
                Ok(())
            };
            catalog::bind_node(data_dir, url, &pg, &nc.id, adopt)?;
            if nc.replace && new_binding.get() {
                // The node's previous data dir is gone: its volumes' bytes with it (durable before
                // this node serves, so none is ever served as zeros). Only on the first start on
                // this dir: a later one's volumes not allocated yet are not lost.
                let lost = engine.mark_lost_volumes()?;
                if !lost.is_empty() {
                    tracing::warn!(node_id = %nc.id, volumes = ?lost, "--replace-node: these volumes' bytes were in the lost data dir; they are marked lost (delete them, restore their snapshots)");
                }
            }
            (engine, Some((node, pg, dispatch, task)))
        }
    };
    // Every part is current now (the catalog migrated in its own transaction): record the format.
    if found_format != Some(datadir::DATA_DIR_FORMAT) {
        datadir::record_format(&lock, data_dir)?;
        if existed {
            tracing::info!(from = ?found_format, to = datadir::DATA_DIR_FORMAT, "data dir format upgraded");
        }
    }
    engine.remove_orphan_volumes()?;
    // Resume uploads and restores before any client can write: captures must be in place first.
    engine.start()?;
    // Garbage collection: every 10 minutes, keeping anything younger than an hour (uploads in flight).
    let secs =
        |name: &str, default: u64| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(default);
    engine.start_gc(
        std::time::Duration::from_secs(secs("BLOCKSNAP_GC_INTERVAL_SECS", 600)),
        std::time::Duration::from_secs(secs("BLOCKSNAP_GC_GRACE_SECS", 3600)),
    );
    // Store usage: counted once in the background, then sampled for the console's chart (every 5 minutes).
    engine.start_usage(std::time::Duration::from_secs(secs("BLOCKSNAP_USAGE_SAMPLE_SECS", 300).max(1)));
    // Lifecycle policies: the scheduler ticks on real time and compares with the engine's clock.
    engine.start_dlm(
        std::env::var("BLOCKSNAP_DLM_TICK_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(blocksnap_engine::dlm::runner::DEFAULT_TICK, std::time::Duration::from_millis),
    );
    // The Recycle Bin's purge of expired snapshots (tests shorten it; expiry reads the engine's clock).
    engine.start_recycle_bin(
        std::env::var("BLOCKSNAP_RBIN_SWEEP_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(blocksnap_engine::recycle_bin::DEFAULT_SWEEP, std::time::Duration::from_millis),
    );
    let env_key =
        match (std::env::var("BLOCKSNAP_ROOT_ACCESS_KEY_ID"), std::env::var("BLOCKSNAP_ROOT_SECRET_ACCESS_KEY")) {
            (Ok(a), Ok(s)) if !a.is_empty() && !s.is_empty() => Some((a, s)),
            (Ok(_), Err(_)) | (Err(_), Ok(_)) => {
                anyhow::bail!("set both BLOCKSNAP_ROOT_ACCESS_KEY_ID and BLOCKSNAP_ROOT_SECRET_ACCESS_KEY, or neither")
            }
            _ => None,
        };
    let root_from_env = env_key.is_some();
    if let Some((account, key)) = engine.ensure_root(env_key)? {
        let text = format!(
            "# blocksnap root account {account}: paste these lines to use the AWS CLI or boto3\nexport AWS_ACCESS_KEY_ID={}\nexport AWS_SECRET_ACCESS_KEY={}\nexport AWS_DEFAULT_REGION=us-east-1\n",
            key.access_key_id, key.secret_access_key
        );
        save_credentials(data_dir, &text)?;
        println!("{text}# (saved in {})", data_dir.join("root-credentials").display());
    }
    if root_from_env {
        // The environment's key is the root's only key now: a generated one saved before is revoked.
        let saved = data_dir.join("root-credentials");
        if saved.exists() {
            std::fs::remove_file(&saved).with_context(|| format!("removing the revoked {}", saved.display()))?;
            tracing::info!(path = %saved.display(), "removed the saved root credentials: the root key comes from BLOCKSNAP_ROOT_*");
        }
    }
    let handle = runtime.handle().clone();
    runtime.block_on(async move {
        let nbd = exports::server(&engine, nbd_insecure_plaintext)?;
        engine.set_export_hooks(Arc::new(exports::NbdHooks { server: nbd.clone(), runtime: handle }));
        let nbd_listener = tokio::net::TcpListener::from_std(nbd_listener)?;
        let nbd_task = tokio::spawn(nbd.clone().serve(nbd_listener));
        let state = Arc::new(blocksnap_api::AppState { engine: engine.clone() });
        let app = blocksnap_api::router(state);
        let https = http_tls.is_some();
        let mut http_task = match cluster_node {
            None => {
                let http = tokio::net::TcpListener::from_std(http_listener.take().context("HTTP listener")?)?;
                spawn_http(http, http_tls, app, stopping)?
            }
            Some((node, pg, dispatch, task)) => {
                dispatch.lead(app);
                // Followers forward here from now on.
                node.announce().await?;
                pg.claim_leadership(&node.config.id)?;
                tracing::info!(node_id = %node.config.id, "leading the cluster");
                task
            }
        };
        tracing::info!(%listen, https, %nbd_listen, data_dir = %data_dir.display(), lock = %lock_path.display(), "blocksnap serving");
        // Beside the credentials printed above: where a newcomer points the browser.
        println!("# web console: {}", console_url(listen, https));
        tokio::select! {
            () = stop.wait() => {}
            r = &mut http_task => {
                nbd_task.abort();
                return Err(match r {
                    Ok(Ok(())) => anyhow::anyhow!("the HTTP server stopped"),
                    Ok(Err(e)) => anyhow::Error::from(e).context("HTTP server"),
                    Err(e) => anyhow::Error::from(e).context("HTTP server"),
                });
            }
        }
        // Stop accepting on both front ends; requests in flight finish, within a bound.
        tracing::info!("stopping: finishing requests in flight");
        // From here a background job that fails was cut by the stop: it stays pending and resumes.
        engine.begin_stop();
        let _ = stopping_tx.send(true);
        let drained =
            tokio::time::timeout(STOP_GRACE, async { tokio::join!(http_task, nbd.shutdown()).0 }).await;
        match drained {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::error!(error = %e, "HTTP server"),
            Ok(Err(e)) => tracing::error!(error = %e, "HTTP server task"),
            Err(_) => tracing::warn!(grace_secs = STOP_GRACE.as_secs(), "requests still in flight at the end of the grace period"),
        }
        nbd_task.abort();
        if let Some(t) = metrics_task {
            t.abort();
        }
        anyhow::Ok(())
    })?;
    // Background jobs (uploads, restores, copies, GC) stop where they are: each resumes from its
    // durable state at the next start. Blocking steps in progress get a moment to finish.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    // What a restart needs and is not yet on disk: staged cuts dropped, data and hydration maps flushed.
    let failed = volumes.close_all();
    drop(lock);
    if failed > 0 {
        anyhow::bail!("{failed} volume(s) could not save their state at stop; the next start recovers them");
    }
    tracing::info!("blocksnap stopped");
    Ok(())
}

type HttpTask = tokio::task::JoinHandle<std::io::Result<()>>;

/// Serve the HTTP API on `http` until `stopping` turns true (requests in flight then finish), with
/// the listener's bounds on clients (http_server.rs).
fn spawn_http(
    http: tokio::net::TcpListener,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    app: axum::Router,
    stopping: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<HttpTask> {
    Ok(tokio::spawn(http_server::serve(http, tls, app, stopping, http_server::Limits::from_env())))
}

/// How long a stop waits for requests in flight (HTTP calls, NBD commands) to finish.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// SIGTERM or SIGINT (Ctrl-C), registered once at start.
struct StopSignal {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignal {
    /// Call inside the runtime's context.
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(StopSignal {
            term: signal(SignalKind::terminate()).context("watching SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("watching SIGINT")?,
        })
    }

    async fn wait(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// The web console's address for a listener: an unspecified address (0.0.0.0, ::) is reached on
/// this host's loopback of the same family.
fn console_url(listen: SocketAddr, https: bool) -> String {
    let mut at = listen;
    if at.ip().is_unspecified() {
        at.set_ip(match at {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    format!("{}://{at}/console", if https { "https" } else { "http" })
}

#[cfg(test)]
mod console_url_tests {
    use super::console_url;

    #[test]
    fn the_console_url_names_a_reachable_address() {
        assert_eq!(console_url("127.0.0.1:4566".parse().unwrap(), false), "http://127.0.0.1:4566/console");
        assert_eq!(console_url("0.0.0.0:4566".parse().unwrap(), true), "https://127.0.0.1:4566/console");
        assert_eq!(console_url("[::]:80".parse().unwrap(), false), "http://[::1]:80/console");
        assert_eq!(console_url("[fe80::1]:8080".parse().unwrap(), false), "http://[fe80::1]:8080/console");
    }
}
