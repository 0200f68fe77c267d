//! Catalogs layer files and prints what each cost: `cargo run --release -p berth-catalog
//! --example scan -- LAYER...` (for the throughput comparison with `gzip -dc`).

use std::time::Instant;

fn main() {
    for path in std::env::args().skip(1) {
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("{path}: {e}");
                std::process::exit(2);
            }
        };
        let stored = file.metadata().map(|m| m.len()).unwrap_or(0);
        let start = Instant::now();
        let c = berth_catalog::catalog_layer(file, &berth_catalog::Limits::default());
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{path}: {stored} stored bytes, {} tar bytes, {} entries, {} packages, {:.3} s, {:.1} MB/s stored, partial: {:?}",
            c.tar_bytes,
            c.entries,
            c.packages.len(),
            secs,
            stored as f64 / secs / 1e6,
            c.partial
        );
    }
}
