//! Built-in TLS: a certificate and key read from PEM files, served through a resolver whose
//! key is swapped when the files change on disk, so a renewed certificate (cert-manager,
//! certbot, a mounted Kubernetes secret) takes effect without a restart.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Where the certificate and key live, and how often to look for new ones.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// PEM certificate chain, end-entity certificate first.
    pub cert: PathBuf,
    /// PEM private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
    pub key: PathBuf,
    /// How often the files' size and modification time are checked.
    pub reload_interval: Duration,
}

/// Why a certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: no PEM certificate (BEGIN CERTIFICATE) found", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: malformed PEM: {source}", path.display())]
    Pem {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{}: no PEM private key (PKCS#8, PKCS#1 or SEC1) found", path.display())]
    NoKey { path: PathBuf },
    #[error("{} does not hold a usable key for {}: {source}", key.display(), cert.display())]
    Key {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("TLS setup: {0}")]
    Setup(rustls::Error),
}

/// ring, named rather than taken as the process default: should another dependency ever
/// enable aws-lc-rs as well, rustls could no longer pick a default on its own.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads and checks the certificate and key once; startup calls it to fail early with a
/// message naming the file.
pub fn check(settings: &TlsSettings) -> Result<(), TlsError> {
    load(&settings.cert, &settings.key, &provider()).map(|_| ())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn load(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let cert_pem = read(cert)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: cert.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_owned(),
        });
    }
    let key_pem = read(key)?;
    let der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            path: key.to_owned(),
        },
        source => TlsError::Pem {
            path: key.to_owned(),
            source,
        },
    })?;
    // from_der also compares the key with the certificate's public key, so a cert renewed
    // with a new key is never served with the old one (or the other way round).
    CertifiedKey::from_der(chain, der, provider).map_err(|source| TlsError::Key {
        cert: cert.to_owned(),
        key: key.to_owned(),
        source,
    })
}

/// What identifies a version of the files without reading them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    cert: (Option<SystemTime>, u64),
    key: (Option<SystemTime>, u64),
}

async fn stamp(cert: &Path, key: &Path) -> std::io::Result<Stamp> {
    let c = tokio::fs::metadata(cert).await?;
    let k = tokio::fs::metadata(key).await?;
    Ok(Stamp {
        cert: (c.modified().ok(), c.len()),
        key: (k.modified().ok(), k.len()),
    })
}

/// Hands every handshake the key loaded last.
struct ReloadingResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for ReloadingResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingResolver").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for ReloadingResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A poisoned lock still holds a complete key: the writer only ever assigns an Arc.
        let key = match self.current.read() {
            Ok(k) => k,
            Err(poisoned) => poisoned.into_inner(),
        };
        Some(Arc::clone(&key))
    }
}

impl ReloadingResolver {
    fn set(&self, key: CertifiedKey) {
        let mut current = match self.current.write() {
            Ok(k) => k,
            Err(poisoned) => poisoned.into_inner(),
        };
        *current = Arc::new(key);
    }
}

/// Loads the certificate and key, and starts the task that reloads them. The task ends
/// when the returned acceptor (and every connection using it) is gone.
pub(crate) fn acceptor(settings: &TlsSettings) -> Result<TlsAcceptor, TlsError> {
    let provider = provider();
    let first_stamp = std::fs::metadata(&settings.cert)
        .and_then(|c| std::fs::metadata(&settings.key).map(|k| (c, k)))
        .ok()
        .map(|(c, k)| Stamp {
            cert: (c.modified().ok(), c.len()),
            key: (k.modified().ok(), k.len()),
        });
    let key = load(&settings.cert, &settings.key, &provider)?;
    let resolver = Arc::new(ReloadingResolver {
        current: RwLock::new(Arc::new(key)),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Setup)?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio::spawn(reload_loop(
        Arc::downgrade(&resolver),
        settings.clone(),
        provider,
        first_stamp,
    ));
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn reload_loop(
    resolver: Weak<ReloadingResolver>,
    settings: TlsSettings,
    provider: Arc<CryptoProvider>,
    mut loaded: Option<Stamp>,
) {
    let mut tick = tokio::time::interval(settings.reload_interval.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    // The version that last failed to load: warned about once, retried quietly every tick,
    // since a writer may still be filling the file.
    let mut failed: Option<Stamp> = None;
    // A replace by delete-then-create leaves the file missing for a moment: warn once.
    let mut missing = false;
    loop {
        tick.tick().await;
        let Some(resolver) = resolver.upgrade() else {
            return;
        };
        let now = match stamp(&settings.cert, &settings.key).await {
            Ok(s) => {
                missing = false;
                s
            }
            Err(e) => {
                if !missing {
                    tracing::warn!(error = %e, cert = %settings.cert.display(), key = %settings.key.display(),
                        "cannot stat the TLS certificate or key; still serving the loaded certificate");
                    missing = true;
                }
                continue;
            }
        };
        if Some(now) == loaded {
            continue;
        }
        let (cert, key) = (settings.cert.clone(), settings.key.clone());
        let p = Arc::clone(&provider);
        let result = tokio::task::spawn_blocking(move || load(&cert, &key, &p)).await;
        match result {
            Ok(Ok(key)) => {
                resolver.set(key);
                loaded = Some(now);
                failed = None;
                tracing::info!(cert = %settings.cert.display(), "reloaded the TLS certificate");
            }
            Ok(Err(e)) => {
                if failed != Some(now) {
                    tracing::warn!(error = %e, "new TLS certificate or key not usable (yet); still serving the previous one");
                    failed = Some(now);
                }
            }
            Err(e) => tracing::warn!(error = %e, "TLS reload task failed"),
        }
    }
}
