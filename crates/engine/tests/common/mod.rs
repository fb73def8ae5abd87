//! What the engine's integration tests share: a node opened the way `blocksnap serve` starts one,
//! and, for the crash tests, a child run of the test binary that crashes at a failpoint
//! (`std::process::exit(crash_code)`) before the parent checks what a restart finds.
#![allow(dead_code)] // each test file uses its own part of it

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use blocksnap_catalog::SqliteCatalog;
use blocksnap_engine::model::Ctx;
use blocksnap_engine::{Engine, EngineConfig, Storage};

/// An engine over `dir` (SQLite catalog, snapshot store, volumes in `dir/<volumes>`), its runtime,
/// and the root account's context in `region`.
pub struct Node {
    pub engine: Arc<Engine>,
    pub runtime: tokio::runtime::Runtime,
    pub ctx: Ctx,
}

/// Opens a node as `serve` does: `prepare` (what serve does before cleaning up, e.g.
/// `--replace-node`'s marking), orphan cleanup, start (jobs resume), the root key `key`.
pub fn open_node(dir: &Path, volumes: &str, config: EngineConfig, key: &str, region: &str) -> Node {
    open_node_with(dir, volumes, config, key, region, |_| {})
}

pub fn open_node_with(
    dir: &Path,
    volumes: &str,
    config: EngineConfig,
    key: &str,
    region: &str,
    prepare: impl FnOnce(&Arc<Engine>),
) -> Node {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let store = blocksnap_volume::VolumeStore::open(dir.join(volumes)).unwrap();
    let storage =
        Storage { volumes: Arc::new(store), snapshot_root: dir.join("snapshots"), runtime: runtime.handle().clone() };
    let catalog = SqliteCatalog::open(&dir.join("catalog.db")).unwrap();
    let engine = Arc::new(Engine::open(Arc::new(catalog), config, Some(storage)).unwrap());
    prepare(&engine);
    engine.remove_orphan_volumes().unwrap();
    engine.start().unwrap();
    engine.ensure_root(Some((key.into(), "secret".into()))).unwrap();
    let ctx = Ctx { account: engine.root_account().unwrap(), region: region.into() };
    Node { engine, runtime, ctx }
}

/// Runs this test binary's `child` test with `child_env=spec` and answers its exit code; the
/// child's output is printed when it did not crash as planned.
pub fn run_child(child_env: &str, crash_code: i32, spec: String) -> i32 {
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = Command::new(exe)
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(child_env, spec)
        .output()
        .expect("the child test runs");
    let code = out.status.code().unwrap_or(-1);
    if code != crash_code {
        eprintln!("child stdout: {}", String::from_utf8_lossy(&out.stdout));
        eprintln!("child stderr: {}", String::from_utf8_lossy(&out.stderr));
    }
    code
}
