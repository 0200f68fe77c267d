//! Every rendering (the YAML stream and each file of the kustomize base) validates
//! against the Kubernetes OpenAPI schemas of the versions still supported, offline, with
//! PyPI's `kubernetes-validate` in strict mode (an unknown or misspelt field fails), and
//! reads back with PyYAML as exactly the objects that were rendered.
//!
//! `scripts/install-test-tools.sh` installs the pinned `kubernetes-validate` into
//! `$BERTH_TOOLS_PREFIX/kubernetes-validate-venv`; a missing tool fails these tests.

#[path = "cases.rs"]
mod cases;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

/// The Kubernetes minor versions still supported (each for about 14 months after its
/// release) that the pinned `kubernetes-validate` has schemas for.
const VERSIONS: [&str; 3] = ["1.35.0", "1.36.0", "1.37.0"];

fn venv() -> PathBuf {
    let prefix =
        std::env::var_os("BERTH_TOOLS_PREFIX").unwrap_or_else(|| "/opt/berth-tools".into());
    PathBuf::from(prefix).join("kubernetes-validate-venv/bin")
}

#[track_caller]
fn tool(name: &str) -> PathBuf {
    let p = venv().join(name);
    assert!(
        p.is_file(),
        "{} is missing: install it with scripts/install-test-tools.sh (these tests never skip)",
        p.display()
    );
    p
}

/// Runs kubernetes-validate on `files` for every supported version and checks that each
/// of `expected` (`kind/name` per file) passed, and nothing failed or went unchecked.
fn validate(files: &[(PathBuf, Vec<String>)]) {
    let validator = tool("kubernetes-validate");
    for version in VERSIONS {
        let out = Command::new(&validator)
            .args(["--strict", "-k", version])
            .args(files.iter().map(|(f, _)| f))
            .output()
            .expect("running kubernetes-validate");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "Kubernetes {version}:\n{text}");
        assert!(
            !text.contains("WARN") && !text.contains("ERROR"),
            "Kubernetes {version}: warnings or errors:\n{text}"
        );
        let minor = version.trim_end_matches(".0");
        for (file, resources) in files {
            for r in resources {
                let line = format!(
                    "{} passed for resource {r} against version {minor}",
                    file.display()
                );
                assert!(text.contains(&line), "missing `{line}` in:\n{text}");
            }
        }
    }
}

/// The documents of a YAML file as PyYAML reads them, as JSON.
fn pyyaml_documents(file: &Path) -> Vec<Value> {
    let out = Command::new(tool("python"))
        .args([
            "-c",
            "import json, sys, yaml\n\
             docs = [d for d in yaml.safe_load_all(open(sys.argv[1], encoding='utf-8')) if d is not None]\n\
             json.dump(docs, sys.stdout)",
        ])
        .arg(file)
        .output()
        .expect("running python");
    assert!(
        out.status.success(),
        "PyYAML could not read {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    match serde_json::from_slice(&out.stdout).expect("python printed JSON") {
        Value::Array(docs) => docs,
        other => panic!("not a list of documents: {other}"),
    }
}

fn kind_name(v: &Value) -> String {
    format!(
        "{}/{}",
        v["kind"].as_str().unwrap_or_default().to_ascii_lowercase(),
        v["metadata"]["name"].as_str().unwrap_or_default()
    )
}

#[test]
fn every_rendering_validates_against_the_supported_kubernetes_versions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut files = Vec::new();
    for (name, options) in cases::cases() {
        let install = berth_k8s::manifests::render(&options).expect("renders");
        let values: Vec<Value> = install.resources.iter().map(|r| r.value.clone()).collect();
        let stream = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&stream, install.to_yaml()).expect("writing");
        assert_eq!(
            pyyaml_documents(&stream),
            values,
            "{name}: read back differently"
        );
        files.push((stream, values.iter().map(kind_name).collect()));

        let base = dir.path().join(format!("{name}-base"));
        std::fs::create_dir(&base).expect("mkdir");
        for (file, text) in install.kustomize_base() {
            let path = base.join(&file);
            std::fs::write(&path, text).expect("writing");
            let docs = pyyaml_documents(&path);
            if file == "kustomization.yaml" {
                continue;
            }
            assert_eq!(docs.len(), 1, "{name}/{file}");
            files.push((path, docs.iter().map(kind_name).collect()));
        }
    }
    validate(&files);
}

#[test]
fn the_yaml_writer_reads_back_exactly_in_pyyaml() {
    // Strings a careless writer gets wrong: YAML 1.1 booleans, numbers, dates, syntax
    // characters, escapes, non-ASCII, and multi-line text in every chomping case.
    let strings = [
        "",
        "true",
        "False",
        "yes",
        "No",
        "on",
        "OFF",
        "y",
        "n",
        "null",
        "Null",
        "~",
        "0",
        "007",
        "1.5",
        "-1",
        "+1",
        "1e3",
        "0x1f",
        "0o17",
        "1_000",
        "12:30:00",
        ".inf",
        "-.inf",
        ".NaN",
        "2026-12-06",
        "2026-12-06T10:00:00Z",
        "250m",
        "10Gi",
        "0.1.0",
        "-",
        "- a",
        "--config",
        "a: b",
        "a:b",
        "#x",
        "a #b",
        "*ref",
        "&anchor",
        "!tag",
        "%d",
        "@x",
        "`x",
        "{a}",
        "[a]",
        "'q'",
        "\"q\"",
        "\\",
        " lead",
        "trail ",
        "=",
        "?",
        "? x",
        "|",
        ">",
        ",",
        "tab\there",
        "nul\u{0}",
        "bell\u{7}",
        "del\u{7f}",
        "nel\u{85}",
        "ls\u{2028}",
        "bom\u{feff}",
        "é",
        "日本",
        "\u{1F600}",
        "line\n",
        "two\nlines",
        "end\n\n",
        "\n",
        "\nlead",
        "  indented\nblock\n",
        "a\r\nb",
        "x\n  y\n",
        "ends in space \nx\n",
        "/healthz",
        "app.kubernetes.io/name",
        "RuntimeDefault",
    ];
    let mut map = serde_json::Map::new();
    for (i, s) in strings.iter().enumerate() {
        map.insert((*s).to_owned(), json!(i));
        map.insert(format!("k{i}"), json!(s));
    }
    let v = json!({
        "apiVersion": "v1",
        "map": map,
        "list": strings.as_slice(),
        "nested": [[], {}, [[1, [2]], {"a": [{"b": "c\nd\n"}]}], null, true, 1.25, -3],
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("torture.yaml");
    std::fs::write(
        &path,
        berth_k8s::yaml::to_yaml_stream([&v, &json!("alone")]),
    )
    .expect("writing");
    assert_eq!(pyyaml_documents(&path), vec![v, json!("alone")]);
}
