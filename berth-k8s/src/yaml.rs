//! A YAML writer for JSON values, in block style, for people to read and for
//! `kubectl apply` to take. Not a serde_yaml replacement: it writes only what a JSON value
//! holds (maps, lists, strings, numbers, booleans, null), and quotes every string a YAML
//! 1.1 or 1.2 reader could take for anything but that string.
//!
//! Keys come out in the order Kubernetes users expect to read them: `apiVersion`, `kind`,
//! `metadata`, `name`, `namespace` first, then the others in byte order (serde_json's maps are sorted,
//! and enabling its `preserve_order` feature would change the JSON bytes every other crate
//! of the workspace writes).

use serde_json::Value;

/// Keys written before all others, in this order.
const FIRST_KEYS: [&str; 5] = ["apiVersion", "kind", "metadata", "name", "namespace"];

/// One YAML document (no `---`), ending with a newline.
pub fn to_yaml(v: &Value) -> String {
    let mut out = String::new();
    match v {
        Value::Object(m) if !m.is_empty() => write_map(&mut out, m, 0),
        Value::Array(a) if !a.is_empty() => write_list(&mut out, a, 0),
        other => {
            out.push_str(&inline(other));
            out.push('\n');
        }
    }
    out
}

/// Several documents, each introduced by `---`.
pub fn to_yaml_stream<'a>(docs: impl IntoIterator<Item = &'a Value>) -> String {
    let mut out = String::new();
    for d in docs {
        out.push_str("---\n");
        out.push_str(&to_yaml(d));
    }
    out
}

fn ordered_keys(m: &serde_json::Map<String, Value>) -> Vec<&String> {
    let mut keys: Vec<&String> = m.keys().collect();
    keys.sort_by_key(|k| {
        let rank = FIRST_KEYS
            .iter()
            .position(|f| f == k)
            .unwrap_or(FIRST_KEYS.len());
        (rank, k.as_str())
    });
    keys
}

fn pad(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

/// A map's entries, each on its own line at `indent`; the first one's indentation is
/// assumed written when `indent_first` is false (a map opening a list item).
fn write_map_entries(
    out: &mut String,
    m: &serde_json::Map<String, Value>,
    indent: usize,
    indent_first: bool,
) {
    for (i, k) in ordered_keys(m).into_iter().enumerate() {
        if i > 0 || indent_first {
            pad(out, indent);
        }
        out.push_str(&scalar_string(k));
        out.push(':');
        write_value_after_key(out, &m[k.as_str()], indent);
    }
}

fn write_map(out: &mut String, m: &serde_json::Map<String, Value>, indent: usize) {
    write_map_entries(out, m, indent, true);
}

/// What follows `key:` (or `-`): a scalar on the same line, a block below it.
fn write_value_after_key(out: &mut String, v: &Value, indent: usize) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            write_map(out, m, indent + 2);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            write_list(out, a, indent + 2);
        }
        Value::String(s) if block_literal(s).is_some() => {
            let (header, body) = block_literal(s).unwrap_or_default();
            out.push(' ');
            out.push_str(header);
            out.push('\n');
            for line in body.split('\n') {
                if !line.is_empty() {
                    pad(out, indent + 2);
                    out.push_str(line);
                }
                out.push('\n');
            }
        }
        other => {
            out.push(' ');
            out.push_str(&inline(other));
            out.push('\n');
        }
    }
}

fn write_list(out: &mut String, a: &[Value], indent: usize) {
    for item in a {
        pad(out, indent);
        out.push('-');
        match item {
            Value::Object(m) if !m.is_empty() => {
                out.push(' ');
                write_map_entries(out, m, indent + 2, false);
            }
            other => write_value_after_key(out, other, indent),
        }
    }
}

/// A multi-line string as a literal block: the header (`|` keeps one final newline, `|-`
/// none) and the text the block holds, without that final newline. `None` when a literal
/// block cannot say the string exactly (leading spaces on its first line, tabs, carriage
/// returns or other control characters, several final newlines, trailing blanks): those
/// are quoted instead.
fn block_literal(s: &str) -> Option<(&'static str, &str)> {
    if !s.contains('\n') {
        return None;
    }
    let (header, body) = match s.strip_suffix('\n') {
        Some(b) if b.ends_with('\n') => return None,
        Some(b) => ("|", b),
        None => ("|-", s),
    };
    if body.is_empty()
        || body.starts_with([' ', '\n'])
        || body
            .chars()
            .any(|c| (c.is_control() && c != '\n') || !printable(c))
        || body.split('\n').any(|l| l.ends_with(' '))
    {
        return None;
    }
    Some((header, body))
}

/// Characters YAML lets a document hold unescaped.
fn printable(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{7e}' | '\u{85}')
        || (matches!(c, '\u{a0}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'..)
            && !matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}'))
}

fn inline(v: &Value) -> String {
    match v {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => scalar_string(s),
        Value::Array(_) => "[]".to_owned(),
        Value::Object(_) => "{}".to_owned(),
    }
}

/// Words YAML 1.1 readers (PyYAML, and Kubernetes' own reader for some fields) take for
/// booleans or null.
const SPECIAL_WORDS: [&str; 10] = [
    "y", "n", "yes", "no", "on", "off", "true", "false", "null", "~",
];

/// A string as a scalar: plain when nothing could read it as another type or as
/// syntax, double-quoted otherwise.
pub fn scalar_string(s: &str) -> String {
    if plain_is_safe(s) {
        s.to_owned()
    } else {
        quoted(s)
    }
}

fn plain_is_safe(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    // A leading digit, dot, sign or dash could start a number, a date, `.inf` or a list;
    // `:`, `#`, spaces, quotes and brackets are syntax. None of that is plain.
    (first.is_ascii_alphabetic() || first == '_' || first == '/')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-'))
        && !SPECIAL_WORDS.contains(&s.to_ascii_lowercase().as_str())
}

fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() || !printable(c) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kubernetes_keys_come_first_and_lists_indent_under_their_key() {
        let v = json!({
            "spec": {"containers": [{"image": "x/y:1", "name": "c", "args": ["serve"]}]},
            "metadata": {"name": "berth", "labels": {"app.kubernetes.io/name": "berth"}},
            "kind": "Deployment",
            "apiVersion": "apps/v1",
        });
        assert_eq!(
            to_yaml(&v),
            "apiVersion: apps/v1\n\
             kind: Deployment\n\
             metadata:\n  name: berth\n  labels:\n    app.kubernetes.io/name: berth\n\
             spec:\n  containers:\n    - name: c\n      args:\n        - serve\n      image: \"x/y:1\"\n"
        );
    }

    #[test]
    fn strings_another_type_could_be_read_from_are_quoted() {
        for s in [
            "",
            "true",
            "False",
            "yes",
            "NO",
            "on",
            "off",
            "y",
            "n",
            "null",
            "~",
            "0",
            "1.5",
            "250m",
            "10Gi",
            "0.1.0",
            "1e3",
            "0x1f",
            ".inf",
            ".nan",
            "-",
            "- a",
            "a: b",
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
            " lead",
            "trail ",
            "2026-12-06",
            "12:30",
            "=",
            "?",
            "|",
            ">",
        ] {
            let y = scalar_string(s);
            assert!(y.starts_with('"'), "{s:?} must be quoted, got {y}");
        }
        for s in [
            "berth",
            "RuntimeDefault",
            "ALL",
            "/healthz",
            "apps/v1",
            "app.kubernetes.io/name",
            "_x",
            "a-b.c_d",
        ] {
            assert_eq!(scalar_string(s), s, "{s:?} can stay plain");
        }
    }

    #[test]
    fn quoting_escapes_what_yaml_cannot_hold_raw() {
        assert_eq!(quoted("a\"b\\c\nd\te"), r#""a\"b\\c\nd\te""#);
        assert_eq!(
            quoted("\u{7}\u{85}\u{2028}\u{feff}é"),
            "\"\\u0007\\u0085\\u2028\\ufeffé\""
        );
        assert_eq!(quoted("\u{1F600}"), "\"\u{1F600}\"");
    }

    #[test]
    fn multi_line_strings_are_literal_blocks_when_exact() {
        let v = json!({"data": {"berth.toml": "a = 1\n\n[auth]\nenabled = true\n", "x": "no newline\nat end"}});
        assert_eq!(
            to_yaml(&v),
            "data:\n  berth.toml: |\n    a = 1\n\n    [auth]\n    enabled = true\n  x: |-\n    no newline\n    at end\n"
        );
        for s in [
            "\n",
            " lead\nx\n",
            "two\n\n",
            "tab\there\n",
            "cr\r\n",
            "trail \nx\n",
            "\nfirst empty\n",
        ] {
            let y = to_yaml(&json!({"k": s}));
            assert!(y.starts_with("k: \""), "{s:?} must be quoted: {y}");
        }
    }

    #[test]
    fn empty_collections_and_other_scalars_are_inline() {
        let v = json!({"a": {}, "b": [], "c": null, "d": false, "e": 5, "f": [[1, 2], {}]});
        assert_eq!(
            to_yaml(&v),
            "a: {}\nb: []\nc: null\nd: false\ne: 5\nf:\n  -\n    - 1\n    - 2\n  - {}\n"
        );
    }
}
