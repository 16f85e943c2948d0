//! Searching the chain (the console's audit view) on SQLite and PostgreSQL.

mod common;

use common::{config, event, sqlite};
use magic_audit::{AuditChain, SearchFilter};

async fn exercise(chain: &AuditChain) {
    for i in 1..=30u64 {
        let mut e = event(i);
        e.request_id = Some(format!("req-{}", i % 3));
        e.controller = Some(if i % 2 == 0 { "Even" } else { "Odd" }.into());
        e.actor = Some(format!("actor-{}", i % 5));
        chain.append_event(e).await.expect("append");
    }
    let by_req = chain
        .search(
            &SearchFilter {
                request_id: Some("req-1".into()),
                ..SearchFilter::default()
            },
            100,
        )
        .await
        .expect("search");
    assert_eq!(by_req.len(), 10);
    assert!(
        by_req.windows(2).all(|w| w[0].seq > w[1].seq),
        "newest first"
    );
    assert!(by_req
        .iter()
        .all(|r| r.request_id.as_deref() == Some("req-1")));

    // Two filters and paging with `before`.
    let filter = SearchFilter {
        controller: Some("Even".into()),
        actor: Some("actor-0".into()),
        ..SearchFilter::default()
    };
    let all = chain.search(&filter, 100).await.expect("search");
    assert_eq!(
        all.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![30, 20, 10]
    );
    let page = chain
        .search(
            &SearchFilter {
                before: Some(30),
                ..filter.clone()
            },
            1,
        )
        .await
        .expect("page");
    assert_eq!(page.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![20]);

    // Hostile values are values, not SQL.
    let none = chain
        .search(
            &SearchFilter {
                event: Some("x' OR '1'='1".into()),
                ..SearchFilter::default()
            },
            100,
        )
        .await
        .expect("search");
    assert!(none.is_empty());
    let everything = chain
        .search(&SearchFilter::default(), 1000)
        .await
        .expect("search");
    assert_eq!(everything.len(), 30);
}

#[tokio::test]
async fn search_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chain = AuditChain::open(sqlite(dir.path()).await, config(dir.path()))
        .await
        .expect("opens");
    exercise(&chain).await;
    chain.checkpoint_now().await.expect("checkpoint");
    let cp = chain.latest_checkpoint().await.expect("read").expect("one");
    assert_eq!(cp.seq, 30);
    chain.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn search_on_postgres() {
    use sqlx::Connection as _;
    sqlx::any::install_default_drivers();
    let admin_url = "postgres://postgres@127.0.0.1:5432/test";
    let mut admin = sqlx::AnyConnection::connect(admin_url)
        .await
        .expect("PostgreSQL at 127.0.0.1:5432");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let schema = format!("audit_search_{}_{nanos}", std::process::id());
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut admin)
        .await
        .expect("schema");
    let url = format!("{admin_url}?options[search_path]={schema}");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = magic_store::Store::open(Some(&url), dir.path())
        .await
        .expect("store");
    let chain = AuditChain::open(store, config(dir.path()))
        .await
        .expect("opens");
    exercise(&chain).await;
    chain.shutdown().await.expect("shutdown");
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&mut admin)
        .await
        .expect("drop");
}
