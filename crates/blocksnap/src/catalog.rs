//! Which catalog a data dir uses, and the record that binds the two.
//!
//! SQLite (`DATA/catalog.db`) is the default. A PostgreSQL catalog is chosen with `--catalog
//! postgres://…` (or `catalog = "…"` in the config file); the data dir then records it in
//! `DATA/catalog` (`url=`, `id=` the catalog's id; mode 0600, temp file + fsync + rename), so later
//! commands on the dir (`serve` again, `admin …`) find it without the flag. A data dir and a catalog
//! belong together: volume directories without rows are removed at start and a local store's
//! manifests without rows by GC, so starting a dir on another catalog would destroy it. Refused, with
//! nothing changed: a PostgreSQL catalog for a dir that has `catalog.db`, the default for a dir bound to
//! PostgreSQL, a database whose catalog id differs from the recorded one, and binding a new dir to a
//! catalog that already holds rows (another dir's).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use blocksnap_catalog::{Catalog, OpenMode, PgCatalog, SqliteCatalog};

pub const RECORD_NAME: &str = "catalog";

/// Where the catalog is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    Sqlite,
    Postgres { url: String },
}

/// `DATA/catalog`, when the dir is bound to a PostgreSQL catalog.
struct Record {
    url: String,
    id: String,
    /// The cluster node this dir is (`node=`), when it is one.
    node: Option<String>,
    /// This data dir's random id (`dir=`), written when the dir is first bound to a node: the
    /// node's catalog row names it, so a second process started with the same node id on another
    /// data dir is refused (`cluster::Node::wait_to_lead`).
    dir: Option<String>,
}

/// A new random data dir id (128 bits, hex).
fn new_dir_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn read_record(dir: &Path) -> anyhow::Result<Option<Record>> {
    let path = dir.join(RECORD_NAME);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(anyhow::Error::from(e).context(format!("reading {}", path.display()))),
    };
    let field = |k: &str| text.lines().find_map(|l| l.strip_prefix(k)?.strip_prefix('=')).map(str::trim);
    match (field("url"), field("id")) {
        (Some(url), Some(id)) if !url.is_empty() && !id.is_empty() => Ok(Some(Record {
            url: url.to_string(),
            id: id.to_string(),
            node: field("node").filter(|n| !n.is_empty()).map(str::to_string),
            dir: field("dir").filter(|n| !n.is_empty()).map(str::to_string),
        })),
        _ => anyhow::bail!("{} is not a blocksnap catalog record (url=…, id=…)", path.display()),
    }
}

fn write_record(dir: &Path, rec: &Record) -> anyhow::Result<()> {
    let path = dir.join(RECORD_NAME);
    let tmp = dir.join(format!("{RECORD_NAME}.tmp"));
    (|| -> std::io::Result<()> {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        let node = rec.node.as_ref().map(|n| format!("node={n}\n")).unwrap_or_default();
        let node = format!("{node}{}", rec.dir.as_ref().map(|d| format!("dir={d}\n")).unwrap_or_default());
        f.write_all(
            format!(
                "# this data dir's catalog (PostgreSQL); the URL may hold a password\nurl={}\nid={}\n{node}",
                rec.url, rec.id
            )
            .as_bytes(),
        )?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        File::open(dir)?.sync_all()
    })()
    .with_context(|| format!("writing {}", path.display()))
}

/// The catalog for `dir`: the one asked for (`--catalog`, else the config file's `catalog`), else the
/// one the dir records, else SQLite. Refuses a choice that contradicts the dir.
pub fn choose(dir: &Path, asked: Option<&str>) -> anyhow::Result<Choice> {
    let recorded = read_record(dir)?;
    let asked = match asked.map(str::trim) {
        None | Some("") => None,
        Some("sqlite") => Some(Choice::Sqlite),
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Some(Choice::Postgres { url: url.to_string() })
        }
        Some(other) => anyhow::bail!(
            "--catalog {}: expected `sqlite` or a postgres:// or postgresql:// URL",
            blocksnap_catalog::redact(other)
        ),
    };
    match (asked, recorded) {
        (Some(Choice::Postgres { url }), _) => {
            if dir.join("catalog.db").exists() {
                anyhow::bail!(
                    "the data dir {} has its catalog in catalog.db (SQLite); it cannot be started on PostgreSQL \
                     (its volumes would be orphans there); nothing was changed",
                    dir.display()
                );
            }
            Ok(Choice::Postgres { url })
        }
        (Some(Choice::Sqlite), Some(r)) => anyhow::bail!(
            "the data dir {} belongs to the PostgreSQL catalog {} (recorded in {}); nothing was changed",
            dir.display(),
            blocksnap_catalog::redact(&r.url),
            dir.join(RECORD_NAME).display()
        ),
        (Some(Choice::Sqlite), None) | (None, None) => Ok(Choice::Sqlite),
        (None, Some(r)) => Ok(Choice::Postgres { url: r.url }),
    }
}

/// Open the chosen catalog. The owner (it holds the data dir's lock) creates or migrates it and binds
/// the dir to it; other modes require the dir to be bound to it already.
pub fn open(dir: &Path, choice: &Choice, mode: OpenMode) -> anyhow::Result<Arc<dyn Catalog>> {
    match choice {
        Choice::Sqlite => Ok(Arc::new(SqliteCatalog::open_mode(&dir.join("catalog.db"), mode)?)),
        Choice::Postgres { url } => {
            let cat = PgCatalog::open_mode(url, mode)?;
            bind(dir, url, &cat, mode)?;
            tracing::info!(catalog = cat.target(), id = cat.catalog_id(), "PostgreSQL catalog");
            Ok(Arc::new(cat))
        }
    }
}

fn bind(dir: &Path, url: &str, cat: &PgCatalog, mode: OpenMode) -> anyhow::Result<()> {
    let id = cat.catalog_id();
    match read_record(dir)? {
        Some(Record { node: Some(node), .. }) if mode == OpenMode::Owner => anyhow::bail!(
            "the data dir {} is node {node} of a cluster: start it with --node-id {node} (alone it would take \
             the other nodes' volumes for its own); nothing was changed",
            dir.display()
        ),
        Some(r) if r.id == id => {
            if r.url != url && mode == OpenMode::Owner {
                // Same catalog at a new address (moved server, new password).
                write_record(dir, &Record { url: url.to_string(), id: id.to_string(), node: None, dir: r.dir })?;
            }
            Ok(())
        }
        Some(r) => anyhow::bail!(
            "the data dir {} belongs to catalog {} but the database {} holds catalog {id}; nothing was changed",
            dir.display(),
            r.id,
            cat.target()
        ),
        None if mode != OpenMode::Owner => anyhow::bail!(
            "the data dir {} is not bound to the PostgreSQL catalog {} (no {} yet: start `blocksnap serve \
             --catalog …` on it first)",
            dir.display(),
            cat.target(),
            RECORD_NAME
        ),
        None => {
            if !cat.is_empty()? {
                anyhow::bail!(
                    "the PostgreSQL catalog {} (id {id}) already holds another data dir's records; a data dir and a \
                     catalog belong together: use a new database for this data dir; nothing was changed",
                    cat.target()
                );
            }
            write_record(dir, &Record { url: url.to_string(), id: id.to_string(), node: None, dir: None })
        }
    }
}

/// Bind a follower's `dir` to the cluster's catalog `catalog_id` as node `node_id`, so `admin`
/// commands find the catalog, and give the dir its random id (`dir=`, kept once written). A single
/// node's dir (a record without `node=`) keeps no `node=`: it becomes this node, adopting its
/// volumes, when it leads ([`bind_node`]). Returns the dir's id and whether the record is new
/// (see [`unbind_new`]).
pub fn bind_follower(dir: &Path, url: &str, catalog_id: &str, node_id: &str) -> anyhow::Result<(String, bool)> {
    match read_record(dir)? {
        Some(r) if r.id != catalog_id => anyhow::bail!(
            "the data dir {} belongs to catalog {} but the cluster's database holds catalog {catalog_id}; nothing was changed",
            dir.display(),
            r.id
        ),
        Some(Record { node: Some(n), .. }) if n != node_id => anyhow::bail!(
            "the data dir {} is node {n}'s, not node {node_id}'s: give each node its own data dir; nothing was changed",
            dir.display()
        ),
        Some(Record { dir: Some(d), .. }) => Ok((d, false)),
        Some(r) => {
            let id = new_dir_id();
            write_record(dir, &Record { dir: Some(id.clone()), ..r })?;
            Ok((id, false))
        }
        None => {
            let id = new_dir_id();
            write_record(
                dir,
                &Record {
                    url: url.to_string(),
                    id: catalog_id.to_string(),
                    node: Some(node_id.to_string()),
                    dir: Some(id.clone()),
                },
            )?;
            Ok((id, true))
        }
    }
}

/// Undo a binding [`bind_follower`] has just created (the node was refused): the dir is left as it
/// was before this start, free to be started as another node.
pub fn unbind_new(dir: &Path) -> anyhow::Result<()> {
    let path = dir.join(RECORD_NAME);
    (|| -> std::io::Result<()> {
        std::fs::remove_file(&path)?;
        File::open(dir)?.sync_all()
    })()
    .with_context(|| format!("removing {}", path.display()))
}

/// Bind `dir` to the cluster's catalog as node `node_id` (called by a node that just won the
/// election). A new dir joins (the catalog may hold other nodes' rows); a dir that was a single
/// node's on this catalog becomes this node: `adopt` makes that node's volumes this node's first
/// (durably), then the record says `node=`, so a crash in between adopts again at the next start.
/// Returns whether it adopted. A dir of another node, or of another catalog, is refused.
pub fn bind_node(
    dir: &Path,
    url: &str,
    cat: &PgCatalog,
    node_id: &str,
    adopt: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<bool> {
    let id = cat.catalog_id();
    let rec = |dir: Option<String>| Record {
        url: url.to_string(),
        id: id.to_string(),
        node: Some(node_id.to_string()),
        dir: dir.or_else(|| Some(new_dir_id())),
    };
    match read_record(dir)? {
        Some(r) if r.id != id => anyhow::bail!(
            "the data dir {} belongs to catalog {} but the database {} holds catalog {id}; nothing was changed",
            dir.display(),
            r.id,
            cat.target()
        ),
        Some(Record { node: Some(n), .. }) if n != node_id => anyhow::bail!(
            "the data dir {} is node {n}'s, not node {node_id}'s: give each node its own data dir; nothing was changed",
            dir.display()
        ),
        Some(r) => {
            let adopting = r.node.is_none();
            if adopting {
                adopt()?;
            }
            if adopting || r.url != url || r.dir.is_none() {
                write_record(dir, &rec(r.dir))?;
            }
            Ok(adopting)
        }
        None => {
            write_record(dir, &rec(None))?;
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A follower's dir gets a random id with its node binding, atomically, and keeps it; a new
    /// binding can be undone (a refused node); a dir bound before ids existed gets one.
    #[test]
    fn follower_binding_records_a_stable_dir_id() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let (id_a, new) = bind_follower(&a, "postgres://x", "cat", "1").unwrap();
        assert!(new && id_a.len() == 32, "{id_a}");
        assert!(!a.join("catalog.tmp").exists());
        assert_eq!(bind_follower(&a, "postgres://x", "cat", "1").unwrap(), (id_a.clone(), false));
        let (id_b, _) = bind_follower(&b, "postgres://x", "cat", "1").unwrap();
        assert_ne!(id_a, id_b, "two dirs, two ids");
        unbind_new(&b).unwrap();
        assert!(read_record(&b).unwrap().is_none());
        // Another node id is refused on a's dir, nothing changed.
        let before = std::fs::read_to_string(a.join(RECORD_NAME)).unwrap();
        assert!(bind_follower(&a, "postgres://x", "cat", "2").is_err());
        assert_eq!(std::fs::read_to_string(a.join(RECORD_NAME)).unwrap(), before);
        // A record written before ids: one is added, the node binding kept.
        std::fs::write(b.join(RECORD_NAME), "url=postgres://x\nid=cat\nnode=1\n").unwrap();
        let (id, new) = bind_follower(&b, "postgres://x", "cat", "1").unwrap();
        assert!(!new);
        let r = read_record(&b).unwrap().unwrap();
        assert_eq!((r.node.as_deref(), r.dir), (Some("1"), Some(id)));
    }
}
