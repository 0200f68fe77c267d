//! The policy layer: rules that can refuse a pull, each with a mode (`off`, `dry-run`,
//! `audit`, `enforce`). This issue brings one kind, `signature` (the image must carry a
//! valid signature under the trust declared for its repository); vulnerability and
//! admission rules plug in beside it as more kinds with their own verdicts.
//!
//! A pull costs one hash lookup: a manifest's verdict is computed once (from its stored
//! signatures and the trust material, through `berth-verify`), stored in the metadata
//! store under the repository's verification epoch, and cached in memory. The epoch grows
//! in the transaction of every change that can change a verdict (see
//! `berth_meta::verdicts`), which also notifies every replica; a counter polled once a
//! second covers a missed notification. A stored verdict whose epoch or trust fingerprint
//! is not current is computed again.
//!
//! What a manifest is (image, index, signature, attestation, SBOM) is read from its
//! content (`berth_verify::classify`), never from its tag. Signatures, attestations and
//! SBOMs are always served: clients must fetch them to verify.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use berth_oci::{Digest, RepoName};
use berth_verify::cosign::{self, TrustedKey};
use berth_verify::keyless::{self, CertTrust, Matcher};
use berth_verify::notary::{self, Identity, Level, NotaryTrust};
use berth_verify::{Failure, KeyKind, Kind, PublicKey, classify};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::events::RefusedPull;
use crate::tag_rules::Glob;
use crate::vulns::ImageFinding;
use crate::{Manifest, Registry, RegistryError, Result, stats};
use berth_vuln::Severity;

/// What a rule does with a manifest that fails it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    #[default]
    Off,
    /// Judged only by `berth policy check`; pulls are untouched.
    DryRun,
    /// Served; the violation is written to the audit log and counted.
    Audit,
    /// Refused with 403 DENIED.
    Enforce,
}

/// What an enforcing rule does while a manifest's verdict is not known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Pending {
    #[default]
    Refuse,
    Allow,
}

/// A rule as configured (`[[policy]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub name: String,
    /// Repository globs (`*`, `?`, `[...]` over the full name).
    pub repositories: Vec<String>,
    /// The kind of rule; `signature` is the only one so far.
    #[serde(default = "signature_kind")]
    pub kind: String,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub pending: Pending,
    /// Callers authenticated with push permission on the repository are served what the
    /// rule would refuse (recorded as `bypassed`): cosign and notation read the manifest
    /// they sign, so CI must be able to. Never anonymous or open-mode callers.
    #[serde(default = "yes")]
    pub push_bypass: bool,
    /// What a `vulnerability` rule refuses (`[[vulnerability_policy]]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vulnerability: Option<VulnRuleSpec>,
}

/// What findings may not be served: at or above `severity`, optionally only those with a
/// fix available, minus the allowlist while each entry lasts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VulnRuleSpec {
    /// `negligible`, `low`, `medium`, `high` or `critical`.
    pub severity: Severity,
    /// Only findings with a fixed version count (nothing to upgrade to is not refused).
    #[serde(default)]
    pub fixed_only: bool,
    /// Findings whose severity is unknown: `ignore` (the default) or `refuse`.
    #[serde(default)]
    pub unknown: UnknownSeverity,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<AllowEntry>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UnknownSeverity {
    #[default]
    Ignore,
    Refuse,
}

/// An advisory id (or alias) not counted until the end of `until` (UTC).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowEntry {
    pub id: String,
    /// `YYYY-MM-DD`, the last day it is allowed.
    pub until: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// Seconds since the epoch at the end of a `YYYY-MM-DD` day (UTC).
fn end_of_day(date: &str) -> Option<u64> {
    let mut it = date.split('-');
    let (y, m, d): (i64, i64, i64) = (
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
    );
    if it.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&d) || y < 1970 {
        return None;
    }
    // Days from civil (proleptic Gregorian), as in Howard Hinnant's algorithm.
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from((days + 1) * 86_400).ok()
}

fn yes() -> bool {
    true
}

fn signature_kind() -> String {
    "signature".into()
}

/// A cosign public key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CosignKeySpec {
    pub name: String,
    /// PEM `PUBLIC KEY`.
    pub pem: String,
    /// `ecdsa-p256`, `ecdsa-p384`, `ed25519` or `rsa`; the key must be of this kind.
    #[serde(default)]
    pub algorithm: Option<String>,
}

/// A Notary Project trust store with the part of a trust policy that uses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotaryStoreSpec {
    pub name: String,
    /// PEM certificates (CA roots, or the signing certificate's issuer).
    pub certificates: String,
    /// `strict`, `permissive`, `audit` or `skip`, as in notation's trust policy.
    #[serde(default = "strict")]
    pub level: String,
    /// `*` or `x509.subject: ...` entries.
    pub trusted_identities: Vec<String>,
    /// Exact repository names or `*`, as a notation `trustpolicy.json`'s registry scopes
    /// (imported ones keep theirs): within the trust's globs, a store naming the
    /// repository exactly is used alone; otherwise the stores with `*` or no scopes are.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Longest certificate path, leaf to root inclusive (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_chain: Option<usize>,
    /// PEM roots of the timestamp authorities whose RFC 3161 countersignatures date a
    /// signature.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tsa_roots: String,
}

fn strict() -> String {
    "strict".into()
}

/// CA roots for cosign signatures made with a certificate, with the identities and
/// issuers they are trusted for and the authorities that may date a signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateSpec {
    pub name: String,
    /// PEM CA roots (Fulcio's, or your own CA's).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub roots: String,
    /// A Sigstore `trusted_root.json` (its text): CA certificates, log keys and timestamp
    /// authorities, added to the others.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub trusted_root: String,
    /// SAN emails or URIs, exactly.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<String>,
    /// Regular expressions over SAN emails or URIs, matched whole.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identity_regexps: Vec<String>,
    /// OIDC issuers (Fulcio's extension), exactly.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub issuers: Vec<String>,
    /// Regular expressions over the OIDC issuer, matched whole.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub issuer_regexps: Vec<String>,
    /// Longest certificate path, leaf to root inclusive.
    #[serde(default = "default_max_chain")]
    pub max_chain: usize,
    /// PEM public keys of the transparency logs whose entries date a signature.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log_keys: Vec<String>,
    /// PEM roots of the RFC 3161 timestamp authorities whose timestamps date a signature.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tsa_roots: String,
}

/// Longest certificate path accepted by default: Fulcio's leaf, intermediate and root.
pub const DEFAULT_MAX_CHAIN: usize = keyless::DEFAULT_MAX_CHAIN;

fn default_max_chain() -> usize {
    DEFAULT_MAX_CHAIN
}

fn matchers(exact: &[String], regexps: &[String]) -> Result<Vec<Matcher>, String> {
    let mut out: Vec<Matcher> = exact.iter().map(|e| Matcher::Exact(e.clone())).collect();
    for r in regexps {
        out.push(Matcher::regex(r)?);
    }
    Ok(out)
}

fn compile_certificates(trust: &str, c: &CertificateSpec) -> Result<CertTrust, PolicyError> {
    let what = format!("trust {trust:?} certificates {:?}", c.name);
    let from_file = if c.trusted_root.trim().is_empty() {
        berth_verify::bundle::TrustedRootMaterial::default()
    } else {
        berth_verify::bundle::trusted_root(c.trusted_root.as_bytes()).map_err(|e| err(&what, e))?
    };
    let mut roots = if c.roots.trim().is_empty() {
        Vec::new()
    } else {
        keyless::roots_from_pem(c.roots.as_bytes()).map_err(|e| err(&what, e))?
    };
    roots.extend(from_file.roots);
    if roots.is_empty() {
        return Err(err(&what, "names no CA root (roots or trusted_root)"));
    }
    let identities = matchers(&c.identities, &c.identity_regexps).map_err(|e| err(&what, e))?;
    let issuers = matchers(&c.issuers, &c.issuer_regexps).map_err(|e| err(&what, e))?;
    if identities.is_empty() || issuers.is_empty() {
        return Err(err(
            &what,
            "needs identities (or identity_regexps) and issuers (or issuer_regexps)",
        ));
    }
    if c.max_chain < 2 {
        return Err(err(&what, "max_chain must be at least 2 (leaf and root)"));
    }
    let mut log_keys = Vec::new();
    for (i, pem) in c.log_keys.iter().enumerate() {
        let key = PublicKey::from_pem(pem.as_bytes())
            .map_err(|e| err(&what, format!("log key {i}: {e}")))?;
        log_keys.push(TrustedKey {
            name: format!("{trust}/{}/log{i}", c.name),
            key,
        });
    }
    let mut tsa_roots = if c.tsa_roots.trim().is_empty() {
        Vec::new()
    } else {
        keyless::roots_from_pem(c.tsa_roots.as_bytes())
            .map_err(|e| err(&what, format!("tsa_roots: {e}")))?
    };
    tsa_roots.extend(from_file.tsa_roots);
    log_keys.extend(from_file.log_keys);
    Ok(CertTrust {
        name: format!("{trust}/{}", c.name),
        roots,
        identities,
        issuers,
        max_chain: c.max_chain,
        log_keys,
        tsa_roots,
    })
}

/// Trust material for the repositories its globs match (`[[trust]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustSpec {
    pub name: String,
    pub repositories: Vec<String>,
    #[serde(default)]
    pub cosign: Vec<CosignKeySpec>,
    #[serde(default)]
    pub notary: Vec<NotaryStoreSpec>,
    /// Cosign signatures made with a certificate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<CertificateSpec>,
}

/// Trust and rules together.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySpec {
    #[serde(default)]
    pub trust: Vec<TrustSpec>,
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {why}")]
pub struct PolicyError {
    pub what: String,
    pub why: String,
}

fn err(what: impl Into<String>, why: impl Into<String>) -> PolicyError {
    PolicyError {
        what: what.into(),
        why: why.into(),
    }
}

fn globs(what: &str, patterns: &[String]) -> Result<Vec<Glob>, PolicyError> {
    if patterns.is_empty() {
        return Err(err(what, "names no repository glob"));
    }
    patterns
        .iter()
        .map(|p| Glob::new(p).map_err(|why| err(format!("{what}: glob {p:?}"), why)))
        .collect()
}

struct Trust {
    repos: Vec<Glob>,
    keys: Vec<TrustedKey>,
    certs: Vec<CertTrust>,
    /// Each store with its scopes.
    notary: Vec<(NotaryTrust, Vec<String>)>,
}

impl Trust {
    /// The stores that apply to `repo`, with notation's precedence: a store whose scopes
    /// name the repository exactly is used alone; else those scoped `*` (or unscoped).
    fn stores_for<'t>(&'t self, repo: &str) -> Vec<&'t NotaryTrust> {
        let exact: Vec<&NotaryTrust> = self
            .notary
            .iter()
            .filter(|(_, s)| s.iter().any(|x| x == repo))
            .map(|(n, _)| n)
            .collect();
        if !exact.is_empty() {
            return exact;
        }
        self.notary
            .iter()
            .filter(|(_, s)| s.is_empty() || s.iter().any(|x| x == "*"))
            .map(|(n, _)| n)
            .collect()
    }
}

struct VulnRule {
    spec: VulnRuleSpec,
    /// Allowed ids with the end of their last day.
    allow: Vec<(String, u64)>,
}

impl VulnRule {
    /// The worst finding this rule refuses, if any, and how many it refuses.
    fn judge<'f>(
        &self,
        findings: &'f [ImageFinding],
        now: u64,
    ) -> Option<(&'f ImageFinding, usize)> {
        let allowed = |f: &ImageFinding| {
            self.allow.iter().any(|(id, until)| {
                now < *until && (f.id == *id || f.aliases.iter().any(|a| a == id))
            })
        };
        let counted: Vec<&ImageFinding> = findings
            .iter()
            .filter(|f| match f.severity {
                Severity::Unknown => self.spec.unknown == UnknownSeverity::Refuse,
                s => s >= self.spec.severity,
            })
            .filter(|f| !self.spec.fixed_only || f.fixed.is_some())
            .filter(|f| !allowed(f))
            .collect();
        let worst = counted.iter().copied().max_by(|a, b| {
            a.severity
                .cmp(&b.severity)
                .then_with(|| a.fixed.is_some().cmp(&b.fixed.is_some()))
                .then_with(|| b.id.cmp(&a.id))
        })?;
        Some((worst, counted.len()))
    }

    fn reason(&self, worst: &ImageFinding, n: usize) -> String {
        let fix = match &worst.fixed {
            Some(v) => format!(", fixed in {v}"),
            None => ", no fix".to_owned(),
        };
        format!(
            "{n} finding(s) at or above {}{}; worst {} ({}) in {} {}{fix}",
            self.spec.severity.as_str(),
            if self.spec.fixed_only {
                " with a fix"
            } else {
                ""
            },
            worst.id,
            worst.severity.as_str(),
            worst.package,
            worst.version,
        )
    }
}

struct Rule {
    spec: RuleSpec,
    repos: Vec<Glob>,
    /// Set for `vulnerability` rules.
    vuln: Option<VulnRule>,
    /// Of the rule's definition and the trust material: a dry run counts for exactly this.
    fingerprint: String,
}

/// The compiled policy in force.
pub struct Policy {
    trust: Vec<Trust>,
    rules: Vec<Rule>,
    /// Of the trust material: stored verdicts computed under other material are stale.
    fingerprint: String,
    spec: PolicySpec,
}

impl Default for Policy {
    fn default() -> Self {
        Policy::new(PolicySpec::default()).unwrap_or_else(|_| unreachable!())
    }
}

fn fingerprint(v: &impl Serialize) -> String {
    let json = serde_json::to_vec(v).unwrap_or_default();
    berth_verify::sha256_digest(&json)
}

impl Policy {
    pub fn new(spec: PolicySpec) -> Result<Policy, PolicyError> {
        let mut trust = Vec::new();
        for t in &spec.trust {
            let what = format!("trust {:?}", t.name);
            let mut keys = Vec::new();
            for k in &t.cosign {
                let kw = format!("{what} cosign key {:?}", k.name);
                let key =
                    PublicKey::from_pem(k.pem.as_bytes()).map_err(|e| err(&kw, e.to_string()))?;
                if let Some(a) = &k.algorithm {
                    let declared = KeyKind::parse(a).ok_or_else(|| {
                        err(
                            &kw,
                            format!(
                                "algorithm {a:?} is not ecdsa-p256, ecdsa-p384, ed25519 or rsa"
                            ),
                        )
                    })?;
                    key.expect_kind(declared)
                        .map_err(|e| err(&kw, e.to_string()))?;
                }
                keys.push(TrustedKey {
                    name: format!("{}/{}", t.name, k.name),
                    key,
                });
            }
            let mut stores = Vec::new();
            for n in &t.notary {
                let nw = format!("{what} notary store {:?}", n.name);
                let level = Level::parse(&n.level).ok_or_else(|| {
                    err(
                        &nw,
                        format!(
                            "level {:?} is not strict, permissive, audit or skip",
                            n.level
                        ),
                    )
                })?;
                // Skip verifies nothing: notation's skip policies name no trust store.
                let roots = if level == Level::Skip && n.certificates.trim().is_empty() {
                    Vec::new()
                } else {
                    NotaryTrust::roots_from_pem(n.certificates.as_bytes())
                        .map_err(|e| err(&nw, e))?
                };
                if n.trusted_identities.is_empty() && level != Level::Skip {
                    return Err(err(&nw, "names no trusted identity (use \"*\" for any)"));
                }
                let max_chain = n.max_chain.unwrap_or(notary::MAX_CHAIN);
                if max_chain < 2 {
                    return Err(err(&nw, "max_chain must be at least 2 (leaf and root)"));
                }
                let tsa_roots = if n.tsa_roots.trim().is_empty() {
                    Vec::new()
                } else {
                    keyless::roots_from_pem(n.tsa_roots.as_bytes())
                        .map_err(|e| err(&nw, format!("tsa_roots: {e}")))?
                };
                let identities = n
                    .trusted_identities
                    .iter()
                    .map(|i| Identity::parse(i))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| err(&nw, e))?;
                stores.push((
                    NotaryTrust {
                        name: format!("{}/{}", t.name, n.name),
                        roots,
                        identities,
                        level,
                        max_chain,
                        tsa_roots,
                    },
                    n.scopes.clone(),
                ));
            }
            let certs = t
                .certificates
                .iter()
                .map(|c| compile_certificates(&t.name, c))
                .collect::<Result<Vec<_>, _>>()?;
            if keys.is_empty() && stores.is_empty() && certs.is_empty() {
                return Err(err(
                    &what,
                    "declares no cosign key, no certificates and no notary store",
                ));
            }
            trust.push(Trust {
                repos: globs(&what, &t.repositories)?,
                keys,
                certs,
                notary: stores,
            });
        }
        let trust_fp = fingerprint(&spec.trust);
        let mut rules = Vec::new();
        let mut names = std::collections::HashSet::new();
        for r in &spec.rules {
            let what = format!("policy rule {:?}", r.name);
            if !names.insert(r.name.clone()) {
                return Err(err(&what, "is declared twice"));
            }
            let (vuln, fp) = match (r.kind.as_str(), &r.vulnerability) {
                ("signature", None) => {
                    let def = (
                        &r.name,
                        &r.repositories,
                        &r.kind,
                        r.pending,
                        r.push_bypass,
                        &trust_fp,
                    );
                    (None, fingerprint(&def))
                }
                ("signature", Some(_)) => {
                    return Err(err(
                        &what,
                        "is a signature rule with vulnerability settings",
                    ));
                }
                ("vulnerability", Some(v)) => {
                    if v.severity == Severity::Unknown {
                        return Err(err(
                            &what,
                            "severity must be negligible, low, medium, high or critical \
                             (findings of unknown severity are set by `unknown`)",
                        ));
                    }
                    let mut allow = Vec::new();
                    for a in &v.allow {
                        let until = end_of_day(&a.until).ok_or_else(|| {
                            err(
                                &what,
                                format!("allow {:?}: until {:?} is not YYYY-MM-DD", a.id, a.until),
                            )
                        })?;
                        allow.push((a.id.clone(), until));
                    }
                    // The allowlist's dates are part of the definition: a new entry is a
                    // new rule to dry-run.
                    let def = (
                        &r.name,
                        &r.repositories,
                        &r.kind,
                        r.pending,
                        r.push_bypass,
                        v,
                    );
                    (
                        Some(VulnRule {
                            spec: v.clone(),
                            allow,
                        }),
                        fingerprint(&def),
                    )
                }
                ("vulnerability", None) => {
                    return Err(err(&what, "is a vulnerability rule without its settings"));
                }
                (other, _) => {
                    return Err(err(
                        &what,
                        format!("kind {other:?} is not signature or vulnerability"),
                    ));
                }
            };
            rules.push(Rule {
                spec: r.clone(),
                repos: globs(&what, &r.repositories)?,
                vuln,
                fingerprint: fp,
            });
        }
        Ok(Policy {
            trust,
            rules,
            fingerprint: trust_fp,
            spec,
        })
    }

    pub fn spec(&self) -> &PolicySpec {
        &self.spec
    }

    fn trust_for<'p>(&'p self, repo: &'p str) -> impl Iterator<Item = &'p Trust> + 'p {
        self.trust
            .iter()
            .filter(move |t| t.repos.iter().any(|g| g.matches(repo)))
    }

    /// Whether pulls of `repo` are judged by their signatures now or may be soon: trust
    /// covers it, or a signature rule acts on it. The pull-through cache then fetches an
    /// image's signatures before answering for it, so the first pull is judged with them.
    pub(crate) fn wants_signatures(&self, repo: &str) -> bool {
        self.trust_for(repo).next().is_some() || self.acting_rules(repo).any(|r| r.vuln.is_none())
    }

    /// Rules that act on pulls of `repo` (audit and enforce).
    fn acting_rules<'p>(&'p self, repo: &'p str) -> impl Iterator<Item = &'p Rule> + 'p {
        self.rules.iter().filter(move |r| {
            matches!(r.spec.mode, Mode::Audit | Mode::Enforce)
                && r.repos.iter().any(|g| g.matches(repo))
        })
    }

    fn rule(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.spec.name == name)
    }
}

/// The judgement of one manifest in one repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// A valid signature under trust for the repository (on it, or on an index listing it).
    Signed,
    Unsigned,
    /// A signature, attestation or SBOM: always served.
    Exempt,
    /// Not known yet (the computation failed or took too long).
    Pending,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub outcome: Outcome,
    /// Who signed, or why not.
    pub detail: String,
}

/// One signature found for a manifest, and what checking it gave.
#[derive(Debug, Clone, Serialize)]
pub struct SignatureReport {
    /// The manifest that carries the signature.
    pub manifest: String,
    pub kind: &'static str,
    /// The digest it was checked against: the image, or an index that lists it.
    pub covers: String,
    pub valid: bool,
    /// The trusted key or signer that verified it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predicate_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// What a rule makes of a verdict.
#[derive(Debug, Clone, Serialize)]
pub struct RuleReport {
    pub rule: String,
    pub mode: Mode,
    /// `allow` or `refuse`: what the rule would do in enforce mode.
    pub decision: &'static str,
}

/// `berth verify`'s and the API's answer.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub repository: String,
    pub digest: String,
    pub kind: &'static str,
    pub outcome: Outcome,
    pub detail: String,
    pub signatures: Vec<SignatureReport>,
    pub rules: Vec<RuleReport>,
}

/// Who asked for a manifest, and how: what a policy-refusal event tells.
#[derive(Debug, Clone, Copy)]
pub struct PullRequest<'a> {
    /// The tag asked for, when the manifest was asked for by tag.
    pub tag: Option<&'a str>,
    /// `GET` or `HEAD`.
    pub method: &'static str,
    /// Who asked, and from where (as the audit log names them).
    pub actor: &'a str,
    pub source: Option<std::net::IpAddr>,
}

/// What the server does with a pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    Serve,
    /// Served, and recorded as a violation of an audit rule.
    Audited {
        rule: String,
        reason: String,
    },
    /// Served to a pusher an enforcing rule would refuse (`push_bypass`), and recorded.
    Bypassed {
        rule: String,
        reason: String,
    },
    /// An enforcing rule refuses unless the caller ([`Caller::Unknown`]) may push: find
    /// out, then admit again as [`Caller::Pusher`] or [`Caller::Puller`].
    NeedsPushCheck,
}

/// Who asks, as far as the policy layer cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// Authenticated, with push permission on the repository.
    Pusher,
    /// Anyone else (pull-only identities, anonymous callers, open mode).
    Puller,
    /// Authenticated by a token that does not carry push (clients ask for pull only to
    /// read): whether its identity may push is looked up only if a rule would refuse.
    Unknown,
}

/// One dry run's result.
#[derive(Debug, Clone, Serialize)]
pub struct DryRun {
    pub rule: String,
    pub mode: Mode,
    pub checked: u64,
    pub refused: u64,
    /// The first refused manifests (repository, digest, why), at most 100.
    pub examples: Vec<(String, String, String)>,
}

/// The digest a tag of the referrers convention names: `sha256-<hex>` followed by
/// nothing (the referrers tag schema's index) or by `.sig`, `.att`, `.sbom`, ... The name
/// alone decides nothing: callers also look at the content.
pub fn attached_subject(tag: &str) -> Option<String> {
    let rest = tag.strip_prefix("sha256-")?;
    let (hex, suffix) = match rest.split_once('.') {
        Some((h, s)) => (h, Some(s)),
        None => (rest, None),
    };
    let hex_ok = hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let suffix_ok =
        suffix.is_none_or(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase()));
    (hex_ok && suffix_ok).then(|| format!("sha256:{hex}"))
}

/// What vulnerability rules judge an image by.
#[derive(Debug, Clone)]
enum VulnFacts {
    /// Not an image (an index, a signature, an SBOM): its images are judged when pulled.
    Exempt,
    /// Not cataloged yet, or matching failed or took too long.
    Pending(String),
    Findings(Arc<Vec<ImageFinding>>),
}

/// What has been computed of one manifest while its rules are judged.
#[derive(Default)]
struct Judged {
    signature: Option<Verdict>,
    vulns: Option<VulnFacts>,
}

/// One rule's decision on one manifest.
enum Decision {
    Exempt,
    Allow,
    Refuse(String),
}

/// The setting holding the trust and rules managed through the API.
const MANAGED: &str = "signature_policy";

async fn read_managed(meta: &berth_meta::MetaStore) -> Result<PolicySpec> {
    match meta.setting(MANAGED).await? {
        None => Ok(PolicySpec::default()),
        Some(json) => serde_json::from_str(&json)
            .map_err(|e| RegistryError::Internal(format!("stored policy is unreadable: {e}"))),
    }
}

/// Most parent indexes whose signatures are looked at for a child manifest.
const MAX_PARENTS: u64 = 16;
/// Most signature manifests read for one subject.
const MAX_SIGNATURES: usize = 64;
/// Entries of the in-memory verdict cache.
const CACHE_ENTRIES: usize = 100_000;
/// How long a verdict may take before the pull gets the `pending` answer.
const COMPUTE_BUDGET: Duration = Duration::from_secs(5);

/// The policy in force and the verdict cache of this process.
#[derive(Default)]
pub(crate) struct PolicyState {
    policy: RwLock<Arc<Policy>>,
    /// The configuration's trust and rules (`[[trust]]`, `[[policy]]`).
    config: RwLock<PolicySpec>,
    /// Those managed through the API (a setting of the metadata store), in force after
    /// the configuration's.
    managed: RwLock<PolicySpec>,
    /// Wakes the replica's poller at once when a notification says the policy changed.
    wake: tokio::sync::Notify,
    cache: RwLock<HashMap<String, Verdict>>,
    /// What vulnerability rules judge, per manifest digest (findings do not depend on
    /// the repository); cleared with every full invalidation (an import bumps the
    /// policy counter, so every replica clears it within a second).
    vuln_cache: RwLock<HashMap<String, VulnFacts>>,
    /// Grows with every invalidation: a verdict computed across one is not cached.
    generation: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) audited: AtomicU64,
    pub(crate) bypassed: AtomicU64,
    pub(crate) pending: AtomicU64,
    pub(crate) computed: AtomicU64,
    /// Signatures that did not count, by `Failure::CODES` position.
    pub(crate) failures: [AtomicU64; Failure::CODES.len()],
}

fn cache_key(repo: &str, digest: &str) -> String {
    format!("{repo}@{digest}")
}

impl PolicyState {
    pub(crate) fn new(policy: Policy) -> PolicyState {
        PolicyState {
            policy: RwLock::new(Arc::new(policy)),
            ..PolicyState::default()
        }
    }

    /// Wakes the poller: the managed policy may have changed on another replica.
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    fn config_spec(&self) -> PolicySpec {
        match self.config.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn managed_spec(&self) -> PolicySpec {
        match self.managed.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The configuration's and `managed`'s trust and rules as one policy.
    fn combine(&self, managed: &PolicySpec) -> Result<Policy, PolicyError> {
        let mut spec = self.config_spec();
        spec.trust.extend(managed.trust.iter().cloned());
        spec.rules.extend(managed.rules.iter().cloned());
        Policy::new(spec)
    }

    fn install(&self, policy: Policy, managed: Option<PolicySpec>) {
        if let Some(m) = managed {
            match self.managed.write() {
                Ok(mut w) => *w = m,
                Err(p) => *p.into_inner() = m,
            }
        }
        match self.policy.write() {
            Ok(mut p) => *p = Arc::new(policy),
            Err(p) => *p.into_inner() = Arc::new(policy),
        }
        self.invalidate(None);
    }

    /// Re-reads the managed policy and installs it if it changed.
    async fn reload(&self, meta: &berth_meta::MetaStore) -> Result<()> {
        let managed = read_managed(meta).await?;
        if managed == self.managed_spec() {
            return Ok(());
        }
        let policy = self
            .combine(&managed)
            .map_err(|e| RegistryError::Internal(format!("stored policy does not compile: {e}")))?;
        self.install(policy, Some(managed));
        Ok(())
    }

    fn current(&self) -> Arc<Policy> {
        match self.policy.read() {
            Ok(p) => Arc::clone(&p),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }

    /// Forgets the verdicts of `repo` (all, for `None`).
    pub(crate) fn invalidate(&self, repo: Option<&str>) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let mut c = match self.cache.write() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        match repo {
            Some(r) => {
                let prefix = format!("{r}@");
                c.retain(|k, _| !k.starts_with(&prefix));
            }
            None => {
                c.clear();
                drop(c);
                match self.vuln_cache.write() {
                    Ok(mut v) => v.clear(),
                    Err(p) => p.into_inner().clear(),
                }
            }
        }
    }

    fn cached_vuln(&self, digest: &str) -> Option<VulnFacts> {
        self.vuln_cache.read().ok()?.get(digest).cloned()
    }

    fn remember_vuln(&self, digest: String, f: VulnFacts, generation: u64) {
        let Ok(mut c) = self.vuln_cache.write() else {
            return;
        };
        if self.generation.load(Ordering::SeqCst) != generation {
            return;
        }
        if c.len() >= CACHE_ENTRIES {
            c.clear();
        }
        c.insert(digest, f);
    }

    fn cached(&self, key: &str) -> Option<Verdict> {
        self.cache.read().ok()?.get(key).cloned()
    }

    fn remember(&self, key: String, v: Verdict, generation: u64) {
        let Ok(mut c) = self.cache.write() else {
            return;
        };
        // Checked under the lock: an invalidation takes it too, so none slips between.
        if self.generation.load(Ordering::SeqCst) != generation {
            return;
        }
        if c.len() >= CACHE_ENTRIES {
            c.clear();
        }
        c.insert(key, v);
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Registry {
    /// Sets the configuration's policy (`[[trust]]`, `[[policy]]`); the managed one stays
    /// in force after it.
    pub fn set_policy(&self, policy: Policy) {
        match self.policy.config.write() {
            Ok(mut c) => *c = policy.spec().clone(),
            Err(p) => *p.into_inner() = policy.spec().clone(),
        }
        let managed = self.policy.managed_spec();
        let combined = if managed == PolicySpec::default() {
            Ok(policy)
        } else {
            self.policy.combine(&managed)
        };
        match combined {
            Ok(p) => self.policy.install(p, None),
            Err(e) => {
                tracing::error!(error = %e, "the managed policy no longer combines with the configuration's")
            }
        }
    }

    /// Re-reads the policy managed through the API (another replica may have changed it).
    pub async fn reload_policy(&self) -> Result<()> {
        self.policy.reload(&self.meta).await
    }

    /// The trust and rules managed through the API.
    pub fn managed_policy(&self) -> PolicySpec {
        self.policy.managed_spec()
    }

    /// The configuration's trust and rules.
    pub fn config_policy(&self) -> PolicySpec {
        self.policy.config_spec()
    }

    /// Replaces the managed trust and rules. Checked first (a bad key or glob changes
    /// nothing); a rule that enforces needs a dry run of its exact definition (trust
    /// included) within the last day if a repository it covers holds images. Every replica
    /// installs it within 2 s. The caller has checked that `actor` is an admin.
    pub async fn set_managed_policy(
        &self,
        spec: PolicySpec,
        actor: &berth_meta::Actor,
    ) -> Result<()> {
        let combined = self
            .policy
            .combine(&spec)
            .map_err(|e| RegistryError::Invalid(e.to_string()))?;
        let before = self.policy.current();
        let day_ago = berth_meta::now_micros() - 24 * 3600 * 1_000_000;
        for r in combined.rules.iter().filter(|r| {
            r.spec.mode == Mode::Enforce && spec.rules.iter().any(|m| m.name == r.spec.name)
        }) {
            let already = before
                .rules
                .iter()
                .any(|b| b.fingerprint == r.fingerprint && b.spec.mode == Mode::Enforce);
            if already {
                continue;
            }
            let recent = self
                .meta
                .last_dry_run(&r.fingerprint)
                .await?
                .is_some_and(|d| d.at >= day_ago);
            if !recent && let Some(repo) = self.first_covered_repo(r).await? {
                return Err(RegistryError::Denied(format!(
                    "policy rule {:?} cannot enforce yet: repository {repo} holds images and \
                     the rule, as defined now, has no dry run in the last 24 hours (run \
                     `berth policy check --rule {}` or POST /api/v1/policy/check?rule={})",
                    r.spec.name, r.spec.name, r.spec.name
                )));
            }
        }
        let json =
            serde_json::to_string(&spec).map_err(|e| RegistryError::Internal(e.to_string()))?;
        self.meta
            .set_setting(MANAGED, &json, actor, "policy.set")
            .await?;
        self.meta.bump_policy().await?;
        self.policy.install(combined, Some(spec));
        Ok(())
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.policy.current()
    }

    /// Forgets verdicts another replica's change (or a policy change) made stale.
    pub(crate) fn invalidate_verdicts(&self, repo: Option<&str>) {
        self.policy.invalidate(repo);
    }

    /// Refuses to start with a rule in enforce mode that was never dry-run in its exact
    /// definition while any repository it covers holds manifests.
    pub async fn check_enforce_ready(&self) -> Result<()> {
        let policy = self.policy();
        for r in policy.rules.iter().filter(|r| r.spec.mode == Mode::Enforce) {
            if self.meta.last_dry_run(&r.fingerprint).await?.is_some() {
                continue;
            }
            if let Some(repo) = self.first_covered_repo(r).await? {
                return Err(RegistryError::Denied(format!(
                    "policy rule {:?} is in enforce mode but was never dry-run as it is now, and \
                     repository {repo} holds images: run `berth policy check --rule {}` first",
                    r.spec.name, r.spec.name
                )));
            }
        }
        Ok(())
    }

    async fn first_covered_repo(&self, r: &Rule) -> Result<Option<String>> {
        let mut last: Option<String> = None;
        loop {
            let page = self.meta.catalog(last.as_deref(), 1000).await?;
            for name in &page {
                if r.repos.iter().any(|g| g.matches(name))
                    && !self.meta.manifest_page(name, "", 1).await?.is_empty()
                {
                    return Ok(Some(name.clone()));
                }
            }
            if page.len() < 1000 {
                return Ok(None);
            }
            last = page.last().cloned();
        }
    }

    /// Decides a pull of `m` from `repo`: served, served and audited, or refused
    /// (`Denied`, naming the rule and the digest).
    pub async fn admit(
        &self,
        repo: &RepoName,
        m: &Manifest,
        caller: Caller,
        request: &PullRequest<'_>,
    ) -> Result<Admission> {
        let policy = self.policy.current();
        let mut rules = policy.acting_rules(repo.as_str()).peekable();
        if rules.peek().is_none() {
            return Ok(Admission::Serve);
        }
        let mut judged = Judged::default();
        let mut audited = None;
        let mut bypassed = None;
        for rule in rules {
            let Decision::Refuse(reason) = self
                .decide(&policy, rule, repo, &m.digest, &m.content, &mut judged)
                .await
            else {
                continue;
            };
            if rule.spec.mode == Mode::Enforce && rule.spec.push_bypass && caller == Caller::Unknown
            {
                return Ok(Admission::NeedsPushCheck);
            }
            if rule.spec.mode == Mode::Enforce && rule.spec.push_bypass && caller == Caller::Pusher
            {
                bypassed.get_or_insert((rule.spec.name.clone(), reason));
                continue;
            }
            if rule.spec.mode == Mode::Enforce {
                stats::bump(&self.policy.refused, 1);
                if rule.vuln.is_some() {
                    stats::bump(&self.vulns.refused, 1);
                }
                self.record_refusal(&RefusedPull {
                    repository: repo.as_str(),
                    digest: m.digest.as_str(),
                    media_type: &m.media_type,
                    size: m.content.len() as u64,
                    tag: request.tag,
                    rule: &rule.spec.name,
                    reason: &reason,
                    method: request.method,
                    actor: request.actor,
                    source: request.source,
                });
                return Err(RegistryError::Denied(format!(
                    "policy rule {:?} refuses {}@{}: {reason}",
                    rule.spec.name, repo, m.digest
                )));
            }
            audited.get_or_insert((rule.spec.name.clone(), reason));
        }
        Ok(match (bypassed, audited) {
            (Some((rule, reason)), _) => {
                stats::bump(&self.policy.bypassed, 1);
                Admission::Bypassed { rule, reason }
            }
            (None, Some((rule, reason))) => {
                stats::bump(&self.policy.audited, 1);
                Admission::Audited { rule, reason }
            }
            (None, None) => Admission::Serve,
        })
    }

    /// The signature verdict of a manifest of `repo` as pulls are judged: what the
    /// admission webhook's `signature` rule reads.
    pub(crate) async fn signature_verdict(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Verdict> {
        let m = self
            .get_manifest(repo, &berth_oci::Reference::Digest(digest.clone()))
            .await?;
        let policy = self.policy.current();
        Ok(self.verdict(&policy, repo, digest, &m.content).await)
    }

    /// What the vulnerability rules in force on pulls of `repo` (audit or enforce) say of
    /// a manifest, whatever their pull mode: the refusal reason of the first that would
    /// refuse it, naming the rule. What the admission webhook's `vulnerability` rule reads,
    /// so a pod is judged by the same findings and thresholds as a pull.
    pub(crate) async fn vulnerability_refusal(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<String>> {
        let m = self
            .get_manifest(repo, &berth_oci::Reference::Digest(digest.clone()))
            .await?;
        let policy = self.policy.current();
        let mut judged = Judged::default();
        for rule in policy
            .acting_rules(repo.as_str())
            .filter(|r| r.vuln.is_some())
        {
            if let Decision::Refuse(reason) = self
                .decide(&policy, rule, repo, digest, &m.content, &mut judged)
                .await
            {
                return Ok(Some(format!("rule {:?}: {reason}", rule.spec.name)));
            }
        }
        Ok(None)
    }

    /// What `rule` does with a manifest; the signature verdict and the vulnerability
    /// facts are computed once per manifest, however many rules ask.
    async fn decide(
        &self,
        policy: &Policy,
        rule: &Rule,
        repo: &RepoName,
        digest: &Digest,
        content: &[u8],
        judged: &mut Judged,
    ) -> Decision {
        match &rule.vuln {
            None => {
                if judged.signature.is_none() {
                    judged.signature = Some(self.verdict(policy, repo, digest, content).await);
                }
                let Some(v) = &judged.signature else {
                    return Decision::Allow;
                };
                match v.outcome {
                    Outcome::Exempt => Decision::Exempt,
                    Outcome::Signed => Decision::Allow,
                    Outcome::Unsigned => Decision::Refuse(v.detail.clone()),
                    Outcome::Pending if rule.spec.pending == Pending::Refuse => {
                        Decision::Refuse(format!("its verdict is pending ({})", v.detail))
                    }
                    Outcome::Pending => Decision::Allow,
                }
            }
            Some(vr) => {
                if judged.vulns.is_none() {
                    judged.vulns = Some(self.vuln_facts(digest, content).await);
                }
                match &judged.vulns {
                    None | Some(VulnFacts::Exempt) => Decision::Exempt,
                    Some(VulnFacts::Pending(why)) => match rule.spec.pending {
                        Pending::Refuse => Decision::Refuse(format!(
                            "its vulnerability findings are pending ({why})"
                        )),
                        Pending::Allow => Decision::Allow,
                    },
                    Some(VulnFacts::Findings(f)) => match vr.judge(f, now_secs()) {
                        Some((worst, n)) => Decision::Refuse(vr.reason(worst, n)),
                        None => Decision::Allow,
                    },
                }
            }
        }
    }

    /// An image's findings for vulnerability rules: from memory, else read (matching
    /// its packages first if an import made them stale), within the compute budget.
    async fn vuln_facts(&self, digest: &Digest, content: &[u8]) -> VulnFacts {
        if let Some(f) = self.policy.cached_vuln(digest.as_str()) {
            return f;
        }
        let generation = self.policy.generation.load(Ordering::SeqCst);
        if classify(content).kind != Kind::Image {
            self.policy
                .remember_vuln(digest.to_string(), VulnFacts::Exempt, generation);
            return VulnFacts::Exempt;
        }
        match tokio::time::timeout(COMPUTE_BUDGET, self.image_findings(digest.as_str())).await {
            Ok(Ok(Some(report))) => {
                let f = VulnFacts::Findings(Arc::new(report.findings));
                self.policy
                    .remember_vuln(digest.to_string(), f.clone(), generation);
                f
            }
            // Not cached: the catalog job may finish any moment.
            Ok(Ok(None)) => VulnFacts::Pending("not cataloged yet".into()),
            Ok(Err(e)) => {
                stats::bump(&self.policy.pending, 1);
                tracing::warn!(error = %e, %digest, "vulnerability findings failed; pending");
                VulnFacts::Pending(e.to_string())
            }
            Err(_) => {
                stats::bump(&self.policy.pending, 1);
                VulnFacts::Pending("matching is taking too long".into())
            }
        }
    }

    /// The verdict of a manifest: from memory, else the store, else computed (and stored).
    async fn verdict(
        &self,
        policy: &Policy,
        repo: &RepoName,
        digest: &Digest,
        content: &[u8],
    ) -> Verdict {
        let key = cache_key(repo.as_str(), digest.as_str());
        if let Some(v) = self.policy.cached(&key) {
            return v;
        }
        let generation = self.policy.generation.load(Ordering::SeqCst);
        let work = self.load_or_compute(policy, repo, digest, content);
        match tokio::time::timeout(COMPUTE_BUDGET, work).await {
            Ok(Ok(v)) => {
                self.policy.remember(key, v.clone(), generation);
                v
            }
            Ok(Err(e)) => {
                stats::bump(&self.policy.pending, 1);
                tracing::warn!(error = %e, repository = %repo, %digest, "signature verdict failed; pending");
                Verdict {
                    outcome: Outcome::Pending,
                    detail: e.to_string(),
                }
            }
            Err(_) => {
                stats::bump(&self.policy.pending, 1);
                Verdict {
                    outcome: Outcome::Pending,
                    detail: "verification is taking too long".into(),
                }
            }
        }
    }

    async fn load_or_compute(
        &self,
        policy: &Policy,
        repo: &RepoName,
        digest: &Digest,
        content: &[u8],
    ) -> Result<Verdict> {
        // The epoch is read before any signature: a change committed after this read
        // makes the stored row stale instead of being missed.
        let epoch = self.meta.verify_epoch(repo.as_str()).await?;
        if let Some(s) = self.meta.verdict(repo.as_str(), digest.as_str()).await?
            && s.epoch == s.current_epoch
            && s.epoch == epoch
            && s.policy == policy.fingerprint
            && let Ok(outcome) =
                serde_json::from_value::<Outcome>(serde_json::Value::String(s.outcome.clone()))
        {
            return Ok(Verdict {
                outcome,
                detail: s.detail,
            });
        }
        let report = self.report_for(policy, repo, digest, content).await?;
        stats::bump(&self.policy.computed, 1);
        let v = Verdict {
            outcome: report.outcome,
            detail: report.detail,
        };
        let outcome = serde_json::to_value(v.outcome)
            .ok()
            .and_then(|o| o.as_str().map(str::to_owned))
            .unwrap_or_default();
        self.meta
            .put_verdict(
                repo.as_str(),
                digest.as_str(),
                &policy.fingerprint,
                epoch,
                &outcome,
                &v.detail,
            )
            .await?;
        Ok(v)
    }

    /// Every signature of a manifest and what it proves, with each rule's decision: the
    /// answer of `berth verify` and of the API.
    pub async fn verify_report(&self, repo: &RepoName, digest: &Digest) -> Result<VerifyReport> {
        let m = self
            .get_manifest(repo, &berth_oci::Reference::Digest(digest.clone()))
            .await?;
        let policy = self.policy.current();
        self.report_for(&policy, repo, digest, &m.content).await
    }

    async fn report_for(
        &self,
        policy: &Policy,
        repo: &RepoName,
        digest: &Digest,
        content: &[u8],
    ) -> Result<VerifyReport> {
        let kind = classify(content).kind;
        let mut report = VerifyReport {
            repository: repo.to_string(),
            digest: digest.to_string(),
            kind: kind.as_str(),
            outcome: Outcome::Unsigned,
            detail: String::new(),
            signatures: Vec::new(),
            rules: Vec::new(),
        };
        if kind.is_supply_chain() {
            report.outcome = Outcome::Exempt;
            report.detail = format!("a {} is always served", kind.as_str());
        } else {
            let trust: Vec<&Trust> = policy.trust_for(repo.as_str()).collect();
            let skip = trust
                .iter()
                .flat_map(|t| t.stores_for(repo.as_str()))
                .find(|n| n.level == Level::Skip);
            let mut subjects = vec![digest.to_string()];
            subjects.extend(
                self.meta
                    .parent_indexes(repo.as_str(), digest.as_str(), MAX_PARENTS)
                    .await?,
            );
            for subject in &subjects {
                self.check_signatures_of(repo, subject, &trust, &mut report.signatures)
                    .await?;
            }
            if let Some(s) = skip {
                report.outcome = Outcome::Signed;
                report.detail = format!("notary store {:?} has verification level skip", s.name);
            } else if trust.is_empty() {
                report.detail = format!("no [[trust]] applies to {repo}");
            } else if let Some(s) = report
                .signatures
                .iter()
                .find(|s| s.valid && s.kind != "attestation")
            {
                report.outcome = Outcome::Signed;
                report.detail = match s.covers == report.digest {
                    true => format!("signed by {}", s.signed_by.as_deref().unwrap_or("?")),
                    false => format!(
                        "index {} signed by {}",
                        s.covers,
                        s.signed_by.as_deref().unwrap_or("?")
                    ),
                };
            } else {
                let why: Vec<String> = report
                    .signatures
                    .iter()
                    .filter(|s| s.kind != "attestation")
                    .filter_map(|s| s.failure.as_ref().map(|f| format!("{}: {f}", s.manifest)))
                    .take(5)
                    .collect();
                report.detail = if why.is_empty() {
                    "no signature".to_owned()
                } else {
                    format!("no valid signature ({})", why.join("; "))
                };
            }
        }
        for r in policy.rules.iter().filter(|r| r.vuln.is_none()) {
            if r.repos.iter().any(|g| g.matches(repo.as_str())) {
                report.rules.push(RuleReport {
                    rule: r.spec.name.clone(),
                    mode: r.spec.mode,
                    decision: match report.outcome {
                        Outcome::Signed | Outcome::Exempt => "allow",
                        _ => "refuse",
                    },
                });
            }
        }
        Ok(report)
    }

    /// Finds the signature manifests of `subject` in `repo` (the cosign `.sig` and `.att`
    /// tags and every referrer), and checks each signature layer against `trust`.
    async fn check_signatures_of(
        &self,
        repo: &RepoName,
        subject: &str,
        trust: &[&Trust],
        out: &mut Vec<SignatureReport>,
    ) -> Result<()> {
        let mut manifests: Vec<String> = Vec::new();
        if let Some((alg, hex)) = subject.split_once(':') {
            for suffix in ["sig", "att"] {
                if let Some(d) = self
                    .meta
                    .resolve_tag(repo.as_str(), &format!("{alg}-{hex}.{suffix}"))
                    .await?
                {
                    manifests.push(d);
                }
            }
        }
        for r in self.meta.referrers(repo.as_str(), subject, None).await? {
            if !manifests.contains(&r.digest) {
                manifests.push(r.digest);
            }
        }
        manifests.truncate(MAX_SIGNATURES);
        let keys: Vec<TrustedKey> = trust.iter().flat_map(|t| t.keys.iter().cloned()).collect();
        let certs: Vec<CertTrust> = trust.iter().flat_map(|t| t.certs.iter().cloned()).collect();
        let stores: Vec<&NotaryTrust> = trust
            .iter()
            .flat_map(|t| t.stores_for(repo.as_str()))
            .collect();
        let now = now_secs();
        for md in manifests {
            let Some(sm) = self.meta.get_manifest(repo.as_str(), &md).await? else {
                continue;
            };
            let c = classify(&sm.content);
            for layer in c.layers {
                let mut rep = SignatureReport {
                    manifest: md.clone(),
                    kind: c.kind.as_str(),
                    covers: subject.to_owned(),
                    valid: false,
                    signed_by: None,
                    predicate_type: None,
                    failure: None,
                    warnings: Vec::new(),
                };
                let bytes = match self.read_small_blob(repo, &layer.digest, layer.size).await {
                    Ok(b) => b,
                    Err(f) => {
                        rep.failure = Some(f);
                        out.push(rep);
                        continue;
                    }
                };
                match c.kind {
                    Kind::CosignSignature => {
                        let sig = layer.signature.as_deref().unwrap_or("");
                        let verdict = match layer.certificate.as_deref() {
                            Some(certificate) => keyless::verify_simple_signing(
                                subject,
                                &bytes,
                                &layer.digest,
                                sig,
                                &keyless::Material {
                                    certificate,
                                    chain: layer.chain.as_deref(),
                                    bundle: layer.bundle.as_deref(),
                                    rfc3161: layer.rfc3161.as_deref(),
                                },
                                &certs,
                                now as i64,
                            ),
                            None => cosign::verify_simple_signing(
                                subject,
                                &bytes,
                                &layer.digest,
                                sig,
                                &keys,
                            ),
                        };
                        match verdict {
                            Ok(v) => {
                                rep.valid = true;
                                rep.signed_by = Some(v.key);
                            }
                            Err(f) => rep.failure = Some(f),
                        }
                    }
                    Kind::Attestation => {
                        let verdict = if berth_verify::bundle::is_bundle_type(&layer.media_type) {
                            berth_verify::bundle::verify(
                                subject,
                                &bytes,
                                &layer.digest,
                                &keys,
                                &certs,
                                now as i64,
                            )
                        } else if let Some(certificate) = layer.certificate.as_deref() {
                            keyless::verify_dsse(
                                subject,
                                &bytes,
                                &layer.digest,
                                &keyless::Material {
                                    certificate,
                                    chain: layer.chain.as_deref(),
                                    bundle: layer.bundle.as_deref(),
                                    rfc3161: layer.rfc3161.as_deref(),
                                },
                                &certs,
                                now as i64,
                            )
                        } else {
                            cosign::verify_dsse(subject, &bytes, &layer.digest, &keys)
                        };
                        match verdict {
                            Ok(v) => {
                                rep.valid = true;
                                rep.signed_by = Some(v.key);
                                rep.predicate_type = v.predicate_type;
                            }
                            Err(f) => rep.failure = Some(f),
                        }
                    }
                    Kind::NotarySignature => {
                        let mut first_failure = None;
                        for store in stores.iter().filter(|s| s.level != Level::Skip) {
                            match notary::verify(
                                &layer.media_type,
                                &bytes,
                                &layer.digest,
                                subject,
                                store,
                                now,
                            ) {
                                Ok(v) => {
                                    rep.valid = true;
                                    rep.signed_by = Some(format!("{} ({})", v.signer, store.name));
                                    rep.warnings = v.warnings;
                                    break;
                                }
                                Err(f) => {
                                    first_failure.get_or_insert(f);
                                }
                            }
                        }
                        if !rep.valid {
                            rep.failure = Some(first_failure.unwrap_or_else(|| {
                                Failure::UntrustedChain("no notary trust store applies".into())
                            }));
                        }
                    }
                    _ => continue,
                }
                if let Some(f) = &rep.failure {
                    stats::bump(&self.policy.failures[f.index()], 1);
                }
                out.push(rep);
            }
        }
        Ok(())
    }

    /// A signature layer's bytes, at most `berth_verify::MAX_ENVELOPE`.
    async fn read_small_blob(
        &self,
        repo: &RepoName,
        digest: &str,
        size: u64,
    ) -> Result<Vec<u8>, Failure> {
        if size > berth_verify::MAX_ENVELOPE as u64 {
            return Err(Failure::Invalid(format!(
                "signature layer of {size} bytes is too large"
            )));
        }
        let d: Digest = digest
            .parse()
            .map_err(|_| Failure::Invalid(format!("layer digest {digest:?}")))?;
        let read = self
            .read_blob(repo, &d, None, true)
            .await
            .map_err(|e| Failure::Invalid(format!("layer {digest} unreadable: {e}")))?;
        if read.size > berth_verify::MAX_ENVELOPE as u64 {
            return Err(Failure::Invalid("signature layer is too large".into()));
        }
        let mut out = Vec::with_capacity(read.size as usize);
        if let Some(mut r) = read.reader {
            while let Some(chunk) = r.body.next().await {
                let chunk = chunk.map_err(|e| Failure::Invalid(format!("layer {digest}: {e}")))?;
                if out.len() + chunk.len() > berth_verify::MAX_ENVELOPE {
                    return Err(Failure::Invalid("signature layer is too large".into()));
                }
                out.extend_from_slice(&chunk);
            }
        }
        Ok(out)
    }

    /// Judges every manifest of the repositories `rule` covers as enforcing would, and
    /// records the run (so the rule may then be switched to enforce). All rules without
    /// a name.
    pub async fn policy_check(&self, rule: Option<&str>) -> Result<Vec<DryRun>> {
        let policy = self.policy.current();
        let rules: Vec<&Rule> =
            match rule {
                Some(name) => vec![policy.rule(name).ok_or_else(|| {
                    RegistryError::Denied(format!("no policy rule named {name:?}"))
                })?],
                None => policy.rules.iter().collect(),
            };
        let mut out = Vec::new();
        for r in rules {
            let mut run = DryRun {
                rule: r.spec.name.clone(),
                mode: r.spec.mode,
                checked: 0,
                refused: 0,
                examples: Vec::new(),
            };
            let mut last: Option<String> = None;
            loop {
                let page = self.meta.catalog(last.as_deref(), 1000).await?;
                for name in &page {
                    if !r.repos.iter().any(|g| g.matches(name)) {
                        continue;
                    }
                    let Ok(repo) = name.parse::<RepoName>() else {
                        continue;
                    };
                    let mut after = String::new();
                    loop {
                        let digests = self.meta.manifest_page(name, &after, 500).await?;
                        for d in &digests {
                            let Ok(digest) = d.parse::<Digest>() else {
                                continue;
                            };
                            let Some(m) = self.meta.get_manifest(name, d).await? else {
                                continue;
                            };
                            let mut judged = Judged::default();
                            let decision = self
                                .decide(&policy, r, &repo, &digest, &m.content, &mut judged)
                                .await;
                            match decision {
                                Decision::Exempt => continue,
                                Decision::Allow => run.checked += 1,
                                Decision::Refuse(why) => {
                                    run.checked += 1;
                                    run.refused += 1;
                                    if run.examples.len() < 100 {
                                        run.examples.push((name.clone(), d.clone(), why));
                                    }
                                }
                            }
                        }
                        match digests.last() {
                            Some(l) if digests.len() == 500 => after = l.clone(),
                            _ => break,
                        }
                    }
                }
                if page.len() < 1000 {
                    break;
                }
                last = page.last().cloned();
            }
            let result = serde_json::to_string(&run).unwrap_or_default();
            self.meta
                .record_dry_run(&r.spec.name, &r.fingerprint, run.refused, &result)
                .await?;
            out.push(run);
        }
        Ok(out)
    }

    /// For each vulnerability rule, every cataloged image manifest of the repositories it
    /// covers judged under the advisories `now` and `after`: how many were judged, and
    /// those refused after but not now (at most 1,000).
    pub(crate) async fn judge_import(
        &self,
        now: &berth_vuln::Index,
        after: &berth_vuln::Index,
    ) -> Result<(u64, Vec<crate::vulns::NewlyRefused>)> {
        let policy = self.policy.current();
        let rules: Vec<&Rule> = policy
            .rules
            .iter()
            .filter(|r| r.vuln.is_some() && r.spec.mode != Mode::Off)
            .collect();
        let mut checked = 0;
        let mut out = Vec::new();
        let when = now_secs();
        let mut last: Option<String> = None;
        loop {
            let page = self.meta.catalog(last.as_deref(), 1000).await?;
            for name in &page {
                let covering: Vec<&&Rule> = rules
                    .iter()
                    .filter(|r| r.repos.iter().any(|g| g.matches(name)))
                    .collect();
                if covering.is_empty() {
                    continue;
                }
                let mut after_digest = String::new();
                loop {
                    let digests = self.meta.manifest_page(name, &after_digest, 500).await?;
                    for d in &digests {
                        let Some(m) = self.meta.get_manifest(name, d).await? else {
                            continue;
                        };
                        if classify(&m.content).kind != Kind::Image {
                            continue;
                        }
                        let Some(catalog) = self.meta.image_catalog(d).await? else {
                            continue;
                        };
                        let before = crate::vulns::catalog_findings(now, &catalog);
                        let later = crate::vulns::catalog_findings(after, &catalog);
                        for r in &covering {
                            let Some(vr) = &r.vuln else { continue };
                            checked += 1;
                            if vr.judge(&before, when).is_some() {
                                continue;
                            }
                            if let Some((worst, n)) = vr.judge(&later, when)
                                && out.len() < 1000
                            {
                                out.push(crate::vulns::NewlyRefused {
                                    rule: r.spec.name.clone(),
                                    mode: r.spec.mode,
                                    repository: name.clone(),
                                    digest: d.clone(),
                                    why: vr.reason(worst, n),
                                });
                            }
                        }
                    }
                    match digests.last() {
                        Some(l) if digests.len() == 500 => after_digest = l.clone(),
                        _ => break,
                    }
                }
            }
            if page.len() < 1000 {
                break;
            }
            last = page.last().cloned();
        }
        Ok((checked, out))
    }

    /// Keeps this replica's verdicts in step when a notification was missed: polls the
    /// metadata store's counter once a second and forgets everything when it moved.
    pub fn poll_verdict_counter(&self) {
        let state = Arc::downgrade(&self.policy);
        let meta = self.meta.clone();
        tokio::spawn(async move {
            let mut last = meta.verify_counter().await.ok();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                // Ends with the registry.
                let Some(strong) = state.upgrade() else {
                    return;
                };
                tokio::select! {
                    _ = tick.tick() => {}
                    () = strong.wake.notified() => {}
                }
                drop(strong);
                let Some(state) = state.upgrade() else { return };
                match meta.verify_counter().await {
                    Ok(v) if Some(v) != last => {
                        last = Some(v);
                        if let Err(e) = state.reload(&meta).await {
                            tracing::warn!(error = %e, "reloading the managed policy failed");
                        }
                        state.invalidate(None);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "verdict counter poll failed"),
                }
            }
        });
    }
}
