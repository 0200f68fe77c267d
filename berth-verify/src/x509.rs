//! The few fields of an X.509 certificate Berth reads itself: validity, subject
//! alternative names (email, URI) and Fulcio's OIDC issuer extensions. Chain building and
//! signature checks are webpki's; this reads the names a trust rule matches, and the
//! validity a refusal message quotes.

use crate::der::{
    self, BOOLEAN, DerError, GENERALIZED_TIME, INTEGER, OCTET_STRING, OID, Reader, SEQUENCE,
    UTC_TIME,
};

/// subjectAltName, 2.5.29.17.
const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11];
/// Fulcio's OIDC issuer, 1.3.6.1.4.1.57264.1.1 (deprecated: the raw string as the
/// extension value).
const OID_FULCIO_ISSUER_V1: &[u8] = &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x83, 0xbf, 0x30, 0x01, 0x01];
/// Fulcio's OIDC issuer, 1.3.6.1.4.1.57264.1.8 (a DER UTF8String).
const OID_FULCIO_ISSUER_V2: &[u8] = &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x83, 0xbf, 0x30, 0x01, 0x08];

/// What a trust rule reads from a signing certificate.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CertInfo {
    /// Seconds since the epoch.
    pub not_before: i64,
    pub not_after: i64,
    /// rfc822Name entries of the subject alternative names.
    pub emails: Vec<String>,
    /// uniformResourceIdentifier entries.
    pub uris: Vec<String>,
    /// The OIDC issuer: extension .1.8 if present, else .1.1.
    pub issuer: Option<String>,
}

impl CertInfo {
    /// The identities a rule may match: emails, then URIs.
    pub fn identities(&self) -> impl Iterator<Item = &str> {
        self.emails
            .iter()
            .chain(self.uris.iter())
            .map(String::as_str)
    }
}

/// Reads a DER certificate.
pub fn parse(cert: &[u8]) -> Result<CertInfo, DerError> {
    let mut c = Reader::new(der::single(cert, SEQUENCE)?);
    let mut tbs = Reader::new(c.expect(SEQUENCE)?);
    tbs.skip_if(0xa0)?; // version
    tbs.expect(INTEGER)?; // serial
    tbs.expect(SEQUENCE)?; // signature algorithm
    tbs.expect(SEQUENCE)?; // issuer
    let mut validity = Reader::new(tbs.expect(SEQUENCE)?);
    let not_before = time(&mut validity)?;
    let not_after = time(&mut validity)?;
    tbs.expect(SEQUENCE)?; // subject
    tbs.expect(SEQUENCE)?; // subjectPublicKeyInfo
    tbs.skip_if(0x81)?; // issuerUniqueID
    tbs.skip_if(0x82)?; // subjectUniqueID
    let mut info = CertInfo {
        not_before,
        not_after,
        ..CertInfo::default()
    };
    if tbs.peek_tag() == Some(0xa3) {
        let exts = der::single(tbs.expect(0xa3)?, SEQUENCE)?;
        let mut exts = Reader::new(exts);
        let mut v1 = None;
        while !exts.is_empty() {
            let mut ext = Reader::new(exts.expect(SEQUENCE)?);
            let oid = ext.expect(OID)?;
            ext.skip_if(BOOLEAN)?;
            let value = ext.expect(OCTET_STRING)?;
            if oid == OID_SAN {
                read_san(value, &mut info)?;
            } else if oid == OID_FULCIO_ISSUER_V2 {
                let s = der::single(value, 0x0c)?;
                info.issuer = Some(text(s)?);
            } else if oid == OID_FULCIO_ISSUER_V1 {
                v1 = Some(text(value)?);
            }
        }
        if info.issuer.is_none() {
            info.issuer = v1;
        }
    }
    Ok(info)
}

fn text(b: &[u8]) -> Result<String, DerError> {
    std::str::from_utf8(b)
        .map(str::to_owned)
        .map_err(|_| DerError)
}

fn read_san(value: &[u8], info: &mut CertInfo) -> Result<(), DerError> {
    let mut names = Reader::new(der::single(value, SEQUENCE)?);
    while !names.is_empty() {
        let n = names.read()?;
        match n.tag {
            0x81 => info.emails.push(text(n.value)?),
            0x86 => info.uris.push(text(n.value)?),
            _ => {}
        }
    }
    Ok(())
}

/// A UTCTime or GeneralizedTime (with an optional fraction), UTC only.
pub fn time(r: &mut Reader<'_>) -> Result<i64, DerError> {
    let t = r.read()?;
    // ASCII only, so the byte slicing below always falls on character boundaries.
    if !t.value.is_ascii() {
        return Err(DerError);
    }
    let s = std::str::from_utf8(t.value).map_err(|_| DerError)?;
    let s = s.strip_suffix('Z').ok_or(DerError)?;
    let (year, rest) = match t.tag {
        UTC_TIME if s.len() == 12 => {
            let yy: i64 = digits(&s[..2])?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &s[2..])
        }
        GENERALIZED_TIME if s.len() >= 14 => (digits(&s[..4])?, &s[4..]),
        _ => return Err(DerError),
    };
    let (main, frac) = match rest.split_once('.') {
        Some((m, f)) => (m, Some(f)),
        None => (rest, None),
    };
    if main.len() != 10 || frac.is_some_and(|f| f.is_empty() || digits::<u64>(f).is_err()) {
        return Err(DerError);
    }
    let text = format!(
        "{year:04}-{}-{}T{}:{}:{}Z",
        &main[0..2],
        &main[2..4],
        &main[4..6],
        &main[6..8],
        &main[8..10]
    );
    crate::notary::parse_rfc3339(&text).ok_or(DerError)
}

fn digits<T: std::str::FromStr>(s: &str) -> Result<T, DerError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || s.len() > 18 {
        return Err(DerError);
    }
    s.parse().map_err(|_| DerError)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        let utc = [
            UTC_TIME, 13, b'2', b'6', b'1', b'2', b'0', b'6', b'0', b'7', b'2', b'8', b'1', b'3',
            b'Z',
        ];
        assert_eq!(time(&mut Reader::new(&utc)), Ok(1_796_542_093));
        let mut gen_ = vec![GENERALIZED_TIME, 19];
        gen_.extend_from_slice(b"20261206072813.25Z");
        gen_[1] = (gen_.len() - 2) as u8;
        assert_eq!(time(&mut Reader::new(&gen_)), Ok(1_796_542_093));
        let bad = [UTC_TIME, 5, b'2', b'6', b'1', b'2', b'Z'];
        assert!(time(&mut Reader::new(&bad)).is_err());
        // Twelve bytes before the Z, one a three-byte character across index 2: refused,
        // not a slice through a character.
        let mut multi = vec![UTC_TIME, 13, b'2'];
        multi.extend_from_slice("€".as_bytes());
        multi.extend_from_slice(b"12345678Z");
        assert_eq!(multi.len(), 15);
        assert!(time(&mut Reader::new(&multi)).is_err());
    }
}
