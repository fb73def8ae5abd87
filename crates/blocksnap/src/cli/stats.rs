//! `blocksnap stats`: GetStoreStats per region. The root account sees the whole store (logical
//! and stored bytes, the dedup+compression ratio, chunks, the last GC); any other account its own
//! share (its snapshots and the bytes they added). The store figures are the server's running
//! totals, last counted from a listing at COUNTED (start-up or the last GC) and kept current since;
//! `--output json` also carries their `History` (samples since the server started).

use serde_json::{Value, json};

use super::snapshot::STORE_TARGET;
use super::{Common, format_epoch, human_bytes};

#[derive(clap::Args)]
pub struct Args {
    /// Only these regions (comma-separated; default: every region that holds something).
    #[arg(long, value_delimiter = ',')]
    regions: Vec<String>,
    /// Also list regions that hold nothing.
    #[arg(long)]
    all_regions: bool,
    #[command(flatten)]
    common: Common,
}

fn n(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(0)
}

pub async fn run(a: Args) -> anyhow::Result<i32> {
    let conn = a.common.connect().await?;
    let mut doc = conn.json(STORE_TARGET, "GetStoreStats", json!({ "Regions": a.regions })).await?;
    let keep_all = a.all_regions || !a.regions.is_empty();
    if let Some(regions) = doc["Regions"].as_array_mut() {
        regions.retain(|r| keep_all || n(r, "Snapshots") > 0 || n(r, "StoredBytes") > 0 || n(r, "Manifests") > 0);
    }
    let store = doc["Scope"] == "store";
    a.common.print(&doc, || {
        let regions = doc["Regions"].as_array().map(Vec::as_slice).unwrap_or_default();
        if regions.is_empty() {
            return "no snapshots in any region yet (give --all-regions to list them all)".to_string();
        }
        let mut out = String::new();
        if store {
            out.push_str("REGION\tSNAPSHOTS\tLOGICAL\tSTORED\tRATIO\tCHUNKS\tCOUNTED\tLAST GC\n");
            for r in regions {
                let gc = match r.get("Gc") {
                    Some(g) => format!(
                        "{} {}{}",
                        format_epoch(g["LastRun"].as_f64().unwrap_or(0.0)),
                        g["Status"].as_str().unwrap_or("?"),
                        g["Error"]
                            .as_str()
                            .map(|e| format!(": {e}"))
                            .unwrap_or_else(|| format!(", {} freed", human_bytes(n(g, "BytesRemoved"))))
                    ),
                    None => "not run yet".to_string(),
                };
                // A region whose first count after the server's start is still running has no figures.
                if r["Counting"] == true {
                    out.push_str(&format!(
                        "{}\t{}\t-\t-\t-\t-\tcounting…\t{gc}\n",
                        r["Region"].as_str().unwrap_or(""),
                        n(r, "Snapshots")
                    ));
                    continue;
                }
                out.push_str(&format!(
                    "{}\t{}\t{}\t{}\t{:.2}x\t{}\t{}\t{gc}\n",
                    r["Region"].as_str().unwrap_or(""),
                    n(r, "Snapshots"),
                    human_bytes(n(r, "LogicalBytes")),
                    human_bytes(n(r, "StoredBytes")),
                    r["ReductionRatio"].as_f64().unwrap_or(1.0),
                    n(r, "Chunks"),
                    format_epoch(r["AsOf"].as_f64().unwrap_or(0.0)),
                ));
            }
        } else {
            out.push_str("REGION\tSNAPSHOTS\tBYTES ADDED\n");
            for r in regions {
                out.push_str(&format!(
                    "{}\t{}\t{}\n",
                    r["Region"].as_str().unwrap_or(""),
                    n(r, "Snapshots"),
                    human_bytes(n(r, "SnapshotBytesAdded"))
                ));
            }
            out.push_str("(your share only: the store-wide figures are for the root account)\n");
        }
        out
    });
    Ok(0)
}
