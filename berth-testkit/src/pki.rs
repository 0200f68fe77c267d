//! Certificates made at test time with the `openssl` CLI, so no key or certificate is ever
//! committed: CA roots and intermediates, leaves with any extensions (Fulcio's OIDC
//! issuer, SAN emails and URIs, EKUs) and any validity window (`openssl ca` takes explicit
//! start and end dates, so a "short-lived certificate from last year" is one call), ECDSA
//! signatures in cosign's ASN.1 form, and RFC 3161 timestamp tokens from a test TSA.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A directory of keys and certificates, removed with the value.
pub struct Pki {
    dir: tempfile::TempDir,
}

/// Far enough in the past and future for CA certificates judged at any test time.
pub const LONG_AGO: &str = "20200101000000Z";
pub const FAR_AHEAD: &str = "20400101000000Z";

const CA_CONFIG: &str = "[ca]
default_ca = berth
[berth]
database = index.txt
new_certs_dir = .
serial = serial
default_md = sha256
policy = anything
unique_subject = no
copy_extensions = none
[anything]
commonName = supplied
[tsa]
default_tsa = tsa1
[tsa1]
serial = tsaserial
signer_digest = sha256
default_policy = 1.2.3.4.1
digests = sha256, sha384
accuracy = secs:1
ess_cert_id_alg = sha256
ordering = no
tsa_name = no
";

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("ca.cnf"), CA_CONFIG).expect("ca.cnf");
        std::fs::write(dir.path().join("index.txt"), "").expect("index");
        std::fs::write(dir.path().join("serial"), "1000\n").expect("serial");
        std::fs::write(dir.path().join("tsaserial"), "01\n").expect("tsaserial");
        Pki { dir }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs openssl in the directory; its stdout.
    pub fn openssl(&self, args: &[&str]) -> Vec<u8> {
        let out = Command::new("openssl")
            .current_dir(self.dir.path())
            .args(args)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    pub fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.path(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
    }

    /// A P-256 key `name.key` (PKCS#8 PEM), and its public key `name.pub`.
    pub fn key(&self, name: &str) {
        self.openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &format!("{name}.key"),
        ]);
        self.openssl(&[
            "pkey",
            "-in",
            &format!("{name}.key"),
            "-pubout",
            "-out",
            &format!("{name}.pub"),
        ]);
    }

    /// `name.crt` for a new key `name.key`, issued by `issuer` (or self-signed), valid
    /// from `start` to `end` (`YYYYMMDDHHMMSSZ`), with the extension lines `ext`.
    pub fn cert(&self, name: &str, issuer: Option<&str>, start: &str, end: &str, ext: &str) {
        self.key(name);
        std::fs::write(self.path(&format!("{name}.ext")), format!("[x]\n{ext}\n")).expect("ext");
        self.openssl(&[
            "req",
            "-new",
            "-key",
            &format!("{name}.key"),
            "-subj",
            &format!("/C=US/ST=WA/O=Berth Test/CN={name}"),
            "-out",
            &format!("{name}.csr"),
        ]);
        let (ikey, icert) = match issuer {
            Some(i) => (format!("{i}.key"), Some(format!("{i}.crt"))),
            None => (format!("{name}.key"), None),
        };
        let crt = format!("{name}.crt");
        let ext_file = format!("{name}.ext");
        let csr = format!("{name}.csr");
        let mut args = vec![
            "ca",
            "-batch",
            "-notext",
            "-config",
            "ca.cnf",
            "-keyfile",
            &ikey,
            "-in",
            &csr,
            "-out",
            &crt,
            "-startdate",
            start,
            "-enddate",
            end,
            "-extfile",
            &ext_file,
            "-extensions",
            "x",
        ];
        match &icert {
            Some(c) => args.extend(["-cert", c.as_str()]),
            None => args.push("-selfsign"),
        }
        self.openssl(&args);
    }

    /// A CA certificate (`CA:TRUE`, keyCertSign).
    pub fn ca(&self, name: &str, issuer: Option<&str>) {
        self.cert(
            name,
            issuer,
            LONG_AGO,
            FAR_AHEAD,
            "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign",
        );
    }

    /// A Fulcio-like signing leaf: code signing, a SAN (`email:a@b` or `URI:https://..`)
    /// and the OIDC issuer extension 1.3.6.1.4.1.57264.1.8 when `issuer` is given.
    pub fn leaf(
        &self,
        name: &str,
        ca: &str,
        start: &str,
        end: &str,
        san: &str,
        issuer: Option<&str>,
    ) {
        let mut ext = format!(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=codeSigning\nsubjectAltName=critical,{san}"
        );
        if let Some(i) = issuer {
            ext.push_str(&format!("\n1.3.6.1.4.1.57264.1.8=ASN1:UTF8String:{i}"));
        }
        self.cert(name, Some(ca), start, end, &ext);
    }

    /// A signing leaf like `leaf`'s for a public key made elsewhere (`pubkey`, a PEM file
    /// in the directory, such as cosign's own `cosign.pub`), valid for 30 days from now.
    pub fn leaf_for_key(&self, name: &str, ca: &str, pubkey: &str, san: &str, issuer: &str) {
        std::fs::write(
            self.path(&format!("{name}.ext")),
            format!(
                "[x]\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                 extendedKeyUsage=codeSigning\nsubjectAltName=critical,{san}\n\
                 1.3.6.1.4.1.57264.1.8=ASN1:UTF8String:{issuer}\n"
            ),
        )
        .expect("ext");
        // openssl needs a request to sign; its key is replaced by `pubkey`.
        self.key(&format!("{name}-csr"));
        self.openssl(&[
            "req",
            "-new",
            "-key",
            &format!("{name}-csr.key"),
            "-subj",
            &format!("/C=US/ST=WA/O=Berth Test/CN={name}"),
            "-out",
            &format!("{name}.csr"),
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-force_pubkey",
            pubkey,
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            &format!("{name}.ext"),
            "-extensions",
            "x",
            "-out",
            &format!("{name}.crt"),
        ]);
    }

    /// A timestamp authority's certificate (critical time-stamping EKU).
    pub fn tsa(&self, name: &str, ca: &str) {
        self.cert(
            name,
            Some(ca),
            LONG_AGO,
            FAR_AHEAD,
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=critical,timeStamping",
        );
    }

    /// An ECDSA (ASN.1, SHA-256) signature of `data` with `name.key`.
    pub fn sign(&self, name: &str, data: &[u8]) -> Vec<u8> {
        std::fs::write(self.path("to-sign.bin"), data).expect("write");
        self.openssl(&[
            "dgst",
            "-sha256",
            "-sign",
            &format!("{name}.key"),
            "to-sign.bin",
        ])
    }

    /// The DER TimeStampResp the TSA `name` answers to the DER TimeStampReq `query` (what
    /// a timestamp server sends back over HTTP).
    pub fn timestamp_reply(&self, name: &str, query: &[u8]) -> Vec<u8> {
        std::fs::write(self.path("http.tsq"), query).expect("write");
        self.openssl(&[
            "ts",
            "-reply",
            "-config",
            "ca.cnf",
            "-queryfile",
            "http.tsq",
            "-inkey",
            &format!("{name}.key"),
            "-signer",
            &format!("{name}.crt"),
            "-out",
            "http.tsr",
        ]);
        std::fs::read(self.path("http.tsr")).expect("reply")
    }

    /// A DER RFC 3161 TimeStampToken over `data` from the TSA `name` (its certificate
    /// included in the token), dated now.
    pub fn timestamp(&self, name: &str, data: &[u8]) -> Vec<u8> {
        std::fs::write(self.path("to-stamp.bin"), data).expect("write");
        self.openssl(&[
            "ts",
            "-query",
            "-data",
            "to-stamp.bin",
            "-sha256",
            "-cert",
            "-no_nonce",
            "-out",
            "q.tsq",
        ]);
        self.openssl(&[
            "ts",
            "-reply",
            "-config",
            "ca.cnf",
            "-queryfile",
            "q.tsq",
            "-inkey",
            &format!("{name}.key"),
            "-signer",
            &format!("{name}.crt"),
            "-token_out",
            "-out",
            "token.der",
        ]);
        std::fs::read(self.path("token.der")).expect("token")
    }
}
