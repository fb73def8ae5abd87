//! The client side of the running server's APIs: blocksnap's own SigV4-signed JSON 1.1 calls (NBD
//! credentials, account administration, the store calls) and, through [`Conn::send`], any signed
//! request of the operator CLI (EC2 Query, the EBS direct APIs). The caller's AWS credentials,
//! region and endpoint come from the standard AWS chain (`AWS_ACCESS_KEY_ID`/…, `AWS_PROFILE` and the shared config files, `AWS_ENDPOINT_URL` or a
//! profile's `endpoint_url`), as for the AWS CLI.

use std::path::PathBuf;

use anyhow::Context;
use aws_credential_types::provider::ProvideCredentials;

const SIGNING_SERVICE: &str = "blocksnap";
const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:4566";

/// Where and as whom to call.
#[derive(clap::Args, Clone)]
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

/// A resolved connection: endpoint, region and credentials from the standard chain, and one HTTP
/// client (with the CA bundle). Every blocksnap client command signs its requests through it.
#[derive(Clone)]
pub struct Conn {
    pub endpoint: String,
    pub region: String,
    creds: aws_credential_types::Credentials,
    http: reqwest::Client,
}

/// What went wrong talking to the endpoint, by what the operator must do about it.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No credentials, or the service refused them (unknown key, bad signature).
    #[error("{0}")]
    Credentials(String),
    /// The endpoint could not be reached (connection refused, DNS, TLS).
    #[error("{0}")]
    Unreachable(String),
    /// The service answered with an error.
    #[error("{0}")]
    Refused(String),
}

/// Error codes that mean "your credentials", in every protocol blocksnap speaks.
pub fn is_credentials_code(code: &str) -> bool {
    matches!(
        code,
        "AuthFailure"
            | "UnrecognizedClientException"
            | "InvalidSignatureException"
            | "IncompleteSignatureException"
            | "MissingAuthenticationTokenException"
            | "IncompleteSignature"
            | "SignatureDoesNotMatch"
            | "InvalidClientTokenId"
            | "UnrecognizedClient"
            | "AccessDeniedException"
    )
}

/// An HTTP answer: status, headers, body.
pub struct Answer {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: bytes::Bytes,
}

impl Conn {
    /// Resolve the chain for `args` (see the module docs).
    pub async fn connect(args: &ApiArgs) -> anyhow::Result<Conn> {
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
        let missing = || {
            ClientError::Credentials(
                "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE / \
                 --profile with a profile in ~/.aws, as for the AWS CLI"
                    .to_string(),
            )
        };
        let provider = sdk.credentials_provider().ok_or_else(missing)?;
        let creds = provider.provide_credentials().await.map_err(|_| missing())?;
        let mut client = reqwest::Client::builder();
        if let Some(path) = &args.ca_bundle {
            let pem = std::fs::read(path).with_context(|| format!("reading the CA bundle {}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("{}: not PEM certificates", path.display()))?;
            anyhow::ensure!(!certs.is_empty(), "{}: no PEM certificate in it", path.display());
            client = client.tls_certs_only(certs);
        }
        let http = client.build()?;
        let _: http::Uri = endpoint.parse().with_context(|| format!("endpoint '{endpoint}' is not a URL"))?;
        Ok(Conn { endpoint, region, creds, http })
    }

    /// The same connection, signing for another region.
    pub fn in_region(&self, region: &str) -> Conn {
        Conn { region: region.to_string(), ..self.clone() }
    }

    /// Send one request signed for `service` to `path_and_query` under the endpoint. With
    /// `unsigned_payload`, the body is not part of the signature (the EBS direct APIs'
    /// PutSnapshotBlock, whose signed checksum header authenticates it).
    pub async fn send(
        &self,
        service: &str,
        method: http::Method,
        path_and_query: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
        unsigned_payload: bool,
    ) -> Result<Answer, ClientError> {
        let base = self.endpoint.trim_end_matches('/');
        let url = format!("{base}{path_and_query}");
        let uri: http::Uri = url.parse().map_err(|e| ClientError::Refused(format!("bad URL {url}: {e}")))?;
        let host = uri.authority().map(|a| a.to_string()).unwrap_or_default();
        let mut b = http::Request::builder().method(method.clone()).uri(uri.clone()).header("host", &host);
        for (k, v) in headers {
            b = b.header(*k, v);
        }
        let mut req = b.body(body).map_err(|e| ClientError::Refused(format!("building the request: {e}")))?;
        sign(&mut req, &self.creds, &self.region, service, unsigned_payload)
            .map_err(|e| ClientError::Credentials(format!("signing the request: {e:#}")))?;
        let (parts, body) = req.into_parts();
        let mut rb = self.http.request(method, url.clone()).body(body);
        for (k, v) in &parts.headers {
            if k != http::header::HOST {
                rb = rb.header(k.as_str(), v.as_bytes());
            }
        }
        let resp = rb.send().await.map_err(|e| {
            ClientError::Unreachable(format!(
                "cannot reach {}: {}; check that `blocksnap serve` runs there and --endpoint-url / \
                 AWS_ENDPOINT_URL (and --ca-bundle for https)",
                self.endpoint,
                error_chain(&e)
            ))
        })?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.map_err(|e| {
            ClientError::Unreachable(format!("{} closed the answer early: {}", self.endpoint, error_chain(&e)))
        })?;
        Ok(Answer { status, headers, body })
    }

    /// One signed JSON 1.1 call (`X-Amz-Target: {target}.{op}`, service `blocksnap`).
    pub async fn json(
        &self,
        target: &str,
        op: &str,
        body: serde_json::Value,
    ) -> Result<serde_json::Value, ClientError> {
        let headers =
            [("content-type", "application/x-amz-json-1.1".to_string()), ("x-amz-target", format!("{target}.{op}"))];
        let a =
            self.send(SIGNING_SERVICE, http::Method::POST, "/", &headers, body.to_string().into_bytes(), false).await?;
        let v: serde_json::Value = serde_json::from_slice(&a.body).map_err(|_| {
            ClientError::Refused(format!(
                "{} answered {} with something that is not JSON: is it a blocksnap endpoint?",
                self.endpoint, a.status
            ))
        })?;
        if !a.status.is_success() {
            let code = v["__type"].as_str().unwrap_or("error");
            let msg = v["message"].as_str().unwrap_or("");
            let text = format!("{} refused {op}: {code}: {msg}", self.endpoint);
            return Err(if is_credentials_code(code) {
                ClientError::Credentials(text)
            } else {
                ClientError::Refused(text)
            });
        }
        Ok(v)
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

/// One signed JSON 1.1 call (`X-Amz-Target: {target}.{op}`); its JSON answer, or the service's
/// error as `code: message`.
pub async fn call(
    args: &ApiArgs,
    target: &str,
    op: &str,
    body: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let conn = Conn::connect(args).await?;
    Ok(conn.json(target, op, body).await?)
}

fn sign(
    req: &mut http::Request<Vec<u8>>,
    creds: &aws_credential_types::Credentials,
    region: &str,
    service: &str,
    unsigned_payload: bool,
) -> anyhow::Result<()> {
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    let identity = creds.clone().into();
    let mut settings = SigningSettings::default();
    if unsigned_payload {
        // `x-amz-content-sha256: UNSIGNED-PAYLOAD` tells the server the body is not signed.
        settings.payload_checksum_kind = aws_sigv4::http_request::PayloadChecksumKind::XAmzSha256;
    }
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(std::time::SystemTime::now())
        .settings(settings)
        .build()?
        .into();
    let headers: Vec<(&str, &str)> =
        req.headers().iter().filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?))).collect();
    let body = if unsigned_payload { SignableBody::UnsignedPayload } else { SignableBody::Bytes(req.body()) };
    let signable = SignableRequest::new(req.method().as_str(), req.uri().to_string(), headers.into_iter(), body)?;
    let (instructions, _) = sign(signable, &params)?.into_parts();
    instructions.apply_to_request_http1x(req);
    Ok(())
}
