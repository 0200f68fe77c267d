//! `[[trust]]` and `[[policy]]` from the configuration, and the commands over them:
//! `berth verify` (what signatures an image has and what they prove) and `berth policy
//! check` (the dry run every rule needs before it may enforce). Both run offline against
//! the store, through the same use cases `serve` judges pulls with.

use std::path::PathBuf;

use anyhow::Context;
use berth_oci::{Digest, Reference, RepoName};
use berth_registry::policy::{
    CertificateSpec, CosignKeySpec, NotaryStoreSpec, Outcome, Policy, PolicySpec, TrustSpec,
};
use clap::Subcommand;
use serde::Deserialize;

use crate::config::Config;
use crate::listing;
use crate::open::StoreArgs;
use crate::output;

/// One `[[trust]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustEntry {
    pub name: String,
    /// Repository globs this trust applies to.
    pub repositories: Vec<String>,
    /// `[[trust.cosign]]`: cosign public keys.
    #[serde(default)]
    pub cosign: Vec<CosignKeyEntry>,
    /// `[[trust.notary]]`: Notary Project trust stores with their policy.
    #[serde(default)]
    pub notary: Vec<NotaryEntry>,
    /// `[trust.notation]`: a notation `trustpolicy.json` imported as it is.
    pub notation: Option<NotationImport>,
    /// `[[trust.certificates]]`: CA roots for cosign signatures made with a certificate.
    #[serde(default)]
    pub certificates: Vec<CertificateEntry>,
}

/// `[[trust.certificates]]`: CA roots with the identities and OIDC issuers they are
/// trusted for, as `cosign verify --certificate-identity[-regexp]
/// --certificate-oidc-issuer[-regexp]`, and what may date a signature.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateEntry {
    pub name: String,
    /// PEM CA roots, or
    pub roots: Option<String>,
    /// a file holding them.
    pub roots_file: Option<PathBuf>,
    /// A Sigstore `trusted_root.json` (CA certificates, log keys, timestamp authorities).
    pub trusted_root_file: Option<PathBuf>,
    #[serde(default)]
    pub identities: Vec<String>,
    #[serde(default)]
    pub identity_regexps: Vec<String>,
    #[serde(default)]
    pub issuers: Vec<String>,
    #[serde(default)]
    pub issuer_regexps: Vec<String>,
    /// Longest certificate path, leaf to root inclusive (default 3).
    pub max_chain: Option<usize>,
    /// PEM files of transparency-log public keys (Rekor's).
    #[serde(default)]
    pub log_key_files: Vec<PathBuf>,
    /// PEM roots of trusted RFC 3161 timestamp authorities, or
    pub tsa_roots: Option<String>,
    /// a file holding them.
    pub tsa_roots_file: Option<PathBuf>,
}

/// A notation trust policy file. Its policies keep their own registry scopes (exact
/// `host/repository` names or `*`), read here without the registry host; the trust's
/// `repositories` globs still decide where the import applies at all.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotationImport {
    /// The `trustpolicy.json`.
    pub trust_policy_file: PathBuf,
    /// The registry host its scopes name (`registry.example.com:5000`); needed unless
    /// every scope is `*`.
    pub registry: Option<String>,
    /// PEM files of the trust stores it names, by notation's name (`ca:corp`).
    pub trust_stores: std::collections::BTreeMap<String, PathBuf>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TrustPolicyDoc {
    version: String,
    trust_policies: Vec<TrustPolicyEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TrustPolicyEntry {
    name: String,
    registry_scopes: Vec<String>,
    signature_verification: SignatureVerification,
    #[serde(default)]
    trust_stores: Vec<String>,
    #[serde(default)]
    trusted_identities: Vec<String>,
}

#[derive(Deserialize)]
struct SignatureVerification {
    level: String,
}

/// The policies of a `trustpolicy.json` as Notary stores with scopes.
fn import_notation(what: &str, n: &NotationImport) -> anyhow::Result<Vec<NotaryStoreSpec>> {
    let text = std::fs::read_to_string(&n.trust_policy_file)
        .with_context(|| format!("{what}: reading {}", n.trust_policy_file.display()))?;
    let doc: TrustPolicyDoc = serde_json::from_str(&text).with_context(|| {
        format!(
            "{what}: {} is not a trust policy",
            n.trust_policy_file.display()
        )
    })?;
    if doc.version != "1.0" {
        anyhow::bail!("{what}: trust policy version {:?} is not 1.0", doc.version);
    }
    let mut out = Vec::new();
    for p in doc.trust_policies {
        let mut certificates = String::new();
        for store in &p.trust_stores {
            let file = n.trust_stores.get(store).with_context(|| {
                format!("{what}: policy {:?} names trust store {store:?}, which trust_stores does not map to a file", p.name)
            })?;
            certificates.push_str(
                &std::fs::read_to_string(file)
                    .with_context(|| format!("{what}: reading {}", file.display()))?,
            );
            certificates.push('\n');
        }
        let scopes = p
            .registry_scopes
            .iter()
            .map(|scope| {
                if scope == "*" {
                    return Ok(scope.clone());
                }
                let host = n.registry.as_deref().with_context(|| {
                    format!("{what}: scope {scope:?} names a registry; set `registry`")
                })?;
                scope
                    .strip_prefix(host)
                    .and_then(|r| r.strip_prefix('/'))
                    .map(str::to_owned)
                    .with_context(|| format!("{what}: scope {scope:?} is not on registry {host}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        out.push(NotaryStoreSpec {
            name: p.name,
            certificates,
            level: p.signature_verification.level,
            trusted_identities: p.trusted_identities,
            scopes,
            max_chain: None,
            tsa_roots: String::new(),
        });
    }
    Ok(out)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CosignKeyEntry {
    pub name: String,
    /// The PEM text (`cosign.pub`), or
    pub key: Option<String>,
    /// a file holding it.
    pub key_file: Option<PathBuf>,
    /// `ecdsa-p256`, `ecdsa-p384`, `ed25519` or `rsa`: the key must be of this kind.
    pub algorithm: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotaryEntry {
    pub name: String,
    /// PEM CA certificates, or
    pub trust_store: Option<String>,
    /// a file holding them.
    pub trust_store_file: Option<PathBuf>,
    /// `strict` (default), `permissive`, `audit` or `skip`.
    #[serde(default = "strict")]
    pub level: String,
    /// `*` or `x509.subject: C=.., O=.., CN=..` entries.
    pub trusted_identities: Vec<String>,
    /// Longest certificate path, leaf to root inclusive (default 10).
    pub max_chain: Option<usize>,
    /// PEM roots of trusted RFC 3161 timestamp authorities, or
    pub tsa_roots: Option<String>,
    /// a file holding them.
    pub tsa_roots_file: Option<PathBuf>,
}

fn strict() -> String {
    "strict".into()
}

fn text_or_file(
    what: &str,
    text: &Option<String>,
    file: &Option<PathBuf>,
) -> anyhow::Result<String> {
    match (text, file) {
        (Some(t), None) => Ok(t.clone()),
        (None, Some(f)) => {
            std::fs::read_to_string(f).with_context(|| format!("{what}: reading {}", f.display()))
        }
        _ => anyhow::bail!("{what}: give exactly one of the PEM text and its file"),
    }
}

/// The policy the configuration declares.
pub fn compile(config: &Config) -> anyhow::Result<Policy> {
    let mut spec = PolicySpec {
        trust: Vec::new(),
        rules: config.policy.clone(),
    };
    spec.rules
        .extend(config.vulnerability_policy.iter().map(|v| v.rule()));
    for t in &config.trust {
        let mut ts = TrustSpec {
            name: t.name.clone(),
            repositories: t.repositories.clone(),
            cosign: Vec::new(),
            notary: Vec::new(),
            certificates: Vec::new(),
        };
        for k in &t.cosign {
            ts.cosign.push(CosignKeySpec {
                name: k.name.clone(),
                pem: text_or_file(
                    &format!("[[trust.cosign]] {:?}", k.name),
                    &k.key,
                    &k.key_file,
                )?,
                algorithm: k.algorithm.clone(),
            });
        }
        for n in &t.notary {
            ts.notary.push(NotaryStoreSpec {
                name: n.name.clone(),
                certificates: text_or_file(
                    &format!("[[trust.notary]] {:?}", n.name),
                    &n.trust_store,
                    &n.trust_store_file,
                )?,
                level: n.level.clone(),
                trusted_identities: n.trusted_identities.clone(),
                scopes: Vec::new(),
                max_chain: n.max_chain,
                tsa_roots: match (&n.tsa_roots, &n.tsa_roots_file) {
                    (None, None) => String::new(),
                    _ => text_or_file(
                        &format!("[[trust.notary]] {:?} tsa_roots", n.name),
                        &n.tsa_roots,
                        &n.tsa_roots_file,
                    )?,
                },
            });
        }
        for c in &t.certificates {
            let what = format!("[[trust.certificates]] {:?}", c.name);
            let mut log_keys = Vec::new();
            for f in &c.log_key_files {
                log_keys.push(
                    std::fs::read_to_string(f)
                        .with_context(|| format!("{what}: reading {}", f.display()))?,
                );
            }
            let tsa_roots = match (&c.tsa_roots, &c.tsa_roots_file) {
                (None, None) => String::new(),
                _ => text_or_file(
                    &format!("{what} tsa_roots"),
                    &c.tsa_roots,
                    &c.tsa_roots_file,
                )?,
            };
            ts.certificates.push(CertificateSpec {
                name: c.name.clone(),
                roots: match (&c.roots, &c.roots_file) {
                    (None, None) => String::new(),
                    _ => text_or_file(&what, &c.roots, &c.roots_file)?,
                },
                trusted_root: match &c.trusted_root_file {
                    Some(f) => std::fs::read_to_string(f)
                        .with_context(|| format!("{what}: reading {}", f.display()))?,
                    None => String::new(),
                },
                identities: c.identities.clone(),
                identity_regexps: c.identity_regexps.clone(),
                issuers: c.issuers.clone(),
                issuer_regexps: c.issuer_regexps.clone(),
                max_chain: c
                    .max_chain
                    .unwrap_or(berth_registry::policy::DEFAULT_MAX_CHAIN),
                log_keys,
                tsa_roots,
            });
        }
        if let Some(n) = &t.notation {
            ts.notary.extend(import_notation(
                &format!("[trust.notation] of {:?}", t.name),
                n,
            )?);
        }
        spec.trust.push(ts);
    }
    Policy::new(spec)
        .map_err(|e| anyhow::anyhow!("[[trust]] / [[policy]] / [[vulnerability_policy]]: {e}"))
}

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// `repository@sha256:...` or `repository:tag`.
    pub reference: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Judge every stored manifest of the repositories a rule covers as enforcing would;
    /// record the run (a rule may be switched to enforce only after one).
    Check {
        /// Only this rule (default: all).
        #[arg(long)]
        rule: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

pub(crate) fn parse_reference(r: &str) -> anyhow::Result<(RepoName, Reference)> {
    let (repo, reference) = if let Some((repo, d)) = r.split_once('@') {
        (repo, Reference::Digest(d.parse().context("digest")?))
    } else {
        let (repo, tag) = r
            .rsplit_once(':')
            .filter(|(_, t)| !t.contains('/'))
            .with_context(|| format!("{r:?} is neither repository@digest nor repository:tag"))?;
        (repo, Reference::Tag(tag.parse().context("tag")?))
    };
    Ok((repo.parse().context("repository")?, reference))
}

/// `berth verify`: true when the manifest is signed (or is itself a signature). For
/// people: the verdict, then the signatures and the rules as tables; with `--json`, the
/// report as one JSON object on one line.
pub async fn verify(store: &StoreArgs, args: VerifyArgs) -> anyhow::Result<bool> {
    let (_, registry) = store.registry().await?;
    let report = verify_report(&registry, &args.reference).await;
    registry.meta().close().await;
    let report = report?;
    if args.json {
        output::print(&format!("{}\n", serde_json::to_string(&report)?));
    } else {
        // The detail names signers and failures taken from signatures: escaped like any
        // table cell.
        output::print(&format!(
            "{}@{} ({})\nverdict: {}: {}\n\n",
            output::clean(&report.repository),
            report.digest,
            report.kind,
            listing::serde_name(&report.outcome),
            output::clean(&report.detail)
        ));
        let signatures: Vec<listing::Signature> = report
            .signatures
            .iter()
            .map(|s| listing::Signature {
                image: &report.digest,
                report: s,
            })
            .collect();
        listing::print(&signatures, false);
        if !report.rules.is_empty() {
            output::print("\n");
            listing::print(&report.rules, false);
        }
    }
    Ok(matches!(report.outcome, Outcome::Signed | Outcome::Exempt))
}

async fn verify_report(
    registry: &berth_registry::Registry,
    reference: &str,
) -> anyhow::Result<berth_registry::policy::VerifyReport> {
    let (repo, r) = parse_reference(reference)?;
    let digest: Digest = registry
        .resolve(&repo, &r)
        .await
        .with_context(|| format!("{reference} not found"))?;
    registry
        .verify_report(&repo, &digest)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// `berth policy check`: one row per rule; for people, then the refused images the runs
/// name (at most 100 per rule).
pub async fn command(store: &StoreArgs, cmd: PolicyCommand) -> anyhow::Result<()> {
    let PolicyCommand::Check { rule, json } = cmd;
    let (_, registry) = store.registry().await?;
    let runs = registry.policy_check(rule.as_deref()).await;
    registry.meta().close().await;
    let runs = runs.map_err(|e| anyhow::anyhow!("{e}"))?;
    listing::print(&runs, json);
    let refused: Vec<listing::Refused> = runs
        .iter()
        .flat_map(|r| {
            r.examples
                .iter()
                .map(|(repo, digest, why)| listing::Refused {
                    rule: r.rule.clone(),
                    image: format!("{repo}@{digest}"),
                    why: why.clone(),
                })
        })
        .collect();
    if !json && !refused.is_empty() {
        output::print("\n");
        listing::print(&refused, false);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `[[trust.certificates]]` as documented: files are read, regexps compile anchored,
    /// and a bad regexp or a missing issuer is refused when the configuration loads.
    #[test]
    fn trust_certificates_from_toml() {
        let pki = berth_testkit::pki::Pki::new();
        pki.ca("root", None);
        pki.key("log");
        pki.ca("tsaroot", None);
        let toml = |extra: &str| {
            format!(
                r#"
[[trust]]
name = "ci"
repositories = ["prod/*"]
[[trust.certificates]]
name = "fulcio"
roots_file = "{root}"
identity_regexps = ['ci@example\.com']
log_key_files = ["{log}"]
tsa_roots_file = "{tsa}"
max_chain = 3
{extra}
"#,
                root = pki.path("root.crt").display(),
                log = pki.path("log.pub").display(),
                tsa = pki.path("tsaroot.crt").display(),
            )
        };
        let good: Config =
            toml::from_str(&toml("issuers = [\"https://issuer.example\"]")).expect("parse");
        let policy = compile(&good).expect("compile");
        let c = &policy.spec().trust[0].certificates[0];
        assert!(c.roots.contains("BEGIN CERTIFICATE") && c.log_keys.len() == 1);
        assert!(c.tsa_roots.contains("BEGIN CERTIFICATE"));
        let no_issuer: Config = toml::from_str(&toml("")).expect("parse");
        let e = compile(&no_issuer).err().expect("refused").to_string();
        assert!(e.contains("issuers"), "{e}");
        let bad: Config =
            toml::from_str(&toml("issuers = [\"x\"]\nissuer_regexps = [\"(unclosed\"]"))
                .expect("parse");
        let e = compile(&bad).err().expect("refused").to_string();
        assert!(e.contains("regular expression"), "{e}");
    }
}
