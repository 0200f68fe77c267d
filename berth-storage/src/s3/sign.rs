//! AWS Signature Version 4, in the two forms S3 accepts: an `Authorization` header, and a
//! presigned URL whose query carries the signature.
//!
//! Callers hand in the path already URI-encoded (S3 signs the path as sent, without the
//! second encoding other services want) and the query as raw pairs, encoded here.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{KeyInit, Mac};
use sha2::{Digest as _, Sha256};

type HmacSha256 = hmac::Hmac<Sha256>;

/// The payload hash to sign for a body that is streamed and not hashed first.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// The hex SHA-256 of the empty body.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Who signs, and for which region and service.
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// One request to sign.
pub struct Request<'a> {
    pub method: &'a str,
    /// URI-encoded path, starting with `/`.
    pub path: &'a str,
    /// Raw (unencoded) query pairs; a flag like `?uploads` is a pair with an empty value.
    pub query: &'a [(String, String)],
    /// Headers to sign, besides `x-amz-date` and the security token, which are added.
    /// Must include `host`. Names in lower case.
    pub headers: &'a [(String, String)],
    /// Hex SHA-256 of the body, or [`UNSIGNED_PAYLOAD`].
    pub payload_hash: &'a str,
}

/// `20150830T123600Z` and `20150830` for a moment.
pub fn amz_times(at: SystemTime) -> (String, String) {
    let secs = at
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let (y, m, d) = civil_from_days(i64::try_from(secs / 86_400).unwrap_or(0));
    let rem = secs % 86_400;
    let date = format!("{y:04}{m:02}{d:02}");
    let time = format!(
        "{date}T{:02}{:02}{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    );
    (time, date)
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The inverse of [`civil_from_days`].
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Percent-encodes as SigV4 wants: everything but `A-Z a-z 0-9 - . _ ~`, and `/` too
/// unless `keep_slash`.
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The query string as it is both sent and signed: pairs encoded and sorted.
pub fn canonical_query(query: &[(String, String)]) -> String {
    let mut pairs: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac =
        <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Signs for one region and service.
#[derive(Debug, Clone)]
pub struct Signer {
    pub credentials: Credentials,
    pub region: String,
    pub service: String,
}

impl Signer {
    fn scope(&self, date: &str) -> String {
        format!("{date}/{}/{}/aws4_request", self.region, self.service)
    }

    fn signature(&self, date: &str, string_to_sign: &str) -> String {
        let secret = format!("AWS4{}", self.credentials.secret_access_key);
        let k_date = hmac(secret.as_bytes(), date.as_bytes());
        let k_region = hmac(&k_date, self.region.as_bytes());
        let k_service = hmac(&k_region, self.service.as_bytes());
        let k_signing = hmac(&k_service, b"aws4_request");
        hex::encode(hmac(&k_signing, string_to_sign.as_bytes()))
    }

    /// Canonical request and the list of signed header names.
    fn canonical(req: &Request<'_>, query: &str, headers: &[(String, String)]) -> (String, String) {
        let mut headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| {
                (
                    k.to_ascii_lowercase(),
                    v.split_whitespace().collect::<Vec<_>>().join(" "),
                )
            })
            .collect();
        headers.sort();
        let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
        let signed: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
        let signed = signed.join(";");
        let creq = format!(
            "{}\n{}\n{query}\n{canonical_headers}\n{signed}\n{}",
            req.method, req.path, req.payload_hash
        );
        (creq, signed)
    }

    fn string_to_sign(&self, amz_date: &str, date: &str, creq: &str) -> String {
        format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{}\n{}",
            self.scope(date),
            sha256_hex(creq.as_bytes())
        )
    }

    /// The headers to add to `req` (`x-amz-date`, the security token if any, and
    /// `authorization`). The caller sends `req.headers` as well.
    pub fn sign_headers(&self, req: &Request<'_>, at: SystemTime) -> Vec<(String, String)> {
        let (amz_date, date) = amz_times(at);
        let mut added = vec![("x-amz-date".to_owned(), amz_date.clone())];
        if let Some(token) = &self.credentials.session_token {
            added.push(("x-amz-security-token".to_owned(), token.clone()));
        }
        let mut all: Vec<(String, String)> = req.headers.to_vec();
        all.extend(added.iter().cloned());
        let query = canonical_query(req.query);
        let (creq, signed) = Self::canonical(req, &query, &all);
        let sts = self.string_to_sign(&amz_date, &date, &creq);
        let signature = self.signature(&date, &sts);
        added.push((
            "authorization".to_owned(),
            format!(
                "AWS4-HMAC-SHA256 Credential={}/{}, SignedHeaders={signed}, Signature={signature}",
                self.credentials.access_key_id,
                self.scope(&date)
            ),
        ));
        added
    }

    /// The query string of a presigned URL for `req` (whose `headers` must be just
    /// `host`), valid for `expires`.
    pub fn presign_query(&self, req: &Request<'_>, at: SystemTime, expires: Duration) -> String {
        let (amz_date, date) = amz_times(at);
        let mut query: Vec<(String, String)> = req.query.to_vec();
        query.extend([
            ("X-Amz-Algorithm".to_owned(), "AWS4-HMAC-SHA256".to_owned()),
            (
                "X-Amz-Credential".to_owned(),
                format!("{}/{}", self.credentials.access_key_id, self.scope(&date)),
            ),
            ("X-Amz-Date".to_owned(), amz_date.clone()),
            ("X-Amz-Expires".to_owned(), expires.as_secs().to_string()),
        ]);
        if let Some(token) = &self.credentials.session_token {
            query.push(("X-Amz-Security-Token".to_owned(), token.clone()));
        }
        let names: Vec<String> = {
            let mut n: Vec<String> = req
                .headers
                .iter()
                .map(|(k, _)| k.to_ascii_lowercase())
                .collect();
            n.sort();
            n
        };
        query.push(("X-Amz-SignedHeaders".to_owned(), names.join(";")));
        let canonical = canonical_query(&query);
        let (creq, _) = Self::canonical(req, &canonical, req.headers);
        let sts = self.string_to_sign(&amz_date, &date, &creq);
        let signature = self.signature(&date, &sts);
        format!("{canonical}&X-Amz-Signature={signature}")
    }
}

/// Hex SHA-256 of a body that is signed rather than sent unsigned.
pub fn payload_hash(body: &[u8]) -> String {
    sha256_hex(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    fn signer(key: &str, secret: &str, region: &str, service: &str) -> Signer {
        Signer {
            credentials: Credentials {
                access_key_id: key.into(),
                secret_access_key: secret.into(),
                session_token: None,
            },
            region: region.into(),
            service: service.into(),
        }
    }

    /// 2015-08-30T12:36:00Z and 2013-05-24T00:00:00Z, the moments of AWS's examples.
    const AUG_30_2015: u64 = 1_440_938_160;
    const MAY_24_2013: u64 = 1_369_353_600;

    #[test]
    fn dates() {
        assert_eq!(
            amz_times(at(AUG_30_2015)),
            ("20150830T123600Z".to_owned(), "20150830".to_owned())
        );
        assert_eq!(amz_times(at(MAY_24_2013)).0, "20130524T000000Z");
        for days in [-800_000, -1, 0, 1, 11_016, 20_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    /// The "get-vanilla" case of AWS's SigV4 test suite: `GET /` to example.amazonaws.com,
    /// region us-east-1, service "service".
    #[test]
    fn get_vanilla() {
        let s = signer(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "us-east-1",
            "service",
        );
        let headers = [("host".to_owned(), "example.amazonaws.com".to_owned())];
        let req = Request {
            method: "GET",
            path: "/",
            query: &[],
            headers: &headers,
            payload_hash: EMPTY_SHA256,
        };
        let added = s.sign_headers(&req, at(AUG_30_2015));
        let auth = &added
            .iter()
            .find(|(k, _)| k == "authorization")
            .expect("auth")
            .1;
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    /// The S3 documentation's example: `GET /test.txt` with `Range: bytes=0-9` from
    /// examplebucket.
    #[test]
    fn s3_get_object_with_range() {
        let s = signer(
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "us-east-1",
            "s3",
        );
        let headers = [
            (
                "host".to_owned(),
                "examplebucket.s3.amazonaws.com".to_owned(),
            ),
            ("range".to_owned(), "bytes=0-9".to_owned()),
            ("x-amz-content-sha256".to_owned(), EMPTY_SHA256.to_owned()),
        ];
        let req = Request {
            method: "GET",
            path: "/test.txt",
            query: &[],
            headers: &headers,
            payload_hash: EMPTY_SHA256,
        };
        let added = s.sign_headers(&req, at(MAY_24_2013));
        let auth = &added
            .iter()
            .find(|(k, _)| k == "authorization")
            .expect("auth")
            .1;
        assert!(
            auth.ends_with(
                "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
                 Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
            ),
            "{auth}"
        );
    }

    /// The S3 documentation's presigned URL example: `GET /test.txt`, valid a day.
    #[test]
    fn s3_presigned_get() {
        let s = signer(
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "us-east-1",
            "s3",
        );
        let headers = [(
            "host".to_owned(),
            "examplebucket.s3.amazonaws.com".to_owned(),
        )];
        let req = Request {
            method: "GET",
            path: "/test.txt",
            query: &[],
            headers: &headers,
            payload_hash: UNSIGNED_PAYLOAD,
        };
        let q = s.presign_query(&req, at(MAY_24_2013), Duration::from_secs(86_400));
        assert_eq!(
            q,
            "X-Amz-Algorithm=AWS4-HMAC-SHA256\
             &X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request\
             &X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host\
             &X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
        );
    }

    #[test]
    fn encoding() {
        assert_eq!(uri_encode("a b/c~d*", true), "a%20b/c~d%2A");
        assert_eq!(uri_encode("a/b", false), "a%2Fb");
        assert_eq!(
            canonical_query(&[
                ("prefix".into(), "x/".into()),
                ("list-type".into(), "2".into())
            ]),
            "list-type=2&prefix=x%2F"
        );
    }
}
