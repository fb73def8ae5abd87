//! Quick throughput measurement (not a pass/fail test):
//! `cargo test --release -p blocksnap-store --test bench -- --ignored --nocapture`

use std::time::Instant;

use blocksnap_store::{BLOCK_SIZE, BlockStore, Codec, DataKey, LocalOptions, SyncMode};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};
use rand::RngCore;

const BLOCKS: usize = 256; // 128 MiB per run
const CONCURRENCY: usize = 8;

fn blocks(compressible: bool) -> Vec<Bytes> {
    (0..BLOCKS)
        .map(|i| {
            let mut v = vec![0u8; BLOCK_SIZE];
            if compressible {
                // Roughly 3:1 with zstd-1: text with some randomness, like a filesystem image.
                let mut n = 0;
                while n < BLOCK_SIZE {
                    let line = format!("{i:06} {n:08} lorem ipsum dolor sit amet {}\n", rand::random::<u32>());
                    let l = line.len().min(BLOCK_SIZE - n);
                    v[n..n + l].copy_from_slice(&line.as_bytes()[..l]);
                    n += l;
                }
            } else {
                rand::rng().fill_bytes(&mut v);
            }
            Bytes::from(v)
        })
        .collect()
}

async fn put_all(store: &BlockStore, codec: &Codec, data: &[Bytes]) -> (f64, u64) {
    let t = Instant::now();
    let stored: u64 = stream::iter(data.iter().cloned())
        .map(|b| {
            let (s, c) = (store.clone(), codec.clone());
            async move { s.put_block(&c, b).await.map(|o| o.stored_bytes) }
        })
        .buffer_unordered(CONCURRENCY)
        .try_fold(0u64, |a, b| async move { Ok(a + b) })
        .await
        .unwrap();
    let mbs = (data.len() * BLOCK_SIZE) as f64 / 1e6 / t.elapsed().as_secs_f64();
    (mbs, stored)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn put_block_throughput() {
    for sync in [SyncMode::None, SyncMode::EveryObject] {
        for (label, compressible) in [("random", false), ("compressible", true)] {
            let data = blocks(compressible);
            for enc in [false, true] {
                let dir = tempfile::tempdir().unwrap();
                let store = BlockStore::open_local_with(dir.path(), LocalOptions { sync }).await.unwrap();
                let codec = if enc { Codec::encrypted(&DataKey::generate()).unwrap() } else { Codec::plain() };
                let (fresh, stored) = put_all(&store, &codec, &data).await;
                let (dedup, _) = put_all(&store, &codec, &data).await;
                let ids: Vec<_> = data.iter().map(|b| codec.block_id(b)).collect();
                let t = Instant::now();
                stream::iter(ids)
                    .map(|id| {
                        let (s, c) = (store.clone(), codec.clone());
                        async move { s.get_block(&c, &id).await.map(|b| b.len()) }
                    })
                    .buffer_unordered(CONCURRENCY)
                    .try_collect::<Vec<_>>()
                    .await
                    .unwrap();
                let get = (BLOCKS * BLOCK_SIZE) as f64 / 1e6 / t.elapsed().as_secs_f64();
                println!(
                    "sync={sync:?} {label:12} {:9}: put {fresh:7.1} MB/s (stored {:5.1}%), re-put (dedup) {dedup:7.1} MB/s, get {get:7.1} MB/s",
                    if enc { "encrypted" } else { "plain" },
                    stored as f64 * 100.0 / (BLOCKS * BLOCK_SIZE) as f64,
                );
            }
        }
    }
}
