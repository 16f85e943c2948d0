//! Malformed inputs of every kind must give problems, never a panic.

use magic_contract::egress::{check_hostname, parse_allow_entry, parse_ip_or_cidr, AllowHost};
use magic_contract::{check_package_path, parse_bytes, parse_contract, parse_cpu, parse_duration};

const EXAMPLE: &str = include_str!("fixtures/every_capability/contract.yaml");

/// A small deterministic generator (no extra dependency).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() as usize) % items.len()]
    }
}

#[test]
fn mutated_contracts_never_panic() {
    let inserts = [
        "", ":", "-", " ", "\n", "\t", "{", "[", "*", "&a", "!x", "\"", "'", "é", "0", "#",
    ];
    let mut rng = Lcg(7);
    let mut accepted = 0;
    let bytes = EXAMPLE.as_bytes();
    for _ in 0..600 {
        let at = (rng.next() as usize) % bytes.len();
        let cut = (rng.next() as usize) % 4;
        let end = (at + cut).min(bytes.len());
        let mut mutated = bytes[..at].to_vec();
        mutated.extend_from_slice(rng.pick(&inserts).as_bytes());
        mutated.extend_from_slice(&bytes[end..]);
        let text = String::from_utf8_lossy(&mutated);
        match parse_contract(&text) {
            Ok(_) => accepted += 1,
            Err(errors) => {
                assert!(!errors.0.is_empty());
                for p in &errors.0 {
                    assert_eq!(p.file, "contract.yaml");
                    assert!(!p.reason.is_empty());
                }
            }
        }
    }
    // Some mutations land in comments or strings; most do not.
    assert!(accepted < 600);
}

#[test]
fn random_option_values_never_panic() {
    let pieces = [
        "a",
        "Z",
        "0",
        "9",
        ".",
        "..",
        "*",
        "*.",
        ":",
        "-",
        "_",
        "/",
        "\\",
        "[",
        "]",
        "@",
        "?",
        "#",
        "%",
        "~",
        " ",
        "\0",
        "\n",
        "é",
        "ß",
        "xn--",
        "http://",
        "https://",
        "::",
        "ms",
        "s",
        "m",
        "h",
        "d",
        "Mi",
        "Gi",
        "M",
        "K",
        "k",
        "Ti",
        "e",
        "+",
        "99999999999999999999",
        "0x",
        "127.0.0.1",
        "[::1]",
        "/8",
        "/33",
        "\u{202e}",
    ];
    let mut rng = Lcg(42);
    for _ in 0..20_000 {
        let len = 1 + (rng.next() as usize) % 6;
        let text: String = (0..len).map(|_| rng.pick(&pieces)).collect();
        let _ = parse_duration(&text);
        let _ = parse_bytes(&text);
        let _ = parse_cpu(&text);
        let _ = check_hostname(&text);
        let _ = parse_ip_or_cidr(&text);
        let _ = check_package_path(&text);
        if let Ok(entry) = parse_allow_entry(&text) {
            match &entry.host {
                AllowHost::Exact(host) => assert!(entry.matches_host(host), "{text}"),
                AllowHost::Wildcard(suffix) => {
                    assert!(!entry.matches_host(suffix), "{text}");
                    assert!(entry.matches_host(&format!("x.{suffix}")), "{text}");
                }
                AllowHost::Ip(ip) => assert!(entry.matches_host(&ip.to_string()), "{text}"),
            }
        }
    }
}
