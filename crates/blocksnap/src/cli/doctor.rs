//! `blocksnap doctor`: check a setup, each check with what is wrong and what to do. The HTTP
//! endpoint answers, the credentials work (a cheap signed call), the NBD listener speaks NBD, and
//! with `--data-dir` (on the server's machine): the dir's owner and mode, free space, the owner
//! lock, its format and snapshot stores; the store answers (GetStoreStats, root only).
//!
//! Exit code: 0 when nothing failed (warnings allowed), else the code of the first failure.

use std::io::Read;
use std::net::ToSocketAddrs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use super::snapshot::STORE_TARGET;
use super::{Common, Exit, human_bytes};
use crate::api_client::ClientError;

#[derive(clap::Args)]
pub struct Args {
    /// The NBD listener to check (host:port; default: BLOCKSNAP_NBD_ENDPOINT, else the endpoint's
    /// host with port 10809).
    #[arg(long, env = "BLOCKSNAP_NBD_ENDPOINT")]
    nbd_endpoint: Option<String>,
    /// The server's data dir (on this machine): permissions, free space, lock, stores.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    common: Common,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Status {
    Ok,
    Warn,
    Fail(Exit),
}

struct Check {
    name: &'static str,
    status: Status,
    detail: String,
    hint: Option<String>,
}

fn ok(name: &'static str, detail: impl Into<String>) -> Check {
    Check { name, status: Status::Ok, detail: detail.into(), hint: None }
}

fn warn(name: &'static str, detail: impl Into<String>, hint: impl Into<String>) -> Check {
    Check { name, status: Status::Warn, detail: detail.into(), hint: Some(hint.into()) }
}

fn bad(name: &'static str, exit: Exit, detail: impl Into<String>, hint: impl Into<String>) -> Check {
    Check { name, status: Status::Fail(exit), detail: detail.into(), hint: Some(hint.into()) }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Connect to `addr` within the timeout; answers the stream.
fn tcp(addr: &str) -> Result<std::net::TcpStream, String> {
    let addrs: Vec<_> = addr.to_socket_addrs().map_err(|e| format!("cannot resolve {addr}: {e}"))?.collect();
    let mut last = format!("{addr} resolves to no address");
    for a in addrs {
        match std::net::TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
            Ok(s) => return Ok(s),
            Err(e) => last = format!("cannot connect to {a}: {e}"),
        }
    }
    Err(last)
}

pub async fn run(a: Args) -> anyhow::Result<i32> {
    let mut checks = Vec::new();
    let conn = match a.common.connect().await {
        Ok(c) => Some(c),
        Err(e) => {
            let exit = match e.downcast_ref::<ClientError>() {
                Some(ClientError::Credentials(_)) => Exit::Credentials,
                _ => Exit::Local,
            };
            checks.push(bad("configuration", exit, format!("{e:#}"), "fix the AWS configuration (as for the AWS CLI)"));
            None
        }
    };
    if let Some(conn) = &conn {
        let uri: http::Uri = conn.endpoint.parse()?;
        let host = uri.host().unwrap_or("127.0.0.1").trim_matches(['[', ']']).to_string();
        let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
        let hostport = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        let reachable = match tokio::task::spawn_blocking({
            let hp = hostport.clone();
            move || tcp(&hp).map(|_| ())
        })
        .await?
        {
            Ok(()) => {
                checks.push(ok("endpoint", format!("{} accepts connections", conn.endpoint)));
                true
            }
            Err(e) => {
                checks.push(bad(
                    "endpoint",
                    Exit::Unreachable,
                    e,
                    format!(
                        "start the server (`blocksnap serve`) or point --endpoint-url / AWS_ENDPOINT_URL at it (now {})",
                        conn.endpoint
                    ),
                ));
                false
            }
        };
        if reachable {
            match conn.json(STORE_TARGET, "DescribeLineage", json!({ "MaxResults": 1 })).await {
                Ok(_) => checks.push(ok("credentials", format!("a signed call for region {} was accepted", conn.region))),
                Err(ClientError::Credentials(m)) => checks.push(bad(
                    "credentials",
                    Exit::Credentials,
                    m,
                    "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the profile (`blocksnap admin list-keys` on the \
                     server lists the valid key ids)",
                )),
                Err(ClientError::Unreachable(m)) => checks.push(bad(
                    "credentials",
                    Exit::Unreachable,
                    m,
                    "the endpoint accepts connections but does not answer HTTP: check the scheme (http/https) and \
                     --ca-bundle",
                )),
                Err(ClientError::Refused(m)) => checks.push(bad(
                    "credentials",
                    Exit::Failed,
                    m,
                    "the endpoint answered but refused a signed call: is it a blocksnap endpoint, and the region one \
                     it serves?",
                )),
            }
            // The store: root sees the store-wide figures, which walk the region's store.
            if checks.iter().all(|c| c.status == Status::Ok) {
                let regions = json!({ "Regions": [conn.region] });
                match conn.json(STORE_TARGET, "GetStoreStats", regions).await {
                    Ok(v) if v["Scope"] == "store" => {
                        let r = &v["Regions"][0];
                        checks.push(ok(
                            "store",
                            format!(
                                "the {} store answered: {} stored in {} chunk(s)",
                                conn.region,
                                human_bytes(r["StoredBytes"].as_u64().unwrap_or(0)),
                                r["Chunks"].as_u64().unwrap_or(0)
                            ),
                        ));
                        if let Some(err) = r["Gc"]["Error"].as_str() {
                            checks.push(warn(
                                "gc",
                                format!("the last garbage collection of {} failed: {err}", conn.region),
                                "see the server log; the next run retries",
                            ));
                        }
                    }
                    Ok(_) => checks.push(ok("store", "not checked: the store-wide figures are for the root account")),
                    Err(e) => checks.push(bad(
                        "store",
                        Exit::Failed,
                        e.to_string(),
                        "the server cannot read its snapshot store: check its disk or bucket and the server log",
                    )),
                }
            }
        }
        let nbd = a
            .nbd_endpoint
            .clone()
            .unwrap_or_else(|| if host.contains(':') { format!("[{host}]:10809") } else { format!("{host}:10809") });
        checks.push(tokio::task::spawn_blocking(move || check_nbd(&nbd)).await?);
    }
    if let Some(dir) = &a.data_dir {
        let dir = dir.clone();
        checks.extend(tokio::task::spawn_blocking(move || check_data_dir(&dir)).await?);
    }
    let first_failure = checks.iter().find_map(|c| match c.status {
        Status::Fail(e) => Some(e),
        _ => None,
    });
    let doc = json!({
        "Ok": first_failure.is_none(),
        "Checks": checks.iter().map(|c| json!({
            "Name": c.name,
            "Status": match c.status { Status::Ok => "ok", Status::Warn => "warn", Status::Fail(_) => "fail" },
            "Detail": c.detail,
            "Hint": c.hint,
        })).collect::<Vec<_>>(),
    });
    a.common.print(&doc, || {
        let mut out = String::new();
        for c in &checks {
            let tag = match c.status {
                Status::Ok => "ok  ",
                Status::Warn => "WARN",
                Status::Fail(_) => "FAIL",
            };
            out.push_str(&format!("[{tag}] {}: {}\n", c.name, c.detail));
            if let Some(h) = &c.hint {
                out.push_str(&format!("       -> {h}\n"));
            }
        }
        out.push_str(if first_failure.is_none() { "all checks passed\n" } else { "some checks failed\n" });
        out
    });
    Ok(first_failure.map(|e| e as i32).unwrap_or(0))
}

/// The NBD listener answers with the NBD greeting (`NBDMAGIC`).
fn check_nbd(addr: &str) -> Check {
    let hint = "start the server with its NBD listener (--nbd-listen) or give --nbd-endpoint HOST:PORT";
    let mut s = match tcp(addr) {
        Ok(s) => s,
        Err(e) => return bad("nbd", Exit::Unreachable, e, hint),
    };
    let _ = s.set_read_timeout(Some(CONNECT_TIMEOUT));
    let mut magic = [0u8; 8];
    match s.read_exact(&mut magic) {
        Ok(()) if &magic == b"NBDMAGIC" => ok("nbd", format!("{addr} speaks NBD")),
        Ok(()) => bad("nbd", Exit::Unreachable, format!("{addr} answers, but not with the NBD greeting"), hint),
        Err(e) => bad("nbd", Exit::Unreachable, format!("{addr} accepted but sent no NBD greeting: {e}"), hint),
    }
}

/// Free space below this fails the check; below 10 % of the filesystem it warns.
const MIN_FREE: u64 = 1 << 30;

fn check_data_dir(dir: &Path) -> Vec<Check> {
    let mut out = Vec::new();
    let meta = match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => m,
        Ok(_) => {
            return vec![bad(
                "data dir",
                Exit::Local,
                format!("{} is not a directory", dir.display()),
                "give the server's --data-dir",
            )];
        }
        Err(e) => {
            return vec![bad(
                "data dir",
                Exit::Local,
                format!("{}: {e}", dir.display()),
                "give the server's --data-dir (BLOCKSNAP_DATA_DIR)",
            )];
        }
    };
    let mode = meta.permissions().mode() & 0o777;
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        out.push(bad(
            "data dir owner",
            Exit::Local,
            format!("{} belongs to uid {}, not to this user (uid {me})", dir.display(), meta.uid()),
            "run doctor (and the server) as the data dir's owner",
        ));
    } else if mode & 0o077 != 0 {
        out.push(bad(
            "data dir permissions",
            Exit::Local,
            format!("{} has mode {mode:04o}: others may read the catalog (keys) and volumes", dir.display()),
            format!("chmod 700 {}", dir.display()),
        ));
    } else {
        out.push(ok("data dir permissions", format!("{} mode {mode:04o}, owned by uid {me}", dir.display())));
    }
    match rustix::fs::statvfs(dir) {
        Ok(st) => {
            let free = st.f_bavail.saturating_mul(st.f_frsize);
            let total = st.f_blocks.saturating_mul(st.f_frsize);
            let detail = format!("{} free of {}", human_bytes(free), human_bytes(total));
            out.push(if free < MIN_FREE {
                bad(
                    "free space",
                    Exit::Local,
                    detail,
                    "free space on the data dir's filesystem: writes and snapshots will fail",
                )
            } else if total > 0 && free * 10 < total {
                warn("free space", detail, "less than 10 % left: free space or grow the filesystem")
            } else {
                ok("free space", detail)
            });
        }
        Err(e) => {
            out.push(bad("free space", Exit::Local, format!("statvfs {}: {e}", dir.display()), "check the filesystem"))
        }
    }
    // The owner lock: held by a running server (expected), or free (no server on this dir).
    let lock = dir.join(crate::datadir::LOCK_NAME);
    match std::fs::File::open(&lock) {
        Ok(f) => match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockShared) {
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let holder = std::fs::read_to_string(&lock).unwrap_or_default().replace('\n', " ");
                out.push(ok("owner lock", format!("held by the running server ({})", holder.trim())));
            }
            Ok(()) => {
                let _ = rustix::fs::flock(&f, rustix::fs::FlockOperation::Unlock);
                out.push(warn(
                    "owner lock",
                    "free: no server runs on this data dir",
                    "start `blocksnap serve --data-dir …`",
                ));
            }
            Err(e) => out.push(bad(
                "owner lock",
                Exit::Local,
                format!("{}: {e}", lock.display()),
                "check the data dir's filesystem",
            )),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => out.push(warn(
            "owner lock",
            "no lock file: no server has used this dir yet",
            "start `blocksnap serve --data-dir …`",
        )),
        Err(e) => out.push(bad(
            "owner lock",
            Exit::Local,
            format!("{}: {e}", lock.display()),
            "run doctor as the data dir's owner",
        )),
    }
    match crate::datadir::check_format(dir).and_then(|_| crate::datadir::check_local_stores(dir)) {
        Ok(()) => {
            let stores = std::fs::read_dir(dir.join("snapshots"))
                .map(|rd| rd.flatten().filter(|e| e.path().join("store.json").is_file()).count())
                .unwrap_or(0);
            out.push(ok("stores", format!("data dir format and {stores} local snapshot store(s) readable")));
        }
        Err(e) => {
            out.push(bad("stores", Exit::Local, format!("{e:#}"), "see the message: run the blocksnap that wrote it"))
        }
    }
    out
}
