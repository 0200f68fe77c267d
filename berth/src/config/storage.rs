//! `[storage]`: where blob bytes live. The filesystem under `data_dir` by default; an
//! S3-compatible bucket with `kind = "s3"`.

use std::time::Duration;

use anyhow::Context;
use berth_storage::{S3Config, S3Credentials};
use serde::Deserialize;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// `<data_dir>/blobs` and `<data_dir>/uploads`.
    #[default]
    Fs,
    S3,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub kind: StorageKind,
    /// S3 endpoint URL. Unset: `AWS_ENDPOINT_URL`, else `https://s3.<region>.amazonaws.com`.
    pub endpoint: Option<String>,
    pub bucket: Option<String>,
    /// Unset: `AWS_REGION`, else `us-east-1`.
    pub region: Option<String>,
    /// Key prefix inside the bucket (several registries can share one).
    pub prefix: String,
    /// Unset: `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`).
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// `endpoint/bucket/key` rather than `bucket.endpoint/key` (MinIO, moto, Ceph...).
    pub path_style: bool,
    /// Answer blob GETs with a 307 to a presigned URL, so bytes flow from the bucket.
    pub redirect_blob_gets: bool,
    /// How long a presigned URL stays valid.
    pub redirect_expiry_secs: u64,
    /// S3: attempts per request (5xx, 429, resets and stalls are retried with a jittered
    /// exponential backoff from 100 ms).
    pub attempts: u32,
    /// S3: seconds one attempt may wait for the response headers before it is abandoned
    /// and retried.
    pub attempt_timeout_secs: u64,
    /// S3: seconds a response body may pause before the read fails.
    pub read_timeout_secs: u64,
    /// S3: requests in flight at once per replica; more wait (at most
    /// `attempt_timeout_secs`) and then fail with 503.
    pub max_in_flight: usize,
    /// S3: ask the bucket to encrypt objects as well (server-side encryption):
    /// `"AES256"` (SSE-S3) or `"aws:kms"` (SSE-KMS). Independent of `[encryption]`, which
    /// seals blobs before they leave Berth.
    pub server_side_encryption: Option<String>,
    /// S3: the KMS key for `server_side_encryption = "aws:kms"` (unset: the bucket's).
    pub sse_kms_key_id: Option<String>,
    /// S3: appends buffering at once per replica (each holds at most 16 MiB); more wait
    /// (at most `attempt_timeout_secs`) before reading their body, then fail with 503.
    pub max_appends: usize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            kind: StorageKind::Fs,
            endpoint: None,
            bucket: None,
            region: None,
            prefix: String::new(),
            access_key_id: None,
            secret_access_key: None,
            path_style: false,
            redirect_blob_gets: false,
            redirect_expiry_secs: 300,
            attempts: 4,
            attempt_timeout_secs: 30,
            read_timeout_secs: 60,
            max_in_flight: 256,
            max_appends: 32,
            server_side_encryption: None,
            sse_kms_key_id: None,
        }
    }
}

/// The secret never reaches a log line through `{:?}` of the configuration.
impl std::fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageConfig")
            .field("kind", &self.kind)
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("prefix", &self.prefix)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("path_style", &self.path_style)
            .field("redirect_blob_gets", &self.redirect_blob_gets)
            .field("redirect_expiry_secs", &self.redirect_expiry_secs)
            .field("attempts", &self.attempts)
            .field("attempt_timeout_secs", &self.attempt_timeout_secs)
            .field("read_timeout_secs", &self.read_timeout_secs)
            .field("max_in_flight", &self.max_in_flight)
            .field("max_appends", &self.max_appends)
            .finish()
    }
}

impl StorageConfig {
    /// How the S3 client meets a failing or stalled bucket.
    pub fn s3_tuning(&self) -> berth_storage::S3Tuning {
        berth_storage::S3Tuning {
            attempts: self.attempts.max(1),
            attempt_timeout: std::time::Duration::from_secs(self.attempt_timeout_secs.max(1)),
            read_timeout: std::time::Duration::from_secs(self.read_timeout_secs.max(1)),
            max_in_flight: self.max_in_flight.max(1),
            max_appends: self.max_appends.max(1),
        }
    }

    /// The S3 settings, with the standard AWS environment variables filling what the file
    /// leaves unset. `env` is `std::env::var` outside tests.
    pub fn s3_config(&self, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<S3Config> {
        let bucket = self
            .bucket
            .clone()
            .filter(|b| !b.is_empty())
            .context("[storage] kind = \"s3\" needs bucket")?;
        let region = self
            .region
            .clone()
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".to_owned());
        let endpoint = self
            .endpoint
            .clone()
            .or_else(|| env("AWS_ENDPOINT_URL_S3"))
            .or_else(|| env("AWS_ENDPOINT_URL"))
            .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        let (access_key_id, secret_access_key, session_token) =
            match (&self.access_key_id, &self.secret_access_key) {
                (Some(id), Some(secret)) => (id.clone(), secret.clone(), None),
                (None, None) => (
                    env("AWS_ACCESS_KEY_ID").context(
                        "[storage] kind = \"s3\" needs credentials: access_key_id and \
                         secret_access_key, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                    )?,
                    env("AWS_SECRET_ACCESS_KEY")
                        .context("AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not")?,
                    env("AWS_SESSION_TOKEN"),
                ),
                _ => anyhow::bail!(
                    "[storage] access_key_id and secret_access_key go together: set both or \
                     neither"
                ),
            };
        Ok(S3Config {
            endpoint,
            bucket,
            region,
            prefix: self.prefix.clone(),
            credentials: S3Credentials {
                access_key_id,
                secret_access_key,
                session_token,
            },
            path_style: self.path_style,
            redirect_expiry: self
                .redirect_blob_gets
                .then(|| Duration::from_secs(self.redirect_expiry_secs.clamp(1, 7 * 86_400))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> StorageConfig {
        #[derive(Deserialize)]
        struct Wrap {
            storage: StorageConfig,
        }
        toml::from_str::<Wrap>(toml_text).expect("parses").storage
    }

    #[test]
    fn env_fills_what_the_file_leaves_unset() {
        let c = parse("[storage]\nkind = \"s3\"\nbucket = \"b\"\n");
        let env = |k: &str| {
            match k {
                "AWS_ACCESS_KEY_ID" => Some("AKID"),
                "AWS_SECRET_ACCESS_KEY" => Some("s3cr3t"),
                "AWS_SESSION_TOKEN" => Some("tok"),
                "AWS_REGION" => Some("eu-west-1"),
                _ => None,
            }
            .map(str::to_owned)
        };
        let s3 = c.s3_config(env).expect("valid");
        assert_eq!(s3.endpoint, "https://s3.eu-west-1.amazonaws.com");
        assert_eq!(s3.credentials.session_token.as_deref(), Some("tok"));
        assert!(s3.redirect_expiry.is_none());
        let shown = format!("{s3:?}");
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("tok\""),
            "{shown}"
        );

        let c = parse(
            "[storage]\nkind = \"s3\"\nbucket = \"b\"\nendpoint = \"http://127.0.0.1:9000\"\n\
             access_key_id = \"id\"\nsecret_access_key = \"hidden\"\nredirect_blob_gets = true\n",
        );
        let s3 = c.s3_config(env).expect("valid");
        assert_eq!(s3.endpoint, "http://127.0.0.1:9000");
        assert_eq!(s3.credentials.access_key_id, "id");
        assert_eq!(s3.credentials.session_token, None, "the file's keys win");
        assert_eq!(s3.redirect_expiry, Some(Duration::from_secs(300)));
        assert!(!format!("{c:?}").contains("hidden"));

        assert!(parse("[storage]\nkind = \"s3\"\n").s3_config(env).is_err());
        assert!(
            parse("[storage]\nkind = \"s3\"\nbucket = \"b\"\n")
                .s3_config(|_| None)
                .is_err()
        );
        assert_eq!(parse("[storage]\n").kind, StorageKind::Fs);
    }
}
