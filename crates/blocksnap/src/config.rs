//! The optional TOML configuration file (`--config`).

use std::path::Path;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Regions served; default: every AWS commercial region.
    pub regions: Option<Vec<String>>,
    /// Snapshot stores in S3-compatible buckets, by region (`[stores.us-west-2]`); regions not named
    /// here keep theirs under the data dir.
    #[serde(default)]
    pub stores: std::collections::BTreeMap<String, S3Store>,
    /// Archive tiers by region (`[archives.us-west-2]`: `path = "/dir"` or a bucket); regions not
    /// named here keep theirs in `DATA/archive/<region>`.
    #[serde(default)]
    pub archives: std::collections::BTreeMap<String, ArchiveStore>,
    /// The catalog (`--catalog` wins): `sqlite` or a PostgreSQL URL.
    pub catalog: Option<String>,
    /// HTTPS on `--listen` (`--tls-cert`/`--tls-key` win): PEM certificate chain and private key,
    /// both or neither.
    pub tls_cert: Option<std::path::PathBuf>,
    pub tls_key: Option<std::path::PathBuf>,
    /// Several nodes (ARCHITECTURE.md, "Several nodes"; `--node-id` wins): this node's id in the
    /// cluster (a small integer or a name).
    pub node_id: Option<NodeId>,
    /// The URL other nodes reach this node's HTTP listener at (default: `--listen`).
    pub advertise_api: Option<String>,
    /// The availability zones this node serves (recorded in its membership row).
    #[serde(default)]
    pub zones: Vec<String>,
    /// A directory every node mounts (NFS, CephFS): the snapshot stores and archive tiers of regions
    /// without a bucket live here instead of under the data dir. A cluster refuses local stores
    /// unless this says they are shared.
    pub shared_dir: Option<std::path::PathBuf>,
    /// Where clients reach the NBD listener, `HOST[:PORT]` (`--nbd-advertise` wins).
    pub nbd_advertise: Option<String>,
}

/// A node id as the file writes it: `node_id = 2` or `node_id = "east-1"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum NodeId {
    Number(u64),
    Name(String),
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeId::Number(n) => write!(f, "{n}"),
            NodeId::Name(s) => f.write_str(s),
        }
    }
}

/// `[stores.<region>]`: where that region's snapshot store lives.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Store {
    pub bucket: String,
    #[serde(default)]
    pub prefix: String,
    /// e.g. `http://127.0.0.1:9000` for MinIO, Garage or moto; omit for AWS S3.
    pub endpoint: Option<String>,
    /// The bucket's region (signing region); default `us-east-1`.
    pub region: Option<String>,
    /// Static credentials; otherwise the `AWS_*` environment variables.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    #[serde(default)]
    pub allow_http: bool,
    #[serde(default)]
    pub virtual_hosted_style: bool,
    /// Set false for servers without `If-None-Match` on PUT.
    pub conditional_put: Option<bool>,
}

/// `[archives.<region>]`: where that region's archive tier lives, a directory or a bucket.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveStore {
    /// A local directory (e.g. on cheaper disks).
    pub path: Option<std::path::PathBuf>,
    /// Or an S3-compatible bucket, with the same fields as `[stores.<region>]`.
    pub bucket: Option<String>,
    #[serde(default)]
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    #[serde(default)]
    pub allow_http: bool,
    #[serde(default)]
    pub virtual_hosted_style: bool,
    pub conditional_put: Option<bool>,
}

impl ArchiveStore {
    pub fn to_location(&self) -> anyhow::Result<blocksnap_store::ArchiveLocation> {
        match (&self.path, &self.bucket) {
            (Some(p), None) => Ok(blocksnap_store::ArchiveLocation::Local(p.clone())),
            (None, Some(bucket)) if !bucket.is_empty() => Ok(blocksnap_store::ArchiveLocation::S3(
                S3Store {
                    bucket: bucket.clone(),
                    prefix: self.prefix.clone(),
                    endpoint: self.endpoint.clone(),
                    region: self.region.clone(),
                    access_key_id: self.access_key_id.clone(),
                    secret_access_key: self.secret_access_key.clone(),
                    allow_http: self.allow_http,
                    virtual_hosted_style: self.virtual_hosted_style,
                    conditional_put: self.conditional_put,
                }
                .to_store_config(),
            )),
            _ => anyhow::bail!("an archive store needs either `path` or `bucket`"),
        }
    }
}

impl S3Store {
    pub fn to_store_config(&self) -> blocksnap_store::S3Config {
        blocksnap_store::S3Config {
            bucket: self.bucket.clone(),
            prefix: self.prefix.clone(),
            endpoint: self.endpoint.clone(),
            region: self.region.clone().unwrap_or_else(|| "us-east-1".into()),
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
            session_token: None,
            allow_http: self.allow_http,
            virtual_hosted_style: self.virtual_hosted_style,
            conditional_put: self.conditional_put.unwrap_or(true),
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading config {}: {e}", path.display()))?;
        let cfg: Config = toml::from_str(&text).map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))?;
        if let Some(r) = &cfg.regions {
            if r.is_empty() {
                anyhow::bail!("config {}: `regions` must name at least one region", path.display());
            }
            for name in r {
                let ok =
                    !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
                if !ok {
                    anyhow::bail!("config {}: '{name}' is not a region name", path.display());
                }
            }
        }
        for (region, st) in &cfg.stores {
            if st.bucket.is_empty() {
                anyhow::bail!("config {}: [stores.{region}] needs a bucket", path.display());
            }
            if let Some(r) = &cfg.regions
                && !r.contains(region)
            {
                anyhow::bail!("config {}: [stores.{region}] names a region that is not served", path.display());
            }
        }
        for (region, a) in &cfg.archives {
            a.to_location().map_err(|e| anyhow::anyhow!("config {}: [archives.{region}]: {e}", path.display()))?;
            if let Some(r) = &cfg.regions
                && !r.contains(region)
            {
                anyhow::bail!("config {}: [archives.{region}] names a region that is not served", path.display());
            }
        }
        Ok(cfg)
    }

    /// The archive locations by region (checked at load).
    pub fn archive_locations(
        &self,
    ) -> anyhow::Result<std::collections::HashMap<String, blocksnap_store::ArchiveLocation>> {
        self.archives.iter().map(|(r, a)| Ok((r.clone(), a.to_location()?))).collect()
    }
}
