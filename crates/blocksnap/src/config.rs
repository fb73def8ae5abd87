//! The optional TOML configuration file (`--config`).

use std::path::Path;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Regions served; default: every AWS commercial region.
    pub regions: Option<Vec<String>>,
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
        Ok(cfg)
    }
}
