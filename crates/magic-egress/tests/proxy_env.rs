//! Proxy environment variables must not reroute egress: a proxy would resolve the name itself
//! and bypass the address checks. Own test binary, because it changes the environment.

mod common;

use common::*;
use magic_egress::{Egress, MapLookup};

#[tokio::test]
async fn proxy_environment_is_ignored() {
    let srv = http_server("127.0.0.1").await;
    let proxy = http_server("127.0.0.1").await;
    let proxy_url = format!("http://127.0.0.1:{}", proxy.port());
    for var in [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        std::env::set_var(var, &proxy_url);
    }
    std::env::remove_var("NO_PROXY");
    std::env::remove_var("no_proxy");
    let egress = Egress::new(config(
        None,
        MapLookup::new().with("api.test", &[ip("127.0.0.1")]),
    ));
    let g = grant(
        &[&format!("http://api.test:{}", srv.port())],
        &["127.0.0.1"],
    );
    let r = egress
        .send(&g, get(&format!("http://api.test:{}/hello", srv.port())))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(srv.hits.get(), 1);
    assert_eq!(proxy.hits.get(), 0);
}
