//! Invariant checks for fuzzing the URL/host parsing, allowlist and classification.
//!
//! Owns: [`check_invariants`], the body of the `fuzz/` cargo-fuzz target and of the
//! randomized unit test that runs the same logic on stable Rust.
//!
//! Must never: be used on a request path. It reports a violated invariant as `Err` with a
//! description (the fuzz wrapper turns that into a crash); it never panics itself.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use magic_contract::EgressGrant;

use crate::addr::{classify, classify_v4, AddrClass, AllowIps};
use crate::allow::{AllowEntry, Target, TargetHost};
use crate::policy::Policy;
use crate::EgressError;

/// Run one fuzz input. The input is split on `\n`: the first line is the URL, the following
/// lines are allow entries, a line starting with `!` is an `allow_ips` entry. The last 16
/// bytes (when present) are also classified as an IPv6 address and, via their last 4 bytes,
/// an IPv4 address.
///
/// Invariants checked:
/// 1. a URL is only ever allowed when an allow entry matches its parsed target;
/// 2. an allowed IP-literal URL is public or covered by `allow_ips`;
/// 3. the decision is stable when the URL is re-parsed from its serialization;
/// 4. a `*.suffix` entry never matches the bare suffix;
/// 5. an IPv4-mapped IPv6 address classifies exactly like its IPv4 address, and NAT64 /
///    IPv4-compatible forms of a non-public IPv4 are never public;
/// 6. a resolution check refuses every non-public address not covered by `allow_ips`.
pub fn check_invariants(data: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let raw_url = lines.next().unwrap_or_default();
    let mut grant = EgressGrant::default();
    for line in lines {
        match line.strip_prefix('!') {
            Some(ip) => grant.allow_ips.push(ip.to_string()),
            None => grant.allow.push(line.to_string()),
        }
    }
    let policy = Policy::from_grant(&grant);
    let entries: Vec<AllowEntry> = grant
        .allow
        .iter()
        .filter_map(|e| AllowEntry::parse(e).ok())
        .collect();
    let allow_ips = AllowIps::parse(
        &grant
            .allow_ips
            .iter()
            .filter(|e| AllowIps::parse_entry(e).is_ok())
            .cloned()
            .collect::<Vec<_>>(),
    )
    .unwrap_or_default();

    if let Ok(url) = Policy::parse_url(raw_url) {
        let decision = policy.check_url(&url);
        if let Ok(target) = &decision {
            if !entries.iter().any(|e| e.matches(target)) {
                return Err(format!("{raw_url:?} allowed without a matching entry"));
            }
            if let TargetHost::Ip(ip) = target.host {
                if classify(ip) != AddrClass::Public && !allow_ips.covers(ip) {
                    return Err(format!("{raw_url:?} allowed non-public {ip}"));
                }
            }
            if Target::from_url(&url).as_ref() != Ok(target) {
                return Err(format!("{raw_url:?} target differs between calls"));
            }
        }
        if let Ok(again) = url::Url::parse(url.as_str()) {
            let second = policy.check_url(&again);
            if second.as_ref().map_err(EgressError::code)
                != decision.as_ref().map_err(EgressError::code)
            {
                return Err(format!("{raw_url:?} decision changes after re-parsing"));
            }
        }
    }

    for e in &entries {
        if let crate::allow::HostPattern::Subdomains(suffix) = &e.host {
            let bare = Target {
                scheme: e.scheme,
                host: TargetHost::Domain(suffix.clone()),
                port: e.port.unwrap_or(e.scheme.default_port()),
            };
            if e.matches(&bare) {
                return Err(format!("wildcard {e:?} matches its bare suffix"));
            }
        }
    }

    if data.len() >= 16 {
        let mut b = [0u8; 16];
        b.copy_from_slice(&data[data.len() - 16..]);
        let v6 = Ipv6Addr::from(b);
        let v4 = Ipv4Addr::new(b[12], b[13], b[14], b[15]);
        let mapped = v4.to_ipv6_mapped();
        if classify(IpAddr::V6(mapped)) != classify_v4(v4) {
            return Err(format!("{mapped} classifies unlike {v4}"));
        }
        if classify_v4(v4) != AddrClass::Public {
            let mut nat64 = [0u8; 16];
            nat64[..4].copy_from_slice(&[0, 0x64, 0xff, 0x9b]);
            nat64[12..].copy_from_slice(&v4.octets());
            let mut compat = [0u8; 16];
            compat[12..].copy_from_slice(&v4.octets());
            for form in [Ipv6Addr::from(nat64), Ipv6Addr::from(compat)] {
                if classify(IpAddr::V6(form)) == AddrClass::Public {
                    return Err(format!("{form} (embedding {v4}) classified public"));
                }
            }
        }
        for ip in [IpAddr::V6(v6), IpAddr::V4(v4)] {
            let refused = policy.check_resolution("fuzz.example", &[ip]).is_err();
            let should_refuse = classify(ip) != AddrClass::Public && !allow_ips.covers(ip);
            if refused != should_refuse {
                return Err(format!("resolution of {ip}: refused={refused}"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic xorshift generator, so the test needs no extra crate.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[(self.next() % items.len() as u64) as usize]
        }
    }

    const HOSTS: &[&str] = &[
        "a.example.com",
        "example.com",
        "EXAMPLE.com.",
        "127.0.0.1",
        "2130706433",
        "0x7f.1",
        "0177.0.0.1",
        "127.1",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "[64:ff9b::a00:1]",
        "10.0.0.5",
        "bücher.example",
        "xn--bcher-kva.example",
        "a.b.example.com",
        "example.com.evil.net",
        "evil-example.com",
        "169.254.169.254",
        "[fe80::1%25eth0]",
        "%31%32%37.0.0.1",
        "127。0。0。1",
        "allowed.example@127.0.0.1",
        "8.8.8.8",
        "[2001:db8::1]",
        "0",
        "1.2.3.4.5",
        "a..b",
        "",
    ];
    const ENTRIES: &[&str] = &[
        "*.example.com",
        "example.com",
        "http://127.0.0.1",
        "127.0.0.1",
        "[::1]",
        "10.0.0.5",
        "bücher.example",
        "*.",
        "*",
        "http://*.example.com:8080",
        "8.8.8.8",
        "[2001:db8::1]",
        "!127.0.0.1",
        "!10.0.0.0/8",
        "!::/0",
        "!fe80::/10",
        "!bad",
    ];
    const PIECES: &[&str] = &[
        "https://", "http://", "ftp://", ":443", ":80", ":8080", "/", "\\", "@", "#", "?", " ",
        "\t", "%00", ".", "[", "]", ":", "user:pw@",
    ];

    #[test]
    fn randomized_invariants_hold() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..20_000 {
            let mut input = String::new();
            input.push_str(rng.pick(&["https://", "http://", "", "HTTPS://"]));
            for _ in 0..(rng.next() % 3) {
                input.push_str(rng.pick(PIECES));
            }
            input.push_str(rng.pick(HOSTS));
            for _ in 0..(rng.next() % 3) {
                input.push_str(rng.pick(PIECES));
            }
            for _ in 0..(1 + rng.next() % 4) {
                input.push('\n');
                input.push_str(rng.pick(ENTRIES));
            }
            let mut bytes = input.into_bytes();
            if rng.next() & 1 == 0 {
                bytes.push(b'\n');
                bytes.extend_from_slice(&rng.next().to_le_bytes());
                bytes.extend_from_slice(&rng.next().to_le_bytes());
            }
            if let Err(violation) = check_invariants(&bytes) {
                panic!("invariant violated for {bytes:?}: {violation}");
            }
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = Rng(42);
        for _ in 0..20_000 {
            let len = (rng.next() % 64) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if let Err(violation) = check_invariants(&bytes) {
                panic!("invariant violated for {bytes:?}: {violation}");
            }
        }
    }

    #[test]
    fn known_bad_inputs_are_fine() {
        for input in [
            &b"http://127.0.0.1/\nhttp://127.0.0.1"[..],
            b"http://0x7f.1/\nhttp://127.0.0.1\n!127.0.0.1",
            b"https://example.com/\n*.example.com",
        ] {
            assert_eq!(check_invariants(input), Ok(()));
        }
    }
}
