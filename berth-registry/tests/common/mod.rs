//! What the registry's integration tests share.

/// A fresh schema of its own in the PostgreSQL database `BERTH_TEST_POSTGRES_URL` names,
/// as a metadata URL, so tests never see each other's rows.
pub async fn postgres_url() -> String {
    let base = std::env::var("BERTH_TEST_POSTGRES_URL")
        .expect("BERTH_TEST_POSTGRES_URL must point at a PostgreSQL database");
    sqlx::any::install_default_drivers();
    let schema = format!("t{}", uuid::Uuid::new_v4().simple());
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
