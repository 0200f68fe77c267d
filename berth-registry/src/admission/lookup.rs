//! The facts admission rules judge, looked up in Berth's own data: where an image lives
//! in Berth, the digest its tag names there, its stored signature verdict. A tag Berth
//! does not hold is asked of the configured upstream of its registry (never of a host a
//! pod spec names that is not one), within a short timeout, and never for a dry run.

use std::hash::{Hash as _, Hasher as _};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use berth_meta::AuditRecord;

use berth_oci::{DockerRef, Reference, RepoName};
use futures_util::future::join_all;
use serde_json::{Value, json};

use super::{
    AdmissionRuleError, AdmissionRuleSpec, AdmissionRules, AdmissionSettings, AdmissionSpec,
    AdmissionStats, BadReview, Decision, Facts, ImageFacts, MAX_IMAGES, Needs, Review, Webhook,
    evaluate, images_to_look_up, parse_review, read, response, write,
};

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
use crate::{Registry, RegistryError, Result};

/// Where Berth holds an image a pod spec names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageLocation {
    /// The repository in Berth.
    pub repo: RepoName,
    /// The reference already names Berth's address (`mirror` leaves it alone).
    pub at_berth: bool,
}

const MANAGED: &str = "admission.rules";

impl Registry {
    /// Sets the configuration's admission rules and settings; the managed rules stay in
    /// force after them.
    pub fn set_admission(
        &self,
        rules: Vec<AdmissionRuleSpec>,
        settings: AdmissionSettings,
    ) -> std::result::Result<(), AdmissionRuleError> {
        let managed = read(&self.admission.managed);
        let combined = AdmissionRules::new(rules.iter().cloned().chain(managed.rules).collect())?;
        write(&self.admission.config, rules);
        write(&self.admission.settings, Arc::new(settings));
        write(&self.admission.rules, Arc::new(combined));
        Ok(())
    }

    /// The admission rules managed through the API.
    pub fn managed_admission(&self) -> AdmissionSpec {
        read(&self.admission.managed)
    }

    /// The configuration's admission rules.
    pub fn config_admission(&self) -> Vec<AdmissionRuleSpec> {
        read(&self.admission.config)
    }

    fn install_admission(&self, managed: AdmissionSpec) -> Result<()> {
        let config = read(&self.admission.config);
        let rules = AdmissionRules::new(config.into_iter().chain(managed.rules.clone()).collect())
            .map_err(|e| RegistryError::Invalid(e.to_string()))?;
        write(&self.admission.managed, managed);
        write(&self.admission.rules, Arc::new(rules));
        Ok(())
    }

    /// Re-reads the managed rules (another replica may have changed them).
    pub async fn reload_admission(&self) -> Result<()> {
        let managed = match self.meta.setting(MANAGED).await? {
            None => AdmissionSpec::default(),
            Some(json) => serde_json::from_str(&json).map_err(|e| {
                RegistryError::Internal(format!("stored admission rules are unreadable: {e}"))
            })?,
        };
        if managed == read(&self.admission.managed) {
            return Ok(());
        }
        self.install_admission(managed)
    }

    /// Replaces the managed rules: checked whole first (a bad glob changes nothing),
    /// audited (`admission.set`). The caller has checked that `actor` is an admin.
    pub async fn set_managed_admission(
        &self,
        spec: AdmissionSpec,
        actor: &berth_meta::Actor,
    ) -> Result<()> {
        let config = read(&self.admission.config);
        AdmissionRules::new(config.into_iter().chain(spec.rules.clone()).collect())
            .map_err(|e| RegistryError::Invalid(e.to_string()))?;
        let json =
            serde_json::to_string(&spec).map_err(|e| RegistryError::Internal(e.to_string()))?;
        self.meta
            .set_setting(MANAGED, &json, actor, "admission.set")
            .await?;
        self.install_admission(spec)
    }

    pub fn admission_stats(&self) -> &AdmissionStats {
        &self.admission.stats
    }

    /// Where Berth holds the image `r` names: a repository of its own (the reference
    /// names Berth's address) or an upstream's cache.
    fn locate(&self, settings: &AdmissionSettings, r: &DockerRef) -> Option<ImageLocation> {
        let ours = settings
            .registry
            .iter()
            .chain(&settings.aliases)
            .any(|h| h.eq_ignore_ascii_case(&r.domain));
        if ours {
            return Some(ImageLocation {
                repo: r.path.clone(),
                at_berth: true,
            });
        }
        let repo = self.cache_repo_for_host(&r.domain, r.path.as_str())?;
        Some(ImageLocation {
            repo,
            at_berth: false,
        })
    }

    async fn image_facts(
        &self,
        settings: &AdmissionSettings,
        image: &str,
        needs: Needs,
    ) -> ImageFacts {
        let mut f = ImageFacts::default();
        let Ok(r) = DockerRef::parse(image) else {
            return f;
        };
        f.location = self.locate(settings, &r);
        let Some(loc) = f.location.clone() else {
            if needs.digest && r.digest.is_none() {
                f.unresolved = Some(format!(
                    "{} is neither Berth nor a configured upstream",
                    r.domain
                ));
            }
            f.digest = r.digest.clone();
            return f;
        };
        if !needs.digest {
            return f;
        }
        f.digest = match (&r.digest, &r.tag) {
            (Some(d), _) => Some(d.clone()),
            (None, tag) => {
                let tag = match tag {
                    Some(t) => t.clone(),
                    None => match "latest".parse() {
                        Ok(t) => t,
                        Err(_) => return f,
                    },
                };
                let reference = Reference::Tag(tag);
                match self.resolve(&loc.repo, &reference).await {
                    Ok(d) => Some(d),
                    Err(RegistryError::ManifestUnknown) if needs.upstream && !loc.at_berth => {
                        let fetch = self.get_manifest_proxied(&loc.repo, &reference);
                        match tokio::time::timeout(settings.upstream_timeout, fetch).await {
                            Ok(Ok(p)) => Some(p.manifest.digest),
                            Ok(Err(e)) => {
                                f.unresolved = Some(format!("the upstream: {e}"));
                                None
                            }
                            Err(_) => {
                                f.unresolved = Some(format!(
                                    "the upstream did not answer within {} ms",
                                    settings.upstream_timeout.as_millis()
                                ));
                                None
                            }
                        }
                    }
                    Err(RegistryError::ManifestUnknown) => {
                        f.unresolved = Some(format!("{}:{} is not in Berth", loc.repo, reference));
                        None
                    }
                    Err(e) => {
                        f.unresolved = Some(e.to_string());
                        None
                    }
                }
            }
        };
        if needs.signature
            && let Some(d) = &f.digest
        {
            f.signature = match self.signature_verdict(&loc.repo, d).await {
                Ok(v) => Some((v.outcome, v.detail)),
                Err(RegistryError::ManifestUnknown) => {
                    f.unresolved = Some(format!("{}@{d} is not in Berth", loc.repo));
                    f.digest = None;
                    None
                }
                Err(e) => Some((crate::policy::Outcome::Pending, e.to_string())),
            };
        }
        if needs.vulnerability
            && let Some(d) = &f.digest
        {
            f.vulnerability = match self.vulnerability_refusal(&loc.repo, d).await {
                Ok(v) => Some(v),
                Err(RegistryError::ManifestUnknown) => {
                    f.unresolved = Some(format!("{}@{d} is not in Berth", loc.repo));
                    f.digest = None;
                    None
                }
                Err(e) => Some(Some(format!("vulnerability findings unavailable: {e}"))),
            };
        }
        f
    }

    /// The audit rows of a decision: one per refusal, change or warning of an enforcing or
    /// auditing rule, less those written within [`super::AUDIT_REPEAT_WINDOW`]. Allowed
    /// and unchanged reviews have none (they are counted on `/metrics`).
    fn admission_audit(
        &self,
        webhook: Webhook,
        review: &Review,
        decision: &Decision,
        facts: &Facts,
    ) -> Vec<AuditRecord> {
        if decision.events.is_empty() {
            return Vec::new();
        }
        let now = Instant::now();
        let at = berth_meta::now_micros();
        let mut out = Vec::new();
        let mut seen = lock(&self.admission.audited);
        for e in &decision.events {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (
                webhook.as_str(),
                &review.user,
                &review.namespace,
                &review.kind,
                &review.name,
                &review.operation,
                review.dry_run,
                e,
            )
                .hash(&mut h);
            let key = h.finish();
            if seen
                .get(&key)
                .is_some_and(|t| now.duration_since(*t) < super::AUDIT_REPEAT_WINDOW)
            {
                self.admission
                    .stats
                    .audit_repeats
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if seen.len() >= super::AUDIT_REPEAT_KEYS {
                seen.retain(|_, t| now.duration_since(*t) < super::AUDIT_REPEAT_WINDOW);
                if seen.len() >= super::AUDIT_REPEAT_KEYS {
                    seen.clear();
                }
            }
            seen.insert(key, now);
            let repository = e
                .image
                .as_ref()
                .and_then(|i| facts.get(i))
                .and_then(|f| f.location.as_ref())
                .map(|l| l.repo.to_string());
            let action = match e.decision {
                "denied" => "admission.deny",
                "patched" => "admission.mutate",
                _ => "admission.warn",
            };
            let detail = json!({
                "webhook": webhook.as_str(),
                "namespace": review.namespace,
                "kind": review.kind,
                "name": review.name,
                "operation": review.operation,
                "dry_run": review.dry_run,
                "container": e.container,
                "image": e.image,
                "rule": e.rule,
                "rule_kind": e.kind.as_str(),
                "mode": e.mode,
                "decision": e.decision,
                "what": e.what,
            });
            out.push(AuditRecord {
                at,
                actor: format!("k8s:{}", review.user),
                source: None,
                action: action.to_owned(),
                tenant: repository
                    .as_deref()
                    .map(berth_auth::policy::tenant_of)
                    .map(str::to_owned),
                repository,
                target: Some(format!(
                    "{}/{}/{}",
                    review.namespace, review.kind, review.name
                )),
                outcome: if e.decision == "denied" {
                    "denied"
                } else {
                    "ok"
                }
                .to_owned(),
                detail: Some(detail.to_string()),
            });
        }
        out
    }

    /// Answers one `AdmissionReview` for `webhook`: the response review and the audit
    /// rows to write, or why the request cannot be answered in kind (a 400).
    pub async fn admission_review(
        &self,
        webhook: Webhook,
        body: &[u8],
    ) -> std::result::Result<(Value, Vec<AuditRecord>), BadReview> {
        let stats = &self.admission.stats;
        let review = match parse_review(body) {
            Ok(r) => r,
            Err(e) => {
                stats.review(webhook, "invalid");
                return Err(e);
            }
        };
        let rules = read(&self.admission.rules);
        let settings = read(&self.admission.settings);
        let acting = rules.acting_for(&review, webhook);
        let mut facts = Facts::new();
        let decision = if acting.is_empty() {
            Decision {
                allowed: true,
                ..Decision::default()
            }
        } else {
            let containers = review.containers();
            let images = images_to_look_up(&containers);
            if images.len() > MAX_IMAGES {
                Decision {
                    allowed: false,
                    message: Some(format!(
                        "berth: the pod spec names {} distinct images, more than the {MAX_IMAGES} Berth judges",
                        images.len()
                    )),
                    ..Decision::default()
                }
            } else if containers.len() > super::MAX_CONTAINERS {
                evaluate(&review, webhook, &acting, &Facts::new(), &settings)
            } else {
                let needs = acting.needs(&review);
                let looked =
                    join_all(images.iter().map(|i| self.image_facts(&settings, i, needs))).await;
                facts = images.into_iter().zip(looked).collect();
                evaluate(&review, webhook, &acting, &facts, &settings)
            }
        };
        stats.rules(&decision.counts);
        let result = if !decision.allowed {
            "denied"
        } else if !decision.patch.is_empty() {
            "patched"
        } else if !decision.warnings.is_empty() {
            "warned"
        } else {
            "allowed"
        };
        stats.review(webhook, result);
        let audit = self.admission_audit(webhook, &review, &decision, &facts);
        Ok((response(&review.uid, &decision), audit))
    }
}
