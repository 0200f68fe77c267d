//! Replays the committed fuzz corpora (`fuzz/corpus/advisory/`, `fuzz/corpus/version/`)
//! through the same checks the fuzz targets run, so every input the fuzzer kept is a
//! regression test.

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    for f in &files {
        let data = std::fs::read(f).expect("read");
        let r = std::panic::catch_unwind(|| check(&data));
        assert!(r.is_ok(), "{} fails", f.display());
    }
}

#[test]
fn advisory_corpus() {
    replay("advisory", berth_vuln::fuzzing::advisory);
}

#[test]
fn version_corpus() {
    replay("version", berth_vuln::fuzzing::version);
}
