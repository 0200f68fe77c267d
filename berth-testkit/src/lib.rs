//! What the test suites of several crates share, so each suite reaches the test servers the
//! same way: a PostgreSQL schema of its own per test (`BERTH_TEST_POSTGRES_URL`), a prefix
//! of its own in the S3 test bucket (`BERTH_TEST_S3_URL`, `BERTH_TEST_S3_BUCKET`), and
//! digests as the strings the API speaks. A dev-dependency only; nothing here runs in
//! Berth itself. Both servers are required: a suite that needs one fails without it rather
//! than skip.

pub mod pg;
pub mod pki;

use sha2::{Digest as _, Sha256};

/// `sha256:<hex>` of `data`.
pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A name no other test (in this run or another) uses: a letter and 32 hex digits, valid
/// as a PostgreSQL schema and as an S3 key segment.
pub fn unique() -> String {
    format!("t{}", uuid::Uuid::new_v4().simple())
}

/// The metadata URL of a fresh schema in the database `BERTH_TEST_POSTGRES_URL` names, so
/// tests never see each other's rows.
pub async fn postgres_url() -> String {
    let base = std::env::var("BERTH_TEST_POSTGRES_URL").expect(
        "BERTH_TEST_POSTGRES_URL must point at a PostgreSQL database (scripts/start-postgres.sh)",
    );
    sqlx::any::install_default_drivers();
    let schema = unique();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&base)
        .await
        .expect("postgres reachable");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut conn)
        .await
        .expect("create schema");
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-csearch_path%3D{schema}")
}

/// The S3 test server's settings (`BERTH_TEST_S3_URL`; bucket `BERTH_TEST_S3_BUCKET`,
/// default `berth-test`), with keys under `prefix`.
pub fn s3_config(prefix: &str) -> berth_storage::S3Config {
    let endpoint = std::env::var("BERTH_TEST_S3_URL")
        .expect("BERTH_TEST_S3_URL must point at an S3 server (scripts/start-s3.sh)");
    berth_storage::S3Config {
        endpoint,
        bucket: std::env::var("BERTH_TEST_S3_BUCKET").unwrap_or_else(|_| "berth-test".into()),
        region: "us-east-1".into(),
        prefix: prefix.into(),
        credentials: berth_storage::S3Credentials {
            access_key_id: "berth-test".into(),
            secret_access_key: "berth-test-secret".into(),
            session_token: None,
        },
        path_style: true,
        redirect_expiry: None,
    }
}

/// A blob store on a fresh prefix of the S3 test bucket.
pub async fn s3_store() -> berth_storage::BlobStore {
    let config = s3_config(&format!("{}/", unique()));
    berth_storage::BlobStore::S3(berth_storage::S3Store::new(config).await.expect("S3 store"))
}
