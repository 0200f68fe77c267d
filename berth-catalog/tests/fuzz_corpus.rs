//! Replays the committed fuzz corpus (`fuzz/corpus/layer/`) through the same property
//! checks the fuzz target runs, so every input the fuzzer kept is a regression test.

use std::path::Path;

#[test]
fn layer_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/layer");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    for f in &files {
        let data = std::fs::read(f).expect("read");
        let r = std::panic::catch_unwind(|| berth_catalog::fuzzing::layer(&data));
        assert!(r.is_ok(), "{} fails", f.display());
    }
}
