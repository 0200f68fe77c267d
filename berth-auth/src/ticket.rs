//! Node tickets for sharing layers between nodes: Ed25519 signatures that a peer checks
//! offline, with the central Berth's public key only.
//!
//! Two kinds share one envelope, `base64url(claims JSON) "." base64url(signature)`, and
//! the signature covers a context string naming the kind, so a node credential can never
//! pass as a ticket or the other way round:
//!
//! * a **node credential** says "the agent of node `node`, at `addr`, enrolled": the agent
//!   shows it to the central Berth;
//! * a **ticket** says "node `node`, at `addr`, may fetch blob `digest` until `exp`": the
//!   agent shows it to a peer, which checks the signature, the digest asked for, the
//!   expiry, and that the connection comes from `addr` (offline: no call home).
//!
//! Asymmetric, unlike the HS256 registry tokens, because the verifiers here are the nodes,
//! which must not be able to mint tickets.

use std::net::IpAddr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

/// Longest ticket or credential accepted.
pub const MAX_TICKET_BYTES: usize = 4096;
/// Clock difference tolerated between the central Berth and the nodes, in seconds.
const LEEWAY_SECS: u64 = 30;
const TICKET_CONTEXT: &[u8] = b"berth-p2p-ticket-v1\0";
const NODE_CONTEXT: &[u8] = b"berth-p2p-node-v1\0";

#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum TicketError {
    #[error("ticket is malformed")]
    Malformed,
    #[error("ticket signature does not verify")]
    BadSignature,
    #[error("ticket has expired")]
    Expired,
    #[error("ticket is for another blob")]
    OtherDigest,
    #[error("ticket belongs to another node")]
    OtherNode,
    #[error("ticket signing key is unusable")]
    BadKey,
}

impl TicketError {
    /// A short label for counters.
    pub fn reason(self) -> &'static str {
        match self {
            TicketError::Malformed => "malformed",
            TicketError::BadSignature => "bad_signature",
            TicketError::Expired => "expired",
            TicketError::OtherDigest => "other_digest",
            TicketError::OtherNode => "other_node",
            TicketError::BadKey => "bad_key",
        }
    }
}

/// What a ticket grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketClaims {
    /// The node's name, as it enrolled.
    pub node: String,
    /// The node's address: a peer serves only connections from it.
    pub addr: IpAddr,
    /// The one blob this ticket opens.
    pub digest: String,
    /// Unix seconds.
    pub exp: u64,
}

/// Who an enrolled agent is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeClaims {
    pub node: String,
    pub addr: IpAddr,
    /// Unix seconds.
    pub exp: u64,
}

/// The central Berth's signing key (PKCS#8 Ed25519).
pub struct TicketKey {
    pair: Ed25519KeyPair,
    pkcs8: Vec<u8>,
}

impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketKey")
            .field("public", &hex_public(self.public_key()))
            .finish_non_exhaustive()
    }
}

fn hex_public(p: &[u8]) -> String {
    p.iter().map(|b| format!("{b:02x}")).collect()
}

impl TicketKey {
    /// A fresh key from the system's random source.
    pub fn generate() -> Result<TicketKey, TicketError> {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| TicketError::BadKey)?;
        TicketKey::from_pkcs8(doc.as_ref())
    }

    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<TicketKey, TicketError> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|_| TicketError::BadKey)?;
        Ok(TicketKey {
            pair,
            pkcs8: pkcs8.to_vec(),
        })
    }

    /// The key as stored (PKCS#8); secret.
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The 32-byte public key the nodes verify with.
    pub fn public_key(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    pub fn sign_ticket(&self, claims: &TicketClaims) -> String {
        self.sign(TICKET_CONTEXT, claims)
    }

    pub fn sign_node(&self, claims: &NodeClaims) -> String {
        self.sign(NODE_CONTEXT, claims)
    }

    fn sign<T: Serialize>(&self, context: &[u8], claims: &T) -> String {
        // Serializing plain structs of strings and numbers cannot fail.
        let body = serde_json::to_vec(claims).unwrap_or_default();
        let mut msg = context.to_vec();
        msg.extend_from_slice(&body);
        let sig = self.pair.sign(&msg);
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&body),
            URL_SAFE_NO_PAD.encode(sig.as_ref())
        )
    }
}

fn open<T: for<'de> Deserialize<'de>>(
    public: &[u8],
    context: &[u8],
    token: &str,
) -> Result<T, TicketError> {
    if token.len() > MAX_TICKET_BYTES {
        return Err(TicketError::Malformed);
    }
    let (body, sig) = token.split_once('.').ok_or(TicketError::Malformed)?;
    let body = URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|_| TicketError::Malformed)?;
    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| TicketError::Malformed)?;
    let mut msg = context.to_vec();
    msg.extend_from_slice(&body);
    UnparsedPublicKey::new(&ED25519, public)
        .verify(&msg, &sig)
        .map_err(|_| TicketError::BadSignature)?;
    serde_json::from_slice(&body).map_err(|_| TicketError::Malformed)
}

/// Checks a ticket offline: signed by `public`, for `digest`, not expired at `now` (Unix
/// seconds), and presented from the address it names.
pub fn verify_ticket(
    public: &[u8],
    token: &str,
    digest: &str,
    from: IpAddr,
    now: u64,
) -> Result<TicketClaims, TicketError> {
    let c: TicketClaims = open(public, TICKET_CONTEXT, token)?;
    if c.exp.saturating_add(LEEWAY_SECS) < now {
        return Err(TicketError::Expired);
    }
    if c.digest != digest {
        return Err(TicketError::OtherDigest);
    }
    if !same_host(c.addr, from) {
        return Err(TicketError::OtherNode);
    }
    Ok(c)
}

/// Checks a node credential: signed by `public`, not expired, presented from its address.
pub fn verify_node(
    public: &[u8],
    token: &str,
    from: IpAddr,
    now: u64,
) -> Result<NodeClaims, TicketError> {
    let c: NodeClaims = open(public, NODE_CONTEXT, token)?;
    if c.exp.saturating_add(LEEWAY_SECS) < now {
        return Err(TicketError::Expired);
    }
    if !same_host(c.addr, from) {
        return Err(TicketError::OtherNode);
    }
    Ok(c)
}

/// IPv4 addresses may arrive mapped into IPv6 on a dual-stack socket.
fn same_host(a: IpAddr, b: IpAddr) -> bool {
    a.to_canonical() == b.to_canonical()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> TicketClaims {
        TicketClaims {
            node: "node-a".into(),
            addr: "10.0.0.1".parse().expect("test"),
            digest: "sha256:aa".into(),
            exp: 1000,
        }
    }

    #[test]
    fn a_ticket_opens_its_blob_for_its_node_until_it_expires() {
        let k = TicketKey::generate().expect("test");
        let t = k.sign_ticket(&claims());
        let me = "10.0.0.1".parse().expect("test");
        let pk = k.public_key().to_vec();
        assert_eq!(verify_ticket(&pk, &t, "sha256:aa", me, 900), Ok(claims()));
        assert_eq!(
            verify_ticket(&pk, &t, "sha256:bb", me, 900),
            Err(TicketError::OtherDigest)
        );
        assert_eq!(
            verify_ticket(&pk, &t, "sha256:aa", "10.0.0.2".parse().expect("test"), 900),
            Err(TicketError::OtherNode)
        );
        assert_eq!(
            verify_ticket(&pk, &t, "sha256:aa", me, 2000),
            Err(TicketError::Expired)
        );
        let other = TicketKey::generate().expect("test");
        assert_eq!(
            verify_ticket(other.public_key(), &t, "sha256:aa", me, 900),
            Err(TicketError::BadSignature)
        );
        // A claim changed after signing.
        let (_, sig) = t.split_once('.').expect("test");
        let mut forged = claims();
        forged.digest = "sha256:bb".into();
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).expect("test"));
        assert_eq!(
            verify_ticket(&pk, &format!("{body}.{sig}"), "sha256:bb", me, 900),
            Err(TicketError::BadSignature)
        );
    }

    #[test]
    fn a_node_credential_is_no_ticket_and_a_ticket_no_credential() {
        let k = TicketKey::generate().expect("test");
        let me: IpAddr = "10.0.0.1".parse().expect("test");
        let cred = k.sign_node(&NodeClaims {
            node: "node-a".into(),
            addr: me,
            exp: 1000,
        });
        assert!(verify_node(k.public_key(), &cred, me, 900).is_ok());
        assert_eq!(
            verify_ticket(k.public_key(), &cred, "sha256:aa", me, 900),
            Err(TicketError::BadSignature)
        );
        let t = k.sign_ticket(&claims());
        assert_eq!(
            verify_node(k.public_key(), &t, me, 900),
            Err(TicketError::BadSignature)
        );
        let again = TicketKey::from_pkcs8(k.pkcs8()).expect("test");
        assert_eq!(again.public_key(), k.public_key());
    }
}
