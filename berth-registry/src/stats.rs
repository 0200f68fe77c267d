//! Counters of the registry's background and upstream work, read by the server's
//! `/metrics`. Plain atomics: this crate knows no metrics library, and these are bumped
//! on paths (a cache miss, a collection) where one relaxed add is all the cost allowed.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::Registry;

#[derive(Debug, Default)]
pub struct Stats {
    pub upstream_manifests: AtomicU64,
    pub upstream_blobs: AtomicU64,
    pub upstream_failures: AtomicU64,
    pub stale_served: AtomicU64,
    /// Signature lookups through the cache (a digest's `.sig`, `.att`, `.sbom` tag or its
    /// referrers), by outcome: something stored, nothing upstream, the upstream failed.
    pub signature_fetched: AtomicU64,
    pub signature_absent: AtomicU64,
    pub signature_failed: AtomicU64,
    pub gc_runs: AtomicU64,
    pub gc_manifests: AtomicU64,
    pub gc_blobs: AtomicU64,
    pub gc_bytes: AtomicU64,
    pub retention_tags: AtomicU64,
    pub evicted: AtomicU64,
    pub audit_pruned: AtomicU64,
    pub quota_refused_blobs: AtomicU64,
    pub quota_refused_chunks: AtomicU64,
    pub quota_refused_manifests: AtomicU64,
    pub quota_orphaned_blobs: AtomicU64,
    pub meta_stale_served: AtomicU64,
    /// Tag resolutions that had to ask the metadata store (not cached, or expired).
    pub tag_cache_misses: AtomicU64,
    /// Cached tags read again in the background before they expired.
    pub tag_cache_refreshes: AtomicU64,
    pub listener_resets: AtomicU64,
    /// Sealed blobs that failed authentication when read (shared with the read streams).
    pub sealed_failures: std::sync::Arc<AtomicU64>,
}

/// One counter as `/metrics` shows it: name (without the `berth_` prefix and `_total`
/// suffix), help text, an optional label, and value. Counters of one name (a family told
/// apart by the label) come one after another.
pub struct Counter {
    pub name: &'static str,
    pub help: &'static str,
    pub label: Option<(&'static str, &'static str)>,
    pub value: u64,
}

pub(crate) fn bump(c: &AtomicU64, by: u64) {
    c.fetch_add(by, Ordering::Relaxed);
}

impl Registry {
    pub(crate) fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Every counter, replication's included when it is configured.
    pub fn counters(&self) -> Vec<Counter> {
        let s = &self.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = vec![
            Counter {
                name: "upstream_manifests_fetched",
                help: "Manifests fetched from upstreams into the pull-through cache",
                label: None,
                value: get(&s.upstream_manifests),
            },
            Counter {
                name: "upstream_blobs_fetched",
                help: "Blobs fetched from upstreams into the pull-through cache",
                label: None,
                value: get(&s.upstream_blobs),
            },
            Counter {
                name: "upstream_failures",
                help: "Upstream requests that failed (unreachable, timeout, 5xx, 429)",
                label: None,
                value: get(&s.upstream_failures),
            },
            Counter {
                name: "upstream_stale_served",
                help: "Cached tags served with a Warning because their upstream was unavailable",
                label: None,
                value: get(&s.stale_served),
            },
            Counter {
                name: "upstream_signature_fetches",
                help: "Lookups of an upstream image's signatures, attestations, SBOMs and \
                    referrers by the pull-through cache and `berth mirror`, by outcome",
                label: Some(("outcome", "fetched")),
                value: get(&s.signature_fetched),
            },
            Counter {
                name: "upstream_signature_fetches",
                help: "Lookups of an upstream image's signatures, attestations, SBOMs and \
                    referrers by the pull-through cache and `berth mirror`, by outcome",
                label: Some(("outcome", "absent")),
                value: get(&s.signature_absent),
            },
            Counter {
                name: "upstream_signature_fetches",
                help: "Lookups of an upstream image's signatures, attestations, SBOMs and \
                    referrers by the pull-through cache and `berth mirror`, by outcome",
                label: Some(("outcome", "failed")),
                value: get(&s.signature_failed),
            },
            Counter {
                name: "metadata_stale_served",
                help: "Tags, manifests and blob links answered from this replica's read cache \
                    past their TTL because the metadata store was unavailable",
                label: None,
                value: get(&s.meta_stale_served),
            },
            Counter {
                name: "tag_cache_misses",
                help: "Tag resolutions that asked the metadata store because the tag was not \
                    in this replica's read cache or had expired there",
                label: None,
                value: get(&s.tag_cache_misses),
            },
            Counter {
                name: "tag_cache_refreshes",
                help: "Cached tags read again in the background past half their TTL, so \
                    their readers never wait for the metadata store",
                label: None,
                value: get(&s.tag_cache_refreshes),
            },
            Counter {
                name: "cache_invalidation_resets",
                help: "Times the read caches were expired wholesale because the LISTEN \
                    connection for other replicas' changes was lost or re-established",
                label: None,
                value: get(&s.listener_resets),
            },
            Counter {
                name: "sealed_blob_failures",
                help: "Reads of encrypted blobs refused because their bytes did not authenticate (tampered, truncated, extended, swapped or under a wrong key)",
                label: None,
                value: get(&s.sealed_failures),
            },
            Counter {
                name: "gc_runs",
                help: "Garbage collections finished",
                label: None,
                value: get(&s.gc_runs),
            },
            Counter {
                name: "gc_manifests_deleted",
                help: "Manifests deleted by garbage collection",
                label: None,
                value: get(&s.gc_manifests),
            },
            Counter {
                name: "gc_blobs_deleted",
                help: "Blobs whose bytes garbage collection deleted",
                label: None,
                value: get(&s.gc_blobs),
            },
            Counter {
                name: "gc_freed_bytes",
                help: "Bytes garbage collection freed",
                label: None,
                value: get(&s.gc_bytes),
            },
            Counter {
                name: "retention_tags_deleted",
                help: "Tags deleted by retention policies",
                label: None,
                value: get(&s.retention_tags),
            },
            Counter {
                name: "cache_manifests_evicted",
                help: "Cached manifests evicted from pull-through caches",
                label: None,
                value: get(&s.evicted),
            },
            Counter {
                name: "audit_records_pruned",
                help: "Audit rows deleted for being older than [audit] keep_days",
                label: None,
                value: get(&s.audit_pruned),
            },
        ];
        if let berth_storage::BlobStore::S3(s3) = &self.blobs {
            let c = s3.counters();
            for (cause, v) in [
                ("status", &c.retried_status),
                ("connection", &c.retried_connection),
                ("timeout", &c.retried_timeout),
            ] {
                out.push(Counter {
                    name: "s3_retries",
                    help: "Attempts of S3 requests repeated, by cause (status: a 5xx or 429 \
                        answer such as SlowDown; connection: refused or reset; timeout: no \
                        answer within the attempt timeout)",
                    label: Some(("cause", cause)),
                    value: get(v),
                });
            }
            out.push(Counter {
                name: "s3_failures",
                help: "S3 requests that failed after their last attempt, or found no slot \
                    among max_in_flight in time",
                label: None,
                value: get(&c.failed),
            });
            out.push(Counter {
                name: "s3_append_waits",
                help: "Appends that waited for a turn because max_appends were buffering",
                label: None,
                value: get(&c.waited_for_append),
            });
            out.push(Counter {
                name: "s3_slot_waits",
                help: "S3 requests that waited because max_in_flight requests were in flight",
                label: None,
                value: get(&c.waited_for_slot),
            });
        }
        let p = &self.policy;
        for (what, c) in [
            ("refused", &p.refused),
            ("audited", &p.audited),
            ("bypassed", &p.bypassed),
            ("pending", &p.pending),
        ] {
            out.push(Counter {
                name: "policy_pulls",
                help: "Manifest pulls a policy rule judged, by result (refused: 403 under an \
                    enforcing rule; audited: served under an audit rule and recorded in the \
                    audit log; bypassed: served to an authenticated caller with push \
                    permission under an enforcing rule's push_bypass, and audited; pending: no verdict could be computed in time, answered as the \
                    rule's `pending` says)",
                label: Some(("result", what)),
                value: get(c),
            });
        }
        for (i, code) in berth_verify::Failure::CODES.iter().enumerate() {
            out.push(Counter {
                name: "policy_signature_failures",
                help: "Signatures that did not count when a verdict or a verify report was \
                    computed, by reason (expired, untrusted_identity, untrusted_issuer, \
                    chain_too_long, untrusted_time: a forged or foreign log entry or \
                    timestamp, ...)",
                label: Some(("reason", code)),
                value: get(&p.failures[i]),
            });
        }
        out.push(Counter {
            name: "policy_verdicts_computed",
            help: "Signature verdicts computed (not found in memory or in the metadata store)",
            label: None,
            value: get(&p.computed),
        });
        let refusals = "Writes refused by a tenant's storage quota, by request (blob: a \
            monolithic upload, an upload's completion or a mount; chunk: a PATCH to an upload \
            session, refused before the bytes past the quota were written; manifest: a \
            manifest PUT)";
        for (what, c) in [
            ("blob", &s.quota_refused_blobs),
            ("chunk", &s.quota_refused_chunks),
            ("manifest", &s.quota_refused_manifests),
        ] {
            out.push(Counter {
                name: "quota_refusals",
                help: refusals,
                label: Some(("what", what)),
                value: get(c),
            });
        }
        out.push(Counter {
            name: "quota_orphaned_blobs",
            help: "Blobs whose bytes were placed before their link was refused because the \
                quota was lowered meanwhile; garbage collection removes them",
            label: None,
            value: get(&s.quota_orphaned_blobs),
        });
        if let Some(r) = self.replication_stats() {
            out.extend([
                Counter {
                    name: "replication_copied",
                    help: "Manifests copied to every matching replication target",
                    label: None,
                    value: get(&r.replicated),
                },
                Counter {
                    name: "replication_failed",
                    help: "Replication jobs dead after their last attempt (berth events dead lists them)",
                    label: None,
                    value: get(&r.failed),
                },
            ]);
        }
        if let Some(p) = self.p2p() {
            let s = &p.stats;
            for (name, help, c) in [
                (
                    "p2p_enrolled",
                    "Node agents enrolled (or enrolled again)",
                    &s.enrolled,
                ),
                (
                    "p2p_enroll_refused",
                    "Enrollments refused (wrong bootstrap token, bad node name)",
                    &s.enroll_refused,
                ),
                (
                    "p2p_pulls_recorded",
                    "Blobs an enrolled node was authorized to fetch through a manifest pull",
                    &s.pulls_recorded,
                ),
                (
                    "p2p_pulls_dropped",
                    "Authorized pulls not recorded because the table was full (those nodes pull centrally)",
                    &s.pulls_dropped,
                ),
                (
                    "p2p_grants_answered",
                    "Grants requests of node agents answered with at least one new grant",
                    &s.grants_answered,
                ),
                (
                    "p2p_grants_reads",
                    "Reads of the grants table by waiting grants requests (on arrival, when woken for their node, and every 10 s otherwise)",
                    &s.grants_reads,
                ),
                (
                    "p2p_state_errors",
                    "Sharing requests that failed because the metadata store did (the node pulls from the registry)",
                    &s.state_errors,
                ),
                (
                    "p2p_tickets_issued",
                    "Tickets signed for node agents",
                    &s.tickets_issued,
                ),
                (
                    "p2p_tickets_refused",
                    "Ticket, peer-list and central blob requests refused: no authorized pull of the blob from that node, or a ticket that does not verify",
                    &s.tickets_refused,
                ),
                (
                    "p2p_announces",
                    "Announcements accepted into the tracker",
                    &s.announces,
                ),
                (
                    "p2p_announces_refused",
                    "Announcements refused (no valid ticket of the announcing node for the blob): tracker poisoning attempts",
                    &s.announces_refused,
                ),
                (
                    "p2p_credentials_refused",
                    "Requests with a node credential that did not verify, expired, came from another address or names a node not enrolled there",
                    &s.credentials_refused,
                ),
                (
                    "p2p_bytes_to_agents",
                    "Blob bytes the central Berth served to node agents for tickets",
                    &s.bytes_to_agents,
                ),
                (
                    "p2p_piece_hash_reads",
                    "Full reads of a blob to compute its piece hashes (concurrent first tickets for a blob share one)",
                    &s.piece_hash_reads,
                ),
                (
                    "p2p_withdrawals",
                    "Withdrawals of node agents that no longer hold a blob (containerd deleted it)",
                    &s.withdrawals,
                ),
            ] {
                out.push(Counter {
                    name,
                    help,
                    label: None,
                    value: get(c),
                });
            }
        }
        out
    }
}
