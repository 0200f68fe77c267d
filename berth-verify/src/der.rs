//! A small DER reader for the few structures Berth reads itself: a SubjectPublicKeyInfo
//! (which key type a trusted key is, and its raw key bytes for ring), a certificate's
//! subject name and its public key. Path validation is webpki's; this never decides
//! trust. Every read is bounded by its input: lengths are checked against what is left,
//! only definite lengths of at most four bytes are read, and nesting is walked by the
//! caller one level at a time, so no input can recurse or allocate beyond its own size.

/// A DER element: its tag byte and its contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlv<'a> {
    pub tag: u8,
    pub value: &'a [u8],
}

pub const SEQUENCE: u8 = 0x30;
pub const SET: u8 = 0x31;
pub const OID: u8 = 0x06;
pub const BIT_STRING: u8 = 0x03;
pub const INTEGER: u8 = 0x02;
pub const NULL: u8 = 0x05;
pub const OCTET_STRING: u8 = 0x04;
pub const BOOLEAN: u8 = 0x01;
pub const UTC_TIME: u8 = 0x17;
pub const GENERALIZED_TIME: u8 = 0x18;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed DER")]
pub struct DerError;

/// Reads elements one after another from a byte slice.
#[derive(Debug, Clone, Copy)]
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(input: &'a [u8]) -> Reader<'a> {
        Reader { rest: input }
    }

    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// The next element, whatever its tag. Multi-byte (high) tag numbers are not used by
    /// anything read here and are refused.
    pub fn read(&mut self) -> Result<Tlv<'a>, DerError> {
        let (&tag, rest) = self.rest.split_first().ok_or(DerError)?;
        if tag & 0x1f == 0x1f {
            return Err(DerError);
        }
        let (&first, mut rest) = rest.split_first().ok_or(DerError)?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            // 0x80 is BER's indefinite length; more than four length bytes is never a
            // structure of a size anyone signs.
            if n == 0 || n > 4 || rest.len() < n {
                return Err(DerError);
            }
            let mut len = 0usize;
            for &b in &rest[..n] {
                len = (len << 8) | usize::from(b);
            }
            // DER: the shortest form, so a long form below 128 is malformed.
            if len < 0x80 || rest[0] == 0 {
                return Err(DerError);
            }
            rest = &rest[n..];
            len
        };
        if rest.len() < len {
            return Err(DerError);
        }
        let (value, rest) = rest.split_at(len);
        self.rest = rest;
        Ok(Tlv { tag, value })
    }

    /// The next element with its whole encoding (tag and length included), for the
    /// structures whose exact bytes are hashed or parsed again elsewhere.
    pub fn read_raw(&mut self) -> Result<(Tlv<'a>, &'a [u8]), DerError> {
        let before = self.rest;
        let t = self.read()?;
        let used = before.len() - self.rest.len();
        Ok((t, &before[..used]))
    }

    /// The tag of the next element, if any.
    pub fn peek_tag(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    /// The next element, which must carry `tag`.
    pub fn expect(&mut self, tag: u8) -> Result<&'a [u8], DerError> {
        let t = self.read()?;
        if t.tag == tag {
            Ok(t.value)
        } else {
            Err(DerError)
        }
    }

    /// Skips the next element if it carries `tag`.
    pub fn skip_if(&mut self, tag: u8) -> Result<(), DerError> {
        if self.rest.first() == Some(&tag) {
            self.read()?;
        }
        Ok(())
    }
}

/// Reads exactly one element of `tag` spanning all of `input`.
pub fn single(input: &[u8], tag: u8) -> Result<&[u8], DerError> {
    let mut r = Reader::new(input);
    let v = r.expect(tag)?;
    if r.is_empty() { Ok(v) } else { Err(DerError) }
}

/// The contents of a BIT STRING with no unused bits (every key Berth reads).
pub fn bit_string_bytes(value: &[u8]) -> Result<&[u8], DerError> {
    match value.split_first() {
        Some((0, rest)) => Ok(rest),
        _ => Err(DerError),
    }
}

/// Dotted form of an encoded OBJECT IDENTIFIER, for messages.
pub fn oid_to_string(oid: &[u8]) -> String {
    let mut out = String::new();
    let mut acc: u64 = 0;
    for (i, &b) in oid.iter().enumerate() {
        acc = acc.saturating_mul(128).saturating_add(u64::from(b & 0x7f));
        if b & 0x80 == 0 {
            if out.is_empty() && i < 8 {
                let (a, b) = if acc < 40 {
                    (0, acc)
                } else if acc < 80 {
                    (1, acc - 40)
                } else {
                    (2, acc - 80)
                };
                out.push_str(&format!("{a}.{b}"));
            } else {
                out.push_str(&format!(".{acc}"));
            }
            acc = 0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_short_and_long_lengths() {
        let mut long = vec![0x04, 0x81, 0x80];
        long.extend(std::iter::repeat_n(7u8, 128));
        let mut r = Reader::new(&long);
        assert_eq!(r.read().map(|t| t.value.len()), Ok(128));
        assert!(r.is_empty());
        assert_eq!(single(&[0x02, 0x01, 0x05], INTEGER), Ok(&[5u8][..]));
    }

    #[test]
    fn refuses_what_der_forbids() {
        // indefinite length, non-minimal long form, truncated, high tag, trailing bytes
        for bad in [
            &[0x30, 0x80, 0, 0][..],
            &[0x04, 0x81, 0x05, 1, 2, 3, 4, 5],
            &[0x04, 0x05, 1, 2],
            &[0x1f, 0x01, 0x00],
            &[0x04, 0x85, 1, 0, 0, 0, 0],
        ] {
            assert!(Reader::new(bad).read().is_err(), "{bad:?}");
        }
        assert!(single(&[0x02, 0x01, 0x05, 0x00], INTEGER).is_err());
    }

    #[test]
    fn oid_strings() {
        assert_eq!(
            oid_to_string(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01]),
            "1.2.840.10045.2.1"
        );
    }
}
