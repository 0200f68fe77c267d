//! CVSS base scores from vectors. v3.0 and v3.1 are computed (the v3.1 formula and its
//! Roundup; v3.0's vectors score the same but for rounding edge cases). v4.0 is computed
//! as its specification says: the vector's macro vector (six equivalence classes) gives a
//! score from the specification's table, lowered by how far the vector lies from the most
//! severe vectors of its macro vector, in proportion to the drop to the next macro vector
//! of each class. Threat and environmental metrics are applied when the vector carries
//! them (an advisory's vector normally has base metrics only).

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

/// The score of each macro vector, in tenths, from the CVSS v4.0 specification. Rows are
/// (EQ1, EQ2) = 00, 01, 10, 11, 20, 21; within a row, EQ3 = 0 then 1 with (EQ4, EQ5,
/// EQ6) counting up from 000 to 221, then EQ3 = 2 with (EQ4, EQ5) from 00 to 22 (EQ3 = 2
/// only exists with EQ6 = 1).
const MACRO_SCORES: [[u8; 45]; 6] = [
    // EQ1=0 EQ2=0: EQ3=0 and 1 (EQ4, EQ5, EQ6), then EQ3=2 (EQ4, EQ5; EQ6=1)
    [
        100, 99, 98, 95, 95, 92, 100, 96, 93, 87, 91, 81, 93, 90, 89, 80, 81, 68, 98, 95, 95, 92,
        90, 84, 93, 92, 89, 81, 81, 65, 88, 80, 78, 70, 69, 48, 92, 82, 72, 79, 69, 50, 69, 55, 27,
    ],
    // EQ1=0 EQ2=1: EQ3=0 and 1 (EQ4, EQ5, EQ6), then EQ3=2 (EQ4, EQ5; EQ6=1)
    [
        99, 97, 95, 92, 92, 85, 95, 91, 90, 83, 84, 71, 92, 81, 82, 71, 72, 53, 95, 93, 92, 85, 85,
        73, 92, 82, 80, 72, 70, 59, 84, 70, 71, 52, 50, 30, 86, 75, 52, 71, 52, 29, 63, 29, 17,
    ],
    // EQ1=1 EQ2=0: EQ3=0 and 1 (EQ4, EQ5, EQ6), then EQ3=2 (EQ4, EQ5; EQ6=1)
    [
        98, 95, 94, 87, 91, 81, 94, 89, 86, 74, 77, 64, 87, 75, 74, 63, 63, 49, 94, 89, 88, 77, 76,
        67, 86, 76, 74, 58, 59, 50, 72, 57, 57, 52, 52, 25, 83, 70, 54, 65, 58, 26, 53, 21, 13,
    ],
    // EQ1=1 EQ2=1: EQ3=0 and 1 (EQ4, EQ5, EQ6), then EQ3=2 (EQ4, EQ5; EQ6=1)
    [
        95, 90, 88, 76, 76, 70, 90, 77, 75, 62, 61, 53, 77, 66, 68, 59, 52, 30, 89, 78, 76, 67, 62,
        58, 74, 59, 57, 57, 47, 23, 61, 52, 57, 29, 24, 16, 71, 59, 30, 58, 26, 15, 23, 13, 6,
    ],
    // EQ1=2 EQ2=0: EQ3=0 and 1 (EQ4, EQ5, EQ6), then EQ3=2 (EQ4, EQ5; EQ6=1)
    [
        93, 87, 86, 72, 75, 58, 86, 74, 74, 61, 56, 34, 70, 54, 52, 40, 40, 22, 85, 75, 74, 55, 62,
        51, 72, 57, 55, 41, 46, 19, 53, 36, 34, 19, 19, 8, 64, 51, 20, 47, 21, 11, 24, 9, 4,
    ],
    // EQ1=2 EQ2=1: EQ3=0 and 1 (EQ4, EQ5, EQ6), then EQ3=2 (EQ4, EQ5; EQ6=1)
    [
        88, 75, 73, 53, 60, 50, 73, 55, 59, 40, 41, 20, 54, 43, 45, 22, 20, 11, 75, 55, 58, 45, 40,
        21, 61, 51, 48, 18, 20, 9, 46, 18, 17, 7, 8, 2, 53, 24, 14, 24, 12, 5, 10, 3, 1,
    ],
];

fn macro_score(eq: [u8; 6]) -> Option<f64> {
    let [e1, e2, e3, e4, e5, e6] = eq;
    if e1 > 2 || e2 > 1 || e3 > 2 || e4 > 2 || e5 > 2 || e6 > 1 {
        return None;
    }
    let col = if e3 < 2 {
        e3 as usize * 18 + e4 as usize * 6 + e5 as usize * 2 + e6 as usize
    } else if e6 == 1 {
        36 + e4 as usize * 3 + e5 as usize
    } else {
        return None;
    };
    Some(f64::from(MACRO_SCORES[e1 as usize * 2 + e2 as usize][col]) / 10.0)
}

/// The metrics a v4.0 vector may carry and the values each allows. Supplemental metrics
/// (S, AU, R, V, RE, U) are accepted and do not change the score.
const V4_METRICS: &[(&str, &[&str])] = &[
    ("AV", &["N", "A", "L", "P"]),
    ("AC", &["L", "H"]),
    ("AT", &["N", "P"]),
    ("PR", &["N", "L", "H"]),
    ("UI", &["N", "P", "A"]),
    ("VC", &["H", "L", "N"]),
    ("VI", &["H", "L", "N"]),
    ("VA", &["H", "L", "N"]),
    ("SC", &["H", "L", "N"]),
    ("SI", &["H", "L", "N"]),
    ("SA", &["H", "L", "N"]),
    ("E", &["X", "A", "P", "U"]),
    ("CR", &["X", "H", "M", "L"]),
    ("IR", &["X", "H", "M", "L"]),
    ("AR", &["X", "H", "M", "L"]),
    ("MAV", &["X", "N", "A", "L", "P"]),
    ("MAC", &["X", "L", "H"]),
    ("MAT", &["X", "N", "P"]),
    ("MPR", &["X", "N", "L", "H"]),
    ("MUI", &["X", "N", "P", "A"]),
    ("MVC", &["X", "H", "L", "N"]),
    ("MVI", &["X", "H", "L", "N"]),
    ("MVA", &["X", "H", "L", "N"]),
    ("MSC", &["X", "H", "L", "N"]),
    ("MSI", &["X", "S", "H", "L", "N"]),
    ("MSA", &["X", "S", "H", "L", "N"]),
    ("S", &["X", "N", "P"]),
    ("AU", &["X", "N", "Y"]),
    ("R", &["X", "A", "U", "I"]),
    ("V", &["X", "D", "C"]),
    ("RE", &["X", "L", "M", "H"]),
    ("U", &["X", "Clear", "Green", "Amber", "Red"]),
];

const V4_BASE: [&str; 11] = [
    "AV", "AC", "AT", "PR", "UI", "VC", "VI", "VA", "SC", "SI", "SA",
];

/// A parsed v4.0 vector: each metric's value, as the vector wrote it.
struct V4<'a> {
    values: Vec<(&'a str, &'a str)>,
}

impl<'a> V4<'a> {
    fn parse(vector: &'a str) -> Option<V4<'a>> {
        let mut it = vector.trim().split('/');
        if it.next()? != "CVSS:4.0" {
            return None;
        }
        let mut values: Vec<(&str, &str)> = Vec::new();
        for part in it {
            let (k, v) = part.split_once(':')?;
            let (_, allowed) = V4_METRICS.iter().find(|(name, _)| *name == k)?;
            if !allowed.contains(&v) || values.iter().any(|(seen, _)| *seen == k) {
                return None;
            }
            values.push((k, v));
        }
        if V4_BASE.iter().any(|b| !values.iter().any(|(k, _)| k == b)) {
            return None;
        }
        Some(V4 { values })
    }

    fn raw(&self, key: &str) -> Option<&'a str> {
        self.values.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    /// The value scoring uses: an unset threat metric is its worst case (E:A), an unset
    /// requirement is High, and a modified metric replaces its base metric.
    fn get(&self, key: &str) -> &'a str {
        match key {
            "E" => match self.raw("E") {
                None | Some("X") => "A",
                Some(v) => v,
            },
            "CR" | "IR" | "AR" => match self.raw(key) {
                None | Some("X") => "H",
                Some(v) => v,
            },
            _ => {
                let modified = match key {
                    "AV" => "MAV",
                    "AC" => "MAC",
                    "AT" => "MAT",
                    "PR" => "MPR",
                    "UI" => "MUI",
                    "VC" => "MVC",
                    "VI" => "MVI",
                    "VA" => "MVA",
                    "SC" => "MSC",
                    "SI" => "MSI",
                    "SA" => "MSA",
                    _ => "",
                };
                match self.raw(modified) {
                    Some(v) if v != "X" => v,
                    // Parsing checked every base metric is present.
                    _ => self.raw(key).unwrap_or("N"),
                }
            }
        }
    }

    fn is(&self, key: &str, value: &str) -> bool {
        self.get(key) == value
    }

    fn macro_vector(&self) -> [u8; 6] {
        let (av, pr, ui) = (self.get("AV"), self.get("PR"), self.get("UI"));
        let eq1 = if av == "N" && pr == "N" && ui == "N" {
            0
        } else if (av == "N" || pr == "N" || ui == "N") && av != "P" {
            1
        } else {
            2
        };
        let eq2 = if self.is("AC", "L") && self.is("AT", "N") {
            0
        } else {
            1
        };
        let (vc, vi, va) = (self.is("VC", "H"), self.is("VI", "H"), self.is("VA", "H"));
        let eq3 = if vc && vi {
            0
        } else if vc || vi || va {
            1
        } else {
            2
        };
        let eq4 = if self.is("SI", "S") || self.is("SA", "S") {
            0
        } else if self.is("SC", "H") || self.is("SI", "H") || self.is("SA", "H") {
            1
        } else {
            2
        };
        let eq5 = match self.get("E") {
            "P" => 1,
            "U" => 2,
            _ => 0,
        };
        let eq6 = if (self.is("CR", "H") && vc)
            || (self.is("IR", "H") && vi)
            || (self.is("AR", "H") && va)
        {
            0
        } else {
            1
        };
        [eq1, eq2, eq3, eq4, eq5, eq6]
    }
}

/// A metric value's severity level in tenths, 0 the most severe, as the specification
/// measures the distance of a vector from the most severe vectors of its macro vector.
fn level(key: &str, value: &str) -> i32 {
    let order: &[&str] = match key {
        "AV" => &["N", "A", "L", "P"],
        "PR" => &["N", "L", "H"],
        "UI" => &["N", "P", "A"],
        "AC" => &["L", "H"],
        "AT" => &["N", "P"],
        "VC" | "VI" | "VA" => &["H", "L", "N"],
        "CR" | "IR" | "AR" => &["H", "M", "L"],
        // S (safety) is only reachable through MSI and MSA.
        _ => &["S", "H", "L", "N"],
    };
    order.iter().position(|v| *v == value).unwrap_or(0) as i32
}

/// The most severe vectors of each class's level (the specification's table), as
/// `metric:value` lists; EQ3 and EQ6 go together.
fn max_vectors(eq: [u8; 6]) -> [&'static [&'static str]; 4] {
    let eq1: &[&str] = match eq[0] {
        0 => &["AV:N/PR:N/UI:N"],
        1 => &["AV:A/PR:N/UI:N", "AV:N/PR:L/UI:N", "AV:N/PR:N/UI:P"],
        _ => &["AV:P/PR:N/UI:N", "AV:A/PR:L/UI:P"],
    };
    let eq2: &[&str] = match eq[1] {
        0 => &["AC:L/AT:N"],
        _ => &["AC:H/AT:N", "AC:L/AT:P"],
    };
    let eq36: &[&str] = match (eq[2], eq[5]) {
        (0, 0) => &["VC:H/VI:H/VA:H/CR:H/IR:H/AR:H"],
        (0, _) => &[
            "VC:H/VI:H/VA:L/CR:M/IR:M/AR:H",
            "VC:H/VI:H/VA:H/CR:M/IR:M/AR:M",
        ],
        (1, 0) => &[
            "VC:L/VI:H/VA:H/CR:H/IR:H/AR:H",
            "VC:H/VI:L/VA:H/CR:H/IR:H/AR:H",
        ],
        (1, _) => &[
            "VC:L/VI:H/VA:L/CR:H/IR:M/AR:H",
            "VC:L/VI:H/VA:H/CR:H/IR:M/AR:M",
            "VC:H/VI:L/VA:H/CR:M/IR:H/AR:M",
            "VC:H/VI:L/VA:L/CR:M/IR:H/AR:H",
            "VC:L/VI:L/VA:H/CR:H/IR:H/AR:M",
        ],
        _ => &["VC:L/VI:L/VA:L/CR:H/IR:H/AR:H"],
    };
    let eq4: &[&str] = match eq[3] {
        0 => &["SC:H/SI:S/SA:S"],
        1 => &["SC:H/SI:H/SA:H"],
        _ => &["SC:L/SI:L/SA:L"],
    };
    [eq1, eq2, eq36, eq4]
}

/// How deep each class's level is (the specification's table, in tenths).
fn depth(eq: [u8; 6]) -> [i32; 4] {
    let eq1 = [1, 4, 5][eq[0].min(2) as usize];
    let eq2 = [1, 2][eq[1].min(1) as usize];
    let eq36 = match (eq[2], eq[5]) {
        (0, 0) => 7,
        (0, _) => 6,
        (1, _) => 8,
        _ => 10,
    };
    let eq4 = [6, 5, 4][eq[3].min(2) as usize];
    [eq1, eq2, eq36, eq4]
}

/// The distance of the vector from one most severe vector, per metric of the class;
/// `None` when the vector is more severe in some metric (that one is not its maximum).
fn distance(v: &V4<'_>, max: &str) -> Option<i32> {
    let mut total = 0;
    for part in max.split('/') {
        let (k, want) = part.split_once(':')?;
        let d = level(k, v.get(k)) - level(k, want);
        if d < 0 {
            return None;
        }
        total += d;
    }
    Some(total)
}

/// The base score of a `CVSS:4.0/...` vector (with its threat and environmental metrics
/// when it has them); `None` when it is not a well-formed v4.0 vector.
pub fn v4_base_score(vector: &str) -> Option<f64> {
    let v = V4::parse(vector)?;
    if ["VC", "VI", "VA", "SC", "SI", "SA"]
        .iter()
        .all(|k| v.is(k, "N"))
    {
        return Some(0.0);
    }
    let eq = v.macro_vector();
    let value = macro_score(eq)?;
    let [e1, e2, e3, e4, e5, e6] = eq;
    let lower = |m: [u8; 6]| macro_score(m);
    let next_eq36 = match (e3, e6) {
        // Two ways down; the specification takes the higher score.
        (0, 0) => match (
            lower([e1, e2, e3, e4, e5, e6 + 1]),
            lower([e1, e2, e3 + 1, e4, e5, e6]),
        ) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        },
        (1, 0) => lower([e1, e2, e3, e4, e5, e6 + 1]),
        (0 | 1, _) => lower([e1, e2, e3 + 1, e4, e5, e6]),
        _ => None,
    };
    let next = [
        lower([e1 + 1, e2, e3, e4, e5, e6]),
        lower([e1, e2 + 1, e3, e4, e5, e6]),
        next_eq36,
        lower([e1, e2, e3, e4 + 1, e5, e6]),
    ];
    // The first most severe vector of each class the vector does not exceed; when some
    // class has none, the specification's search ends on the last of every class.
    let maxes = max_vectors(eq);
    let first: Vec<Option<i32>> = maxes
        .iter()
        .map(|list| list.iter().find_map(|m| distance(&v, m)))
        .collect();
    let distances: Vec<i32> = if first.iter().all(Option::is_some) {
        first.into_iter().flatten().collect()
    } else {
        maxes
            .iter()
            .map(|list| {
                list.last()
                    .map(|m| signed_distance(&v, m))
                    .unwrap_or_default()
            })
            .collect()
    };
    let depths = depth(eq);
    let mut sum = 0.0;
    let mut n = 0u32;
    for i in 0..4 {
        if let Some(down) = next[i] {
            n += 1;
            sum += (value - down) * f64::from(distances[i]) / f64::from(depths[i]);
        }
    }
    // EQ5's distance is always 0 within its level, but a lower level still counts.
    if lower([e1, e2, e3, e4, e5 + 1, e6]).is_some() {
        n += 1;
    }
    let mean = if n == 0 { 0.0 } else { sum / f64::from(n) };
    let score = (value - mean).clamp(0.0, 10.0);
    // One decimal, half up; the epsilon keeps 6.85 computed as 6.8499999 at 6.9.
    Some(((score * 10.0) + 1e-6).round() / 10.0)
}

fn signed_distance(v: &V4<'_>, max: &str) -> i32 {
    max.split('/')
        .filter_map(|p| p.split_once(':'))
        .map(|(k, want)| level(k, v.get(k)) - level(k, want))
        .sum()
}

/// The base score of a v3.x or v4.0 vector.
pub fn base_score(vector: &str) -> Option<f64> {
    if is_v4(vector) {
        v4_base_score(vector)
    } else {
        v3_base_score(vector)
    }
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

    #[test]
    fn v4_published_scores() {
        for (v, s) in [
            // The specification's calculator on the most and least severe vectors.
            (
                "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:H/SI:H/SA:H",
                10.0,
            ),
            (
                "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:N/VI:N/VA:N/SC:N/SI:N/SA:N",
                0.0,
            ),
            // FIRST's CVSS v4.0 examples document.
            (
                "CVSS:4.0/AV:L/AC:L/AT:P/PR:L/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N",
                7.3,
            ),
            (
                "CVSS:4.0/AV:N/AC:L/AT:P/PR:N/UI:P/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N",
                7.7,
            ),
            (
                "CVSS:4.0/AV:N/AC:L/AT:P/PR:N/UI:P/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N/E:U",
                5.2,
            ),
            (
                "CVSS:4.0/AV:N/AC:L/AT:P/PR:N/UI:N/VC:H/VI:L/VA:L/SC:N/SI:N/SA:N",
                8.3,
            ),
            (
                "CVSS:4.0/AV:N/AC:L/AT:P/PR:N/UI:N/VC:H/VI:L/VA:L/SC:N/SI:N/SA:N/CR:H/IR:L/AR:L/MAV:N/MAC:H/MVC:H/MVI:L/MVA:L",
                8.1,
            ),
            (
                "CVSS:4.0/AV:L/AC:L/AT:N/PR:N/UI:A/VC:L/VI:N/VA:N/SC:N/SI:N/SA:N",
                4.6,
            ),
            // NVD: CVE-2024-7657 and CVE-2025-6829 (E:X is the same as no E).
            (
                "CVSS:4.0/AV:N/AC:L/AT:N/PR:L/UI:N/VC:N/VI:L/VA:N/SC:N/SI:N/SA:N",
                5.3,
            ),
            (
                "CVSS:4.0/AV:N/AC:L/AT:N/PR:L/UI:N/VC:L/VI:L/VA:L/SC:N/SI:N/SA:N/E:X",
                5.3,
            ),
            (
                "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:L/VI:L/VA:L/SC:N/SI:N/SA:N",
                6.9,
            ),
            // The vector GitHub gives most network-reachable criticals.
            (
                "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N",
                9.3,
            ),
        ] {
            assert_eq!(v4_base_score(v), Some(s), "{v}");
            assert_eq!(base_score(v), Some(s), "{v}");
        }
    }

    #[test]
    fn v4_malformed_vectors_are_not_scored() {
        for v in [
            "",
            "CVSS:4.0",
            "CVSS:4.0/",
            "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:H/SI:H",
            "CVSS:4.0/AV:X/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:H/SI:H/SA:H",
            "CVSS:4.0/AV:N/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:H/SI:H/SA:H",
            "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:H/SI:S/SA:H",
            "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:H/SI:H/SA:H/ZZ:Q",
            "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:H/SI:H/SA:H/E",
            "CVSS:4.1/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:H/SI:H/SA:H",
        ] {
            assert_eq!(v4_base_score(v), None, "{v:?}");
        }
    }

    /// Every one of the 62,208 combinations of base metric values scores, within 0..=10.
    #[test]
    fn v4_every_base_vector_scores() {
        let sets: [&[&str]; 11] = [
            &["N", "A", "L", "P"],
            &["L", "H"],
            &["N", "P"],
            &["N", "L", "H"],
            &["N", "P", "A"],
            &["H", "L", "N"],
            &["H", "L", "N"],
            &["H", "L", "N"],
            &["H", "L", "N"],
            &["H", "L", "N"],
            &["H", "L", "N"],
        ];
        let mut idx = [0usize; 11];
        let mut n = 0;
        loop {
            let v = format!(
                "CVSS:4.0/{}",
                V4_BASE
                    .iter()
                    .zip(idx.iter().zip(sets.iter()))
                    .map(|(k, (i, s))| format!("{k}:{}", s[*i]))
                    .collect::<Vec<_>>()
                    .join("/")
            );
            let s = v4_base_score(&v).expect(&v);
            assert!((0.0..=10.0).contains(&s), "{v} {s}");
            n += 1;
            let mut k = 0;
            loop {
                if k == 11 {
                    assert_eq!(n, 4 * 2 * 2 * 3 * 3 * 729);
                    return;
                }
                idx[k] += 1;
                if idx[k] < sets[k].len() {
                    break;
                }
                idx[k] = 0;
                k += 1;
            }
        }
    }
}
