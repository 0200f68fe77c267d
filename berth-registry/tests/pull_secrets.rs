//! `Access::namespace_pull_robots` (`berth k8s pull-secrets`) on SQLite and PostgreSQL:
//! one pull-only robot per namespace, whose secret logs in and may pull and nothing else;
//! a rerun leaves existing robots (and so their namespaces' Secrets) alone; rotating one
//! namespace's robot breaks no other namespace's login.

mod common;

use berth_meta::MetaStore;
use berth_registry::RegistryError;
use berth_registry::access::{
    Access, AccessConfig, PullRobot, RobotCredentials, cli_identity, namespace_robot,
};

async fn access(dir: &std::path::Path, postgres: bool) -> Access {
    let meta = MetaStore::connect(&common::meta_url(dir, postgres).await)
        .await
        .expect("metadata store");
    Access::new(meta, AccessConfig::default(), None)
        .await
        .expect("access")
}

fn creds(outcome: &PullRobot) -> &RobotCredentials {
    match outcome {
        PullRobot::Created(c) | PullRobot::Rotated(c) => c,
        PullRobot::Kept(r) => panic!("no new credentials for {}", r.login),
    }
}

async fn logs_in(access: &Access, c: &RobotCredentials) -> bool {
    access.login(&c.robot.login, &c.secret, None).await.is_ok()
}

async fn one_robot_per_namespace(postgres: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let access = access(dir.path(), postgres).await;
    let cli = cli_identity();
    access
        .create_tenant(&cli, None, "team-a", false)
        .await
        .expect("tenant");
    let namespaces = vec!["prod".to_owned(), "staging".to_owned(), "prod".to_owned()];
    let first = access
        .namespace_pull_robots(&cli, None, "team-a", &namespaces, false)
        .await
        .expect("robots");
    assert_eq!(first.len(), 2, "one robot per distinct namespace");
    assert_eq!(first[0].namespace, "prod");
    assert_eq!(first[1].namespace, "staging");
    let prod = creds(&first[0].outcome).clone();
    let staging = creds(&first[1].outcome).clone();
    assert!(matches!(first[0].outcome, PullRobot::Created(_)));
    assert_eq!(
        prod.robot.login,
        format!("team-a+{}", namespace_robot("prod"))
    );
    assert_ne!(prod.robot.login, staging.robot.login);
    assert_eq!(prod.robot.actions, ["pull"]);
    assert!(
        prod.robot.repositories.is_empty(),
        "every repository of the tenant"
    );

    // The secret logs in and grants pull on the tenant only.
    let id = access
        .login(&prod.robot.login, &prod.secret, None)
        .await
        .expect("the robot logs in");
    let own = id.grants.on_repository("team-a/app");
    assert_eq!(own.names(), ["pull"], "{own:?}");
    let other = id.grants.on_repository("team-b/app");
    assert!(other.is_empty(), "another tenant: {other:?}");

    // A rerun changes nothing: no new secret, the old ones still log in.
    let again = access
        .namespace_pull_robots(&cli, None, "team-a", &namespaces[..2], false)
        .await
        .expect("rerun");
    assert!(
        again
            .iter()
            .all(|r| matches!(r.outcome, PullRobot::Kept(_)))
    );
    assert!(logs_in(&access, &prod).await && logs_in(&access, &staging).await);

    // Rotating prod's robot (and adding a namespace) leaves staging's secret working.
    let rotated = access
        .namespace_pull_robots(
            &cli,
            None,
            "team-a",
            &["prod".to_owned(), "dev".to_owned()],
            true,
        )
        .await
        .expect("rotate");
    assert!(matches!(rotated[0].outcome, PullRobot::Rotated(_)));
    assert!(matches!(rotated[1].outcome, PullRobot::Created(_)));
    let new_prod = creds(&rotated[0].outcome);
    assert!(
        !logs_in(&access, &prod).await,
        "the old prod secret is dead"
    );
    assert!(logs_in(&access, new_prod).await);
    assert!(logs_in(&access, &staging).await, "staging was not touched");

    // A robot of that name allowed to push is never put into a pull secret, and a bad
    // namespace stops the whole run before anything is created.
    let cli_push = berth_registry::access::NewRobot {
        actions: berth_auth::Actions::from_names(["pull", "push"]),
        repositories: Vec::new(),
        description: None,
        expires_in: None,
    };
    access
        .create_robot(&cli, None, "team-a", &namespace_robot("ci"), &cli_push)
        .await
        .expect("a push robot");
    let refused = access
        .namespace_pull_robots(&cli, None, "team-a", &["ci".to_owned()], true)
        .await
        .expect_err("push robot");
    assert!(matches!(refused, RegistryError::Conflict(_)), "{refused:?}");
    let bad = access
        .namespace_pull_robots(
            &cli,
            None,
            "team-a",
            &["qa".to_owned(), "Bad_NS".to_owned()],
            false,
        )
        .await
        .expect_err("bad namespace");
    assert!(matches!(bad, RegistryError::Invalid(_)), "{bad:?}");
    let robots = access.robots(&cli, "team-a").await.expect("robots");
    assert!(
        !robots.iter().any(|r| r.name == namespace_robot("qa")),
        "nothing created on a refused run"
    );
    let missing = access
        .namespace_pull_robots(&cli, None, "nobody", &["prod".to_owned()], false)
        .await
        .expect_err("no tenant");
    assert!(matches!(missing, RegistryError::NotFound(_)), "{missing:?}");
}

#[tokio::test]
async fn one_pull_robot_per_namespace_on_sqlite() {
    one_robot_per_namespace(false).await;
}

#[tokio::test]
async fn one_pull_robot_per_namespace_on_postgres() {
    one_robot_per_namespace(true).await;
}
