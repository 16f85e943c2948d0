//! Test support: run a test body against a throwaway PostgreSQL schema.
//!
//! Owns: creating a uniquely named schema on the development PostgreSQL, opening a [`Store`] on
//! it, and dropping it afterwards even when the body panics. Must never: be compiled outside
//! tests, or touch any schema it did not create.

use std::future::Future;
use std::path::PathBuf;

use magic_store::Store;
use sqlx::Connection as _;

const PG: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Run `body` with a [`Store`] on a fresh schema named `{prefix}_{uuid}` and a data dir;
/// the schema is dropped afterwards and a panic in `body` is re-raised.
pub(crate) async fn run<F, Fut>(prefix: &str, body: F)
where
    F: FnOnce(Store, PathBuf) -> Fut,
    Fut: Future<Output = ()>,
{
    sqlx::any::install_default_drivers();
    let mut admin = sqlx::AnyConnection::connect(PG)
        .await
        .expect("PostgreSQL at 127.0.0.1:5432");
    let schema = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    sqlx::raw_sql(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{PG}?options[search_path]={schema}");
    let result = {
        let store = Store::open(Some(&url), dir.path()).await.unwrap();
        let body = body(store, dir.path().to_path_buf());
        futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(body)).await
    };
    sqlx::raw_sql(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&mut admin)
        .await
        .unwrap();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
