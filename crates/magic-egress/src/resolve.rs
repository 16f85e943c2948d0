//! Name resolution for egress: resolve, classify, pin.
//!
//! Owns: the `reqwest` resolver installed in every egress client. It resolves a host name once
//! (system DNS through tokio, a test hook, or the grant's static map), checks every address
//! against the grant, and hands exactly those checked addresses to the connector, so the
//! socket connects to what was checked (no second lookup). TLS still runs against the URL's
//! host name (SNI and certificate verification are the client's, on the allowlisted name).
//!
//! Must never: return an address it did not check, resolve a name no allow entry names, or
//! fall back to another resolver when a lookup fails.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::policy::Policy;
use crate::EgressError;

/// Future returned by [`HostLookup::lookup`].
pub type LookupFuture = Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>>;

/// Where DNS answers come from in `dns` mode. The default is the system resolver; tests plug in
/// their own (e.g. [`MapLookup`]) to point test host names at loopback servers.
pub trait HostLookup: Send + Sync + fmt::Debug {
    /// Every address of `host` (a normalised, ASCII domain name).
    fn lookup(&self, host: String) -> LookupFuture;
}

/// The system resolver (`getaddrinfo` through `tokio::net::lookup_host`).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemLookup;

impl HostLookup for SystemLookup {
    fn lookup(&self, host: String) -> LookupFuture {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host.as_str(), 0)).await?;
            Ok(addrs.map(|a| a.ip()).collect())
        })
    }
}

/// A fixed host → addresses table (test hook; unknown names fail like NXDOMAIN).
#[derive(Debug, Default, Clone)]
pub struct MapLookup {
    map: std::collections::BTreeMap<String, Vec<IpAddr>>,
}

impl MapLookup {
    /// Empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a mapping (`host` is compared lower-case, without trailing dot).
    pub fn with(mut self, host: &str, ips: &[IpAddr]) -> Self {
        let key = host.trim_end_matches('.').to_ascii_lowercase();
        self.map.insert(key, ips.to_vec());
        self
    }
}

impl HostLookup for MapLookup {
    fn lookup(&self, host: String) -> LookupFuture {
        let found = self.map.get(&host).cloned();
        Box::pin(async move {
            found.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such host"))
        })
    }
}

/// How host names are turned into addresses (`EGRESS_RESOLVE_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResolveMode {
    /// Resolve through DNS at connect time (`dns`, the default).
    #[default]
    Dns,
    /// Use only the grant's `resolve` map (`static`); names without a mapping are refused.
    Static,
}

impl std::str::FromStr for ResolveMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "dns" => Ok(ResolveMode::Dns),
            "static" => Ok(ResolveMode::Static),
            other => Err(format!(
                "EGRESS_RESOLVE_MODE must be `dns` or `static`, not {other:?}"
            )),
        }
    }
}

/// The resolver installed in a grant's client.
pub(crate) struct PinningResolver {
    pub(crate) policy: Arc<Policy>,
    pub(crate) lookup: Arc<dyn HostLookup>,
    pub(crate) mode: ResolveMode,
    pub(crate) timeout: Duration,
}

impl PinningResolver {
    /// Resolve and check `name`; the addresses returned are the only ones connected to.
    pub(crate) async fn resolve_checked(
        policy: Arc<Policy>,
        lookup: Arc<dyn HostLookup>,
        mode: ResolveMode,
        timeout: Duration,
        name: String,
    ) -> Result<Vec<IpAddr>, EgressError> {
        let host = policy.check_resolve_name(&name)?;
        let ips = match mode {
            ResolveMode::Static => policy
                .static_addrs(&host)
                .map(<[IpAddr]>::to_vec)
                .ok_or_else(|| EgressError::NotAllowed {
                    host: host.clone(),
                    reason: "EGRESS_RESOLVE_MODE=static and the contract maps no address for it"
                        .into(),
                })?,
            ResolveMode::Dns => {
                match tokio::time::timeout(timeout, lookup.lookup(host.clone())).await {
                    Ok(Ok(ips)) => ips,
                    Ok(Err(e)) => {
                        return Err(EgressError::Failed(format!("cannot resolve {host}: {e}")))
                    }
                    Err(_) => {
                        return Err(EgressError::Failed(format!(
                            "resolving {host} took longer than {timeout:?}"
                        )))
                    }
                }
            }
        };
        policy.check_resolution(&host, &ips)?;
        Ok(ips)
    }
}

impl reqwest::dns::Resolve for PinningResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let fut = Self::resolve_checked(
            self.policy.clone(),
            self.lookup.clone(),
            self.mode,
            self.timeout,
            name.as_str().to_string(),
        );
        Box::pin(async move {
            match fut.await {
                Ok(ips) => {
                    let addrs: reqwest::dns::Addrs =
                        Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
                    Ok(addrs)
                }
                Err(e) => Err(Box::new(e) as Box<dyn std::error::Error + Send + Sync>),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use magic_contract::{EgressGrant, ErrorCode};
    use std::collections::BTreeMap;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    async fn run(
        grant: &EgressGrant,
        lookup: MapLookup,
        mode: ResolveMode,
        name: &str,
    ) -> Result<Vec<IpAddr>, ErrorCode> {
        PinningResolver::resolve_checked(
            Arc::new(Policy::from_grant(grant)),
            Arc::new(lookup),
            mode,
            Duration::from_secs(1),
            name.to_string(),
        )
        .await
        .map_err(|e| e.code())
    }

    #[tokio::test]
    async fn dns_mode_checks_every_answer() {
        let grant = EgressGrant {
            allow: vec!["*.example.com".into()],
            allow_ips: vec!["10.0.0.5".into()],
            resolve: BTreeMap::new(),
        };
        let lookup = MapLookup::new()
            .with("pub.example.com", &[ip("93.184.216.34")])
            .with("rebind.example.com", &[ip("127.0.0.1")])
            .with(
                "mixed.example.com",
                &[ip("93.184.216.34"), ip("169.254.169.254")],
            )
            .with("mapped.example.com", &[ip("::ffff:192.168.0.1")])
            .with("ok-private.example.com", &[ip("10.0.0.5")]);
        let dns = ResolveMode::Dns;
        assert_eq!(
            run(&grant, lookup.clone(), dns, "pub.example.com").await,
            Ok(vec![ip("93.184.216.34")])
        );
        assert_eq!(
            run(&grant, lookup.clone(), dns, "ok-private.example.com.").await,
            Ok(vec![ip("10.0.0.5")])
        );
        for name in [
            "rebind.example.com",
            "mixed.example.com",
            "mapped.example.com",
        ] {
            assert_eq!(
                run(&grant, lookup.clone(), dns, name).await,
                Err(ErrorCode::EgressPrivateAddress),
                "{name}"
            );
        }
        assert_eq!(
            run(&grant, lookup.clone(), dns, "other.net").await,
            Err(ErrorCode::EgressNotAllowed)
        );
        assert_eq!(
            run(&grant, lookup, dns, "missing.example.com").await,
            Err(ErrorCode::ControllerFailed)
        );
    }

    #[tokio::test]
    async fn static_mode_uses_only_the_grant_map() {
        let grant = EgressGrant {
            allow: vec!["api.example.com".into(), "nomap.example.com".into()],
            allow_ips: vec![],
            resolve: BTreeMap::from([
                ("API.example.com.".to_string(), vec![ip("93.184.216.34")]),
                ("private.example.com".to_string(), vec![ip("10.1.1.1")]),
            ]),
        };
        // The lookup hook would answer differently: static mode must not ask it.
        let lookup = MapLookup::new()
            .with("api.example.com", &[ip("8.8.8.8")])
            .with("nomap.example.com", &[ip("8.8.8.8")]);
        assert_eq!(
            run(
                &grant,
                lookup.clone(),
                ResolveMode::Static,
                "api.example.com"
            )
            .await,
            Ok(vec![ip("93.184.216.34")])
        );
        assert_eq!(
            run(&grant, lookup, ResolveMode::Static, "nomap.example.com").await,
            Err(ErrorCode::EgressNotAllowed)
        );
    }

    #[test]
    fn resolve_mode_parses() {
        assert_eq!("static".parse::<ResolveMode>(), Ok(ResolveMode::Static));
        assert_eq!("DNS".parse::<ResolveMode>(), Ok(ResolveMode::Dns));
        assert_eq!("".parse::<ResolveMode>(), Ok(ResolveMode::Dns));
        assert!("system".parse::<ResolveMode>().is_err());
    }
}
