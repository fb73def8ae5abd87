//! Group commit at work: T threads each make N one-row commits and wait for each to be durable (as
//! API calls do), on SQLite and on PostgreSQL; prints durable commits per second and, for PostgreSQL,
//! how many WAL flushes served them.
//!
//! `BLOCKSNAP_TEST_PG=postgresql:///postgres?host=…  cargo run --release -p blocksnap-catalog --example commit_rate [THREADS] [COMMITS]`
//! (`. tests/pg.sh && pg_start` starts a throwaway cluster and exports the variable).

use std::sync::Arc;
use std::time::Instant;

use blocksnap_catalog::{Catalog, Change, PgCatalog, Row, SqliteCatalog};

fn run(name: &str, cat: Arc<dyn Catalog>, threads: usize, each: usize) -> f64 {
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let cat = cat.clone();
            std::thread::spawn(move || {
                for i in 0..each {
                    let row = Row {
                        kind: "volume".into(),
                        id: format!("vol-{t:04}-{i:06}"),
                        account: "123456789012".into(),
                        region: "us-east-1".into(),
                        doc: format!("{{\"size\":{i},\"state\":\"available\"}}"),
                    };
                    let seq = cat.commit(&[Change::Put(row)]).expect("commit");
                    cat.sync(seq).expect("sync");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("committer");
    }
    let rate = (threads * each) as f64 / start.elapsed().as_secs_f64();
    println!("{name:<10} threads={threads} commits={} durable commits/s={rate:.0}", threads * each);
    rate
}

fn main() {
    let mut args = std::env::args().skip(1);
    let threads: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(16);
    let each: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    let dir = std::env::temp_dir().join(format!("commit-rate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let sqlite = run("sqlite", Arc::new(SqliteCatalog::open(&dir.join("c.db")).expect("sqlite")), threads, each);
    std::fs::remove_dir_all(&dir).ok();

    let base =
        std::env::var("BLOCKSNAP_TEST_PG").expect("BLOCKSNAP_TEST_PG: a PostgreSQL URL that may create databases");
    let db = format!("commit_rate_{}", std::process::id());
    let (head, query) = base.split_once('?').map_or((base.as_str(), String::new()), |(h, q)| (h, format!("?{q}")));
    let url = format!("{}/{db}{query}", &head[..head.rfind('/').expect("a URL with a database")]);
    let status = std::process::Command::new("psql").args([&base, "-qXc", &format!("CREATE DATABASE {db}")]).status();
    assert!(status.is_ok_and(|s| s.success()), "CREATE DATABASE {db}");
    let flushes = || -> i64 {
        let out = std::process::Command::new("psql")
            .args([&url, "-XAtc", "SELECT n FROM blocksnap_flush"])
            .output()
            .expect("psql");
        String::from_utf8_lossy(&out.stdout).trim().parse().expect("flush count")
    };
    let pg = PgCatalog::open(&url).expect("postgres");
    let before = flushes();
    let rate = run("postgres", Arc::new(pg), threads, each);
    let used = flushes() - before;
    println!(
        "postgres   WAL flushes={used} commits per flush={:.1}; postgres/sqlite = {:.2}",
        (threads * each) as f64 / used.max(1) as f64,
        rate / sqlite
    );
}
