//! The `http:egress` option grammar: `allow` entries, `allow_ips` addresses and networks,
//! `resolve` host names.
//!
//! Owns: parsing an allow entry (`[http://|https://](host|*.host|ip)[:port]`), deciding whether
//! a host name is in canonical form (lower-case ASCII, punycode for IDNs, valid labels), and
//! matching a host against an entry (`*.example.com` matches subdomains of any depth, never the
//! apex).
//! Must never: resolve names or touch the network, accept a wildcard anywhere but a leading
//! `*.`, or accept a path, query, user info or an unbracketed IPv6 address in an entry.

use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

/// The scheme an allow entry is restricted to, if it names one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `http://`
    Http,
    /// `https://`
    Https,
}

/// The host part of an allow entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowHost {
    /// `api.stripe.com`: exactly this host.
    Exact(String),
    /// `*.stripe.com`: any subdomain of `stripe.com` (any depth), never `stripe.com` itself.
    /// Holds the suffix without `*.`.
    Wildcard(String),
    /// An IP literal (`10.0.0.5`, `[fd00::1]`); must also be covered by `allow_ips`.
    Ip(IpAddr),
}

/// One parsed `allow` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowEntry {
    /// The scheme the entry names, `None` when it names none (the egress policy decides what
    /// that means; `magic-egress` reads it as https).
    pub scheme: Option<Scheme>,
    /// Host, wildcard or address.
    pub host: AllowHost,
    /// The port the entry names, `None` when it names none (the egress policy decides what
    /// that means; `magic-egress` reads it as the scheme's default port).
    pub port: Option<u16>,
}

impl AllowEntry {
    /// Whether `host` (as it appears in a URL; case and one trailing dot ignored, IPv6 with or
    /// without brackets) is covered by this entry's host part.
    pub fn matches_host(&self, host: &str) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        match &self.host {
            AllowHost::Exact(name) => *name == host,
            AllowHost::Wildcard(suffix) => host
                .strip_suffix(suffix.as_str())
                .and_then(|head| head.strip_suffix('.'))
                .is_some_and(|head| !head.is_empty()),
            AllowHost::Ip(ip) => {
                let bare = host
                    .strip_prefix('[')
                    .and_then(|h| h.strip_suffix(']'))
                    .unwrap_or(&host);
                IpAddr::from_str(bare).is_ok_and(|h| h == *ip)
            }
        }
    }
}

/// Parse one `allow` entry, refusing anything but `[scheme://]host[:port]`.
pub fn parse_allow_entry(entry: &str) -> Result<AllowEntry, String> {
    if entry.is_empty() {
        return Err("an allow entry must not be empty".into());
    }
    if entry.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{entry:?} contains whitespace or control characters"
        ));
    }
    let (scheme, rest) = match entry.split_once("://") {
        Some(("http", rest)) => (Some(Scheme::Http), rest),
        Some(("https", rest)) => (Some(Scheme::Https), rest),
        Some((other, _)) => {
            return Err(format!(
                "\"{entry}\": scheme \"{other}\" is not allowed, only http:// or https://"
            ))
        }
        None => (None, entry),
    };
    if let Some(pos) = rest.find(['/', '?', '#', '@', '\\']) {
        let bad = rest[pos..].chars().next().unwrap_or('/');
        let what = match bad {
            '@' => "user info",
            '?' => "a query",
            '#' => "a fragment",
            _ => "a path",
        };
        let keep = entry.len() - rest.len() + pos;
        return Err(format!(
            "\"{entry}\" contains {what}: write only the host and an optional port, e.g. \"{}\"",
            &entry[..keep]
        ));
    }
    let (host_text, port_text, bracketed) = if let Some(after) = rest.strip_prefix('[') {
        let Some((inside, tail)) = after.split_once(']') else {
            return Err(format!("\"{entry}\": unclosed [ in an IPv6 address"));
        };
        let port = match tail {
            "" => None,
            _ => match tail.strip_prefix(':') {
                Some(p) => Some(p),
                None => return Err(format!("\"{entry}\": unexpected text after ]")),
            },
        };
        (inside, port, true)
    } else {
        match rest.split_once(':') {
            Some((_, p)) if p.contains(':') => {
                return Err(format!(
                    "\"{entry}\": write an IPv6 address in brackets, e.g. \"[fd00::1]:443\""
                ));
            }
            Some((h, p)) => (h, Some(p), false),
            None => (rest, None, false),
        }
    };
    let port = match port_text {
        None => None,
        Some(p) => Some(parse_port(p).map_err(|why| format!("\"{entry}\": {why}"))?),
    };
    if host_text.is_empty() {
        return Err(format!("\"{entry}\" has no host"));
    }
    let host = if bracketed {
        match std::net::Ipv6Addr::from_str(host_text) {
            Ok(ip) => AllowHost::Ip(IpAddr::V6(ip)),
            Err(_) => {
                return Err(format!(
                    "\"{entry}\": \"{host_text}\" is not an IPv6 address"
                ))
            }
        }
    } else if let Ok(ip) = std::net::Ipv4Addr::from_str(host_text) {
        AllowHost::Ip(IpAddr::V4(ip))
    } else if host_text
        .strip_prefix("*.")
        .unwrap_or(host_text)
        .contains('*')
    {
        return Err(format!(
            "\"{entry}\": a wildcard is only allowed as a leading \"*.\", e.g. \"*.example.com\""
        ));
    } else if let Some(suffix) = host_text.strip_prefix("*.") {
        check_hostname(suffix).map_err(|why| format!("\"{entry}\": {why}"))?;
        if !suffix.contains('.') {
            return Err(format!(
                "\"{entry}\" would allow every host under a top-level domain: name a domain, e.g. \"*.example.com\""
            ));
        }
        AllowHost::Wildcard(suffix.to_string())
    } else {
        check_hostname(host_text).map_err(|why| format!("\"{entry}\": {why}"))?;
        AllowHost::Exact(host_text.to_string())
    };
    Ok(AllowEntry { scheme, host, port })
}

fn parse_port(text: &str) -> Result<u16, String> {
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("\"{text}\" is not a port (1 to 65535)"));
    }
    if text.starts_with('0') {
        return Err(format!(
            "port \"{text}\" has a leading zero: write \"{}\"",
            text.trim_start_matches('0')
        ));
    }
    match text.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("\"{text}\" is not a port (1 to 65535)")),
    }
}

/// Whether `host` is a host name in canonical form: lower-case ASCII labels of letters,
/// digits, `-` and `_` (no leading or trailing `-`, 1 to 63 long, 253 in all), `xn--` labels
/// valid punycode, not ending in a numeric label (that would be read as an IPv4 address).
/// Non-canonical input gets the canonical spelling in the reason.
pub fn check_hostname(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("the host name is empty".into());
    }
    if host.ends_with('.') {
        return Err(format!(
            "\"{host}\": drop the trailing dot, write \"{}\"",
            host.trim_end_matches('.')
        ));
    }
    let canonical_chars = host
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'_'));
    if !canonical_chars {
        return match idna::domain_to_ascii_strict(host) {
            Ok(ascii) if ascii != host && !ascii.is_empty() => Err(format!(
                "\"{host}\" is not in canonical form: write \"{ascii}\" (lower case, punycode for international names)"
            )),
            _ => Err(format!(
                "\"{host}\" is not a valid host name: use letters, digits, - and . only"
            )),
        };
    }
    if host.len() > 253 {
        return Err(format!("\"{host}\" is longer than 253 characters"));
    }
    let labels: Vec<&str> = host.split('.').collect();
    for label in &labels {
        if label.is_empty() {
            return Err(format!(
                "\"{host}\" has an empty label (\"..\" or a leading dot)"
            ));
        }
        if label.len() > 63 {
            return Err(format!("\"{host}\" has a label longer than 63 characters"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("\"{host}\": a label must not start or end with -"));
        }
        if label.starts_with("xn--") {
            let (unicode, result) = idna::domain_to_unicode(label);
            let round_trip = idna::domain_to_ascii_strict(&unicode);
            if result.is_err() || round_trip.ok().as_deref() != Some(*label) {
                return Err(format!("\"{host}\": \"{label}\" is not valid punycode"));
            }
        }
    }
    let last = labels.last().copied().unwrap_or_default();
    let hex = last
        .strip_prefix("0x")
        .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
    if last.bytes().all(|b| b.is_ascii_digit()) || hex {
        return Err(format!(
            "\"{host}\" looks like an IP address but is not one; write a dotted IPv4 address or a host name"
        ));
    }
    Ok(())
}

/// Parse an `allow_ips` entry: an address (`10.0.0.5`, `fd00::1`) or a network in CIDR form
/// with no host bits set (`10.1.0.0/16`). A `/0` network is refused.
pub fn parse_ip_or_cidr(text: &str) -> Result<IpNet, String> {
    if text.contains('/') {
        let net = IpNet::from_str(text)
            .map_err(|_| format!("\"{text}\" is not an IP network (e.g. \"10.1.0.0/16\")"))?;
        if net.prefix_len() == 0 {
            return Err(format!("\"{text}\" would allow every address"));
        }
        if net.trunc() != net {
            return Err(format!(
                "\"{text}\" has host bits set: write \"{}\"",
                net.trunc()
            ));
        }
        Ok(net)
    } else {
        IpAddr::from_str(text).map(IpNet::from).map_err(|_| {
            format!(
                "\"{text}\" is not an IP address or network (e.g. \"10.0.0.5\", \"10.1.0.0/16\")"
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(h: &str) -> AllowHost {
        AllowHost::Exact(h.into())
    }

    #[test]
    fn allow_entries_parse() {
        let ok: Vec<(&str, Option<Scheme>, AllowHost, Option<u16>)> = vec![
            ("api.stripe.com", None, exact("api.stripe.com"), None),
            (
                "*.stripe.com",
                None,
                AllowHost::Wildcard("stripe.com".into()),
                None,
            ),
            (
                "https://api.stripe.com",
                Some(Scheme::Https),
                exact("api.stripe.com"),
                None,
            ),
            (
                "http://*.example.com:8080",
                Some(Scheme::Http),
                AllowHost::Wildcard("example.com".into()),
                Some(8080),
            ),
            ("localhost:9000", None, exact("localhost"), Some(9000)),
            ("my_svc.internal", None, exact("my_svc.internal"), None),
            (
                "xn--e1aybc.example.com",
                None,
                exact("xn--e1aybc.example.com"),
                None,
            ),
            (
                "10.0.0.5:8443",
                None,
                AllowHost::Ip("10.0.0.5".parse().unwrap()),
                Some(8443),
            ),
            (
                "https://[fd00::1]:443",
                Some(Scheme::Https),
                AllowHost::Ip("fd00::1".parse().unwrap()),
                Some(443),
            ),
            ("[::1]", None, AllowHost::Ip("::1".parse().unwrap()), None),
        ];
        for (text, scheme, host, port) in ok {
            assert_eq!(
                parse_allow_entry(text),
                Ok(AllowEntry { scheme, host, port }),
                "{text}"
            );
        }
    }

    #[test]
    fn allow_entries_refused() {
        let bad: &[(&str, &str)] = &[
            ("", "empty"),
            ("*", "wildcard"),
            ("*.com", "top-level"),
            ("api.*.com", "leading"),
            ("*api.com", "leading"),
            ("**.api.com", "leading"),
            ("*.*.api.com", "leading"),
            ("api.stripe.com/v1", "path"),
            ("https://api.stripe.com/", "e.g. \"https://api.stripe.com\""),
            ("api.stripe.com?x=1", "query"),
            ("api.stripe.com#x", "fragment"),
            ("user@api.stripe.com", "user info"),
            ("a\\b.com", "path"),
            ("ftp://api.stripe.com", "scheme"),
            ("HTTPS://api.stripe.com", "scheme"),
            ("api.stripe.com:0", "port"),
            ("api.stripe.com:0443", "leading zero: write \"443\""),
            ("api.stripe.com:65536", "port"),
            ("api.stripe.com:", "port"),
            ("api.stripe.com:http", "port"),
            ("api.stripe.com:+80", "port"),
            ("fd00::1", "brackets"),
            ("[fd00::1", "unclosed"),
            ("[10.0.0.1]", "IPv6"),
            ("[fd00::1]x", "after"),
            ("API.Stripe.com", "api.stripe.com"),
            ("тест.example.com", "xn--e1aybc.example.com"),
            ("api.stripe.com.", "trailing dot"),
            ("api..stripe.com", "empty label"),
            (".stripe.com", "empty label"),
            ("-api.stripe.com", "start or end"),
            ("api-.stripe.com", "start or end"),
            ("xn--zz.example.com", "punycode"),
            ("999.1.1.1", "looks like an IP"),
            ("1.2.3", "looks like an IP"),
            ("0x7f000001", "looks like an IP"),
            ("api stripe.com", "whitespace"),
            ("api.stripe.com\n", "control"),
            ("a$b.com", "valid host name"),
            (":443", "no host"),
        ];
        for (text, why) in bad {
            let err = parse_allow_entry(text).expect_err(text);
            assert!(err.contains(why), "{text}: {err}");
        }
        let long_label = format!("{}.com", "a".repeat(64));
        assert!(parse_allow_entry(&long_label).is_err());
        let long_host = format!("{}com", "abcdefghi.".repeat(26));
        assert!(parse_allow_entry(&long_host).unwrap_err().contains("253"));
    }

    #[test]
    fn matching() {
        let wild = parse_allow_entry("*.stripe.com").unwrap();
        assert!(wild.matches_host("api.stripe.com"));
        assert!(wild.matches_host("a.b.stripe.com"));
        assert!(wild.matches_host("API.Stripe.com."));
        assert!(!wild.matches_host("stripe.com"));
        assert!(!wild.matches_host("evilstripe.com"));
        assert!(!wild.matches_host(".stripe.com"));
        assert!(!wild.matches_host("stripe.com.evil.com"));
        let exact = parse_allow_entry("api.stripe.com").unwrap();
        assert!(exact.matches_host("api.stripe.com"));
        assert!(!exact.matches_host("x.api.stripe.com"));
        assert!(!exact.matches_host(""));
        let ip = parse_allow_entry("[fd00::1]").unwrap();
        assert!(ip.matches_host("[fd00::1]"));
        assert!(ip.matches_host("fd00:0::1"));
        assert!(!ip.matches_host("fd00::2"));
    }

    #[test]
    fn ips_and_networks() {
        for ok in [
            "10.0.0.5",
            "fd00::1",
            "10.1.0.0/16",
            "192.168.1.0/24",
            "fd00::/8",
            "10.0.0.5/32",
        ] {
            assert!(parse_ip_or_cidr(ok).is_ok(), "{ok}");
        }
        let bad: &[(&str, &str)] = &[
            ("10.1.0.5/16", "host bits set: write \"10.1.0.0/16\""),
            ("0.0.0.0/0", "every address"),
            ("::/0", "every address"),
            ("10.0.0.0/33", "not an IP network"),
            ("10.0.0", "not an IP address"),
            ("example.com", "not an IP address"),
            ("", "not an IP address"),
            ("[::1]", "not an IP address"),
        ];
        for (text, why) in bad {
            let err = parse_ip_or_cidr(text).expect_err(text);
            assert!(err.contains(why), "{text}: {err}");
        }
    }
}
