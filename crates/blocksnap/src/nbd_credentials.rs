//! `blocksnap nbd-credentials`: ask a running blocksnap for an NBD credential over its
//! SigV4-authenticated HTTP API (JSON 1.1 target `BlocksnapNbd_20261129`) and write what NBD
//! clients need: `keys.psk` (`identity:hexkey`, mode 0600) in a directory qemu's
//! `tls-creds-psk,dir=…` and libnbd's `tls-psk-file=…` read as is.
//!
//! The caller's AWS credentials, region and endpoint come from the standard AWS chain
//! (`AWS_ACCESS_KEY_ID`/…, `AWS_PROFILE` and the shared config files, `AWS_ENDPOINT_URL` or a
//! profile's `endpoint_url`), as for the AWS CLI.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::api_client::call;
use anyhow::Context;

const TARGET: &str = "BlocksnapNbd_20261129";

#[derive(clap::Args)]
pub struct Args {
    /// Directory for `keys.psk` (created, mode 0700; the file is replaced atomically, mode 0600).
    #[arg(long, default_value = "./nbd-credentials")]
    out: PathBuf,
    /// Replace every NBD credential of the account with a new one: connections that
    /// authenticated with the old ones are closed.
    #[arg(long, conflicts_with_all = ["list", "delete"])]
    rotate: bool,
    /// List the account's NBD credentials (identities and creation times; no keys, no files).
    #[arg(long, conflicts_with = "delete")]
    list: bool,
    /// Revoke one credential by identity: connections that authenticated with it are closed.
    #[arg(long, value_name = "IDENTITY")]
    delete: Option<String>,
    #[command(flatten)]
    api: crate::api_client::ApiArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    if args.list {
        let v = runtime.block_on(call(&args.api, TARGET, "ListNbdCredentials", serde_json::json!({})))?;
        for c in v["Credentials"].as_array().map(Vec::as_slice).unwrap_or_default() {
            println!("{}\t{}", c["Identity"].as_str().unwrap_or("?"), c["CreatedAt"]);
        }
        return Ok(());
    }
    if let Some(id) = &args.delete {
        runtime.block_on(call(&args.api, TARGET, "DeleteNbdCredential", serde_json::json!({ "Identity": id })))?;
        println!("# deleted {id}");
        return Ok(());
    }
    let op = if args.rotate { "RotateNbdCredentials" } else { "CreateNbdCredential" };
    let v = runtime.block_on(call(&args.api, TARGET, op, serde_json::json!({})))?;
    let c = &v["Credential"];
    let field = |k: &str| c[k].as_str().map(str::to_string).with_context(|| format!("the answer has no {k}"));
    let (identity, key, account) = (field("Identity")?, field("Key")?, field("AccountId")?);
    write_psk(&args.out, &identity, &key)?;
    let psk = args.out.join("keys.psk");
    // Where the server's NBD listener is reached (older servers do not say: placeholders).
    let ep = &c["Endpoint"];
    let host = ep["Host"].as_str().unwrap_or("HOST").to_string();
    let port = ep["Port"].as_u64().map_or("10809".to_string(), |p| p.to_string());
    let uri_host = if host.contains(':') { format!("[{host}]") } else { host.clone() };
    println!("# NBD credential {identity} of account {account}, key saved in {}", psk.display());
    println!(
        "# NBD endpoint: {uri_host}:{port} (TLS-PSK); `blocksnap` exports: vol-… while attached, snap-… completed"
    );
    println!("# qemu:   --object tls-creds-psk,id=tls0,endpoint=client,dir={},username={identity}", args.out.display());
    println!("#         --image-opts driver=nbd,host={host},port={port},export=vol-…,tls-creds=tls0");
    println!("# libnbd: nbds://{identity}@{uri_host}:{port}/vol-…?tls-psk-file={}", psk.display());
    println!("NBD_TLS_USERNAME={identity}");
    println!("NBD_TLS_PSK_FILE={}", psk.display());
    println!("NBD_HOST={host}");
    println!("NBD_PORT={port}");
    Ok(())
}

/// `dir/keys.psk` = `identity:hexkey`, owner-only, replaced atomically.
fn write_psk(dir: &Path, identity: &str, key: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let path = dir.join("keys.psk");
    let tmp = dir.join(".keys.psk.tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(format!("{identity}:{key}\n").as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}
