//! Replays every fuzz target's checked-in corpus (`fuzz/corpus/<target>/`) and the reproducers of
//! past findings (`fuzz/regressions/<target>/`): each input must be handled without a panic.

use std::path::{Path, PathBuf};

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect();
    files.sort();
    files
}

#[test]
fn corpus_replays_without_panics() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    for (name, harness) in blocksnap_fuzzing::TARGETS {
        let corpus = inputs(&fuzz.join("corpus").join(name));
        assert!(!corpus.is_empty(), "fuzz/corpus/{name} has no inputs");
        let regressions = inputs(&fuzz.join("regressions").join(name));
        for path in corpus.iter().chain(&regressions) {
            let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            eprintln!("{name}: {}", path.display());
            harness(&data);
        }
        eprintln!("{name}: {} corpus inputs, {} regressions replayed", corpus.len(), regressions.len());
    }
}

/// Each target has a cargo-fuzz wrapper, and each wrapper a harness.
#[test]
fn every_target_has_a_fuzz_binary() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    for (name, _) in blocksnap_fuzzing::TARGETS {
        let target = fuzz.join("fuzz_targets").join(format!("{name}.rs"));
        let text = std::fs::read_to_string(&target).unwrap_or_else(|e| panic!("{}: {e}", target.display()));
        assert!(
            text.contains(&format!("blocksnap_fuzzing::{name}(")),
            "{} must call the {name} harness",
            target.display()
        );
    }
}

/// The JSON fuzzer reaches both JSON front ends.
#[test]
fn json_targets_cover_lightsail_and_kms() {
    let t = blocksnap_fuzzing::json_targets();
    assert!(t.iter().any(|t| t == "Lightsail_20161128.GetDisks"), "{t:?}");
    assert!(t.iter().any(|t| t == "TrentService.DescribeKey"), "{t:?}");
    assert!(!t.iter().any(|t| t.contains(".Create") || t.contains(".Delete")), "{t:?}");
}

/// The NBD corpus reaches the TLS-only server's STARTTLS handling and its TLS handshake: a
/// recorded client's ClientHello gets as far as the PSK lookup.
#[test]
fn nbd_corpus_reaches_the_tls_handshake() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/nbd");
    let starttls: Vec<PathBuf> = inputs(&corpus)
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("seed-starttls")))
        .collect();
    assert!(starttls.len() >= 5, "STARTTLS seeds: {starttls:?}");
    let hello = corpus.join("seed-starttls-clienthello");
    let data = std::fs::read(&hello).unwrap_or_else(|e| panic!("{}: {e}", hello.display()));
    let before = blocksnap_fuzzing::nbd_psk_lookups();
    blocksnap_fuzzing::nbd(&data);
    assert!(blocksnap_fuzzing::nbd_psk_lookups() > before, "the recorded ClientHello did not reach the PSK lookup");
}
