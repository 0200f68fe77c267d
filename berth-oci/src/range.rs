//! Byte ranges: the `Content-Range` of a chunked upload and the `Range` of a blob GET.

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("malformed range")]
    Malformed,
    #[error("range not satisfiable")]
    Unsatisfiable,
}

/// Parses an upload chunk's `Content-Range`, `<start>-<end>` with `end` inclusive.
/// `bytes ` before it and `/<total>` after it are tolerated, since some clients send the
/// RFC 9110 form.
pub fn parse_content_range(value: &str) -> Result<(u64, u64), RangeError> {
    let v = value.trim();
    let v = v.strip_prefix("bytes ").unwrap_or(v).trim_start();
    let v = v.split_once('/').map_or(v, |(r, _)| r);
    let (a, b) = v.split_once('-').ok_or(RangeError::Malformed)?;
    let start = parse_u64(a)?;
    let end = parse_u64(b)?;
    if end < start {
        return Err(RangeError::Malformed);
    }
    Ok((start, end))
}

fn parse_u64(s: &str) -> Result<u64, RangeError> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RangeError::Malformed);
    }
    s.parse().map_err(|_| RangeError::Malformed)
}

/// Resolves a request `Range` header against a blob of `len` bytes. Returns the inclusive
/// `(first, last)` byte to send, or `None` to send the whole blob (no header, or a form we
/// choose to ignore, as RFC 9110 allows: multiple ranges, other units).
pub fn resolve_range(value: &str, len: u64) -> Result<Option<(u64, u64)>, RangeError> {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let (a, b) = spec.trim().split_once('-').ok_or(RangeError::Malformed)?;
    let (first, last) = match (a.is_empty(), b.is_empty()) {
        (true, true) => return Err(RangeError::Malformed),
        (true, false) => {
            // suffix range: the last n bytes
            let n = parse_u64(b)?;
            if n == 0 || len == 0 {
                return Err(RangeError::Unsatisfiable);
            }
            (len.saturating_sub(n), len - 1)
        }
        (false, true) => (parse_u64(a)?, len.saturating_sub(1)),
        (false, false) => {
            let (s, e) = (parse_u64(a)?, parse_u64(b)?);
            // RFC 9110 calls a range whose end is before its start invalid; answered 416
            // like one past the end (as Go's net/http and CNCF Distribution answer it),
            // rather than ignored, so a client learns its request was wrong.
            if e < s {
                return Err(RangeError::Unsatisfiable);
            }
            (s, e.min(len.saturating_sub(1)))
        }
    };
    if first >= len {
        return Err(RangeError::Unsatisfiable);
    }
    Ok(Some((first, last)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn content_range() {
        assert_eq!(parse_content_range("0-9"), Ok((0, 9)));
        assert_eq!(parse_content_range("bytes 10-19/*"), Ok((10, 19)));
        assert_eq!(parse_content_range("10-9"), Err(RangeError::Malformed));
        assert_eq!(parse_content_range("-9"), Err(RangeError::Malformed));
        assert_eq!(parse_content_range("a-9"), Err(RangeError::Malformed));
        assert_eq!(
            parse_content_range("0-99999999999999999999999"),
            Err(RangeError::Malformed)
        );
    }

    #[test]
    fn request_range() {
        assert_eq!(resolve_range("bytes=0-4", 10), Ok(Some((0, 4))));
        assert_eq!(resolve_range("bytes=5-", 10), Ok(Some((5, 9))));
        assert_eq!(resolve_range("bytes=-3", 10), Ok(Some((7, 9))));
        assert_eq!(resolve_range("bytes=-30", 10), Ok(Some((0, 9))));
        assert_eq!(resolve_range("bytes=8-100", 10), Ok(Some((8, 9))));
        assert_eq!(
            resolve_range("bytes=10-", 10),
            Err(RangeError::Unsatisfiable)
        );
        assert_eq!(
            resolve_range("bytes=0-0", 0),
            Err(RangeError::Unsatisfiable)
        );
        assert_eq!(
            resolve_range("bytes=4-2", 10),
            Err(RangeError::Unsatisfiable)
        );
        assert_eq!(
            resolve_range("bytes=500-0", 2048),
            Err(RangeError::Unsatisfiable)
        );
        assert_eq!(resolve_range("bytes=x-2", 10), Err(RangeError::Malformed));
        assert_eq!(resolve_range("bytes=0-1,3-4", 10), Ok(None));
        assert_eq!(resolve_range("items=0-1", 10), Ok(None));
    }

    proptest! {
        #[test]
        fn never_panics(s in ".{0,40}", len in any::<u64>()) {
            let _ = parse_content_range(&s);
            let _ = resolve_range(&s, len);
        }

        #[test]
        fn resolved_ranges_are_inside(a in 0u64..1000, b in 0u64..1000, len in 0u64..1000) {
            if let Ok(Some((f, l))) = resolve_range(&format!("bytes={a}-{b}"), len) {
                prop_assert!(f <= l && l < len);
            }
        }
    }
}
