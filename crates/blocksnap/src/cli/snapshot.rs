//! `blocksnap snapshot create|copy|ls|diff`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use serde_json::{Value, json};

use super::{Common, Exit, ebs, ec2, fail, format_epoch, human_bytes, wait_until};
use crate::api_client::Conn;

pub const STORE_TARGET: &str = "BlocksnapStore_20261130";

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Take a snapshot of a volume (point in time); with --wait, follow its upload to the end.
    Create {
        /// The volume (vol-…).
        #[arg(long)]
        volume: String,
        #[arg(long)]
        description: Option<String>,
        /// Wait until the snapshot is completed (progress bar), failing if it ends in error.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits, in seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
        #[command(flatten)]
        common: Common,
    },
    /// Copy a snapshot of this region (--region / the profile's) into another region.
    Copy {
        /// The snapshot to copy (snap-…).
        snapshot: String,
        /// The destination region.
        #[arg(long)]
        to: String,
        #[arg(long)]
        description: Option<String>,
        /// Wait until the copy is completed (progress bar).
        #[arg(long)]
        wait: bool,
        /// How long --wait waits, in seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
        #[command(flatten)]
        common: Common,
    },
    /// List your snapshots (every region) with their lineage: parent, copies, bytes added.
    Ls {
        /// Only this volume's snapshots and the copies made from them.
        #[arg(long)]
        volume: Option<String>,
        /// Draw the lineage as a tree: volume, then parent -> child, copies under their source.
        #[arg(long)]
        tree: bool,
        #[command(flatten)]
        common: Common,
    },
    /// The blocks that differ between snapshot A and a later snapshot B (EBS direct
    /// ListChangedBlocks), and how many bytes that is.
    Diff {
        /// The earlier snapshot.
        a: String,
        /// The later snapshot (same lineage).
        b: String,
        /// Also list the changed block indexes (text output; JSON always has them).
        #[arg(long)]
        blocks: bool,
        #[command(flatten)]
        common: Common,
    },
}

pub async fn run(cmd: Cmd) -> anyhow::Result<i32> {
    match cmd {
        Cmd::Create { volume, description, wait, timeout, common } => {
            let conn = common.connect().await?;
            let id = ec2::create_snapshot(&conn, &volume, description.as_deref()).await?;
            let info = if wait {
                wait_snapshot(&common, &conn, &id, Duration::from_secs(timeout), &format!("snapshot {id}")).await?
            } else {
                ec2::describe_snapshot(&conn, &id).await?
            };
            common.print(&snapshot_json(&info, &conn.region), || {
                format!("{id}\t{}\t{}%\t{volume}", info.state, info.progress)
            });
            Ok(0)
        }
        Cmd::Copy { snapshot, to, description, wait, timeout, common } => {
            let conn = common.connect().await?;
            let dest = conn.in_region(&to);
            let id = ec2::copy_snapshot(&dest, &conn.region, &snapshot, description.as_deref()).await?;
            let info = if wait {
                wait_snapshot(&common, &dest, &id, Duration::from_secs(timeout), &format!("copy {id} ({to})")).await?
            } else {
                ec2::describe_snapshot(&dest, &id).await?
            };
            let mut doc = snapshot_json(&info, &to);
            doc["SourceSnapshotId"] = json!(snapshot);
            doc["SourceRegion"] = json!(conn.region);
            common.print(&doc, || {
                format!("{id}\t{}\t{}%\t{to}\tcopy of {}/{snapshot}", info.state, info.progress, conn.region)
            });
            Ok(0)
        }
        Cmd::Ls { volume, tree, common } => {
            let conn = common.connect().await?;
            let all = lineage(&conn, volume.as_deref()).await?;
            if tree {
                let t = Tree::of(&all);
                common.print(&t.json(), || t.text());
            } else {
                common.print(&json!({ "Snapshots": all }), || table(&all));
            }
            Ok(0)
        }
        Cmd::Diff { a, b, blocks, common } => {
            let conn = common.connect().await?;
            let (changed, size_gib) = ebs::list_all(&conn, &b, Some(&a)).await?;
            let only_b = changed.iter().filter(|c| c.first_token.is_none()).count();
            let only_a = changed.iter().filter(|c| c.token.is_none()).count();
            let both = changed.len() - only_a - only_b;
            let bytes = changed.len() as u64 * ebs::BLOCK;
            let indexes: Vec<u64> = changed.iter().map(|c| c.index).collect();
            let doc = json!({
                "FirstSnapshotId": a,
                "SecondSnapshotId": b,
                "BlockSize": ebs::BLOCK,
                "VolumeSize": size_gib,
                "ChangedBlocks": changed.len(),
                "ChangedBytes": bytes,
                "WrittenInBoth": both,
                "OnlyInSecond": only_b,
                "OnlyInFirst": only_a,
                "BlockIndexes": indexes,
            });
            common.print(&doc, || {
                let mut t = format!(
                    "{} changed block(s) of 512 KiB between {a} and {b}: {} ({both} rewritten, {only_b} new in {b}, \
                     {only_a} only in {a})",
                    changed.len(),
                    human_bytes(bytes)
                );
                if blocks {
                    t.push('\n');
                    t.push_str(&indexes.iter().map(u64::to_string).collect::<Vec<_>>().join(" "));
                }
                t
            });
            Ok(0)
        }
    }
}

fn snapshot_json(s: &ec2::SnapshotInfo, region: &str) -> Value {
    json!({
        "SnapshotId": s.id,
        "VolumeId": s.volume_id,
        "Region": region,
        "State": s.state,
        "Progress": s.progress,
        "VolumeSize": s.volume_size_gib,
        "StateMessage": s.state_message,
    })
}

/// Follow a snapshot until it is completed (bar from DescribeSnapshots' progress); an error state
/// fails with the service's message.
pub async fn wait_snapshot(
    common: &Common,
    conn: &Conn,
    id: &str,
    timeout: Duration,
    what: &str,
) -> anyhow::Result<ec2::SnapshotInfo> {
    let pb = common.percent_bar(what);
    let r = wait_until(timeout, what, async || {
        let s = ec2::describe_snapshot(conn, id).await?;
        pb.set_position(u64::from(s.progress));
        Ok((s.state != "pending", s))
    })
    .await;
    pb.finish_and_clear();
    let s = r?;
    if s.state == "error" {
        return Err(fail(
            Exit::Failed,
            format!(
                "{what} ended in error: {}; delete it and try again (the server log has the details)",
                s.state_message.as_deref().unwrap_or("no message")
            ),
        ));
    }
    Ok(s)
}

/// Every page of DescribeLineage.
pub async fn lineage(conn: &Conn, volume: Option<&str>) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut body = json!({});
        if let Some(v) = volume {
            body["VolumeId"] = json!(v);
        }
        if let Some(t) = &token {
            body["NextToken"] = json!(t);
        }
        let page = conn.json(STORE_TARGET, "DescribeLineage", body).await?;
        out.extend(page["Snapshots"].as_array().cloned().unwrap_or_default());
        match page["NextToken"].as_str() {
            Some(t) if !t.is_empty() => token = Some(t.to_string()),
            _ => break,
        }
    }
    Ok(out)
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or("")
}

fn table(all: &[Value]) -> String {
    let mut out = String::from("SNAPSHOT\tPARENT\tVOLUME\tREGION\tSTATE\tPROGRESS\tSIZE\tADDED\tSTARTED\n");
    for e in all {
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\t{}%\t{} GiB\t{}\t{}\n",
            s(e, "SnapshotId"),
            e["ParentSnapshotId"].as_str().unwrap_or("-"),
            s(e, "VolumeId"),
            s(e, "Region"),
            s(e, "State"),
            e["Progress"],
            e["VolumeSize"],
            human_bytes(e["StoredBytesAdded"].as_u64().unwrap_or(0)),
            format_epoch(e["StartTime"].as_f64().unwrap_or(0.0)),
        ));
    }
    out
}

/// The lineage as a forest: per volume, each snapshot under its parent (incremental) or, for a
/// copy, under its source.
struct Tree<'a> {
    by_id: HashMap<&'a str, &'a Value>,
    children: HashMap<&'a str, Vec<&'a str>>,
    /// Roots by volume, in listing (start) order.
    roots: BTreeMap<&'a str, Vec<&'a str>>,
}

impl<'a> Tree<'a> {
    fn of(all: &'a [Value]) -> Tree<'a> {
        let by_id: HashMap<&str, &Value> = all.iter().map(|e| (s(e, "SnapshotId"), e)).collect();
        let mut children: HashMap<&str, Vec<&str>> = HashMap::new();
        let mut roots: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for e in all {
            let id = s(e, "SnapshotId");
            let up = e["ParentSnapshotId"].as_str().or(e["CopySource"]["SnapshotId"].as_str());
            match up.filter(|p| by_id.contains_key(p) && *p != id) {
                Some(p) => children.entry(p).or_default().push(id),
                None => roots.entry(s(e, "VolumeId")).or_default().push(id),
            }
        }
        Tree { by_id, children, roots }
    }

    fn label(e: &Value) -> String {
        let mut l = format!(
            "{}  {} {}%  {} GiB  +{}  {}",
            s(e, "SnapshotId"),
            s(e, "State"),
            e["Progress"],
            e["VolumeSize"],
            human_bytes(e["StoredBytesAdded"].as_u64().unwrap_or(0)),
            format_epoch(e["StartTime"].as_f64().unwrap_or(0.0)),
        );
        if let Some(src) = e["CopySource"]["SnapshotId"].as_str() {
            l.push_str(&format!("  (copy of {}/{src} into {})", s(&e["CopySource"], "Region"), s(e, "Region")));
        } else {
            l.push_str(&format!("  [{}]", s(e, "Region")));
        }
        if let Some(m) = e["StateMessage"].as_str() {
            l.push_str(&format!("  ! {m}"));
        }
        l
    }

    fn text(&self) -> String {
        let mut out = String::new();
        for (vol, roots) in &self.roots {
            out.push_str(vol);
            out.push('\n');
            let mut seen = HashSet::new();
            for (i, r) in roots.iter().enumerate() {
                self.draw(r, "", i + 1 == roots.len(), &mut out, &mut seen);
            }
        }
        out
    }

    fn draw(&self, id: &'a str, prefix: &str, last: bool, out: &mut String, seen: &mut HashSet<&'a str>) {
        if !seen.insert(id) {
            return;
        }
        let Some(e) = self.by_id.get(id) else { return };
        out.push_str(&format!("{prefix}{}{}\n", if last { "└─ " } else { "├─ " }, Self::label(e)));
        let kids = self.children.get(id).map(Vec::as_slice).unwrap_or_default();
        let next = format!("{prefix}{}", if last { "   " } else { "│  " });
        for (i, k) in kids.iter().enumerate() {
            self.draw(k, &next, i + 1 == kids.len(), out, seen);
        }
    }

    fn node(&self, id: &'a str, depth: usize) -> Value {
        let mut v = self.by_id.get(id).map(|e| (*e).clone()).unwrap_or(Value::Null);
        // The lineage is a forest by construction; the depth bound only guards a damaged answer.
        let kids: Vec<Value> = if depth < 10_000 {
            self.children
                .get(id)
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|k| self.node(k, depth + 1))
                .collect()
        } else {
            Vec::new()
        };
        v["Children"] = Value::Array(kids);
        v
    }

    fn json(&self) -> Value {
        json!({
            "Volumes": self.roots.iter().map(|(vol, roots)| json!({
                "VolumeId": vol,
                "Snapshots": roots.iter().map(|r| self.node(r, 0)).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_puts_children_and_copies_under_their_source() {
        let all = vec![
            json!({"SnapshotId": "snap-a", "VolumeId": "vol-1", "Region": "r1", "State": "completed", "Progress": 100, "VolumeSize": 1, "StoredBytesAdded": 1024, "StartTime": 1.0}),
            json!({"SnapshotId": "snap-b", "ParentSnapshotId": "snap-a", "VolumeId": "vol-1", "Region": "r1", "State": "completed", "Progress": 100, "VolumeSize": 1, "StoredBytesAdded": 0, "StartTime": 2.0}),
            json!({"SnapshotId": "snap-c", "VolumeId": "vol-ffffffff", "Region": "r2", "CopySource": {"Region": "r1", "SnapshotId": "snap-b"}, "State": "pending", "Progress": 40, "VolumeSize": 1, "StoredBytesAdded": 0, "StartTime": 3.0}),
        ];
        let t = Tree::of(&all);
        let text = t.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "vol-1");
        assert!(lines[1].starts_with("└─ snap-a"), "{text}");
        assert!(lines[2].starts_with("   └─ snap-b"), "{text}");
        assert!(lines[3].starts_with("      └─ snap-c") && lines[3].contains("copy of r1/snap-b into r2"), "{text}");
        let j = t.json();
        assert_eq!(j["Volumes"][0]["Snapshots"][0]["Children"][0]["Children"][0]["SnapshotId"], "snap-c");
    }
}
