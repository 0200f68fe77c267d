//! End-to-end tests: the real `berth` binary driven by real clients (skopeo, umoci,
//! containerd/ctr, podman, oras, cosign, notation). Images are built locally with umoci; nothing is
//! downloaded and nothing but 127.0.0.1 is contacted.
//!
//! Every tool is required: a missing one fails its tests with a message naming it
//! (install them with `scripts/install-test-tools.sh`). containerd and podman need root.
//!
//! Each test starts its own server on a free loopback port with its own data directory.

#[path = "e2e/containerd.rs"]
mod containerd;
#[path = "e2e/gc.rs"]
mod gc;
#[path = "e2e/harness.rs"]
mod harness;
#[path = "support/http.rs"]
mod http;

#[path = "e2e/audit.rs"]
mod audit;
#[path = "e2e/auth.rs"]
mod auth;
#[path = "e2e/ctr.rs"]
mod ctr;
#[path = "e2e/docker.rs"]
mod docker;
#[path = "e2e/events.rs"]
mod events;
#[path = "e2e/hostile.rs"]
mod hostile;
#[path = "e2e/image.rs"]
mod image;
#[path = "e2e/k8s.rs"]
mod k8s;
#[path = "e2e/large.rs"]
mod large;
#[path = "e2e/layout.rs"]
mod layout;
#[path = "e2e/mirror.rs"]
mod mirror;
#[path = "e2e/multiarch.rs"]
mod multiarch;
#[path = "e2e/oras.rs"]
mod oras;
#[path = "e2e/p2p.rs"]
mod p2p;
#[path = "e2e/p2pnet.rs"]
mod p2pnet;
#[path = "e2e/podman.rs"]
mod podman;
#[path = "e2e/prefetch.rs"]
mod prefetch;
#[path = "e2e/replicas.rs"]
mod replicas;
#[path = "e2e/restart.rs"]
mod restart;
#[path = "e2e/s3.rs"]
mod s3;
#[path = "e2e/sbom.rs"]
mod sbom;
#[path = "e2e/signatures.rs"]
mod signatures;
#[path = "e2e/sigtravel.rs"]
mod sigtravel;
#[path = "e2e/skopeo.rs"]
mod skopeo;
#[path = "e2e/tls.rs"]
mod tls;
#[path = "e2e/ui.rs"]
mod ui;
#[path = "e2e/vulns.rs"]
mod vulns;
