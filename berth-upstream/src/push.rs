//! The push half of the client, for replication: blob existence, monolithic blob upload
//! with a streamed body, and manifest PUT. Authentication asks for `pull,push`.

use berth_oci::{Digest, Reference};
use bytes::Bytes;
use futures_util::Stream;
use reqwest::{Method, StatusCode, header};

use crate::{Result, Upstream, UpstreamError, check_status, unavailable};

const PUSH: &str = "pull,push";

impl Upstream {
    /// Does the target already hold `digest` in `repo`? (Then a push skips it.)
    pub async fn has_blob(&self, repo: &str, digest: &Digest) -> Result<bool> {
        let path = format!("/v2/{repo}/blobs/{digest}");
        let resp = self
            .send_with(Method::HEAD, &path, repo, PUSH, "*/*", None)
            .await?;
        match check_status(resp) {
            Ok(_) => Ok(true),
            Err(UpstreamError::NotFound) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Uploads a blob of `size` bytes: a `POST` opens the upload (and settles
    /// authentication, since a streamed body cannot be repeated), then one `PUT` streams
    /// the body with `?digest=`, which the target verifies.
    pub async fn push_blob<S>(&self, repo: &str, digest: &Digest, size: u64, body: S) -> Result<()>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    {
        let start = format!("/v2/{repo}/blobs/uploads/");
        let resp = self
            .send_with(Method::POST, &start, repo, PUSH, "*/*", None)
            .await?;
        let resp = check_status(resp)?;
        let location = resp
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| UpstreamError::Invalid("upload started without a Location".into()))?
            .to_owned();
        let url = if location.starts_with("http://") || location.starts_with("https://") {
            location
        } else {
            self.url(&location)
        };
        let sep = if url.contains('?') { '&' } else { '?' };
        let url = format!("{url}{sep}digest={digest}");
        let scope = format!("repository:{repo}:{PUSH}");
        let mut rb = self
            .http
            .put(url)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, size)
            .body(reqwest::Body::wrap_stream(body));
        rb = match self.known_auth(&scope) {
            Some(crate::Auth::Bearer(t)) => rb.bearer_auth(t),
            Some(crate::Auth::Basic) => rb.basic_auth(
                self.config.username.clone().unwrap_or_default(),
                self.config.password.clone(),
            ),
            None => rb,
        };
        let resp = rb.send().await.map_err(unavailable)?;
        self.note_status(&resp);
        if resp.status() != StatusCode::CREATED {
            check_status(resp)?;
            return Err(UpstreamError::Invalid(
                "blob upload did not answer 201".into(),
            ));
        }
        Ok(())
    }

    /// Stores a manifest's exact bytes under `reference`; returns the digest the target
    /// announced (or the one asked for).
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &Reference,
        media_type: &str,
        content: Bytes,
    ) -> Result<()> {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let resp = self
            .send_with(
                Method::PUT,
                &path,
                repo,
                PUSH,
                "*/*",
                Some((content, media_type.to_owned())),
            )
            .await?;
        check_status(resp)?;
        Ok(())
    }
}
