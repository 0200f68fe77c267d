//! The option sets the golden files and the schema checks cover: one replica on a
//! volume, with and without TLS and the other knobs, and several replicas over
//! PostgreSQL and S3, with and without TLS.

use berth_k8s::manifests::{Admission, NodeAgent, WebhookTls};
use berth_k8s::{Options, S3, Storage};

/// A CA certificate's PEM as `--webhook-ca` reads it (the rendering only encodes it).
pub const WEBHOOK_CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBdzCCAR2gAwIBAgIUKwCAtest0webhook0CA0for0the0golden0filesMAoGCCqG\n-----END CERTIFICATE-----\n";

/// A made webhook certificate and key as `berth k8s webhook-cert` would hand them over
/// (the rendering only encodes them).
pub const WEBHOOK_CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIBmade0by0berth0k8s0for0the0golden0files\n-----END CERTIFICATE-----\n";
pub const WEBHOOK_KEY: &str =
    "-----BEGIN PRIVATE KEY-----\nMIGHnot0a0real0key0golden0files\n-----END PRIVATE KEY-----\n";

pub const IMAGE: &str = "registry.example.com/berth:0.1.0";

fn external(s3: S3, database_secret: Option<&str>) -> Storage {
    Storage::External {
        database_secret: database_secret.map(str::to_owned),
        s3,
    }
}

pub fn cases() -> Vec<(&'static str, Options)> {
    let base = || Options::new(IMAGE, "0.1.0");
    vec![
        ("single", base()),
        (
            "single-node-agent",
            Options {
                public_url: Some("https://registry.example.com".into()),
                tls_secret: Some("berth-tls".into()),
                node_agent: Some(NodeAgent {
                    registry_host: "registry.example.com".into(),
                    central_url: None,
                    serve_mbit: 400,
                }),
                ..base()
            },
        ),
        (
            "single-tls",
            Options {
                public_url: Some("https://registry.example.com".into()),
                tls_secret: Some("berth-tls".into()),
                storage: Storage::Volume {
                    size: "50Gi".into(),
                    class: Some("fast-ssd".into()),
                },
                memory_limit: Some("1Gi".into()),
                image_pull_secrets: vec!["regcred".into()],
                ..base()
            },
        ),
        (
            "replicas",
            Options {
                replicas: 3,
                public_url: Some("https://registry.example.com".into()),
                trusted_proxies: vec!["10.42.0.0/16".into()],
                storage: external(
                    S3 {
                        bucket: "registry".into(),
                        endpoint: Some("https://s3.eu-west-1.amazonaws.com".into()),
                        region: Some("eu-west-1".into()),
                        prefix: "berth/".into(),
                        path_style: false,
                        secret: None,
                    },
                    None,
                ),
                ..base()
            },
        ),
        (
            "replicas-tls",
            Options {
                name: "registry".into(),
                namespace: "platform".into(),
                create_namespace: false,
                replicas: 5,
                public_url: Some("https://registry.internal:5000".into()),
                tls_secret: Some("registry-tls".into()),
                admin_secret: Some("registry-admin".into()),
                gc_interval_secs: 0,
                cpu_request: "1".into(),
                memory_request: "512Mi".into(),
                memory_limit: Some("2Gi".into()),
                allow_from: vec!["10.0.0.0/8".into(), "fd00::/8".into()],
                storage: external(
                    S3 {
                        bucket: "images".into(),
                        endpoint: Some("http://minio.storage.svc:9000".into()),
                        region: None,
                        prefix: String::new(),
                        path_style: true,
                        secret: Some("minio-keys".into()),
                    },
                    Some("registry-pg"),
                ),
                ..base()
            },
        ),
        (
            "replicas-admission",
            Options {
                replicas: 2,
                public_url: Some("https://registry.example.com".into()),
                tls_secret: Some("berth-tls".into()),
                storage: external(
                    S3 {
                        bucket: "registry".into(),
                        endpoint: None,
                        region: Some("eu-west-1".into()),
                        prefix: String::new(),
                        path_style: false,
                        secret: None,
                    },
                    None,
                ),
                admission: Some(Admission {
                    timeout_seconds: 3,
                    ..Admission::new(WEBHOOK_CA)
                }),
                ..base()
            },
        ),
        (
            "single-admission-made",
            Options {
                admission: Some(Admission {
                    tls: Some(WebhookTls {
                        cert_pem: WEBHOOK_CERT.into(),
                        key_pem: WEBHOOK_KEY.into(),
                    }),
                    ..Admission::new(WEBHOOK_CA)
                }),
                ..base()
            },
        ),
    ]
}
