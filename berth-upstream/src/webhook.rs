//! Webhook deliveries: one `POST` of a body the caller prepared (and signed) to a
//! receiver, with the receiver's addresses checked against the caller's policy at the
//! moment of connecting.
//!
//! The check sits in the DNS resolver the HTTP client uses, so the addresses that are
//! judged are the very addresses it connects to: a name that resolved to a public address
//! when the webhook was saved and to 169.254.169.254 now (DNS rebinding) is refused now. If
//! any address of a name is refused, the name is, so a mix of one public and one internal
//! record cannot pick the internal one. Literal addresses in the URL never reach a resolver
//! and are judged before the request. Redirects are not followed (a redirect could point
//! anywhere) and no HTTP proxy is used for checked deliveries (the proxy, not Berth, would
//! pick the address).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::{StatusCode, header};

/// Says whether Berth may connect to an address: the host name it came from (`None` for
/// an address written in the URL) and the address.
pub type AddressPolicy = Arc<dyn Fn(Option<&str>, IpAddr) -> bool + Send + Sync>;

/// At most this much of a receiver's answer is read (so the connection can be reused);
/// the rest is dropped with the connection.
const MAX_ANSWER: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The policy refused the receiver's address: nothing was sent.
    #[error("{0}")]
    Refused(String),
    /// The receiver answered, but not with a 2xx.
    #[error("the receiver answered {status}")]
    Status {
        status: u16,
        /// What a 429 or 503 asked for.
        retry_after: Option<Duration>,
    },
    /// No answer: connection refused or reset, timeout, TLS failure.
    #[error("{0}")]
    Transport(String),
    /// The URL cannot be called.
    #[error("{0}")]
    Invalid(String),
}

/// The address check failed in the resolver; found again in reqwest's error chain.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct AddressRefused(String);

/// One delivery.
pub struct Delivery<'a> {
    pub url: &'a str,
    /// Headers besides `User-Agent` (content type, signature, ids).
    pub headers: &'a [(&'static str, String)],
    pub body: Bytes,
    pub timeout: Duration,
    /// Judge the receiver's addresses by the policy (webhooks set through the API);
    /// false for webhooks of the configuration file, which the admin wrote.
    pub checked: bool,
}

pub struct WebhookClient {
    checked: reqwest::Client,
    open: reqwest::Client,
    policy: AddressPolicy,
}

struct CheckedResolver {
    policy: AddressPolicy,
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = Arc::clone(&self.policy);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if addrs.is_empty() {
                return Err(format!("{host} has no address").into());
            }
            if let Some(bad) = addrs.iter().find(|a| !policy(Some(&host), a.ip())) {
                return Err(Box::new(AddressRefused(format!(
                    "{host} resolves to {}, which webhooks may not reach (see [events] allow_networks, allow_hosts)",
                    bad.ip()
                )))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// The host of an `http(s)://` URL, and the address when the host is one.
pub fn url_host(url: &str) -> Result<(String, Option<IpAddr>), DeliveryError> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| DeliveryError::Invalid(format!("{url:.200}: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(DeliveryError::Invalid(format!(
            "{url:.200}: a webhook URL starts with http:// or https://"
        )));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(DeliveryError::Invalid(
            "a webhook URL carries no credentials: use the secret to sign deliveries".into(),
        ));
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| DeliveryError::Invalid(format!("{url:.200}: no host")))?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    Ok((host.to_owned(), bare.parse::<IpAddr>().ok()))
}

impl WebhookClient {
    pub fn new(policy: AddressPolicy, user_agent: &str) -> Result<WebhookClient, DeliveryError> {
        crate::ensure_crypto_provider();
        let build = |b: reqwest::ClientBuilder| {
            b.user_agent(user_agent)
                .redirect(reqwest::redirect::Policy::none())
                .pool_idle_timeout(Duration::from_secs(30))
                .build()
                .map_err(|e| DeliveryError::Invalid(format!("webhook client: {e}")))
        };
        let checked = build(reqwest::Client::builder().no_proxy().dns_resolver(Arc::new(
            CheckedResolver {
                policy: Arc::clone(&policy),
            },
        )))?;
        let open = build(reqwest::Client::builder())?;
        Ok(WebhookClient {
            checked,
            open,
            policy,
        })
    }

    /// Sends one delivery; `Ok` with the status when the receiver answered 2xx.
    pub async fn post(&self, d: Delivery<'_>) -> Result<u16, DeliveryError> {
        let (host, literal) = url_host(d.url)?;
        if d.checked
            && let Some(ip) = literal
            && !(self.policy)(None, ip)
        {
            return Err(DeliveryError::Refused(format!(
                "{host} is an address webhooks may not reach (see [events] allow_networks)"
            )));
        }
        let client = if d.checked { &self.checked } else { &self.open };
        let mut req = client.post(d.url).timeout(d.timeout).body(d.body);
        for (name, value) in d.headers {
            req = req.header(*name, value.as_str());
        }
        let mut resp = req.send().await.map_err(|e| {
            if let Some(refused) = find::<AddressRefused>(&e) {
                return DeliveryError::Refused(refused.0.clone());
            }
            DeliveryError::Transport(chain(&e))
        })?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        // Read a little of the answer, so a keep-alive connection can serve the next one.
        let mut read = 0;
        while read < MAX_ANSWER {
            match resp.chunk().await {
                Ok(Some(c)) => read += c.len(),
                _ => break,
            }
        }
        if status.is_success() {
            Ok(status.as_u16())
        } else {
            Err(DeliveryError::Status {
                status: status.as_u16(),
                retry_after: retry_after.filter(|_| {
                    matches!(
                        status,
                        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
                    )
                }),
            })
        }
    }
}

fn find<'e, T: std::error::Error + 'static>(
    e: &'e (dyn std::error::Error + 'static),
) -> Option<&'e T> {
    let mut cur: Option<&'e (dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<T>() {
            return Some(t);
        }
        cur = err.source();
    }
    None
}

/// An error with its causes, which is where reqwest keeps the useful part.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            url_host("https://hooks.example/x").expect("ok"),
            ("hooks.example".to_owned(), None)
        );
        assert_eq!(
            url_host("http://169.254.169.254/latest").expect("ok").1,
            Some("169.254.169.254".parse().expect("ip"))
        );
        assert_eq!(
            url_host("http://[::1]:8080/").expect("ok").1,
            Some("::1".parse().expect("ip"))
        );
        // The URL parser reads the odd spellings of addresses as browsers do.
        assert_eq!(
            url_host("http://2130706433/").expect("ok").1,
            Some("127.0.0.1".parse().expect("ip"))
        );
        for bad in [
            "ftp://x/",
            "not a url",
            "http://user:pw@x/",
            "file:///etc/passwd",
        ] {
            assert!(url_host(bad).is_err(), "{bad}");
        }
    }
}
