//! The client side of blocksnap's own SigV4-signed JSON 1.1 calls (NBD credentials, account
//! administration): the caller's AWS credentials, region and endpoint come from the standard AWS
//! chain (`AWS_ACCESS_KEY_ID`/…, `AWS_PROFILE` and the shared config files, `AWS_ENDPOINT_URL` or a
//! profile's `endpoint_url`), as for the AWS CLI.

use std::path::PathBuf;

use anyhow::Context;
use aws_credential_types::provider::ProvideCredentials;

const SIGNING_SERVICE: &str = "blocksnap";
const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:4566";

/// Where and as whom to call.
#[derive(clap::Args)]
pub struct ApiArgs {
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

/// One signed JSON 1.1 call (`X-Amz-Target: {target}.{op}`); its JSON answer, or the service's
/// error as `code: message`.
pub async fn call(
    args: &ApiArgs,
    target: &str,
    op: &str,
    body: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
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
        .header("x-amz-target", format!("{target}.{op}"))
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
