//! The audit log as the operator reads it with `berth audit`: a name typed into a failed
//! login cannot forge lines or columns of the text output, and `--prune` applies
//! `[audit] keep_days`.

use std::time::Duration;

use base64::Engine as _;

use crate::harness::{Berth, parse_json, run_stdout, wait_until};

const CONFIG: &str = "[auth]\nenabled = true\n\n[audit]\nrefusal_window_secs = 1\n";

#[test]
fn hostile_login_names_cannot_forge_audit_lines() {
    let berth = Berth::start_with(CONFIG, &[("BERTH_ADMIN_PASSWORD", "an admin password")]);
    // A name that, printed raw, would end its own row and start a forged one that shows
    // an admin creating a user (no ':', which would end the name in Basic credentials).
    let forged = "evil\tok\n424242\t2026-01-01\tadmin\t10.0.0.1\tuser.create\t-\u{1b}[2J";
    let creds = base64::engine::general_purpose::STANDARD.encode(format!("{forged}:x"));
    let r = berth.request(
        "GET",
        "/v2/",
        &[("Authorization", &format!("Basic {creds}"))],
    );
    assert_eq!(r.status, 401, "{r:?}");

    let json = || run_stdout(berth.cli().args(["audit", "--json"]));
    wait_until(
        Duration::from_secs(10),
        "the failed login in the audit log",
        || json().contains("evil"),
    );
    let rows: Vec<serde_json::Value> = json()
        .lines()
        .map(|l| parse_json(l.as_bytes(), "an audit row"))
        .collect();
    // JSON keeps the name exactly.
    assert!(
        rows.iter()
            .any(|r| r["actor"] == forged && r["outcome"] == "bad-credentials"),
        "{rows:?}"
    );

    let text = run_stdout(berth.cli().arg("audit"));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        rows.len() + 1,
        "one header and one line per row:\n{text}"
    );
    assert!(lines[0].starts_with("ID "), "{text}");
    assert!(
        !lines.iter().any(|l| l.starts_with("424242")),
        "a forged line:\n{text}"
    );
    let evil = lines
        .iter()
        .find(|l| l.contains("evil"))
        .expect("the failed login's line");
    assert!(
        evil.contains(r"evil\tok\n424242\t2026-01-01\tadmin\t10.0.0.1\tuser.create\t-\u{1b}[2J"),
        "escaped: {evil}"
    );
    assert!(!text.contains('\t') && !text.contains('\u{1b}'), "{text:?}");

    let pruned = run_stdout(berth.cli().args(["audit", "--prune"]));
    assert_eq!(pruned.trim(), "deleted 0 audit rows older than 90 days");
}
