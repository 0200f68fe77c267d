//! Just enough XML for S3's small answers: find elements by name and unescape their text.
//!
//! S3's responses are flat, machine-written documents without attributes we need, CDATA
//! or comments, so a scan for `<Name>…</Name>` is exact for them; a general parser would
//! be a dependency for nothing. Text is unescaped, since keys may hold `&`, `<`, quotes.

/// The text of each `<name>…</name>` element in `doc`, in order, unescaped. Elements
/// with attributes (`<name a="b">`) are matched too; self-closing ones yield "".
pub fn all<'a>(doc: &'a str, name: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let open = format!("<{name}");
    let close = format!("</{name}>");
    let mut rest = doc;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        // `<Key` must not match `<KeyCount`.
        let Some(end_of_tag) = after.find('>') else {
            break;
        };
        let next = after.as_bytes().first().copied();
        if !matches!(next, Some(b'>' | b' ' | b'/' | b'\t' | b'\n' | b'\r')) {
            rest = after;
            continue;
        }
        if after[..end_of_tag].ends_with('/') {
            out.push("");
            rest = &after[end_of_tag + 1..];
            continue;
        }
        let body = &after[end_of_tag + 1..];
        let Some(j) = body.find(&close) else {
            break;
        };
        out.push(&body[..j]);
        rest = &body[j + close.len()..];
    }
    out
}

/// The first `<name>` element's raw content.
pub fn first<'a>(doc: &'a str, name: &str) -> Option<&'a str> {
    all(doc, name).into_iter().next()
}

/// The first `<name>` element's text, unescaped.
pub fn text(doc: &str, name: &str) -> Option<String> {
    first(doc, name).map(unescape)
}

/// Resolves the five predefined entities and numeric character references; anything else
/// is kept as written.
pub fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let Some(end) = tail.find(';').filter(|&e| e <= 12) else {
            out.push('&');
            rest = &tail[1..];
            continue;
        };
        let entity = &tail[1..end];
        let ch = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .or_else(|| entity.strip_prefix("#X"))
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match ch {
            Some(c) => {
                out.push(c);
                rest = &tail[end + 1..];
            }
            None => {
                out.push('&');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Escapes text for an element we write (part ETags in CompleteMultipartUpload).
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_elements_and_unescapes() {
        let doc = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><KeyCount>2</KeyCount>
<Contents><Key>a&amp;b&lt;c&#x41;&#66;</Key><Size>3</Size></Contents>
<Contents><Key>x</Key><Size>0</Size></Contents><NextContinuationToken/>
</ListBucketResult>"#;
        let contents = all(doc, "Contents");
        assert_eq!(contents.len(), 2);
        assert_eq!(text(contents[0], "Key").as_deref(), Some("a&b<cAB"));
        assert_eq!(text(doc, "KeyCount").as_deref(), Some("2"));
        assert_eq!(all(doc, "Key").len(), 2, "<KeyCount> is not <Key>");
        assert_eq!(text(doc, "NextContinuationToken").as_deref(), Some(""));
        assert_eq!(text(doc, "Missing"), None);
        assert_eq!(unescape("a & b &bogus; &#xZZ;"), "a & b &bogus; &#xZZ;");
        assert_eq!(unescape(&escape("<'&\">")), "<'&\">");
    }
}
