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

use anyhow::Context;
use aws_credential_types::provider::ProvideCredentials;

const TARGET: &str = "BlocksnapNbd_20261129";
const SIGNING_SERVICE: &str = "blocksnap";
const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:4566";

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
    /// The blocksnap HTTP endpoint (default: AWS_ENDPOINT_URL, the profile's endpoint_url, or
    /// http://127.0.0.1:4566).
    #[arg(long)]
    endpoint_url: Option<String>,
    /// PEM certificates to verify an `https://` endpoint with, instead of the system's roots (as
    /// the AWS CLI's `--ca-bundle`; e.g. the certificate of a `serve --tls-cert` server).
    #[arg(long, env = "AWS_CA_BUNDLE")]
    ca_bundle: Option<PathBuf>,
    /// AWS profile (default: AWS_PROFILE, then `default`).
    #[arg(long)]
    profile: Option<String>,
    /// Region to sign for (default: the chain's region, then us-east-1).
    #[arg(long)]
    region: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    if args.list {
        let v = runtime.block_on(call(&args, "ListNbdCredentials", serde_json::json!({})))?;
        for c in v["Credentials"].as_array().map(Vec::as_slice).unwrap_or_default() {
            println!("{}\t{}", c["Identity"].as_str().unwrap_or("?"), c["CreatedAt"]);
        }
        return Ok(());
    }
    if let Some(id) = &args.delete {
        runtime.block_on(call(&args, "DeleteNbdCredential", serde_json::json!({ "Identity": id })))?;
        println!("# deleted {id}");
        return Ok(());
    }
    let op = if args.rotate { "RotateNbdCredentials" } else { "CreateNbdCredential" };
    let v = runtime.block_on(call(&args, op, serde_json::json!({})))?;
    let c = &v["Credential"];
    let field = |k: &str| c[k].as_str().map(str::to_string).with_context(|| format!("the answer has no {k}"));
    let (identity, key, account) = (field("Identity")?, field("Key")?, field("AccountId")?);
    write_psk(&args.out, &identity, &key)?;
    let psk = args.out.join("keys.psk");
    println!("# NBD credential {identity} of account {account}, key saved in {}", psk.display());
    println!("# qemu:   --object tls-creds-psk,id=tls0,endpoint=client,dir={},username={identity}", args.out.display());
    println!("#         --image-opts driver=nbd,host=HOST,port=10809,export=vol-…,tls-creds=tls0");
    println!("# libnbd: nbds://{identity}@HOST:10809/vol-…?tls-psk-file={}", psk.display());
    println!("NBD_TLS_USERNAME={identity}");
    println!("NBD_TLS_PSK_FILE={}", psk.display());
    Ok(())
}

/// One signed call of the NBD credentials API; its JSON answer.
async fn call(args: &Args, op: &str, body: serde_json::Value) -> anyhow::Result<serde_json::Value> {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(p) = &args.profile {
        loader = loader.profile_name(p);
    }
    if let Some(r) = &args.region {
        loader = loader.region(aws_config::Region::new(r.clone()));
    }
    let sdk = loader.load().await;
    let region = sdk.region().map(|r| r.to_string()).unwrap_or_else(|| "us-east-1".to_string());
    let endpoint = args
        .endpoint_url
        .clone()
        .or_else(|| sdk.endpoint_url().map(str::to_string))
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
    let provider = sdk.credentials_provider().context("no AWS credentials provider is configured")?;
    let creds = provider.provide_credentials().await.context(
        "no AWS credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, as for the AWS CLI)",
    )?;
    let body = body.to_string().into_bytes();
    let uri: http::Uri = endpoint.parse().with_context(|| format!("endpoint '{endpoint}' is not a URL"))?;
    let host = uri.authority().with_context(|| format!("endpoint '{endpoint}' has no host"))?.to_string();
    let mut req = http::Request::builder()
        .method("POST")
        .uri(uri.clone())
        .header("host", &host)
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amz-target", format!("{TARGET}.{op}"))
        .body(body.clone())?;
    sign(&mut req, &creds, &region)?;
    let mut client = reqwest::Client::builder();
    if let Some(path) = &args.ca_bundle {
        let pem = std::fs::read(path).with_context(|| format!("reading the CA bundle {}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("{}: not PEM certificates", path.display()))?;
        anyhow::ensure!(!certs.is_empty(), "{}: no PEM certificate in it", path.display());
        client = client.tls_certs_only(certs);
    }
    let client = client.build()?;
    let mut rb = client.post(uri.to_string()).body(body);
    for (k, v) in req.headers() {
        rb = rb.header(k.as_str(), v.as_bytes());
    }
    let resp = rb.send().await.with_context(|| format!("calling {endpoint}"))?;
    let status = resp.status();
    let bytes = resp.bytes().await?;
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("{endpoint} answered {status} with something that is not JSON"))?;
    if !status.is_success() {
        let code = v["__type"].as_str().unwrap_or("error");
        let msg = v["message"].as_str().unwrap_or("");
        anyhow::bail!("{endpoint} refused {op}: {code}: {msg}");
    }
    Ok(v)
}

fn sign(
    req: &mut http::Request<Vec<u8>>,
    creds: &aws_credential_types::Credentials,
    region: &str,
) -> anyhow::Result<()> {
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    let identity = creds.clone().into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SIGNING_SERVICE)
        .time(std::time::SystemTime::now())
        .settings(SigningSettings::default())
        .build()?
        .into();
    let headers: Vec<(&str, &str)> =
        req.headers().iter().filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?))).collect();
    let signable = SignableRequest::new(
        req.method().as_str(),
        req.uri().to_string(),
        headers.into_iter(),
        SignableBody::Bytes(req.body()),
    )?;
    let (instructions, _) = sign(signable, &params)?.into_parts();
    instructions.apply_to_request_http1x(req);
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
