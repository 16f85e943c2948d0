//! Allowlist entries and matching (pure functions, no I/O).
//!
//! Owns: the syntax of an `http:egress` `allow` entry (`host`, `*.host`, optional `http://` or
//! `https://` prefix, optional `:port`), its normalisation (lower case, trailing dot removed,
//! IDNA to ASCII and WHATWG IPv4 number forms through the same `url` host parser the HTTP
//! client uses), and the decision whether a parsed destination ([`Target`]) matches an entry.
//!
//! Must never: match on raw strings from a controller (only on a [`Target`] built from a parsed
//! URL), let `*.example.com` match `example.com` or any host that does not end in
//! `.example.com`, allow a port other than the scheme default unless the entry names it, or
//! allow plain `http` unless the entry says `http://`.

use std::net::IpAddr;

use url::{Host, Url};

/// URL scheme of an entry or a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `http`, default port 80.
    Http,
    /// `https`, default port 443.
    Https,
}

impl Scheme {
    /// The scheme's default port.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    /// `http` or `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// The host part of an allow entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Exactly this (normalised, ASCII) domain.
    Exact(String),
    /// `*.suffix`: any domain ending in `.suffix`, never `suffix` itself.
    Subdomains(String),
    /// Exactly this IP literal.
    Ip(IpAddr),
}

/// One parsed allow entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowEntry {
    /// Scheme the entry allows (https unless it says `http://`).
    pub scheme: Scheme,
    /// Host pattern.
    pub host: HostPattern,
    /// Port the entry allows; `None` means the scheme's default port only.
    pub port: Option<u16>,
}

/// Why an allow entry is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("allow entry {entry:?} is invalid: {reason}")]
pub struct InvalidEntry {
    /// The entry as written.
    pub entry: String,
    /// What is wrong.
    pub reason: String,
}

/// A destination host after URL parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetHost {
    /// A domain name: ASCII, lower case, no trailing dot.
    Domain(String),
    /// An IP literal.
    Ip(IpAddr),
}

impl std::fmt::Display for TargetHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetHost::Domain(d) => f.write_str(d),
            TargetHost::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            TargetHost::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
        }
    }
}

/// Where a URL would connect: scheme, host and effective port, exactly as the client sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Scheme.
    pub scheme: Scheme,
    /// Host.
    pub host: TargetHost,
    /// Effective port (the scheme default when the URL names none).
    pub port: u16,
}

/// Why a URL cannot be a destination at all (independent of any allowlist).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Not `http` or `https`.
    #[error("scheme {0:?} is not allowed (http and https only)")]
    Scheme(String),
    /// `user:pass@` in the URL.
    #[error("credentials in the URL are not allowed")]
    Credentials,
    /// No host, or an empty one.
    #[error("the URL has no host")]
    NoHost,
    /// A domain with an empty label (`.example.com`, `a..b`, `example.com..`).
    #[error("the host has an empty label")]
    EmptyLabel,
}

/// Normalise a domain the way entries and destinations are compared: strip one trailing dot.
/// The input is already lower-case ASCII from the `url` host parser.
fn strip_trailing_dot(d: &str) -> &str {
    d.strip_suffix('.').unwrap_or(d)
}

/// Parse a host with the WHATWG host parser used for `http`/`https` URLs.
fn parse_host(host: &str) -> Option<TargetHost> {
    match Host::parse(host).ok()? {
        Host::Domain(d) => {
            let d = strip_trailing_dot(&d);
            if d.is_empty() || d.contains('.') && d.split('.').any(str::is_empty) {
                None
            } else {
                Some(TargetHost::Domain(d.to_string()))
            }
        }
        Host::Ipv4(ip) => Some(TargetHost::Ip(IpAddr::V4(ip))),
        Host::Ipv6(ip) => Some(TargetHost::Ip(IpAddr::V6(ip))),
    }
}

impl AllowEntry {
    /// Parse one entry: `api.stripe.com`, `*.stripe.com`, `http://intranet.example:8080`,
    /// `https://[2001:db8::1]:8443`, `10.0.0.5`.
    pub fn parse(entry: &str) -> Result<AllowEntry, InvalidEntry> {
        let bad = |reason: &str| InvalidEntry {
            entry: entry.to_string(),
            reason: reason.to_string(),
        };
        let e = entry.trim();
        if e.is_empty() {
            return Err(bad("empty"));
        }
        let lower = e.to_ascii_lowercase();
        let (scheme, rest) = if lower.starts_with("https://") {
            (Scheme::Https, &e["https://".len()..])
        } else if lower.starts_with("http://") {
            (Scheme::Http, &e["http://".len()..])
        } else if e.contains("://") {
            return Err(bad("only http:// and https:// may prefix an entry"));
        } else {
            (Scheme::Https, e)
        };
        if rest
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || "/?#@\\%".contains(c))
        {
            return Err(bad(
                "an entry is a host with an optional port: no path, query, user, spaces or escapes",
            ));
        }
        let (host, port) = split_port(rest).ok_or_else(|| bad("malformed host or port"))?;
        let port = match port {
            None => None,
            Some(p) => Some(parse_port(p).ok_or_else(|| bad("port must be 1-65535"))?),
        };
        let pattern = if let Some(suffix) = host.strip_prefix("*.") {
            if suffix.contains('*') {
                return Err(bad(
                    "`*` is only allowed as the whole first label (`*.example.com`)",
                ));
            }
            match parse_host(suffix) {
                Some(TargetHost::Domain(d)) if d.contains('.') => HostPattern::Subdomains(d),
                Some(TargetHost::Domain(_)) => {
                    return Err(bad("a wildcard needs at least two labels after `*.`"))
                }
                Some(TargetHost::Ip(_)) => return Err(bad("a wildcard cannot cover an IP")),
                None => return Err(bad("invalid host after `*.`")),
            }
        } else {
            if host.contains('*') {
                return Err(bad(
                    "`*` is only allowed as the whole first label (`*.example.com`)",
                ));
            }
            match parse_host(host) {
                Some(TargetHost::Domain(d)) => HostPattern::Exact(d),
                Some(TargetHost::Ip(ip)) => HostPattern::Ip(ip),
                None => return Err(bad("invalid host")),
            }
        };
        Ok(AllowEntry {
            scheme,
            host: pattern,
            port,
        })
    }

    /// Whether this entry allows `target`.
    pub fn matches(&self, target: &Target) -> bool {
        if self.scheme != target.scheme {
            return false;
        }
        if self.port.unwrap_or(self.scheme.default_port()) != target.port {
            return false;
        }
        match (&self.host, &target.host) {
            (HostPattern::Exact(want), TargetHost::Domain(got)) => want == got,
            (HostPattern::Subdomains(suffix), TargetHost::Domain(got)) => got
                .strip_suffix(suffix.as_str())
                .and_then(|head| head.strip_suffix('.'))
                .is_some_and(|label| !label.is_empty()),
            (HostPattern::Ip(want), TargetHost::Ip(got)) => want == got,
            _ => false,
        }
    }

    /// Whether this entry could allow some URL on `host` (any scheme or port). Used by the
    /// resolver as a second line of defence: it resolves no name that no entry names.
    pub fn covers_host(&self, host: &TargetHost) -> bool {
        [Scheme::Http, Scheme::Https].into_iter().any(|scheme| {
            self.matches(&Target {
                scheme,
                host: host.clone(),
                port: self.port.unwrap_or(scheme.default_port()),
            })
        })
    }
}

/// `host[:port]` or `[v6][:port]` → (host, port text).
fn split_port(s: &str) -> Option<(&str, Option<&str>)> {
    if s.starts_with('[') {
        let end = s.find(']')?;
        let (host, after) = s.split_at(end + 1);
        match after {
            "" => Some((host, None)),
            _ => Some((host, Some(after.strip_prefix(':')?))),
        }
    } else {
        match s.split_once(':') {
            None => Some((s, None)),
            Some((h, p)) if !p.contains(':') => Some((h, Some(p))),
            Some(_) => None,
        }
    }
}

fn parse_port(p: &str) -> Option<u16> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) || p.starts_with('0') {
        return None;
    }
    p.parse::<u16>().ok().filter(|&n| n != 0)
}

impl Target {
    /// The destination of a parsed URL, as the HTTP client will connect to it.
    pub fn from_url(url: &Url) -> Result<Target, TargetError> {
        let scheme = match url.scheme() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            other => return Err(TargetError::Scheme(other.to_string())),
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(TargetError::Credentials);
        }
        let host = match url.host() {
            Some(Host::Domain(d)) => {
                let d = strip_trailing_dot(d);
                if d.is_empty() {
                    return Err(TargetError::NoHost);
                }
                if d.split('.').any(str::is_empty) {
                    return Err(TargetError::EmptyLabel);
                }
                TargetHost::Domain(d.to_string())
            }
            Some(Host::Ipv4(ip)) => TargetHost::Ip(IpAddr::V4(ip)),
            Some(Host::Ipv6(ip)) => TargetHost::Ip(IpAddr::V6(ip)),
            None => return Err(TargetError::NoHost),
        };
        let port = url.port().unwrap_or(scheme.default_port());
        Ok(Target { scheme, host, port })
    }
}

/// Normalise a host name handed to the resolver (or a key of a static `resolve` map) into the
/// form entries are compared in. `None` when it is not a valid host.
pub fn normalize_host(host: &str) -> Option<TargetHost> {
    parse_host(host)
}

/// Whether any entry allows `target`.
pub fn is_allowed(entries: &[AllowEntry], target: &Target) -> bool {
    entries.iter().any(|e| e.matches(target))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> Target {
        Target::from_url(&Url::parse(url).unwrap()).unwrap()
    }

    fn allowed(entry: &str, url: &str) -> bool {
        AllowEntry::parse(entry).unwrap().matches(&target(url))
    }

    #[test]
    fn matching_table() {
        // (entry, url, allowed)
        let table: &[(&str, &str, bool)] = &[
            // exact host, https default
            ("api.example.com", "https://api.example.com/v1", true),
            ("api.example.com", "https://api.example.com:443/v1", true),
            ("api.example.com", "http://api.example.com/v1", false),
            ("api.example.com", "https://api.example.com:8443/", false),
            ("api.example.com", "https://example.com/", false),
            ("api.example.com", "https://x.api.example.com/", false),
            (
                "api.example.com",
                "https://api.example.com.evil.net/",
                false,
            ),
            ("api.example.com", "https://evilapi.example.com/", false),
            // case and trailing dots
            ("API.Example.COM", "https://api.example.com/", true),
            ("api.example.com", "https://API.EXAMPLE.com/", true),
            ("api.example.com", "https://api.example.com./", true),
            ("api.example.com.", "https://api.example.com/", true),
            // wildcard: subdomains only, any depth
            ("*.example.com", "https://a.example.com/", true),
            ("*.example.com", "https://a.b.example.com/", true),
            ("*.example.com", "https://A.Example.Com./", true),
            ("*.example.com", "https://example.com/", false),
            ("*.example.com", "https://evil-example.com/", false),
            ("*.example.com", "https://evilexample.com/", false),
            ("*.example.com", "https://example.com.evil.net/", false),
            ("*.example.com", "https://a.example.com.evil.net/", false),
            ("*.example.com", "https://a.example.co/", false),
            ("*.example.com", "http://a.example.com/", false),
            ("*.example.com", "https://a.example.com:8443/", false),
            // explicit scheme and port
            ("http://intranet.example", "http://intranet.example/", true),
            (
                "http://intranet.example",
                "http://intranet.example:80/",
                true,
            ),
            (
                "http://intranet.example",
                "https://intranet.example/",
                false,
            ),
            (
                "http://intranet.example",
                "http://intranet.example:8080/",
                false,
            ),
            ("https://api.example.com", "https://api.example.com/", true),
            (
                "api.example.com:8443",
                "https://api.example.com:8443/",
                true,
            ),
            ("api.example.com:8443", "https://api.example.com/", false),
            (
                "http://api.example.com:8080",
                "http://api.example.com:8080/",
                true,
            ),
            (
                "http://api.example.com:8080",
                "https://api.example.com:8080/",
                false,
            ),
            ("*.example.com:8443", "https://a.example.com:8443/", true),
            ("*.example.com:8443", "https://a.example.com/", false),
            // IDNA: unicode and punycode are the same host
            ("bücher.example", "https://xn--bcher-kva.example/", true),
            ("xn--bcher-kva.example", "https://bücher.example/", true),
            ("xn--bcher-kva.example", "https://BÜCHER.example/", true),
            ("*.xn--e1aybc.example", "https://a.тест.example/", true),
            ("bücher.example", "https://bucher.example/", false),
            // fullwidth dots are dots after IDNA mapping
            ("api.example.com", "https://api。example。com/", true),
            // IP entries: exact IP only
            ("127.0.0.1", "https://127.0.0.1/", true),
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080/", true),
            ("http://127.0.0.1:8080", "http://127.0.0.2:8080/", false),
            ("127.0.0.1", "https://2130706433/", true),
            ("127.0.0.1", "https://[::ffff:127.0.0.1]/", false),
            ("[2001:db8::1]", "https://[2001:db8::1]/", true),
            ("[2001:db8::1]:8443", "https://[2001:db8::1]:8443/", true),
            ("[2001:db8::1]", "https://[2001:db8::2]/", false),
            // a domain entry never allows an IP and vice versa
            ("localhost", "https://127.0.0.1/", false),
            ("127.0.0.1", "https://localhost/", false),
            ("*.example.com", "https://1.2.3.4/", false),
        ];
        for (entry, url, want) in table {
            assert_eq!(allowed(entry, url), *want, "entry {entry:?} url {url:?}");
        }
    }

    #[test]
    fn invalid_entries() {
        for bad in [
            "",
            " ",
            "*",
            "*.",
            "*.com",
            "*example.com",
            "**.example.com",
            "*.*.example.com",
            "api.*.example.com",
            "ex*ample.com",
            "example.*",
            "ftp://example.com",
            "https://example.com/path",
            "example.com/",
            "user@example.com",
            "example.com?x",
            "example.com#x",
            "exa mple.com",
            "example.com:0",
            "example.com:65536",
            "example.com:007",
            "example.com:",
            "example.com:http",
            "2001:db8::1",
            "[2001:db8::1",
            "[fe80::1%25eth0]",
            "*.1.2.3.4",
            "a..b",
            "example.com\\x",
            "exa%6dple.com",
        ] {
            assert!(AllowEntry::parse(bad).is_err(), "{bad:?} should be invalid");
        }
    }

    #[test]
    fn entry_normalisation() {
        let e = AllowEntry::parse("HTTP://Bücher.Example.:8080").unwrap();
        assert_eq!(e.scheme, Scheme::Http);
        assert_eq!(e.port, Some(8080));
        assert_eq!(e.host, HostPattern::Exact("xn--bcher-kva.example".into()));
        let e = AllowEntry::parse("0x7f.1").unwrap();
        assert_eq!(e.host, HostPattern::Ip("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn target_refuses_other_schemes_and_credentials() {
        for (url, err) in [
            ("ftp://example.com/", TargetError::Scheme("ftp".into())),
            ("file:///etc/passwd", TargetError::Scheme("file".into())),
            (
                "gopher://example.com/",
                TargetError::Scheme("gopher".into()),
            ),
            ("https://user@example.com/", TargetError::Credentials),
            ("https://user:pw@example.com/", TargetError::Credentials),
            ("https://:pw@example.com/", TargetError::Credentials),
            ("https://.example.com/", TargetError::EmptyLabel),
            ("https://..example.com/", TargetError::EmptyLabel),
            ("https://a..example.com/", TargetError::EmptyLabel),
            ("https://example.com../", TargetError::EmptyLabel),
        ] {
            assert_eq!(
                Target::from_url(&Url::parse(url).unwrap()),
                Err(err),
                "{url}"
            );
        }
    }

    #[test]
    fn covers_host_ignores_scheme_and_port() {
        let e = AllowEntry::parse("http://*.example.com:8080").unwrap();
        assert!(e.covers_host(&TargetHost::Domain("a.example.com".into())));
        assert!(!e.covers_host(&TargetHost::Domain("example.com".into())));
    }
}
