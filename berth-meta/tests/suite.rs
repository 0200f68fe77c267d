//! One metadata test suite, run against every backend: SQLite in a temp dir and PostgreSQL
//! at `BERTH_TEST_POSTGRES_URL` (each test in a schema of its own). The PostgreSQL half is
//! not optional: without the variable its tests fail, so a green run always means both.

use berth_meta::{
    Actor, AdvisoryRow, AuditQuery, AuditRecord, CatalogPackage, FeedImport, FindingRow,
    ImageCatalogRow, JobOutcome, JobQuery, JobState, Linked, ManifestCursor, ManifestRef,
    MetaStore, NewJob, NewManifest, PutManifest, RefKind, Removal, Reservation, RobotRow, SetTag,
    TagChange, TagGuard, Usage, UserChange,
};

const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
const M1: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const M2: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const IDX: &str = "sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

struct Db {
    store: MetaStore,
    /// For tests that open a second, read-only connection.
    url: String,
    _dir: Option<tempfile::TempDir>,
}

async fn sqlite() -> Db {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite:{}", dir.path().join("meta.db").display());
    Db {
        store: MetaStore::connect(&url).await.expect("sqlite connects"),
        url,
        _dir: Some(dir),
    }
}

async fn postgres() -> Db {
    let url = berth_testkit::postgres_url().await;
    Db {
        store: MetaStore::connect(&url).await.expect("postgres connects"),
        url,
        _dir: None,
    }
}

static TESTER: std::sync::LazyLock<Actor> = std::sync::LazyLock::new(|| Actor::named("tester"));

fn who(name: &str) -> Actor {
    Actor::named(name)
}

fn image<'a>(
    repo: &'a str,
    digest: &'a str,
    refs: &'a [ManifestRef],
    tags: &'a [&'a str],
) -> NewManifest<'a> {
    NewManifest {
        repo,
        digest,
        media_type: "application/vnd.oci.image.manifest.v1+json",
        artifact_type: Some("application/vnd.oci.image.config.v1+json"),
        subject: None,
        annotations: None,
        content: b"{\"exact\":  \"bytes\"}",
        refs,
        tags,
        actor: &TESTER,
    }
}

fn blob_refs() -> Vec<ManifestRef> {
    vec![
        ManifestRef {
            digest: D1.into(),
            kind: RefKind::Blob,
            required: true,
        },
        ManifestRef {
            digest: D2.into(),
            kind: RefKind::Blob,
            required: true,
        },
    ]
}

async fn blobs_are_linked_per_repository(db: Db) {
    let s = &db.store;
    assert_eq!(s.repo_blob("a", D1).await.expect("query"), None);
    s.link_blob("a", D1, 10, None, &who("t"))
        .await
        .expect("link");
    s.link_blob("a", D1, 10, None, &who("t"))
        .await
        .expect("linking twice is harmless");
    assert_eq!(s.repo_blob("a", D1).await.expect("query"), Some(10));
    assert_eq!(
        s.repo_blob("b", D1).await.expect("query"),
        None,
        "not linked to b"
    );
    assert_eq!(s.blob(D1).await.expect("query"), Some(10));
    assert_eq!(
        s.unlink_blob("a", D1, &who("t")).await.expect("unlink"),
        Removal::Removed
    );
    assert_eq!(
        s.unlink_blob("a", D1, &who("t")).await.expect("unlink"),
        Removal::NotFound
    );
}

async fn manifest_requires_its_blobs(db: Db) {
    let s = &db.store;
    s.link_blob("r", D1, 1, None, &who("t"))
        .await
        .expect("link");
    let refs = blob_refs();
    assert_eq!(
        s.put_manifest(&image("r", M1, &refs, &["v1"]))
            .await
            .expect("put"),
        PutManifest::Missing(D2.into())
    );
    assert_eq!(
        s.resolve_tag("r", "v1").await.expect("q"),
        None,
        "nothing written"
    );
    s.link_blob("r", D2, 2, None, &who("t"))
        .await
        .expect("link");
    assert_eq!(
        s.put_manifest(&image("r", M1, &refs, &["v1"]))
            .await
            .expect("put"),
        PutManifest::Stored
    );
    let m = s.get_manifest("r", M1).await.expect("q").expect("stored");
    assert_eq!(m.content, b"{\"exact\":  \"bytes\"}");
    assert_eq!(
        s.resolve_tag("r", "v1").await.expect("q").as_deref(),
        Some(M1)
    );
    // a blob in use cannot be unlinked
    assert_eq!(
        s.unlink_blob("r", D1, &who("t")).await.expect("unlink"),
        Removal::Referenced(M1.into())
    );
    assert_eq!(
        s.repo_blob("r", D1).await.expect("q"),
        Some(1),
        "still linked"
    );
    // deleting the manifest takes its tags with it and frees the blob
    assert_eq!(
        s.delete_manifest("r", M1, &who("t")).await.expect("del"),
        Removal::Removed
    );
    assert_eq!(s.resolve_tag("r", "v1").await.expect("q"), None);
    assert_eq!(
        s.unlink_blob("r", D1, &who("t")).await.expect("unlink"),
        Removal::Removed
    );
}

async fn index_children_are_protected(db: Db) {
    let s = &db.store;
    s.link_blob("r", D1, 1, None, &who("t"))
        .await
        .expect("link");
    s.link_blob("r", D2, 2, None, &who("t"))
        .await
        .expect("link");
    let refs = blob_refs();
    s.put_manifest(&image("r", M1, &refs, &[]))
        .await
        .expect("put");
    let children = vec![
        ManifestRef {
            digest: M1.into(),
            kind: RefKind::Manifest,
            required: true,
        },
        ManifestRef {
            digest: M2.into(),
            kind: RefKind::Manifest,
            required: true,
        },
    ];
    let mut idx = image("r", IDX, &children, &["multi"]);
    idx.media_type = "application/vnd.oci.image.index.v1+json";
    assert_eq!(
        s.put_manifest(&idx).await.expect("put"),
        PutManifest::Missing(M2.into())
    );
    s.put_manifest(&image("r", M2, &refs, &[]))
        .await
        .expect("put");
    assert_eq!(
        s.put_manifest(&idx).await.expect("put"),
        PutManifest::Stored
    );
    assert_eq!(
        s.delete_manifest("r", M2, &who("t")).await.expect("del"),
        Removal::Referenced(IDX.into())
    );
    assert!(
        s.get_manifest("r", M2).await.expect("q").is_some(),
        "refused delete keeps it"
    );
    assert_eq!(
        s.delete_manifest("r", IDX, &who("t")).await.expect("del"),
        Removal::Removed
    );
    assert_eq!(
        s.delete_manifest("r", M2, &who("t")).await.expect("del"),
        Removal::Removed
    );
}

async fn tags_order_and_pages(db: Db) {
    let s = &db.store;
    let none: Vec<ManifestRef> = Vec::new();
    for tag in ["b", "A", "a", "B10", "b1", "_z", "1", "a-1", "a.1", "ab"] {
        s.put_manifest(&image("t", M1, &none, &[tag]))
            .await
            .expect("put");
    }
    let all = s.list_tags("t", None, 100).await.expect("q").expect("repo");
    assert_eq!(
        all,
        vec!["1", "_z", "A", "a", "a-1", "a.1", "ab", "b", "b1", "B10"]
    );
    let page = s
        .list_tags("t", Some("a"), 3)
        .await
        .expect("q")
        .expect("repo");
    assert_eq!(page, vec!["a-1", "a.1", "ab"]);
    assert_eq!(s.list_tags("nope", None, 10).await.expect("q"), None);
    assert_eq!(
        s.delete_tag("t", "ab", &who("t")).await.expect("del"),
        Removal::Removed
    );
    assert_eq!(
        s.delete_tag("t", "ab", &who("t")).await.expect("del"),
        Removal::NotFound
    );
    // a tag move is an upsert
    s.put_manifest(&image("t", M2, &none, &["b"]))
        .await
        .expect("put");
    assert_eq!(
        s.resolve_tag("t", "b").await.expect("q").as_deref(),
        Some(M2)
    );

    // Many tags created in no particular order walk back in the one order, page by page.
    let mut names: Vec<String> = (0u64..1500)
        .map(|i| {
            let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17);
            format!("{}{x:x}", ["v", "V", "_", "1", "rc-"][(x % 5) as usize])
        })
        .collect();
    let tags: Vec<&str> = names.iter().map(String::as_str).collect();
    for chunk in tags.chunks(100) {
        s.put_manifest(&image("many", M1, &none, chunk))
            .await
            .expect("put");
    }
    names.sort_by_key(|n| berth_oci::tag_sort_key(n));
    let mut walked = Vec::new();
    let mut last: Option<String> = None;
    loop {
        let page = s
            .list_tags("many", last.as_deref(), 333)
            .await
            .expect("q")
            .expect("repo");
        last = page.last().cloned();
        let done = page.len() < 333;
        walked.extend(page);
        if done {
            break;
        }
    }
    assert_eq!(walked, names);
}

async fn catalog_lists_repositories_with_manifests(db: Db) {
    let s = &db.store;
    let none: Vec<ManifestRef> = Vec::new();
    for repo in ["z/y", "a", "a-b", "a/b", "m"] {
        s.put_manifest(&image(repo, M1, &none, &[]))
            .await
            .expect("put");
    }
    s.link_blob("only-blobs", D1, 1, None, &who("t"))
        .await
        .expect("link");
    assert_eq!(
        s.catalog(None, 100).await.expect("q"),
        vec!["a", "a-b", "a/b", "m", "z/y"]
    );
    assert_eq!(
        s.catalog(Some("a-b"), 2).await.expect("q"),
        vec!["a/b", "m"]
    );
    // Searching by substring, in the store: `_` and `%` are themselves, not wildcards.
    for repo in ["t/svc_1", "t/svcx1", "t/a%b"] {
        s.put_manifest(&image(repo, M1, &none, &[]))
            .await
            .expect("put");
    }
    assert_eq!(
        s.catalog_matching("svc_1", None, 100).await.expect("q"),
        vec!["t/svc_1"]
    );
    assert_eq!(
        s.catalog_matching("%", None, 100).await.expect("q"),
        vec!["t/a%b"]
    );
    assert_eq!(
        s.catalog_matching("b", None, 100).await.expect("q"),
        vec!["a-b", "a/b", "t/a%b"]
    );
    assert_eq!(
        s.catalog_matching("b", Some("a-b"), 1).await.expect("q"),
        vec!["a/b"]
    );
    assert!(
        s.catalog_matching("only", None, 100)
            .await
            .expect("q")
            .is_empty(),
        "a repository without manifests is not listed"
    );
}

async fn referrers_by_subject_and_type(db: Db) {
    let s = &db.store;
    let none: Vec<ManifestRef> = Vec::new();
    let mut sig = image("r", M1, &none, &[]);
    sig.subject = Some(IDX);
    sig.artifact_type = Some("application/vnd.example.sig");
    sig.annotations = Some(r#"{"k":"v"}"#);
    s.put_manifest(&sig).await.expect("put");
    let mut sbom = image("r", M2, &none, &[]);
    sbom.subject = Some(IDX);
    sbom.artifact_type = Some("application/spdx+json");
    s.put_manifest(&sbom).await.expect("put");
    let all = s.referrers("r", IDX, None).await.expect("q");
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].size, b"{\"exact\":  \"bytes\"}".len() as u64);
    let sigs = s
        .referrers("r", IDX, Some("application/vnd.example.sig"))
        .await
        .expect("q");
    assert_eq!(sigs.len(), 1);
    assert_eq!(sigs[0].digest, M1);
    assert_eq!(sigs[0].annotations.as_deref(), Some(r#"{"k":"v"}"#));
    assert!(s.referrers("other", IDX, None).await.expect("q").is_empty());
}

async fn uploads_advance_only_from_where_they_stand(db: Db) {
    let s = &db.store;
    s.create_upload("u1", "r", b"state0").await.expect("create");
    let u = s.get_upload("u1").await.expect("q").expect("exists");
    assert_eq!(
        (u.repo.as_str(), u.size, u.hash_state.as_slice()),
        ("r", 0, &b"state0"[..])
    );
    assert!(
        s.advance_upload("u1", 0, 5, b"state5", 0)
            .await
            .expect("advance")
    );
    assert!(
        !s.advance_upload("u1", 0, 7, b"stale", 0)
            .await
            .expect("advance"),
        "lost race refused"
    );
    let u = s.get_upload("u1").await.expect("q").expect("exists");
    assert_eq!((u.size, u.hash_state.as_slice()), (5, &b"state5"[..]));
    assert!(s.stale_uploads(0).await.expect("q").is_empty());
    assert_eq!(
        s.stale_uploads(i64::MAX).await.expect("q"),
        vec!["u1".to_string()]
    );
    // finishing links the blob and closes the session in one transaction
    s.link_blob("r", D1, 5, Some("u1"), &who("t"))
        .await
        .expect("link");
    assert_eq!(s.get_upload("u1").await.expect("q"), None);
}

async fn every_change_is_audited(db: Db) {
    let s = &db.store;
    let none: Vec<ManifestRef> = Vec::new();
    s.link_blob("r", D1, 1, None, &who("alice"))
        .await
        .expect("link");
    s.put_manifest(&image("r", M1, &none, &["v1"]))
        .await
        .expect("put");
    s.delete_tag("r", "v1", &who("bob")).await.expect("del");
    let log = s
        .audit_query(&AuditQuery {
            limit: 10,
            ..AuditQuery::default()
        })
        .await
        .expect("q");
    let actions: Vec<(&str, &str)> = log
        .iter()
        .map(|(_, e)| (e.action.as_str(), e.actor.as_str()))
        .collect();
    assert_eq!(
        actions,
        vec![
            ("tag.delete", "bob"),
            ("tag.set", "tester"),
            ("manifest.put", "tester"),
            ("blob.link", "alice")
        ]
    );
    assert_eq!(log[0].1.repository.as_deref(), Some("r"));
}

async fn concurrent_writers_do_not_fail(db: Db) {
    let s = db.store.clone();
    let mut tasks = Vec::new();
    for i in 0..32 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let d = format!("sha256:{i:064x}");
            s.link_blob("busy", &d, i, None, &who("t"))
                .await
                .expect("link under contention");
            let refs = vec![ManifestRef {
                digest: d.clone(),
                kind: RefKind::Blob,
                required: true,
            }];
            let m = format!("sha256:{:064x}", 1000 + i);
            let tag = format!("t{i}");
            let tags = [tag.as_str()];
            let nm = NewManifest {
                content: b"{}",
                ..image("busy", &m, &refs, &tags)
            };
            assert_eq!(
                s.put_manifest(&nm).await.expect("put under contention"),
                PutManifest::Stored
            );
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    assert_eq!(
        s.list_tags("busy", None, 100)
            .await
            .expect("q")
            .expect("repo")
            .len(),
        32
    );
}

/// What `berth fsck` reads: paged listings, references whose target is absent, and a
/// connection that cannot write.
async fn fsck_listings_page_and_stay_read_only(db: Db) {
    let s = &db.store;
    assert_eq!(s.blob_totals().await.expect("totals"), (0, 0));
    s.link_blob("a", D1, 10, None, &who("t"))
        .await
        .expect("link");
    s.link_blob("b", D1, 10, None, &who("t"))
        .await
        .expect("link");
    s.link_blob("a", D2, 5, None, &who("t"))
        .await
        .expect("link");
    assert_eq!(s.blob_totals().await.expect("totals"), (2, 15));
    let page = s.blobs_after("", 1).await.expect("page");
    assert_eq!(page.len(), 1);
    assert_eq!((page[0].digest.as_str(), page[0].size), (D1, 10));
    let page = s.blobs_after(&page[0].digest, 10).await.expect("page");
    assert_eq!(
        page.iter().map(|b| b.digest.as_str()).collect::<Vec<_>>(),
        [D2]
    );
    assert_eq!(
        s.blob_repositories(D1).await.expect("repos"),
        ["a".to_owned(), "b".to_owned()]
    );

    // One manifest in each repository; M2 has a reference that need not be present.
    let refs = [ManifestRef {
        digest: D1.into(),
        kind: RefKind::Blob,
        required: true,
    }];
    s.put_manifest(&image("a", M1, &refs, &["v1"]))
        .await
        .expect("put");
    let loose = [
        ManifestRef {
            digest: D1.into(),
            kind: RefKind::Blob,
            required: true,
        },
        ManifestRef {
            digest: M1.into(),
            kind: RefKind::Manifest,
            required: false,
        },
    ];
    s.put_manifest(&image("b", M2, &loose, &[]))
        .await
        .expect("put");
    assert_eq!(s.manifest_count().await.expect("count"), 2);
    let first = s
        .manifests_after(&ManifestCursor::default(), 1)
        .await
        .expect("page");
    assert_eq!(first.len(), 1);
    let rest = s
        .manifests_after(&first[0].cursor(), 10)
        .await
        .expect("page");
    assert_eq!(rest.len(), 1);
    let mut seen: Vec<_> = first
        .iter()
        .chain(&rest)
        .map(|m| (m.repo.as_str(), m.digest.as_str()))
        .collect();
    seen.sort();
    assert_eq!(seen, [("a", M1), ("b", M2)]);
    assert_eq!(first[0].content, b"{\"exact\":  \"bytes\"}");

    let dangling = s.dangling_refs().await.expect("dangling");
    assert_eq!(dangling.len(), 1, "{dangling:?}");
    assert_eq!(
        (
            dangling[0].repo.as_str(),
            dangling[0].manifest.as_str(),
            dangling[0].child.as_str()
        ),
        ("b", M2, M1)
    );
    assert_eq!(dangling[0].kind, RefKind::Manifest);
    let mut users = s.blob_users(D1).await.expect("users");
    users.sort();
    assert_eq!(
        users,
        [
            ("a".to_owned(), M1.to_owned()),
            ("b".to_owned(), M2.to_owned())
        ]
    );

    let ro = MetaStore::connect_read_only(&db.url)
        .await
        .expect("read-only connect");
    assert_eq!(ro.blob_totals().await.expect("totals"), (2, 15));
    assert!(
        ro.link_blob("c", D2, 5, None, &who("t")).await.is_err(),
        "a read-only store wrote"
    );
    assert_eq!(
        s.blob_repositories(D2).await.expect("repos"),
        ["a".to_owned()]
    );
    ro.close().await;
}

async fn users_tenants_members_and_robots(db: Db) {
    let s = &db.store;
    let admin = who("root");
    assert_eq!(s.user_count().await.expect("count"), 0);
    assert!(
        s.create_user("alice", "$argon2id$x", false, &admin)
            .await
            .expect("create")
    );
    assert!(
        !s.create_user("alice", "$argon2id$y", true, &admin)
            .await
            .expect("dup")
    );
    let alice = s.user("alice").await.expect("get").expect("alice");
    assert_eq!(
        (alice.password_hash.as_str(), alice.admin, alice.disabled),
        ("$argon2id$x", false, false)
    );
    let change = UserChange {
        disabled: Some(true),
        admin: Some(true),
        ..UserChange::default()
    };
    assert!(
        s.update_user("alice", &change, &admin)
            .await
            .expect("update")
    );
    assert!(
        !s.update_user("nobody", &change, &admin)
            .await
            .expect("update")
    );
    let alice = s.user("alice").await.expect("get").expect("alice");
    assert!(alice.admin && alice.disabled);
    let imported = vec![
        ("bob".to_owned(), "$2y$h".to_owned()),
        ("alice".to_owned(), "$2y$z".to_owned()),
    ];
    assert_eq!(
        s.import_users(&imported, &admin).await.expect("import"),
        1,
        "alice exists"
    );

    // The built-in library tenant exists from the start.
    let names: Vec<String> = s
        .tenants()
        .await
        .expect("tenants")
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["library"]);
    assert!(
        s.create_tenant("team-a", false, &admin)
            .await
            .expect("tenant")
    );
    assert!(!s.create_tenant("team-a", true, &admin).await.expect("dup"));
    assert!(
        s.set_tenant_public("team-a", true, &admin)
            .await
            .expect("public")
    );
    assert_eq!(s.public_tenants().await.expect("public"), ["team-a"]);
    assert!(
        s.set_member("team-a", "bob", Some("developer"), &admin)
            .await
            .expect("member")
    );
    assert!(
        s.set_member("team-a", "bob", Some("owner"), &admin)
            .await
            .expect("promote")
    );
    assert!(
        !s.set_member("team-a", "ghost", Some("owner"), &admin)
            .await
            .expect("no user")
    );
    assert!(
        !s.set_member("team-z", "bob", Some("owner"), &admin)
            .await
            .expect("no tenant")
    );
    assert_eq!(
        s.roles_of("bob").await.expect("roles"),
        [("team-a".to_owned(), "owner".to_owned())]
    );

    let robot = RobotRow {
        tenant: "team-a".into(),
        name: "ci".into(),
        secret_hash: "h1".into(),
        actions: "pull,push".into(),
        repositories: "[\"app\"]".into(),
        description: Some("CI".into()),
        expires_at: Some(42),
        disabled: false,
        created_at: 0,
    };
    assert!(s.create_robot(&robot, &admin).await.expect("robot"));
    assert!(!s.create_robot(&robot, &admin).await.expect("dup robot"));
    let orphan = RobotRow {
        tenant: "team-z".into(),
        ..robot.clone()
    };
    assert!(!s.create_robot(&orphan, &admin).await.expect("no tenant"));
    assert!(
        s.set_robot_secret("team-a", "ci", "h2", &admin)
            .await
            .expect("rotate")
    );
    let back = s.robot("team-a", "ci").await.expect("get").expect("robot");
    assert_eq!(
        (back.secret_hash.as_str(), back.expires_at),
        ("h2", Some(42))
    );
    assert!(
        s.set_robot_disabled("team-a", "ci", true, &admin)
            .await
            .expect("disable")
    );
    assert!(
        s.robot("team-a", "ci")
            .await
            .expect("get")
            .expect("robot")
            .disabled
    );

    // Deleting the tenant takes its members and robots with it; deleting a user its
    // memberships.
    assert!(s.delete_tenant("team-a", &admin).await.expect("delete"));
    assert!(s.robots(None).await.expect("robots").is_empty());
    assert!(s.roles_of("bob").await.expect("roles").is_empty());
    assert!(s.delete_user("bob", &admin).await.expect("delete"));
    assert!(s.user("bob").await.expect("get").is_none());

    // Every change above was audited, by the actor that made it.
    let family = |f: &str| AuditQuery {
        action: Some(f.to_owned()),
        limit: 100,
        ..AuditQuery::default()
    };
    let robots = s.audit_query(&family("robot")).await.expect("audit");
    let actions: Vec<&str> = robots.iter().map(|(_, r)| r.action.as_str()).collect();
    assert_eq!(actions, ["robot.disable", "robot.rotate", "robot.create"]);
    assert!(
        robots
            .iter()
            .all(|(_, r)| r.actor == "root" && r.tenant.as_deref() == Some("team-a"))
    );
    let users = s.audit_query(&family("user")).await.expect("audit");
    let actions: Vec<(&str, &str)> = users
        .iter()
        .map(|(_, r)| (r.action.as_str(), r.target.as_deref().unwrap_or("")))
        .collect();
    assert_eq!(
        actions,
        [
            ("user.delete", "bob"),
            ("user.import", "bob"),
            ("user.disable", "alice"),
            ("user.admin", "alice"),
            ("user.create", "alice")
        ]
    );
}

async fn signing_keys_rotate(db: Db) {
    let s = &db.store;
    s.ensure_signing_key("k1", b"secret-1")
        .await
        .expect("first");
    // A second replica starting at the same time does not add a key of its own.
    s.ensure_signing_key("k2", b"secret-2")
        .await
        .expect("second");
    assert_eq!(
        s.signing_keys().await.expect("keys"),
        [("k1".to_owned(), b"secret-1".to_vec())]
    );
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    s.rotate_signing_key("k3", b"secret-3", 1_000_000_000, &who("root"))
        .await
        .expect("rotate");
    let kids: Vec<String> = s
        .signing_keys()
        .await
        .expect("keys")
        .into_iter()
        .map(|k| k.0)
        .collect();
    assert_eq!(
        kids,
        ["k3", "k1"],
        "the new key signs; the old one still verifies"
    );
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    // Keeping retired keys for no time at all drops k1 (retired before this rotation).
    s.rotate_signing_key("k4", b"secret-4", 0, &who("root"))
        .await
        .expect("rotate");
    let kids: Vec<String> = s
        .signing_keys()
        .await
        .expect("keys")
        .into_iter()
        .map(|k| k.0)
        .collect();
    assert_eq!(kids, ["k4", "k3"]);
}

async fn audit_queries_filter_and_page(db: Db) {
    let s = &db.store;
    let rec = |at: i64, actor: &str, action: &str, tenant: &str| AuditRecord {
        at,
        actor: actor.into(),
        source: Some("10.0.0.1".into()),
        action: action.into(),
        tenant: Some(tenant.into()),
        repository: Some(format!("{tenant}/app")),
        target: Some("v1".into()),
        outcome: "ok".into(),
        detail: None,
    };
    let batch: Vec<AuditRecord> = (0..10)
        .map(|i| {
            let actor = if i % 2 == 0 { "alice" } else { "bob" };
            let tenant = if i < 5 { "team-a" } else { "team-b" };
            rec(
                1000 + i,
                actor,
                if i % 3 == 0 {
                    "manifest.pull"
                } else {
                    "login.fail"
                },
                tenant,
            )
        })
        .collect();
    s.append_audit(&batch).await.expect("append");
    let q = |f: AuditQuery| async move {
        s.audit_query(&AuditQuery { limit: 100, ..f })
            .await
            .expect("query")
            .into_iter()
            .map(|(_, r)| r.at)
            .collect::<Vec<i64>>()
    };
    assert_eq!(
        q(AuditQuery {
            actor: Some("alice".into()),
            ..Default::default()
        })
        .await,
        [1008, 1006, 1004, 1002, 1000]
    );
    assert_eq!(
        q(AuditQuery {
            tenant: Some("team-b".into()),
            since: Some(1007),
            ..Default::default()
        })
        .await,
        [1009, 1008, 1007]
    );
    assert_eq!(
        q(AuditQuery {
            action: Some("manifest".into()),
            ..Default::default()
        })
        .await,
        [1009, 1006, 1003, 1000]
    );
    assert_eq!(
        q(AuditQuery {
            action: Some("login.fail".into()),
            until: Some(1003),
            ..Default::default()
        })
        .await,
        [1002, 1001]
    );
    // Paging by id: two pages of four, then the rest, nothing twice.
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = s
            .audit_query(&AuditQuery {
                before_id: before,
                limit: 4,
                ..Default::default()
            })
            .await
            .expect("page");
        let Some((last, _)) = page.last() else { break };
        before = Some(*last);
        seen.extend(page.into_iter().map(|(_, r)| r.at));
    }
    assert_eq!(seen, (1000..1010).rev().collect::<Vec<i64>>());

    assert_eq!(
        q(AuditQuery {
            repository: Some("team-b/app".into()),
            until: Some(1008),
            ..Default::default()
        })
        .await,
        [1007, 1006, 1005]
    );
    // A replica's batch flushed late carries older times, two of them equal to one already
    // there: the log reads in time order (ties newest written first), and paging, with a
    // tie across a page boundary, shows every row once.
    let late: Vec<AuditRecord> = [1003, 999, 1003]
        .into_iter()
        .map(|at| rec(at, "carol", "manifest.push", "team-a"))
        .collect();
    s.append_audit(&late).await.expect("append");
    let mut seen = Vec::new();
    let mut ids = std::collections::HashSet::new();
    let mut before = None;
    loop {
        let page = s
            .audit_query(&AuditQuery {
                before_id: before,
                limit: 4,
                ..Default::default()
            })
            .await
            .expect("page");
        let Some((last, _)) = page.last() else { break };
        before = Some(*last);
        for (id, r) in page {
            assert!(ids.insert(id), "row {id} shown twice");
            seen.push((r.at, r.actor));
        }
    }
    let ats: Vec<i64> = seen.iter().map(|(at, _)| *at).collect();
    assert_eq!(
        ats,
        [
            1009, 1008, 1007, 1006, 1005, 1004, 1003, 1003, 1003, 1002, 1001, 1000, 999
        ]
    );
    assert_eq!(seen[6].1, "carol");
    assert_eq!(seen[7].1, "carol");
    assert_eq!(
        seen[8].1, "bob",
        "the earlier-written row of the tie comes last"
    );
    // Under a filter, the same order.
    assert_eq!(
        q(AuditQuery {
            repository: Some("team-a/app".into()),
            ..Default::default()
        })
        .await,
        [1004, 1003, 1003, 1003, 1002, 1001, 1000, 999]
    );
}

async fn audit_rows_are_pruned_by_age_in_batches(db: Db) {
    let s = &db.store;
    let batch: Vec<AuditRecord> = (0..25)
        .map(|i| AuditRecord {
            at: 1000 + i,
            actor: format!("a{i}"),
            action: "login".into(),
            outcome: "ok".into(),
            ..AuditRecord::default()
        })
        .collect();
    s.append_audit(&batch).await.expect("append");
    // Older than 1020: twenty rows, in batches of at most eight, oldest first.
    assert_eq!(s.prune_audit(1020, 8).await.expect("prune"), 8);
    assert_eq!(s.prune_audit(1020, 8).await.expect("prune"), 8);
    assert_eq!(s.prune_audit(1020, 8).await.expect("prune"), 4);
    assert_eq!(s.prune_audit(1020, 8).await.expect("prune"), 0);
    let left: Vec<i64> = s
        .audit_query(&AuditQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .expect("query")
        .into_iter()
        .map(|(_, r)| r.at)
        .collect();
    assert_eq!(left, [1024, 1023, 1022, 1021, 1020]);
}

/// The rule used by the tag tests: tags starting with a digit are immutable.
fn digits_rule(tag: &str) -> Option<String> {
    tag.starts_with(|c: char| c.is_ascii_digit())
        .then(|| "test digits".to_owned())
}

const RULES: TagGuard<'static> = TagGuard {
    immutable: &digits_rule,
    admin: false,
    ..TagGuard::NONE
};
const ADMIN: TagGuard<'static> = TagGuard {
    immutable: &digits_rule,
    admin: true,
    ..TagGuard::NONE
};

async fn link_d1_d2(s: &MetaStore, repo: &str) {
    for d in [D1, D2] {
        s.link_blob(repo, d, 3, None, &who("t"))
            .await
            .expect("link");
    }
}

fn kinds(h: &[berth_meta::TagEvent]) -> Vec<(TagChange, Option<&str>, Option<&str>, &str)> {
    h.iter()
        .map(|e| {
            (
                e.kind,
                e.old_digest.as_deref(),
                e.new_digest.as_deref(),
                e.actor.as_str(),
            )
        })
        .collect()
}

/// An immutable tag is not moved, not deleted and its manifest not deleted, except by an
/// admin; a refused push stores nothing; the same digest again is fine.
async fn immutable_tags_are_kept(db: Db) {
    let s = &db.store;
    link_d1_d2(s, "r").await;
    let refs = blob_refs();
    assert_eq!(
        s.put_manifest_guarded(&image("r", M1, &refs, &["1.0.0"]), RULES)
            .await
            .expect("put"),
        PutManifest::Stored
    );
    let other = NewManifest {
        content: b"{\"other\": 1}",
        ..image("r", M2, &refs, &["1.0.0"])
    };
    assert_eq!(
        s.put_manifest_guarded(&other, ADMIN).await.expect("put"),
        PutManifest::Immutable {
            tag: "1.0.0".into(),
            current: M1.into(),
            rule: "test digits".into()
        },
        "not even an admin's push moves it"
    );
    assert_eq!(
        s.get_manifest("r", M2).await.expect("get"),
        None,
        "nothing stored"
    );
    assert_eq!(
        s.resolve_tag("r", "1.0.0").await.expect("q").as_deref(),
        Some(M1)
    );
    assert_eq!(
        s.put_manifest_guarded(&image("r", M1, &refs, &["1.0.0"]), RULES)
            .await
            .expect("put"),
        PutManifest::Stored,
        "the identical digest again"
    );
    // A mutable tag on the same repository moves freely.
    for m in [&image("r", M1, &refs, &["latest"]), &other] {
        let m = NewManifest {
            tags: &["latest"],
            ..m.clone()
        };
        assert_eq!(
            s.put_manifest_guarded(&m, RULES).await.expect("put"),
            PutManifest::Stored
        );
    }
    assert_eq!(
        s.resolve_tag("r", "latest").await.expect("q").as_deref(),
        Some(M2)
    );

    let refused = Removal::Immutable {
        tag: "1.0.0".into(),
        rule: "test digits".into(),
    };
    assert_eq!(
        s.delete_tag_guarded("r", "1.0.0", &who("dev"), RULES)
            .await
            .expect("del"),
        refused
    );
    assert_eq!(
        s.delete_manifest_guarded("r", M1, &who("dev"), RULES)
            .await
            .expect("del"),
        refused
    );
    assert_eq!(
        s.resolve_tag("r", "1.0.0").await.expect("q").as_deref(),
        Some(M1)
    );
    assert!(s.get_manifest("r", M1).await.expect("get").is_some());
    assert_eq!(
        s.delete_tag_guarded("r", "nope", &who("dev"), RULES)
            .await
            .expect("del"),
        Removal::NotFound
    );
    assert_eq!(
        s.delete_tag_guarded("r", "1.0.0", &who("root"), ADMIN)
            .await
            .expect("del"),
        Removal::Removed
    );
    let h = s.tag_history("r", "1.0.0", 10).await.expect("history");
    assert_eq!(
        kinds(&h),
        [
            (TagChange::Delete, Some(M1), None, "root"),
            (TagChange::Create, None, Some(M1), "tester"),
        ]
    );
}

/// Creation, move, deletion (of the tag or with its manifest) and rollback each leave one
/// history row in the transaction that made them.
async fn tag_history_records_every_change(db: Db) {
    let s = &db.store;
    link_d1_d2(s, "h").await;
    let refs = blob_refs();
    let a = Actor {
        name: "alice".into(),
        source: Some("10.0.0.1".into()),
    };
    let m1 = NewManifest {
        actor: &a,
        ..image("h", M1, &refs, &["app"])
    };
    let m2 = NewManifest {
        content: b"{\"two\": 2}",
        ..image("h", M2, &refs, &["app"])
    };
    s.put_manifest_guarded(&m1, RULES).await.expect("create");
    s.put_manifest_guarded(&m1, RULES)
        .await
        .expect("same again: no row");
    s.put_manifest_guarded(&m2, RULES).await.expect("move");
    assert_eq!(
        s.delete_tag_guarded("h", "app", &who("bob"), RULES)
            .await
            .expect("del"),
        Removal::Removed
    );
    // A rollback that expects the wrong current digest changes nothing.
    assert_eq!(
        s.rollback_tag("h", "app", M1, Some(M2), &who("carol"), RULES)
            .await
            .expect("set"),
        SetTag::Moved { current: None }
    );
    assert_eq!(
        s.rollback_tag("h", "app", M1, None, &who("carol"), RULES)
            .await
            .expect("set"),
        SetTag::Set
    );
    assert_eq!(
        s.resolve_tag("h", "app").await.expect("q").as_deref(),
        Some(M1)
    );
    assert_eq!(
        s.rollback_tag("h", "1.2.3", M1, None, &who("carol"), RULES)
            .await
            .expect("set"),
        SetTag::Immutable {
            rule: "test digits".into()
        },
        "only an admin rolls an immutable tag"
    );
    assert_eq!(
        s.delete_manifest_guarded("h", M1, &who("dave"), RULES)
            .await
            .expect("del"),
        Removal::Removed
    );
    assert_eq!(
        s.rollback_tag("h", "app", M1, None, &who("carol"), RULES)
            .await
            .expect("set"),
        SetTag::ManifestUnknown
    );
    let h = s.tag_history("h", "app", 100).await.expect("history");
    assert_eq!(
        kinds(&h),
        [
            (TagChange::Delete, Some(M1), None, "dave"),
            (TagChange::Rollback, None, Some(M1), "carol"),
            (TagChange::Delete, Some(M2), None, "bob"),
            (TagChange::Move, Some(M1), Some(M2), "tester"),
            (TagChange::Create, None, Some(M1), "alice"),
        ]
    );
    assert_eq!(h[4].source.as_deref(), Some("10.0.0.1"));
    assert!(
        h.windows(2)
            .all(|w| w[0].id > w[1].id && w[0].at >= w[1].at)
    );
    assert_eq!(
        s.tag_history("h", "app", 2).await.expect("history").len(),
        2
    );
    assert!(
        s.tag_history("nowhere", "app", 2)
            .await
            .expect("history")
            .is_empty()
    );
}

/// Sixteen pushes of different manifests to one new immutable tag at once: exactly one
/// wins, the others are refused and leave no manifest behind.
async fn concurrent_immutable_pushes_one_wins(db: Db) {
    let s = db.store.clone();
    let mut tasks = Vec::new();
    for i in 0..16u32 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            // No required references: they would lock the same blob rows on PostgreSQL and
            // serialise the pushes before they ever reach the tag.
            let refs = Vec::new();
            let m = format!("sha256:{:064x}", 5000 + i);
            let body = format!("{{\"n\": {i}}}");
            let nm = NewManifest {
                content: body.as_bytes(),
                ..image("race", &m, &refs, &["2.0.0"])
            };
            let out = s.put_manifest_guarded(&nm, RULES).await.expect("put");
            (m, out)
        }));
    }
    let mut winners = Vec::new();
    let mut losers = Vec::new();
    for t in tasks {
        let (m, out) = t.await.expect("task");
        match out {
            PutManifest::Stored => winners.push(m),
            PutManifest::Immutable { .. } => losers.push(m),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one push wins");
    assert_eq!(losers.len(), 15);
    assert_eq!(
        s.resolve_tag("race", "2.0.0").await.expect("q").as_deref(),
        Some(winners[0].as_str())
    );
    for m in &losers {
        assert_eq!(s.get_manifest("race", m).await.expect("get"), None);
    }
    let h = s.tag_history("race", "2.0.0", 100).await.expect("history");
    assert_eq!(h.len(), 1, "one creation, nothing else");
    assert_eq!(h[0].new_digest.as_deref(), Some(winners[0].as_str()));
}

/// Tags carry their semver key from the write that creates them, and tags from before
/// the key existed (NULL) get theirs at the next start; the version page is newest first.
async fn version_keys_are_written_and_filled_in_at_start(db: Db) {
    let s = &db.store;
    let refs = blob_refs();
    for d in [D1, D2] {
        s.link_blob("r", d, 1, None, &who("t")).await.expect("link");
    }
    s.put_manifest(&image(
        "r",
        M1,
        &refs,
        &["1.2.0", "latest", "1.10.0", "v1.10.0-rc.1"],
    ))
    .await
    .expect("put");
    let names =
        |rows: Vec<berth_meta::TagRow>| rows.into_iter().map(|r| r.name).collect::<Vec<_>>();
    let want = ["1.10.0", "v1.10.0-rc.1", "1.2.0"];
    let page = s
        .version_page("r", None, 10)
        .await
        .expect("page")
        .expect("repo");
    assert_eq!(names(page), want);
    // Keyset: after a tag, the versions below it.
    let page = s
        .version_page("r", Some("v1.10.0-rc.1"), 10)
        .await
        .expect("page")
        .expect("repo");
    assert_eq!(names(page), ["1.2.0"]);
    // Tags as an older Berth wrote them.
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&db.url)
        .await
        .expect("raw connection");
    sqlx::query("UPDATE tags SET version_key = NULL")
        .execute(&mut conn)
        .await
        .expect("forget the keys");
    // A replica that does not know the keys yet (a rolling upgrade) adds a tag while this
    // one runs: reading the page fills in what it left, and the order is whole at once.
    sqlx::query(
        "INSERT INTO tags (repo_id, name, sort_key, digest, updated_at) \
         SELECT repo_id, '1.11.0', sort_key, digest, updated_at FROM tags WHERE name = 'latest'",
    )
    .execute(&mut conn)
    .await
    .expect("a tag as an older replica writes it");
    drop(conn);
    let page = s
        .version_page("r", None, 10)
        .await
        .expect("page")
        .expect("repo");
    assert_eq!(names(page), ["1.11.0", "1.10.0", "v1.10.0-rc.1", "1.2.0"]);
    let want = ["1.11.0", "1.10.0", "v1.10.0-rc.1", "1.2.0"];
    let again = MetaStore::connect(&db.url).await.expect("reopens");
    let page = again
        .version_page("r", None, 10)
        .await
        .expect("page")
        .expect("repo");
    assert_eq!(names(page), want);
}

/// Users of reserved names, left from before they were reserved (an unauthenticated token
/// resolved to a user named `anonymous`), are renamed and disabled by migration 0007,
/// their memberships and password kept, and the audit log says so.
async fn reserved_users_are_renamed_and_disabled_by_the_migration(db: Db) {
    let s = &db.store;
    let admin = who("root");
    s.create_tenant("team-a", false, &admin)
        .await
        .expect("tenant");
    for (name, is_admin) in [("anonymous", true), ("cli", false), ("alice", false)] {
        assert!(
            s.create_user(name, "$argon2id$h", is_admin, &admin)
                .await
                .expect("user")
        );
        assert!(
            s.set_member("team-a", name, Some("owner"), &admin)
                .await
                .expect("member")
        );
    }
    // The store as it was before migration 7 ran: apply it again over these rows.
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&db.url)
        .await
        .expect("raw connection");
    sqlx::query("DELETE FROM berth_schema WHERE version = 7")
        .execute(&mut conn)
        .await
        .expect("rewind the schema version");
    drop(conn);
    let s = MetaStore::connect(&db.url).await.expect("migrates");
    assert_eq!(s.schema_version().await.expect("version"), (20, 20));
    assert_eq!(s.user("anonymous").await.expect("get"), None);
    assert_eq!(s.user("cli").await.expect("get"), None);
    let users = s.users().await.expect("users");
    let renamed: Vec<_> = users
        .iter()
        .filter(|u| u.name.contains("-renamed-"))
        .collect();
    assert_eq!(renamed.len(), 2, "{users:?}");
    let anon = renamed
        .iter()
        .find(|u| u.name.starts_with("anonymous-renamed-"))
        .expect("anonymous renamed");
    assert!(berth_auth::valid_name(&anon.name), "{}", anon.name);
    assert!(anon.disabled && anon.admin && anon.password_hash == "$argon2id$h");
    let alice = s.user("alice").await.expect("get").expect("alice kept");
    assert!(!alice.disabled);
    let members = s.members("team-a").await.expect("members");
    assert_eq!(members.len(), 3, "{members:?}");
    assert!(members.contains(&(anon.name.clone(), "owner".to_owned())));
    let rows = s
        .audit_query(&AuditQuery {
            action: Some("user.rename".into()),
            limit: 10,
            ..AuditQuery::default()
        })
        .await
        .expect("audit");
    assert_eq!(rows.len(), 2, "{rows:?}");
    for (_, r) in &rows {
        assert_eq!(r.actor, "system:migration");
        assert!(
            r.detail.as_deref().is_some_and(|d| d.contains("reserved")),
            "{r:?}"
        );
    }
    s.close().await;
}

/// Repository names the quota must attribute exactly as `tenant_of` does: single segments
/// (in `library`), `library/...` (in `library` too), nested names, and names whose first
/// segment shares a prefix with a tenant or sorts right beside its range.
const TRICKY_NAMES: &[&str] = &[
    "stash",
    "library",
    "library/stash",
    "library/a/b",
    "library-x/y",
    "library0/y",
    "library.x/y",
    "libraryz/y",
    "a",
    "a/b",
    "a/b/c",
    "a-b/c",
    "a.b/c",
    "a_b/c",
    "a0/x",
    "ab/c",
    "team-a",
    "team-a/app",
    "team-a/x/y/z",
    "team-ab/x",
    "team-a-b/x",
    "team-a0/x",
    "team-a.b/x",
    "team-a_b/x",
    "stash/x",
];

/// More names, from a fixed pseudo-random walk over the characters names are made of,
/// weighted towards the separators and the bytes around `/` in byte order ('.', '0').
fn generated_names(n: usize) -> Vec<String> {
    const ALPHABET: &[u8] = b"ab0.-_/ab/z9";
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out = Vec::new();
    while out.len() < n {
        let len = 1 + (next() % 10) as usize;
        let name: String = (0..len)
            .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize] as char)
            .collect();
        // Every segment non-empty, as in any name the API accepts.
        if name.split('/').all(|seg| !seg.is_empty()) && !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

/// The quota's SQL selection of a tenant's repositories is `tenant_of`, name for name:
/// the listing it selects and the usage it sums agree with attributing every name through
/// `berth_auth::tenant_of`.
async fn quota_selection_agrees_with_tenant_of(db: Db) {
    let s = &db.store;
    let mut names: Vec<String> = TRICKY_NAMES.iter().map(|n| n.to_string()).collect();
    for n in generated_names(150) {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    // Every first segment is a tenant (with a row, so its usage can be read), plus
    // tenants that only share prefixes with names.
    let mut tenants: Vec<String> = vec!["library".into(), "team-a".into(), "team".into()];
    for n in &names {
        let first = n.split('/').next().unwrap_or_default().to_owned();
        if !tenants.contains(&first) {
            tenants.push(first);
        }
    }
    for t in &tenants {
        s.create_tenant(t, false, &TESTER).await.expect("tenant");
    }
    // One blob per repository, of a size of its own.
    let mut sizes = std::collections::BTreeMap::new();
    for (i, n) in names.iter().enumerate() {
        let size = 1000 + (i as u64) * 7919;
        let digest = format!("sha256:{i:064x}");
        s.link_blob(n, &digest, size, None, &TESTER)
            .await
            .expect("link");
        sizes.insert(n.clone(), size);
    }
    for t in &tenants {
        let mut expected: Vec<String> = names
            .iter()
            .filter(|n| berth_auth::tenant_of(n) == t.as_str())
            .cloned()
            .collect();
        expected.sort();
        let got = s.tenant_repositories(t).await.expect("selection");
        assert_eq!(got, expected, "repositories of tenant {t}");
        let sum: u64 = expected.iter().map(|n| sizes[n]).sum();
        let (_, usage) = s.tenant_quota(t).await.expect("usage").expect("tenant");
        assert_eq!(usage.blobs, sum, "usage of tenant {t}");
    }
    // The cases the issue names, spelled out.
    let library = s.tenant_repositories("library").await.expect("library");
    assert!(library.contains(&"library/stash".to_string()));
    assert!(library.contains(&"stash".to_string()));
    assert!(!library.contains(&"library-x/y".to_string()));
    let team_a = s.tenant_repositories("team-a").await.expect("team-a");
    assert_eq!(team_a, ["team-a/app", "team-a/x/y/z"]);
}

/// A manifest of exactly `content`, requiring nothing.
fn m<'a>(repo: &'a str, digest: &'a str, content: &'a [u8]) -> NewManifest<'a> {
    NewManifest {
        content,
        ..image(repo, digest, &[], &[])
    }
}

/// A tenant's usage is its distinct blobs, its distinct manifests, and its open upload
/// sessions (acknowledged bytes and reservations); each is decided against the quota.
async fn quota_counts_manifests_and_open_uploads(db: Db) {
    let s = &db.store;
    let t = &TESTER;
    assert!(s.create_tenant("q", false, t).await.expect("tenant"));
    assert!(s.set_tenant_quota("q", Some(1000), t).await.expect("quota"));
    assert_eq!(s.quota_of("q/x").await.expect("quota"), Some(1000));
    assert_eq!(s.quota_of("elsewhere/x").await.expect("quota"), None);
    assert_eq!(s.quota_of("plain").await.expect("quota"), None);
    let usage = |s: &MetaStore| {
        let s = s.clone();
        async move { s.tenant_quota("q").await.expect("usage").expect("tenant").1 }
    };

    assert_eq!(
        s.link_blob("q/a", D1, 300, None, t).await.expect("link"),
        Linked::Linked
    );
    // Manifests count by their bytes, each digest once per tenant.
    let content = vec![b' '; 200];
    assert_eq!(
        s.put_manifest(&m("q/a", M1, &content)).await.expect("put"),
        PutManifest::Stored
    );
    assert_eq!(
        s.put_manifest(&m("q/b", M1, &content)).await.expect("put"),
        PutManifest::Stored
    );
    assert_eq!(
        usage(s).await,
        Usage {
            blobs: 300,
            manifests: 200,
            uploads: 0
        }
    );
    let big = vec![b' '; 501];
    let PutManifest::OverQuota(q) = s.put_manifest(&m("q/a", M2, &big)).await.expect("put") else {
        panic!("a manifest past the quota must be refused");
    };
    assert_eq!(
        (q.tenant.as_str(), q.quota, q.used, q.size),
        ("q", 1000, 500, 501)
    );
    assert_eq!(s.get_manifest("q/a", M2).await.expect("get"), None);

    // An open session counts its reservation while an append runs, then its size.
    s.create_upload("u1", "q/c", b"st").await.expect("upload");
    s.create_upload("u2", "q/c", b"st").await.expect("upload");
    assert_eq!(
        s.reserve_upload("u1", 100, 10_000).await.expect("reserve"),
        Reservation::Granted(500),
        "as much as wanted up to the room left, at least what is needed"
    );
    assert_eq!(usage(s).await.uploads, 500);
    let Reservation::Refused(q) = s.reserve_upload("u2", 1, 1).await.expect("reserve") else {
        panic!("no room left for a second session");
    };
    assert_eq!((q.used, q.size), (1000, 1));
    // A manifest or a blob can no longer pass either.
    let d3 = "sha256:3333333333333333333333333333333333333333333333333333333333333333";
    assert!(matches!(
        s.link_blob("q/c", d3, 1, None, t).await.expect("link"),
        Linked::OverQuota(_)
    ));
    assert!(
        s.advance_upload("u1", 0, 100, b"st", 500)
            .await
            .expect("advance")
    );
    assert_eq!(usage(s).await.uploads, 100);
    assert_eq!(
        s.reserve_upload("u2", 50, 50).await.expect("reserve"),
        Reservation::Granted(50)
    );
    s.release_upload("u2", 50).await.expect("release");
    assert_eq!(usage(s).await.uploads, 100);
    assert_eq!(
        s.reserve_upload("gone", 1, 1).await.expect("reserve"),
        Reservation::UnknownUpload
    );

    // Before its bytes are placed, a session's blob is judged without the session itself.
    assert_eq!(
        s.admit_blob("q/c", D2, 500, Some("u1"))
            .await
            .expect("admit"),
        None
    );
    let q = s
        .admit_blob("q/c", D2, 501, Some("u1"))
        .await
        .expect("admit")
        .expect("past the quota");
    assert_eq!((q.used, q.size), (500, 501));
    // Counted already (linked in another repository of the tenant): no room needed.
    assert_eq!(
        s.admit_blob("q/z", D1, 300, None).await.expect("admit"),
        None
    );
    // The link closes the session: its bytes become the blob's.
    assert_eq!(
        s.link_blob("q/c", D2, 100, Some("u1"), t)
            .await
            .expect("link"),
        Linked::Linked
    );
    assert_eq!(
        usage(s).await,
        Usage {
            blobs: 400,
            manifests: 200,
            uploads: 0
        }
    );
    assert_eq!(s.get_upload("u1").await.expect("get"), None);

    // Room freed by a removal is found again: the decisions' content bound only errs high,
    // and a decision it would refuse sums the usage afresh first.
    let d4 = "sha256:4444444444444444444444444444444444444444444444444444444444444444";
    let d5 = "sha256:5555555555555555555555555555555555555555555555555555555555555555";
    assert_eq!(
        s.link_blob("q/d", d4, 400, None, t).await.expect("link"),
        Linked::Linked
    );
    assert!(matches!(
        s.link_blob("q/d", d5, 400, None, t).await.expect("link"),
        Linked::OverQuota(_)
    ));
    assert_eq!(
        s.unlink_blob("q/d", d4, t).await.expect("unlink"),
        Removal::Removed
    );
    assert_eq!(
        s.link_blob("q/d", d5, 400, None, t).await.expect("link"),
        Linked::Linked
    );
    assert_eq!(usage(s).await.blobs, 800);

    // Without a quota, sessions reserve nothing and nothing is refused.
    assert!(s.set_tenant_quota("q", None, t).await.expect("quota"));
    assert_eq!(
        s.reserve_upload("u2", 1 << 40, 1 << 40)
            .await
            .expect("reserve"),
        Reservation::Unlimited
    );
    assert_eq!(
        s.put_manifest(&m("q/a", M2, &big)).await.expect("put"),
        PutManifest::Stored
    );

    // `library/stash` belongs to `library`, whose quota holds it.
    assert!(
        s.set_tenant_quota("library", Some(100), t)
            .await
            .expect("quota")
    );
    assert_eq!(
        s.link_blob("library/stash", IDX, 100, None, t)
            .await
            .expect("link"),
        Linked::Linked
    );
    let (_, lib) = s
        .tenant_quota("library")
        .await
        .expect("q")
        .expect("library");
    assert_eq!(lib.blobs, 100);
    assert!(matches!(
        s.link_blob("stash", D2, 1, None, t).await.expect("link"),
        Linked::OverQuota(_)
    ));
}

async fn p2p_state_is_shared_ordered_and_expires(db: Db) {
    let s = db.store.clone();
    let d = |i: u32| format!("sha256:{i:064x}");
    s.p2p_enroll_node("10.0.0.2", "node-2", 5051, 2000)
        .await
        .expect("enroll");
    assert_eq!(
        s.p2p_node("10.0.0.2", 1000).await.expect("node"),
        Some(("node-2".to_owned(), 5051))
    );
    assert_eq!(s.p2p_node("10.0.0.2", 2000).await.expect("node"), None);
    // Two manifests pulled; pulling the first again moves its grant past the second.
    s.p2p_record_pull("10.0.0.2", &d(100), "a/app", &[d(1), d(2)], 1500)
        .await
        .expect("pull");
    s.p2p_record_pull("10.0.0.2", &d(101), "a/other", &[d(2), d(3)], 1600)
        .await
        .expect("pull");
    s.p2p_record_pull("10.0.0.2", &d(100), "a/app", &[d(1), d(2)], 1700)
        .await
        .expect("pull");
    let g = s.p2p_grants("10.0.0.2", 0, 1000).await.expect("grants");
    let manifests: Vec<&str> = g.iter().map(|g| g.manifest.as_str()).collect();
    assert_eq!(manifests, [d(101).as_str(), d(100).as_str()]);
    assert_eq!(g[1].blobs, [d(1), d(2)]);
    assert!(
        s.p2p_grants("10.0.0.2", g[1].id, 1000)
            .await
            .expect("grants")
            .is_empty()
    );
    assert!(
        s.p2p_grants("10.0.0.3", 0, 1000)
            .await
            .expect("grants")
            .is_empty()
    );
    assert_eq!(
        s.p2p_pull("10.0.0.2", &d(2), 1000).await.expect("pull"),
        Some("a/app".to_owned())
    );
    assert_eq!(
        s.p2p_pull("10.0.0.2", &d(3), 1650).await.expect("pull"),
        None
    );
    assert_eq!(
        s.p2p_pull("10.0.0.3", &d(1), 1000).await.expect("pull"),
        None
    );

    // Eight nodes announcing one blob at once are ordered: each is told of those before
    // it, so exactly one fetches from the registry.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = s.clone();
        let digest = d(1);
        tasks.push(tokio::spawn(async move {
            s.p2p_announce(
                &digest,
                &format!("node-{i}"),
                &format!("10.0.1.{i}"),
                &format!("10.0.1.{i}:5051"),
                i64::from(i),
                1500,
                1000,
                256,
            )
            .await
            .expect("announce")
            .len()
        }));
    }
    let mut seen = Vec::new();
    for t in tasks {
        seen.push(t.await.expect("task"));
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..8).collect::<Vec<_>>());
    // Past the cap, the oldest holder goes.
    s.p2p_enroll_node("10.0.1.9", "node-9", 5051, 2000)
        .await
        .expect("enroll");
    let earlier = s
        .p2p_announce(
            &d(1),
            "node-9",
            "10.0.1.9",
            "10.0.1.9:5051",
            99,
            1500,
            1000,
            8,
        )
        .await
        .expect("announce");
    assert_eq!(earlier.len(), 7);
    assert_eq!(s.p2p_holders(Some(&d(1)), 1000).await.expect("h").len(), 8);
    // Enrolling another name at a holder's address forgets what it announced.
    s.p2p_enroll_node("10.0.1.9", "renamed", 5051, 2000)
        .await
        .expect("enroll");
    assert_eq!(s.p2p_holders(Some(&d(1)), 1000).await.expect("h").len(), 7);

    // Expired rows are purged, the others kept.
    assert_eq!(s.p2p_pull_rows().await.expect("rows"), 3);
    let purged = s.p2p_purge(1550).await.expect("purge");
    assert_eq!(purged, 7, "7 holders");
    assert_eq!(s.p2p_pull_rows().await.expect("rows"), 3);
    s.p2p_purge(1650).await.expect("purge");
    assert_eq!(s.p2p_pull_count(0).await.expect("rows"), 2);
    assert_eq!(s.p2p_grants("10.0.0.2", 0, 0).await.expect("g").len(), 1);
    s.p2p_purge(2000).await.expect("purge");
    assert_eq!(s.p2p_pull_rows().await.expect("rows"), 0);
    assert!(s.p2p_nodes(0).await.expect("nodes").is_empty());
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::sqlite().await).await })*
        }
        mod on_postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::postgres().await).await })*
        }
    };
}

suite!(
    blobs_are_linked_per_repository,
    manifest_requires_its_blobs,
    index_children_are_protected,
    tags_order_and_pages,
    catalog_lists_repositories_with_manifests,
    referrers_by_subject_and_type,
    uploads_advance_only_from_where_they_stand,
    every_change_is_audited,
    concurrent_writers_do_not_fail,
    fsck_listings_page_and_stay_read_only,
    users_tenants_members_and_robots,
    signing_keys_rotate,
    audit_queries_filter_and_page,
    audit_rows_are_pruned_by_age_in_batches,
    immutable_tags_are_kept,
    tag_history_records_every_change,
    concurrent_immutable_pushes_one_wins,
    reserved_users_are_renamed_and_disabled_by_the_migration,
    version_keys_are_written_and_filled_in_at_start,
    quota_selection_agrees_with_tenant_of,
    quota_counts_manifests_and_open_uploads,
    jobs_commit_with_their_change,
    lanes_run_in_order_and_do_not_wait_for_each_other,
    queue_leases_pass_on_when_they_expire,
    dead_jobs_are_listed_and_redelivered,
    two_workers_never_hold_one_queue,
    webhooks_are_stored_per_tenant,
    catalogs_are_kept_per_layer_and_per_image,
    advisories_import_atomically_and_findings_follow_generations,
    distinct_packages_follow_catalog_writes_and_pruning,
    concurrent_writers_of_one_catalog_count_it_once,
    p2p_state_is_shared_ordered_and_expires,
);

/// Four replicas (or `berth migrate` init containers) starting at once on one database:
/// none fails, and every step is applied once. On an empty schema, and on one an older
/// Berth left at version 5.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_starting_together_migrate_once() {
    for older in [false, true] {
        let url = berth_testkit::postgres_url().await;
        if older {
            let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&url)
                .await
                .expect("connect");
            sqlx::raw_sql(
                "CREATE TABLE berth_schema (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
            )
            .execute(&mut conn)
            .await
            .expect("schema table");
            for (i, sql) in [
                include_str!("../migrations/postgres/0001_core.sql"),
                include_str!("../migrations/postgres/0002_access.sql"),
                include_str!("../migrations/postgres/0003_tag_history.sql"),
                include_str!("../migrations/postgres/0004_gc.sql"),
                include_str!("../migrations/postgres/0005_quota.sql"),
            ]
            .iter()
            .enumerate()
            {
                sqlx::raw_sql(sqlx::AssertSqlSafe(*sql))
                    .execute(&mut conn)
                    .await
                    .expect("an older step");
                sqlx::query("INSERT INTO berth_schema (version, applied_at) VALUES ($1, 0)")
                    .bind(i as i64 + 1)
                    .execute(&mut conn)
                    .await
                    .expect("version row");
            }
        }
        let starts: Vec<_> = (0..4)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { MetaStore::connect(&url).await })
            })
            .collect();
        for s in starts {
            let store = s.await.expect("task").expect("every replica starts");
            let (v, known) = store.schema_version().await.expect("version");
            assert_eq!(v, known, "older = {older}");
            store.close().await;
        }
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&url)
            .await
            .expect("connect");
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM berth_schema")
            .fetch_one(&mut conn)
            .await
            .expect("count");
        let distinct: i64 = sqlx::query_scalar("SELECT count(DISTINCT version) FROM berth_schema")
            .fetch_one(&mut conn)
            .await
            .expect("count");
        assert_eq!(rows, distinct, "each step recorded once");
    }
}
// ---- the job queue ----

/// The hook the job tests install: one job per change, describing it, in queue `q`.
fn describe_change(c: &berth_meta::Change<'_>) -> Vec<NewJob> {
    vec![NewJob {
        kind: "test".into(),
        queue: "q".into(),
        lane: c.repo.into(),
        payload: format!(
            "{:?} {} {} tag={:?} previous={:?} tags={:?} size={:?} by={}",
            c.kind, c.repo, c.digest, c.tag, c.previous, c.tags, c.size, c.actor.name
        ),
    }]
}

const QUEUEING: TagGuard<'static> = TagGuard {
    immutable: &digits_rule,
    admin: false,
    jobs: &describe_change,
};

async fn payloads(s: &MetaStore) -> Vec<String> {
    let mut jobs = s
        .jobs(&JobQuery {
            limit: 100,
            ..JobQuery::default()
        })
        .await
        .expect("jobs");
    jobs.reverse();
    jobs.into_iter().map(|j| j.payload).collect()
}

/// Every change queues its job in its own transaction; a refused or rolled-back change
/// queues nothing.
async fn jobs_commit_with_their_change(db: Db) {
    let s = &db.store;
    link_d1_d2(s, "r").await;
    let refs = blob_refs();
    let m1 = image("r", M1, &refs, &["app"]);
    let m2 = NewManifest {
        content: b"{\"two\": 2}",
        ..image("r", M2, &refs, &["app"])
    };
    assert_eq!(
        s.put_manifest_guarded(&m1, QUEUEING).await.expect("push"),
        PutManifest::Stored
    );
    assert_eq!(
        s.put_manifest_guarded(&m2, QUEUEING).await.expect("move"),
        PutManifest::Stored
    );
    // Refused pushes: a missing blob, an immutable tag moved.
    let missing = [ManifestRef {
        digest: "sha256:9999999999999999999999999999999999999999999999999999999999999999".into(),
        kind: RefKind::Blob,
        required: true,
    }];
    assert!(matches!(
        s.put_manifest_guarded(&image("r", IDX, &missing, &[]), QUEUEING)
            .await
            .expect("put"),
        PutManifest::Missing(_)
    ));
    s.put_manifest_guarded(&image("r", M1, &refs, &["1.0"]), QUEUEING)
        .await
        .expect("immutable tag created");
    assert!(matches!(
        s.put_manifest_guarded(&image("r", M2, &refs, &["1.0"]), QUEUEING)
            .await
            .expect("put"),
        PutManifest::Immutable { .. }
    ));
    assert_eq!(
        s.rollback_tag("r", "app", M1, Some(M2), &who("carol"), QUEUEING)
            .await
            .expect("rollback"),
        SetTag::Set
    );
    assert_eq!(
        s.delete_tag_guarded("r", "app", &who("bob"), QUEUEING)
            .await
            .expect("delete tag"),
        Removal::Removed
    );
    // An index listing M2: deleting M2 is refused, and rolls back its job.
    let child = [ManifestRef {
        digest: M2.into(),
        kind: RefKind::Manifest,
        required: true,
    }];
    s.put_manifest(&image("r", IDX, &child, &["idx"]))
        .await
        .expect("index");
    assert!(matches!(
        s.delete_manifest_guarded("r", M2, &who("dave"), QUEUEING)
            .await
            .expect("delete"),
        Removal::Referenced(_)
    ));
    s.put_manifest_guarded(&image("r", M1, &refs, &["again"]), QUEUEING)
        .await
        .expect("second tag on M1");
    s.put_manifest_guarded(&image("r", M1, &refs, &["1.0"]), QUEUEING)
        .await
        .expect("re-push");
    assert_eq!(
        s.delete_manifest_guarded("r", M1, &who("erin"), ADMIN)
            .await
            .expect("delete without jobs"),
        Removal::Removed,
    );
    let got = payloads(s).await;
    assert_eq!(
        got,
        [
            format!("Push r {M1} tag=Some(\"app\") previous=None tags=[] size=Some(19) by=tester"),
            format!(
                "Push r {M2} tag=Some(\"app\") previous=Some(\"{M1}\") tags=[] size=Some(10) by=tester"
            ),
            format!("Push r {M1} tag=Some(\"1.0\") previous=None tags=[] size=Some(19) by=tester"),
            format!(
                "Rollback r {M1} tag=Some(\"app\") previous=Some(\"{M2}\") tags=[] size=Some(19) by=carol"
            ),
            format!("DeleteTag r {M1} tag=Some(\"app\") previous=None tags=[] size=None by=bob"),
            format!(
                "Push r {M1} tag=Some(\"again\") previous=None tags=[] size=Some(19) by=tester"
            ),
            format!("Push r {M1} tag=Some(\"1.0\") previous=None tags=[] size=Some(19) by=tester"),
        ],
        "one job per committed change, none for the refused ones"
    );
    let deleting = TagGuard {
        admin: true,
        ..QUEUEING
    };
    for tag in ["back", "1.0"] {
        s.put_manifest_guarded(&image("r", M1, &refs, &[tag]), QUEUEING)
            .await
            .expect("again");
    }
    assert_eq!(
        s.delete_manifest_guarded("r", M1, &who("erin"), deleting)
            .await
            .expect("delete"),
        Removal::Removed
    );
    let got = payloads(s).await;
    assert_eq!(
        got.last().map(String::as_str),
        Some(format!("DeleteManifest r {M1} tag=None previous=None tags=[\"1.0\", \"back\"] size=None by=erin").as_str())
    );
}

fn job(queue: &str, lane: &str, payload: &str) -> NewJob {
    NewJob {
        kind: "test".into(),
        queue: queue.into(),
        lane: lane.into(),
        payload: payload.into(),
    }
}

fn names(jobs: &[berth_meta::Job]) -> Vec<&str> {
    jobs.iter().map(|j| j.payload.as_str()).collect()
}

/// A lane waits while its head waits for a retry; other lanes do not.
async fn lanes_run_in_order_and_do_not_wait_for_each_other(db: Db) {
    let s = &db.store;
    s.enqueue_jobs(&[
        job("q", "a", "a1"),
        job("q", "b", "b1"),
        job("q", "a", "a2"),
        job("other", "a", "x1"),
        job("q", "b", "b2"),
    ])
    .await
    .expect("enqueue");
    let now = berth_meta::now_micros();
    let first = s.next_jobs("q", now, 10).await.expect("next");
    assert_eq!(names(&first), ["a1", "b1", "a2", "b2"]);
    assert_eq!(
        names(&s.next_jobs("q", now, 2).await.expect("next")),
        ["a1", "b1"]
    );
    let until = now + 60_000_000;
    assert!(s.take_queue("q", "w1", until).await.expect("lease"));
    let a1 = first[0].id;
    let b1 = first[1].id;
    let later = now + 10_000_000;
    assert!(
        s.finish_jobs(
            "q",
            "w1",
            until,
            &[
                (
                    a1,
                    JobOutcome::Retry {
                        at: later,
                        error: "500".into()
                    }
                ),
                (b1, JobOutcome::Done),
            ],
        )
        .await
        .expect("finish")
    );
    // a1 waits, so a2 waits behind it; b2 goes on.
    assert_eq!(
        names(&s.next_jobs("q", now + 1, 10).await.expect("next")),
        ["b2"]
    );
    let again = s.next_jobs("q", later, 10).await.expect("next");
    assert_eq!(names(&again), ["a1", "a2", "b2"], "due again, in order");
    assert_eq!(again[0].attempts, 1);
    assert_eq!(again[0].last_error.as_deref(), Some("500"));
    // Other queues are not touched.
    assert_eq!(
        names(&s.next_jobs("other", now, 10).await.expect("next")),
        ["x1"]
    );
}

/// One holder at a time; an expired lease passes on; a resting queue is taken by nobody.
async fn queue_leases_pass_on_when_they_expire(db: Db) {
    let s = &db.store;
    s.enqueue_jobs(&[job("q", "a", "a1")])
        .await
        .expect("enqueue");
    let now = berth_meta::now_micros();
    assert!(s.queue_ready("q", "w1", now).await.expect("ready"));
    assert!(!s.queue_ready("empty", "w1", now).await.expect("ready"));
    assert!(
        s.take_queue("q", "w1", now + 60_000_000)
            .await
            .expect("take")
    );
    assert!(
        s.take_queue("q", "w1", now + 90_000_000)
            .await
            .expect("renew"),
        "the holder renews"
    );
    assert!(
        !s.take_queue("q", "w2", now + 60_000_000)
            .await
            .expect("take")
    );
    assert!(!s.queue_ready("q", "w2", now).await.expect("ready"));
    assert!(
        s.queue_ready("q", "w1", now).await.expect("ready"),
        "its own lease"
    );
    // w1 dies; its lease runs out (here: renewed into the past).
    let id = s.next_jobs("q", now, 1).await.expect("next")[0].id;
    assert!(s.finish_jobs("q", "w1", now - 1, &[]).await.expect("renew"));
    assert!(
        s.take_queue("q", "w2", now + 60_000_000)
            .await
            .expect("take over")
    );
    // w1 comes back and finishes what it ran: recorded, but it knows it lost the queue.
    assert!(
        !s.finish_jobs("q", "w1", now + 60_000_000, &[(id, JobOutcome::Done)])
            .await
            .expect("finish")
    );
    assert!(s.next_jobs("q", now, 10).await.expect("next").is_empty());
    // Rest: nobody takes the queue until then, whatever is queued.
    s.enqueue_jobs(&[job("q", "a", "a2")])
        .await
        .expect("enqueue");
    s.release_queue("q", "w2", now + 3_600_000_000)
        .await
        .expect("release");
    assert!(!s.queue_ready("q", "w1", now).await.expect("ready"));
    assert!(
        !s.take_queue("q", "w1", now + 60_000_000)
            .await
            .expect("take")
    );
    // A release by someone else changes nothing.
    s.release_queue("q", "w1", 0).await.expect("release");
    assert!(!s.queue_ready("q", "w3", now).await.expect("ready"));
}

/// A job out of attempts is kept as dead, listed, and sent again on request.
async fn dead_jobs_are_listed_and_redelivered(db: Db) {
    let s = &db.store;
    s.enqueue_jobs(&[
        job("q", "a", "a1"),
        job("q", "a", "a2"),
        job("p", "b", "b1"),
    ])
    .await
    .expect("enqueue");
    let now = berth_meta::now_micros();
    let until = now + 60_000_000;
    assert!(s.take_queue("q", "w", until).await.expect("take"));
    let jobs = s.next_jobs("q", now, 10).await.expect("next");
    s.finish_jobs(
        "q",
        "w",
        until,
        &[(
            jobs[0].id,
            JobOutcome::Dead {
                error: "HTTP 500 after 10 attempts".into(),
            },
        )],
    )
    .await
    .expect("finish");
    // Dead, the head no longer holds its lane.
    assert_eq!(
        names(&s.next_jobs("q", now, 10).await.expect("next")),
        ["a2"]
    );
    let dead = s
        .jobs(&JobQuery {
            state: Some(JobState::Dead),
            limit: 10,
            ..JobQuery::default()
        })
        .await
        .expect("dead");
    assert_eq!(names(&dead), ["a1"]);
    assert_eq!(dead[0].attempts, 1);
    assert_eq!(
        dead[0].last_error.as_deref(),
        Some("HTTP 500 after 10 attempts")
    );
    let only_p = s
        .jobs(&JobQuery {
            queues: Some(vec!["p".into()]),
            limit: 10,
            ..JobQuery::default()
        })
        .await
        .expect("by queue");
    assert_eq!(names(&only_p), ["b1"]);
    let paged = s
        .jobs(&JobQuery {
            before_id: Some(only_p[0].id),
            limit: 1,
            ..JobQuery::default()
        })
        .await
        .expect("page");
    assert_eq!(names(&paged), ["a2"], "newest first, below the cursor");
    // The queue rests (its endpoint was down); redelivery wakes it.
    s.release_queue("q", "w", now + 3_600_000_000)
        .await
        .expect("rest");
    assert!(
        s.redeliver_job(dead[0].id, &who("admin"))
            .await
            .expect("redeliver")
    );
    assert!(!s.redeliver_job(999_999, &who("admin")).await.expect("none"));
    let back = s.job(dead[0].id).await.expect("job").expect("still there");
    assert_eq!((back.state, back.attempts), (JobState::Pending, 0));
    assert!(
        s.queue_ready("q", "w", berth_meta::now_micros())
            .await
            .expect("ready")
    );
    assert_eq!(
        names(
            &s.next_jobs("q", berth_meta::now_micros(), 10)
                .await
                .expect("next")
        ),
        ["a1", "a2"]
    );
    let audit = s
        .audit_query(&AuditQuery {
            action: Some("job.redeliver".into()),
            limit: 10,
            ..AuditQuery::default()
        })
        .await
        .expect("audit");
    assert_eq!(audit.len(), 1);
    assert_eq!(
        audit[0].1.target.as_deref(),
        Some(format!("q#{}", dead[0].id).as_str())
    );
    let backlog = s.job_backlog().await.expect("backlog");
    assert_eq!(backlog.len(), 2);
    assert_eq!(
        (
            backlog[1].queue.as_str(),
            backlog[1].pending,
            backlog[1].dead
        ),
        ("q", 2, 0)
    );
    assert!(backlog[1].oldest_pending.is_some());
    // Pruning takes only dead jobs that died before the cut.
    s.finish_jobs(
        "q",
        "w",
        until,
        &[(dead[0].id, JobOutcome::Dead { error: "x".into() })],
    )
    .await
    .expect("dead again");
    assert_eq!(s.prune_dead_jobs(now - 1, 10).await.expect("prune"), 0);
    assert_eq!(
        s.prune_dead_jobs(berth_meta::now_micros() + 1, 10)
            .await
            .expect("prune"),
        1
    );
}

/// Two workers race for one queue again and again: never both hold it.
async fn two_workers_never_hold_one_queue(db: Db) {
    let s = db.store.clone();
    s.enqueue_jobs(&[job("q", "a", "a1")])
        .await
        .expect("enqueue");
    for round in 0..20 {
        let until = berth_meta::now_micros() + 60_000_000;
        let (a, b) = tokio::join!(
            s.take_queue("q", "w1", until),
            s.take_queue("q", "w2", until)
        );
        let (a, b) = (a.expect("w1"), b.expect("w2"));
        assert!(
            a ^ b,
            "round {round}: exactly one holds the queue ({a}, {b})"
        );
        let winner = if a { "w1" } else { "w2" };
        s.release_queue("q", winner, 0).await.expect("release");
    }
}

async fn webhooks_are_stored_per_tenant(db: Db) {
    let s = &db.store;
    let admin = who("admin");
    assert!(
        s.put_webhook(None, "ci", "{\"v\":1}", &admin)
            .await
            .expect("put")
    );
    assert!(
        s.put_webhook(None, "ci", "{\"v\":2}", &admin)
            .await
            .expect("replace")
    );
    assert!(
        !s.put_webhook(Some("nope"), "ci", "{}", &admin)
            .await
            .expect("no tenant")
    );
    s.create_tenant("team-a", false, &admin)
        .await
        .expect("tenant");
    assert!(
        s.put_webhook(Some("team-a"), "ci", "{\"v\":3}", &admin)
            .await
            .expect("put")
    );
    assert_eq!(
        s.webhooks().await.expect("list"),
        [
            (None, "ci".to_owned(), "{\"v\":2}".to_owned()),
            (
                Some("team-a".to_owned()),
                "ci".to_owned(),
                "{\"v\":3}".to_owned()
            ),
        ]
    );
    s.enqueue_jobs(&[
        job("webhook:team-a/ci", "r", "x"),
        job("webhook:ci", "r", "y"),
    ])
    .await
    .expect("enqueue");
    assert!(
        s.delete_webhook(Some("team-a"), "ci", "webhook:team-a/ci", &admin)
            .await
            .expect("delete")
    );
    assert!(
        !s.delete_webhook(Some("team-a"), "ci", "webhook:team-a/ci", &admin)
            .await
            .expect("again")
    );
    assert_eq!(
        names(
            &s.jobs(&JobQuery {
                limit: 10,
                ..JobQuery::default()
            })
            .await
            .expect("jobs")
        ),
        ["y"]
    );
    assert_eq!(s.webhooks().await.expect("list").len(), 1);
    // A tenant's webhooks go with it.
    s.put_webhook(Some("team-a"), "ci", "{}", &admin)
        .await
        .expect("put");
    s.delete_tenant("team-a", &admin)
        .await
        .expect("delete tenant");
    assert_eq!(s.webhooks().await.expect("list").len(), 1);
}

fn package(purl: &str, name: &str, source: Option<&str>, layer: &str) -> CatalogPackage {
    CatalogPackage {
        purl: purl.into(),
        ecosystem: "deb".into(),
        name: name.into(),
        version: "1.0-1".into(),
        source_name: source.map(str::to_owned),
        source_version: source.map(|_| "1.0-1".to_owned()),
        arch: Some("amd64".into()),
        layer_digest: layer.into(),
        path: "var/lib/dpkg/status".into(),
    }
}

async fn catalogs_are_kept_per_layer_and_per_image(db: Db) {
    let s = &db.store;
    assert_eq!(s.layer_catalog(D1).await.expect("get"), None);
    s.put_layer_catalog(D1, 1, Some("more than 10 entries"), "{\"packages\":[]}")
        .await
        .expect("put");
    s.put_layer_catalog(D1, 2, None, "{\"v\":2}")
        .await
        .expect("replace");
    let l = s.layer_catalog(D1).await.expect("get").expect("stored");
    assert_eq!(
        (l.cataloger_version, l.partial.as_deref(), l.result.as_str()),
        (2, None, "{\"v\":2}")
    );
    assert_eq!(s.image_catalog(M1).await.expect("get"), None);
    // More packages than one insert statement takes, one of them twice.
    let mut packages: Vec<CatalogPackage> = (0..250)
        .map(|i| {
            package(
                &format!("pkg:deb/debian/p{i:03}@1.0-1"),
                &format!("p{i:03}"),
                None,
                D1,
            )
        })
        .collect();
    packages.push(package(
        "pkg:deb/debian/libc6@1.0-1",
        "libc6",
        Some("glibc"),
        D2,
    ));
    packages.push(package(
        "pkg:deb/debian/libc6@1.0-1",
        "libc6",
        Some("glibc"),
        D1,
    ));
    let row = ImageCatalogRow {
        digest: M1.into(),
        status: "partial".into(),
        detail: "{}".into(),
        cataloger_version: 1,
        cataloged_at: 7,
        packages,
    };
    s.put_image_catalog(&row).await.expect("put");
    let got = s.image_catalog(M1).await.expect("get").expect("stored");
    assert_eq!(got.status, "partial");
    assert_eq!(got.packages.len(), 251);
    assert_eq!(got.packages[0].purl, "pkg:deb/debian/libc6@1.0-1");
    assert_eq!(got.packages[0].layer_digest, D2, "the first found is kept");
    assert_eq!(got.packages[0].source_name.as_deref(), Some("glibc"));
    assert_eq!(got.packages[1].source_name, None);
    // Matching by source package name finds the binary package.
    let hits = s
        .images_with_package("deb", "glibc", 10)
        .await
        .expect("match");
    assert_eq!(hits.len(), 1);
    assert_eq!((hits[0].0.as_str(), hits[0].1.name.as_str()), (M1, "libc6"));
    assert!(
        s.images_with_package("apk", "glibc", 10)
            .await
            .expect("match")
            .is_empty()
    );
    // Replacing a catalog replaces its packages whole.
    let again = ImageCatalogRow {
        status: "complete".into(),
        packages: vec![package("pkg:deb/debian/bash@1.0-1", "bash", None, D1)],
        ..row
    };
    s.put_image_catalog(&again).await.expect("replace");
    let got = s.image_catalog(M1).await.expect("get").expect("stored");
    assert_eq!(got.status, "complete");
    assert_eq!(got.packages.len(), 1);
    assert!(
        s.images_with_package("deb", "glibc", 10)
            .await
            .expect("match")
            .is_empty()
    );
}

fn adv(id: &str, package: &str) -> AdvisoryRow {
    AdvisoryRow {
        id: id.into(),
        ecosystem: "npm".into(),
        package: package.into(),
        release: String::new(),
        record: format!("{{\"id\":\"{id}\"}}"),
    }
}

fn feed(name: &str, complete: bool, rows: Vec<AdvisoryRow>, withdrawn: &[&str]) -> FeedImport {
    FeedImport {
        name: name.into(),
        format: "osv".into(),
        complete,
        rows,
        withdrawn: withdrawn.iter().map(|s| s.to_string()).collect(),
        skipped: 1,
        newest_modified: Some("2024-01-01T00:00:00Z".into()),
    }
}

async fn advisories_import_atomically_and_findings_follow_generations(db: Db) {
    let s = &db.store;
    assert_eq!(s.vuln_state().await.expect("state").0, 0);
    // More rows than one insert statement takes.
    let many: Vec<AdvisoryRow> = (0..230)
        .map(|i| adv(&format!("GHSA-{i}"), "lodash"))
        .collect();
    let g1 = s
        .import_advisories(&[
            feed("osv:npm", true, many.clone(), &[]),
            feed("osv", false, vec![adv("GHSA-x", "left-pad")], &[]),
        ])
        .await
        .expect("import");
    assert_eq!(g1, 1);
    assert_eq!(
        s.advisories_for("npm", "lodash").await.expect("q").len(),
        230
    );
    // The same import again: the same records (idempotent), a new generation.
    let g2 = s
        .import_advisories(&[feed("osv:npm", true, many, &[])])
        .await
        .expect("again");
    assert_eq!(g2, 2);
    assert_eq!(s.all_advisories().await.expect("all").1.len(), 231);
    // A complete feed replaces what it held; a withdrawn id leaves every OSV feed.
    s.import_advisories(&[feed(
        "osv:npm",
        true,
        vec![adv("GHSA-1", "lodash"), adv("GHSA-2", "lodash")],
        &["GHSA-x"],
    )])
    .await
    .expect("replace");
    let (g3, all) = s.all_advisories().await.expect("all");
    assert_eq!(g3, 3);
    let mut ids: Vec<String> = all;
    ids.sort();
    assert_eq!(ids, vec!["{\"id\":\"GHSA-1\"}", "{\"id\":\"GHSA-2\"}"]);
    let feeds = s.advisory_feeds().await.expect("feeds");
    assert_eq!(
        feeds
            .iter()
            .map(|f| (f.name.as_str(), f.records))
            .collect::<Vec<_>>(),
        vec![("osv", 0), ("osv:npm", 2)]
    );

    // Findings per purl, read through the image's packages.
    let row = ImageCatalogRow {
        digest: M1.into(),
        status: "complete".into(),
        detail: "{}".into(),
        cataloger_version: 1,
        cataloged_at: 7,
        packages: vec![
            package("pkg:npm/lodash@4.17.20", "lodash", None, D1),
            package("pkg:npm/ok@1.0.0", "ok", None, D1),
        ],
    };
    s.put_image_catalog(&row).await.expect("put");
    assert_eq!(s.distinct_packages().await.expect("distinct").len(), 2);
    assert_eq!(
        s.unmatched_packages(M1, g3).await.expect("unmatched").len(),
        2
    );
    let f = FindingRow {
        purl: "pkg:npm/lodash@4.17.20".into(),
        id: "GHSA-1".into(),
        severity: "high".into(),
        finding: "{}".into(),
    };
    let purls: Vec<String> = row.packages.iter().map(|p| p.purl.clone()).collect();
    // Under a generation that is no longer current nothing is written.
    assert!(
        !s.put_findings(g2, &purls, std::slice::from_ref(&f), true)
            .await
            .expect("stale")
    );
    assert!(
        s.put_findings(g3, &purls, std::slice::from_ref(&f), true)
            .await
            .expect("put")
    );
    assert!(
        s.unmatched_packages(M1, g3)
            .await
            .expect("unmatched")
            .is_empty()
    );
    assert_eq!(
        s.image_findings(M1).await.expect("findings"),
        vec![f.clone()]
    );
    assert!(s.vuln_state().await.expect("state").1 > 0);
    // The next import makes every package stale until it is matched again.
    let g4 = s
        .import_advisories(&[feed("osv", false, vec![], &[])])
        .await
        .expect("import");
    assert_eq!(
        s.unmatched_packages(M1, g4).await.expect("unmatched").len(),
        2
    );
    // A partial re-match replaces only the purls it names.
    assert!(
        s.put_findings(g4, &purls[1..], &[], false)
            .await
            .expect("put")
    );
    assert_eq!(s.image_findings(M1).await.expect("findings"), vec![f]);
    assert_eq!(
        s.unmatched_packages(M1, g4).await.expect("unmatched").len(),
        1
    );
}

/// The purls `distinct_packages` lists, sorted.
async fn distinct_purls(s: &MetaStore) -> Vec<String> {
    let mut v: Vec<String> = s
        .distinct_packages()
        .await
        .expect("distinct")
        .into_iter()
        .map(|k| k.purl)
        .collect();
    v.sort();
    v
}

/// `catalog_packages` against an oracle (the union of the catalogs stored): random catalog
/// writes over three images (more packages than one statement takes, duplicates within an
/// image, replacements that keep, gain and lose purls), then pruning by GC, then the
/// migration's backfill from `image_packages` alone.
async fn distinct_packages_follow_catalog_writes_and_pruning(db: Db) {
    use std::collections::{BTreeMap, BTreeSet};
    const M3: &str = "sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";
    let s = &db.store;
    link_d1_d2(s, "r").await;
    let refs = blob_refs();
    // M1 and M2 are stored manifests; M3's catalog belongs to nothing stored.
    for m in [M1, M2] {
        assert_eq!(
            s.put_manifest(&image("r", m, &refs, &[]))
                .await
                .expect("manifest"),
            PutManifest::Stored
        );
    }
    let pkg = |i: u64| {
        package(
            &format!("pkg:deb/debian/p{i}@1.0-1?upstream=s{i}"),
            &format!("p{i}"),
            Some(&format!("s{i}")),
            D1,
        )
    };
    let mut held: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let oracle = |held: &BTreeMap<&str, BTreeSet<String>>| -> Vec<String> {
        let all: BTreeSet<String> = held.values().flatten().cloned().collect();
        all.into_iter().collect()
    };
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    for step in 0..30 {
        let image = [M1, M2, M3][next(3) as usize];
        let packages: Vec<CatalogPackage> = (0..next(160)).map(|_| pkg(next(220))).collect();
        held.insert(image, packages.iter().map(|p| p.purl.clone()).collect());
        s.put_image_catalog(&ImageCatalogRow {
            digest: image.into(),
            status: "complete".into(),
            detail: "{}".into(),
            cataloger_version: 1,
            cataloged_at: step,
            packages,
        })
        .await
        .expect("put");
        assert_eq!(distinct_purls(s).await, oracle(&held), "step {step}");
    }
    // A row carries its package, not just its purl.
    let p = pkg(7);
    s.put_image_catalog(&ImageCatalogRow {
        digest: M3.into(),
        status: "complete".into(),
        detail: "{}".into(),
        cataloger_version: 1,
        cataloged_at: 99,
        packages: vec![p.clone()],
    })
    .await
    .expect("put");
    held.insert(M3, BTreeSet::from([p.purl.clone()]));
    let row = s
        .distinct_packages()
        .await
        .expect("distinct")
        .into_iter()
        .find(|k| k.purl == p.purl)
        .expect("listed");
    assert_eq!(
        (
            row.ecosystem.as_str(),
            row.name.as_str(),
            row.version.as_str()
        ),
        ("deb", "p7", "1.0-1")
    );
    assert_eq!(row.source_name.as_deref(), Some("s7"));
    assert_eq!(row.source_version.as_deref(), Some("1.0-1"));
    // GC: M3's catalog goes, then M1's once its manifest is deleted.
    s.prune_catalogs().await.expect("prune");
    held.remove(M3);
    assert_eq!(distinct_purls(s).await, oracle(&held));
    s.delete_manifest("r", M1, &who("t")).await.expect("delete");
    s.prune_catalogs().await.expect("prune");
    held.remove(M1);
    assert_eq!(distinct_purls(s).await, oracle(&held));

    // A store whose catalogs were written before the table existed: the migration
    // fills it from the packages stored.
    s.put_image_catalog(&ImageCatalogRow {
        digest: M1.into(),
        status: "complete".into(),
        detail: "{}".into(),
        cataloger_version: 1,
        cataloged_at: 100,
        packages: (200..230).map(pkg).collect(),
    })
    .await
    .expect("put");
    held.insert(M1, (200..230).map(|i| pkg(i).purl).collect());
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&db.url)
        .await
        .expect("raw connection");
    sqlx::raw_sql("DROP TABLE catalog_packages; DELETE FROM berth_schema WHERE version = 16")
        .execute(&mut conn)
        .await
        .expect("rewind");
    drop(conn);
    let again = MetaStore::connect(&db.url).await.expect("migrates");
    assert_eq!(distinct_purls(&again).await, oracle(&held));
    // And it counts from there: M1 (no manifest) pruned, its purls go.
    again.prune_catalogs().await.expect("prune");
    held.remove(M1);
    assert_eq!(distinct_purls(&again).await, oracle(&held));
}

/// Writers of the same image's catalog at once (two replicas, or two repositories' catalog
/// jobs): whichever commits last is the catalog, and its packages are counted once, so
/// emptying the catalog empties the distinct packages.
async fn concurrent_writers_of_one_catalog_count_it_once(db: Db) {
    let s = db.store.clone();
    for round in 0..3u64 {
        let tasks: Vec<_> = (0..6u64)
            .map(|w| {
                let s = s.clone();
                tokio::spawn(async move {
                    let packages: Vec<CatalogPackage> = (0..120)
                        .map(|i| {
                            let n = (i * 7 + w * 13 + round) % 200;
                            package(
                                &format!("pkg:deb/debian/c{n}@1.0-1"),
                                &format!("c{n}"),
                                None,
                                D1,
                            )
                        })
                        .collect();
                    s.put_image_catalog(&ImageCatalogRow {
                        digest: M1.into(),
                        status: "complete".into(),
                        detail: "{}".into(),
                        cataloger_version: 1,
                        cataloged_at: w as i64,
                        packages,
                    })
                    .await
                    .expect("put under contention");
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
        let mut stored: Vec<String> = s
            .image_catalog(M1)
            .await
            .expect("get")
            .expect("stored")
            .packages
            .into_iter()
            .map(|p| p.purl)
            .collect();
        stored.sort();
        assert_eq!(distinct_purls(&s).await, stored, "round {round}");
    }
    s.put_image_catalog(&ImageCatalogRow {
        digest: M1.into(),
        status: "complete".into(),
        detail: "{}".into(),
        cataloger_version: 1,
        cataloged_at: 0,
        packages: Vec::new(),
    })
    .await
    .expect("empty");
    assert_eq!(distinct_purls(&s).await, Vec::<String>::new());
}
