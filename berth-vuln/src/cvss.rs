//! CVSS base scores from vectors. v3.0 and v3.1 are computed (the v3.1 formula and its
//! Roundup; v3.0's vectors score the same but for rounding edge cases). A v4.0 vector
//! is recognized but not scored here: its score comes from the specification's table of
//! macro vectors, which is not built in yet, so the advisory's own severity is used.

use crate::Severity;

fn metric<'a>(parts: &'a [(&'a str, &'a str)], key: &str) -> Option<&'a str> {
    parts.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// CVSS v3.1's Roundup: the smallest number with one decimal equal to or above `x`,
/// computed on integers so float noise does not push 4.0 to 4.1.
fn roundup(x: f64) -> f64 {
    let i = (x * 100_000.0).round() as i64;
    if i % 10_000 == 0 {
        i as f64 / 100_000.0
    } else {
        ((i / 10_000) + 1) as f64 / 10.0
    }
}

/// The base score of a `CVSS:3.x/...` vector; `None` when it is not one or lacks a
/// base metric.
pub fn v3_base_score(vector: &str) -> Option<f64> {
    let mut it = vector.trim().split('/');
    let head = it.next()?;
    if head != "CVSS:3.1" && head != "CVSS:3.0" {
        return None;
    }
    let parts: Vec<(&str, &str)> = it.filter_map(|p| p.split_once(':')).collect();
    let scope_changed = match metric(&parts, "S")? {
        "U" => false,
        "C" => true,
        _ => return None,
    };
    let av = match metric(&parts, "AV")? {
        "N" => 0.85,
        "A" => 0.62,
        "L" => 0.55,
        "P" => 0.2,
        _ => return None,
    };
    let ac = match metric(&parts, "AC")? {
        "L" => 0.77,
        "H" => 0.44,
        _ => return None,
    };
    let pr = match (metric(&parts, "PR")?, scope_changed) {
        ("N", _) => 0.85,
        ("L", false) => 0.62,
        ("L", true) => 0.68,
        ("H", false) => 0.27,
        ("H", true) => 0.5,
        _ => return None,
    };
    let ui = match metric(&parts, "UI")? {
        "N" => 0.85,
        "R" => 0.62,
        _ => return None,
    };
    let cia = |k: &str| -> Option<f64> {
        Some(match metric(&parts, k)? {
            "H" => 0.56,
            "L" => 0.22,
            "N" => 0.0,
            _ => return None,
        })
    };
    let (c, i, a) = (cia("C")?, cia("I")?, cia("A")?);
    let iss = 1.0 - (1.0 - c) * (1.0 - i) * (1.0 - a);
    let impact = if scope_changed {
        7.52 * (iss - 0.029) - 3.25 * (iss - 0.02).powi(15)
    } else {
        6.42 * iss
    };
    let exploitability = 8.22 * av * ac * pr * ui;
    if impact <= 0.0 {
        return Some(0.0);
    }
    Some(if scope_changed {
        roundup((1.08 * (impact + exploitability)).min(10.0))
    } else {
        roundup((impact + exploitability).min(10.0))
    })
}

/// Whether a string is a CVSS v4.0 vector.
pub fn is_v4(vector: &str) -> bool {
    vector.trim().starts_with("CVSS:4.0/")
}

/// The qualitative rating of a score (the same bands in v3 and v4).
pub fn rating(score: f64) -> Severity {
    match score {
        s if s >= 9.0 => Severity::Critical,
        s if s >= 7.0 => Severity::High,
        s if s >= 4.0 => Severity::Medium,
        s if s > 0.0 => Severity::Low,
        _ => Severity::Negligible,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_scores() {
        for (v, s) in [
            // CVE-2021-44228 (Log4Shell), as NVD scores it.
            ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:C/C:H/I:H/A:H", 10.0),
            ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", 9.8),
            // CVE-2014-0160 (Heartbleed).
            ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N", 7.5),
            ("CVSS:3.1/AV:L/AC:L/PR:L/UI:N/S:U/C:H/I:H/A:H", 7.8),
            // CVE-2023-5363 (OpenSSL), NVD.
            ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N", 7.5),
            ("CVSS:3.1/AV:N/AC:H/PR:N/UI:N/S:U/C:H/I:N/A:N", 5.9),
            ("CVSS:3.1/AV:N/AC:L/PR:N/UI:R/S:C/C:L/I:L/A:N", 6.1),
            ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:N", 0.0),
            ("CVSS:3.0/AV:N/AC:L/PR:L/UI:N/S:C/C:L/I:L/A:N", 6.4),
            ("CVSS:3.1/AV:P/AC:H/PR:H/UI:R/S:U/C:L/I:N/A:N", 1.6),
        ] {
            assert_eq!(v3_base_score(v), Some(s), "{v}");
        }
        assert_eq!(v3_base_score("CVSS:3.1/AV:N/AC:L"), None);
        assert_eq!(v3_base_score("AV:N/AC:L/Au:N/C:P/I:P/A:P"), None);
        assert_eq!(rating(9.8), Severity::Critical);
        assert_eq!(rating(7.5), Severity::High);
        assert_eq!(rating(5.9), Severity::Medium);
        assert_eq!(rating(1.6), Severity::Low);
    }
}
