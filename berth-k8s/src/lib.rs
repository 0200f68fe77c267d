//! Berth on Kubernetes: the install manifests (`berth k8s manifests`) and the same
//! resources as a kustomize base, rendered from [`Options`], and the admission webhooks'
//! certificates (`cert`). Pure: options in, resources and text out; no I/O (the
//! certificate maker is handed the time and a random source), so every rendering is
//! checked by golden files and the Kubernetes schemas (`tests/`).
//!
//! What the resources promise and why lives next to each builder in `manifests`; the
//! YAML writer in `yaml`.

pub mod cert;
pub mod manifests;
pub mod yaml;

pub use manifests::{Install, Options, Resource, S3, SecretRef, Storage};

/// The user and group Berth's image runs as, and the pods' `runAsUser`/`fsGroup`
/// (`scripts/oci-image.py` writes the same numbers into the image's `/etc/passwd`).
pub const RUN_AS_UID: u32 = 65532;

/// Where the image and the manifests keep Berth's data directory: a volume in the pod
/// (the root filesystem is read-only).
pub const DATA_DIR: &str = "/var/lib/berth";

/// The port Berth listens on inside the pod.
pub const PORT: u16 = 5000;

/// Why options cannot be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum K8sError {
    #[error("{0}")]
    Invalid(String),
}
