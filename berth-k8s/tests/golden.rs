//! Golden files of the rendering: `tests/golden/<case>.yaml` is exactly what `berth k8s
//! manifests` prints for each option set in `cases.rs`. After an intended change, rewrite
//! them with `BERTH_BLESS=1 cargo test -p berth-k8s --test golden` and read the diff.

#[path = "cases.rs"]
mod cases;

use std::path::PathBuf;

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.yaml"))
}

#[test]
fn renderings_match_their_golden_files() {
    let bless = std::env::var_os("BERTH_BLESS").is_some();
    let mut differ = Vec::new();
    for (name, options) in cases::cases() {
        let got = berth_k8s::manifests::render(&options)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .to_yaml();
        let path = golden(name);
        if bless {
            std::fs::write(&path, &got).expect("writing a golden file");
            continue;
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        if got != want {
            differ.push(name);
            let first = got
                .lines()
                .zip(want.lines())
                .position(|(a, b)| a != b)
                .unwrap_or_else(|| got.lines().count().min(want.lines().count()));
            eprintln!(
                "{name}: first difference at line {}:\n  rendered: {:?}\n  golden:   {:?}",
                first + 1,
                got.lines().nth(first),
                want.lines().nth(first)
            );
        }
    }
    assert!(
        differ.is_empty(),
        "renderings differ from tests/golden for {differ:?}; if intended, \
         rerun with BERTH_BLESS=1 and review the diff"
    );
}

#[test]
fn the_kustomize_base_holds_the_same_resources() {
    for (name, options) in cases::cases() {
        let install = berth_k8s::manifests::render(&options).expect("renders");
        let files = install.kustomize_base();
        let (last, resources) = files.split_last().expect("files");
        assert_eq!(last.0, "kustomization.yaml", "{name}");
        let listed: Vec<String> = resources.iter().map(|(f, _)| format!("  - {f}")).collect();
        assert_eq!(
            last.1,
            format!(
                "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n{}\n",
                listed.join("\n")
            ),
            "{name}"
        );
        let mut names: Vec<&str> = resources.iter().map(|(f, _)| f.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(
            names.len(),
            resources.len(),
            "{name}: one file per resource"
        );
        let joined: String = resources
            .iter()
            .map(|(_, text)| format!("---\n{text}"))
            .collect();
        assert_eq!(joined, install.to_yaml(), "{name}: base and stream differ");
    }
}
