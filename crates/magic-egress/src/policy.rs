//! A grant compiled into the decision used on every hop: URL → allowed [`Target`] or refusal.
//!
//! Owns: turning an [`EgressGrant`] into parsed allow entries, `allow_ips` and the static
//! `resolve` map; the URL pre-checks (length, control characters, whitespace); the decision for
//! a parsed URL (scheme, credentials, allowlist, IP literals); and the decision for the
//! addresses a host resolved to.
//!
//! Must never: allow a URL whose parsed host no entry matches, allow an IP-literal URL that no
//! entry names exactly, or accept a resolution containing any address that is non-public and
//! not covered by `allow_ips`. Invalid grant entries fail closed (they match nothing).

use std::collections::BTreeMap;
use std::net::IpAddr;

use magic_contract::EgressGrant;
use url::Url;

use crate::addr::{check_addr, AllowIps};
use crate::allow::{is_allowed, normalize_host, AllowEntry, Target, TargetHost};
use crate::EgressError;

/// Longest URL accepted.
pub const MAX_URL_LEN: usize = 8192;

/// A compiled grant.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    entries: Vec<AllowEntry>,
    allow_ips: AllowIps,
    static_map: BTreeMap<String, Vec<IpAddr>>,
    problems: Vec<String>,
}

impl Policy {
    /// Compile a grant. Invalid entries are skipped (fail closed) and listed in
    /// [`Policy::problems`].
    pub fn from_grant(grant: &EgressGrant) -> Policy {
        let mut problems = Vec::new();
        let mut entries = Vec::new();
        for e in &grant.allow {
            match AllowEntry::parse(e) {
                Ok(entry) => entries.push(entry),
                Err(err) => problems.push(err.to_string()),
            }
        }
        let mut nets = Vec::new();
        for e in &grant.allow_ips {
            match AllowIps::parse_entry(e) {
                Ok(_) => nets.push(e.clone()),
                Err(err) => problems.push(err.to_string()),
            }
        }
        let allow_ips = AllowIps::parse(&nets).unwrap_or_default();
        let mut static_map = BTreeMap::new();
        for (host, ips) in &grant.resolve {
            match normalize_host(host) {
                Some(TargetHost::Domain(d)) => {
                    static_map.insert(d, ips.clone());
                }
                _ => problems.push(format!("resolve key {host:?} is not a host name")),
            }
        }
        Policy {
            entries,
            allow_ips,
            static_map,
            problems,
        }
    }

    /// Problems found while compiling (empty for a valid grant). The contract validator can
    /// report these at deploy time.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    /// Parse a controller-supplied URL the way the HTTP client will, refusing control
    /// characters and whitespace anywhere (the WHATWG parser would silently drop or trim them).
    pub fn parse_url(raw: &str) -> Result<Url, EgressError> {
        if raw.len() > MAX_URL_LEN {
            return Err(EgressError::InvalidUrl(format!(
                "longer than {MAX_URL_LEN} bytes"
            )));
        }
        if raw.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(EgressError::InvalidUrl(
                "control characters or whitespace in the URL".into(),
            ));
        }
        Url::parse(raw).map_err(|e| EgressError::InvalidUrl(e.to_string()))
    }

    /// The decision for a parsed URL (the first request and every redirect hop).
    pub fn check_url(&self, url: &Url) -> Result<Target, EgressError> {
        let host_str = url.host_str().unwrap_or_default().to_string();
        let target = Target::from_url(url).map_err(|e| EgressError::NotAllowed {
            host: host_str.clone(),
            reason: e.to_string(),
        })?;
        if !is_allowed(&self.entries, &target) {
            return Err(EgressError::NotAllowed {
                host: target.host.to_string(),
                reason: format!(
                    "no allow entry matches {}://{}:{}",
                    target.scheme.as_str(),
                    target.host,
                    target.port
                ),
            });
        }
        if let TargetHost::Ip(ip) = target.host {
            self.check_ip(&target.host.to_string(), ip)?;
        }
        Ok(target)
    }

    /// The decision for one address `host` resolved to.
    pub fn check_ip(&self, host: &str, ip: IpAddr) -> Result<(), EgressError> {
        check_addr(ip, &self.allow_ips).map_err(|class| EgressError::PrivateAddress {
            host: host.to_string(),
            ip,
            class: class.as_str().to_string(),
        })
    }

    /// The decision for a host name about to be resolved: it must be a domain some entry
    /// names (the resolver's second line of defence).
    pub fn check_resolve_name(&self, name: &str) -> Result<String, EgressError> {
        match normalize_host(name) {
            Some(TargetHost::Domain(d)) => {
                let host = TargetHost::Domain(d.clone());
                if self.entries.iter().any(|e| e.covers_host(&host)) {
                    Ok(d)
                } else {
                    Err(EgressError::NotAllowed {
                        host: d,
                        reason: "no allow entry names this host".into(),
                    })
                }
            }
            _ => Err(EgressError::NotAllowed {
                host: name.to_string(),
                reason: "not a host name".into(),
            }),
        }
    }

    /// The static mapping for a normalised host (`EGRESS_RESOLVE_MODE=static`).
    pub fn static_addrs(&self, host: &str) -> Option<&[IpAddr]> {
        self.static_map.get(host).map(Vec::as_slice)
    }

    /// Check every address of a resolution; the first refused one refuses the whole answer
    /// (strict policy: a mixed public/private answer is refused, never filtered).
    pub fn check_resolution(&self, host: &str, ips: &[IpAddr]) -> Result<(), EgressError> {
        if ips.is_empty() {
            return Err(EgressError::Failed(format!(
                "{host} resolved to no address"
            )));
        }
        ips.iter().try_for_each(|ip| self.check_ip(host, *ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use magic_contract::ErrorCode;

    fn policy(allow: &[&str], allow_ips: &[&str]) -> Policy {
        Policy::from_grant(&EgressGrant {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            allow_ips: allow_ips.iter().map(|s| s.to_string()).collect(),
            resolve: BTreeMap::new(),
        })
    }

    fn decide(p: &Policy, raw: &str) -> Result<Target, ErrorCode> {
        Policy::parse_url(raw)
            .and_then(|u| p.check_url(&u))
            .map_err(|e| e.code())
    }

    const E2002: ErrorCode = ErrorCode::EgressNotAllowed;
    const E2008: ErrorCode = ErrorCode::EgressPrivateAddress;

    #[test]
    fn literal_ip_encodings_are_parsed_then_checked() {
        // Entries name 127.0.0.1 but allow_ips does not: every encoding must reach the
        // address check and be refused with E2008, proving it was parsed as 127.0.0.1.
        let p = policy(&["http://127.0.0.1"], &[]);
        for url in [
            "http://127.0.0.1/",
            "http://2130706433/",
            "http://0177.0.0.1/",
            "http://0x7f.1/",
            "http://0x7f000001/",
            "http://017700000001/",
            "http://127.1/",
            "http://127.0.1/",
            "http://0x7f.0x0.0x00000000.0x01/",
            "http://0177.0x0.0x0.0x1/",
            "http://%31%32%37.0.0.1/",
            "http://127。0。0。1/",
            "http://１２７．０．０．１/",
            "http://127.0.0.1./",
            "HTTP://127.0.0.1:80/",
        ] {
            assert_eq!(decide(&p, url).err(), Some(E2008), "{url}");
        }
        // The same forms are allowed once allow_ips lists the address.
        let p = policy(&["http://127.0.0.1"], &["127.0.0.1"]);
        for url in ["http://2130706433/", "http://0x7f.1/", "http://127.1/"] {
            assert!(decide(&p, url).is_ok(), "{url}");
        }
    }

    #[test]
    fn ip_literal_needs_an_explicit_entry() {
        let p = policy(&["*.example.com", "example.com"], &["0.0.0.0/0", "::/0"]);
        for url in [
            "https://127.0.0.1/",
            "https://8.8.8.8/",
            "https://[::1]/",
            "https://[::ffff:127.0.0.1]/",
            "https://[0000::1]/",
            "https://[::]/",
            "https://0/",
            "https://169.254.169.254/",
            "https://2852039166/",
        ] {
            assert_eq!(decide(&p, url).err(), Some(E2002), "{url}");
        }
    }

    #[test]
    fn parser_confusion_is_decided_on_the_parsed_host() {
        let p = policy(&["allowed.example", "http://allowed.example"], &[]);
        let refused = [
            // userinfo: the host is after the `@`
            "https://allowed.example@127.0.0.1/",
            "https://allowed.example:443@evil.example/",
            "http://127.1.1.1:80\\@127.2.2.2:80/",
            // credentials are refused even for an allowed host
            "https://user:pw@allowed.example/",
            // whitespace and control characters
            "https://allowed.example /",
            " https://allowed.example/",
            "https://allo\twed.example/",
            "https://allowed.example\n.evil.example/",
            "http://1.1.1.1 &@2.2.2.2# @3.3.3.3/",
            "https://allowed.example%00.evil.example/",
            "https://allowed.example\0.evil.example/",
            // zone IDs and bad IPv6
            "https://[fe80::1%25eth0]/",
            "https://[fe80::1%eth0]/",
            "http://[]/",
            "http://:123/",
            // other schemes
            "file:///etc/passwd",
            "gopher://allowed.example/",
            "ftp://allowed.example/",
            "http:127.0.0.1/",
            "//allowed.example/",
            "allowed.example",
        ];
        for url in refused {
            assert_eq!(decide(&p, url).err(), Some(E2002), "{url:?}");
        }
        // Backslash and fragment tricks resolve to the allowed host in the WHATWG parser,
        // which is also where the client connects: consistent, so allowed.
        for url in [
            "https://allowed.example\\@evil.example/",
            "https://allowed.example#@evil.example/",
            "https:\\\\allowed.example/",
            "https://ALLOWED.example./x?y#z",
            "https://allowed%2Eexample/",
        ] {
            let t = decide(&p, url).unwrap_or_else(|e| panic!("{url}: {e:?}"));
            assert_eq!(
                t.host,
                TargetHost::Domain("allowed.example".into()),
                "{url}"
            );
        }
    }

    #[test]
    fn resolution_is_strict_and_respects_allow_ips() {
        let p = policy(&["svc.example"], &["10.0.0.5", "fd00::/64"]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(p.check_resolution("svc.example", &[ip("8.8.8.8")]).is_ok());
        assert!(p.check_resolution("svc.example", &[ip("10.0.0.5")]).is_ok());
        assert!(p.check_resolution("svc.example", &[ip("fd00::9")]).is_ok());
        for bad in [
            vec![ip("8.8.8.8"), ip("127.0.0.1")],
            vec![ip("10.0.0.6")],
            vec![ip("::ffff:169.254.169.254")],
            vec![ip("64:ff9b::a00:5")],
        ] {
            assert_eq!(
                p.check_resolution("svc.example", &bad)
                    .map_err(|e| e.code()),
                Err(E2008),
                "{bad:?}"
            );
        }
        assert!(p.check_resolution("svc.example", &[]).is_err());
    }

    #[test]
    fn resolver_names_must_be_allowed() {
        let p = policy(&["*.example.com", "http://plain.example:8080"], &[]);
        assert_eq!(
            p.check_resolve_name("A.example.com.").unwrap(),
            "a.example.com"
        );
        assert_eq!(
            p.check_resolve_name("plain.example").unwrap(),
            "plain.example"
        );
        for bad in ["example.com", "evil.net", "", "a..example.com"] {
            assert!(p.check_resolve_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn invalid_grant_entries_fail_closed() {
        let p = policy(&["*", "api.*.example.com", "ok.example"], &["nope"]);
        assert_eq!(p.problems().len(), 3);
        assert_eq!(decide(&p, "https://api.x.example.com/").err(), Some(E2002));
        assert!(decide(&p, "https://ok.example/").is_ok());
    }
}
