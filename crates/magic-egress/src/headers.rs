//! Header hygiene for outbound requests and returned responses (pure functions).
//!
//! Owns: which request headers a controller may set, rejecting CR/LF/NUL in names and values,
//! and which response headers are handed back.
//!
//! Must never: let a controller set `Host`, framing (`Content-Length`, `Transfer-Encoding`),
//! connection-management or proxy headers, or `X-Request-ID` (the broker sets it); or pass a
//! header value containing a line break.

use std::collections::BTreeMap;

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// Request headers the client controls; a controller's value is dropped.
const DROPPED_REQUEST: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "expect",
    "http2-settings",
    "x-request-id",
];

/// Hop-by-hop response headers that describe our connection, not the resource.
const DROPPED_RESPONSE: &[&str] = &[
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Why a request header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("request header {name:?} is invalid: {reason}")]
pub struct InvalidHeader {
    /// The header name as given.
    pub name: String,
    /// What is wrong.
    pub reason: &'static str,
}

fn is_dropped_request(name: &str) -> bool {
    DROPPED_REQUEST.contains(&name) || name.starts_with("proxy-")
}

/// Turn a controller's headers into the header map sent: invalid names or values (CR, LF, NUL,
/// other control characters) are an error; headers the client owns are dropped.
pub fn sanitize_request(headers: &BTreeMap<String, String>) -> Result<HeaderMap, InvalidHeader> {
    let mut out = HeaderMap::new();
    for (name, value) in headers {
        let bad = |reason| InvalidHeader {
            name: name.clone(),
            reason,
        };
        if name.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(bad("line break or NUL in name"));
        }
        if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(bad("line break or NUL in value"));
        }
        let hn = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad("not a header name"))?;
        if is_dropped_request(hn.as_str()) {
            continue;
        }
        let hv = HeaderValue::from_str(value).map_err(|_| bad("control character in value"))?;
        out.append(hn, hv);
    }
    Ok(out)
}

/// Response headers handed back to the controller: hop-by-hop headers removed, repeated
/// headers joined with `, `, non-UTF-8 bytes replaced.
pub fn sanitize_response(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let n = name.as_str();
        if DROPPED_RESPONSE.contains(&n) || n.starts_with("proxy-") {
            continue;
        }
        let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
        out.entry(n.to_string())
            .and_modify(|prev| {
                prev.push_str(", ");
                prev.push_str(&v);
            })
            .or_insert(v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(name: &str, value: &str) -> Result<HeaderMap, InvalidHeader> {
        sanitize_request(&BTreeMap::from([(name.to_string(), value.to_string())]))
    }

    #[test]
    fn allowed_headers_pass() {
        let h = sanitize_request(&BTreeMap::from([
            ("Content-Type".to_string(), "application/json".to_string()),
            ("Authorization".to_string(), "Bearer abc".to_string()),
            ("X-Custom".to_string(), "a\tb".to_string()),
        ]))
        .unwrap();
        assert_eq!(h.len(), 3);
        assert_eq!(h["content-type"], "application/json");
    }

    #[test]
    fn client_owned_headers_are_dropped() {
        for name in [
            "Host",
            "host",
            "Connection",
            "Keep-Alive",
            "TE",
            "Trailer",
            "Transfer-Encoding",
            "Upgrade",
            "Content-Length",
            "Expect",
            "Proxy-Authorization",
            "Proxy-Connection",
            "X-Request-ID",
        ] {
            assert!(one(name, "x").unwrap().is_empty(), "{name} must be dropped");
        }
    }

    #[test]
    fn injection_is_refused() {
        for (name, value) in [
            ("X-A", "v\r\nHost: evil"),
            ("X-A", "v\nX-B: 1"),
            ("X-A", "v\r"),
            ("X-A", "v\0"),
            ("X-A", "v\x01"),
            ("X-A\r\nHost", "evil"),
            ("X A", "v"),
            ("X:A", "v"),
            ("", "v"),
            ("Hóst", "v"),
        ] {
            assert!(one(name, value).is_err(), "{name:?}: {value:?}");
        }
    }

    #[test]
    fn response_hop_by_hop_removed_and_joined() {
        let mut h = HeaderMap::new();
        h.append("connection", HeaderValue::from_static("close"));
        h.append("transfer-encoding", HeaderValue::from_static("chunked"));
        h.append("proxy-authenticate", HeaderValue::from_static("x"));
        h.append("set-cookie", HeaderValue::from_static("a=1"));
        h.append("set-cookie", HeaderValue::from_static("b=2"));
        h.append("content-type", HeaderValue::from_static("text/plain"));
        let out = sanitize_response(&h);
        assert_eq!(
            out,
            BTreeMap::from([
                ("content-type".to_string(), "text/plain".to_string()),
                ("set-cookie".to_string(), "a=1, b=2".to_string()),
            ])
        );
    }
}
