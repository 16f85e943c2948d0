//! Address classification: is a resolved (or literal) IP address one that egress may reach?
//!
//! Owns: the table of special-purpose IPv4/IPv6 ranges (after the IANA special-purpose
//! registries), the handling of IPv6 forms that embed an IPv4 address (mapped, compatible,
//! NAT64, 6to4), and the `allow_ips` exception list of a grant.
//!
//! Must never: decide on a string (only on a parsed [`IpAddr`]), or report an address as
//! [`AddrClass::Public`] when it lies in any special-purpose range. Only global unicast
//! addresses outside those ranges are public; everything else needs an explicit `allow_ips`
//! entry covering the exact address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// What kind of address an IP is, for the egress decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrClass {
    /// Global unicast outside every special-purpose range: allowed.
    Public,
    /// `0.0.0.0`, `::`.
    Unspecified,
    /// `0.0.0.0/8` ("this network").
    ThisNetwork,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// RFC 1918: `10/8`, `172.16/12`, `192.168/16`.
    Private,
    /// Carrier-grade NAT shared space `100.64.0.0/10`.
    Cgnat,
    /// `169.254.0.0/16`, `fe80::/10`.
    LinkLocal,
    /// `224.0.0.0/4`, `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// TEST-NET-1/2/3, `2001:db8::/32`, `3fff::/20`.
    Documentation,
    /// `198.18.0.0/15`, `2001:2::/48`.
    Benchmarking,
    /// `240.0.0.0/4`, and IPv6 outside `2000::/3` that has no more specific class.
    Reserved,
    /// `fc00::/7`.
    UniqueLocal,
    /// `fec0::/10` (deprecated site-local).
    SiteLocal,
    /// Other IANA special-purpose blocks (`192.0.0/24`, AS112, AMT, 6to4 relay anycast,
    /// `2001::/23`, 6to4 `2002::/16`, NAT64 `64:ff9b::/96` and `64:ff9b:1::/48`, discard-only
    /// `100::/64`, deprecated IPv4-compatible IPv6 …).
    SpecialPurpose,
}

impl AddrClass {
    /// Lower-case name used in error messages and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            AddrClass::Public => "public",
            AddrClass::Unspecified => "unspecified",
            AddrClass::ThisNetwork => "this-network",
            AddrClass::Loopback => "loopback",
            AddrClass::Private => "private",
            AddrClass::Cgnat => "cgnat",
            AddrClass::LinkLocal => "link-local",
            AddrClass::Multicast => "multicast",
            AddrClass::Broadcast => "broadcast",
            AddrClass::Documentation => "documentation",
            AddrClass::Benchmarking => "benchmarking",
            AddrClass::Reserved => "reserved",
            AddrClass::UniqueLocal => "unique-local",
            AddrClass::SiteLocal => "site-local",
            AddrClass::SpecialPurpose => "special-purpose",
        }
    }
}

impl std::fmt::Display for AddrClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn v4_in(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    (u32::from(ip) & mask) == (u32::from(Ipv4Addr::from(net)) & mask)
}

fn v6_in(ip: Ipv6Addr, net: [u16; 8], prefix: u32) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix)
    };
    let n = Ipv6Addr::new(
        net[0], net[1], net[2], net[3], net[4], net[5], net[6], net[7],
    );
    (u128::from(ip) & mask) == (u128::from(n) & mask)
}

/// Classify an IPv4 address.
pub fn classify_v4(ip: Ipv4Addr) -> AddrClass {
    const TABLE: &[([u8; 4], u32, AddrClass)] = &[
        ([0, 0, 0, 0], 32, AddrClass::Unspecified),
        ([255, 255, 255, 255], 32, AddrClass::Broadcast),
        ([0, 0, 0, 0], 8, AddrClass::ThisNetwork),
        ([10, 0, 0, 0], 8, AddrClass::Private),
        ([100, 64, 0, 0], 10, AddrClass::Cgnat),
        ([127, 0, 0, 0], 8, AddrClass::Loopback),
        ([169, 254, 0, 0], 16, AddrClass::LinkLocal),
        ([172, 16, 0, 0], 12, AddrClass::Private),
        ([192, 0, 0, 0], 24, AddrClass::SpecialPurpose),
        ([192, 0, 2, 0], 24, AddrClass::Documentation),
        ([192, 31, 196, 0], 24, AddrClass::SpecialPurpose),
        ([192, 52, 193, 0], 24, AddrClass::SpecialPurpose),
        ([192, 88, 99, 0], 24, AddrClass::SpecialPurpose),
        ([192, 168, 0, 0], 16, AddrClass::Private),
        ([192, 175, 48, 0], 24, AddrClass::SpecialPurpose),
        ([198, 18, 0, 0], 15, AddrClass::Benchmarking),
        ([198, 51, 100, 0], 24, AddrClass::Documentation),
        ([203, 0, 113, 0], 24, AddrClass::Documentation),
        ([224, 0, 0, 0], 4, AddrClass::Multicast),
        ([240, 0, 0, 0], 4, AddrClass::Reserved),
    ];
    for (net, prefix, class) in TABLE {
        if v4_in(ip, *net, *prefix) {
            return *class;
        }
    }
    AddrClass::Public
}

/// The embedded IPv4 address's class if it is not public, else `fallback`.
fn embedded(v4: Ipv4Addr, fallback: AddrClass) -> AddrClass {
    match classify_v4(v4) {
        AddrClass::Public => fallback,
        class => class,
    }
}

fn low_v4(ip: Ipv6Addr) -> Ipv4Addr {
    let o = ip.octets();
    Ipv4Addr::new(o[12], o[13], o[14], o[15])
}

/// Classify an IPv6 address. Embedded IPv4 forms: IPv4-mapped (`::ffff:a.b.c.d`) is classified
/// as its IPv4 address (that is where a dual-stack socket connects); IPv4-compatible, NAT64 and
/// 6to4 addresses report the embedded address's class when it is not public, and are
/// [`AddrClass::SpecialPurpose`] otherwise (refused unless explicitly allowed).
pub fn classify_v6(ip: Ipv6Addr) -> AddrClass {
    if ip.is_unspecified() {
        return AddrClass::Unspecified;
    }
    if ip.is_loopback() {
        return AddrClass::Loopback;
    }
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    if v6_in(ip, [0; 8], 96) {
        // Deprecated IPv4-compatible `::a.b.c.d`.
        return embedded(low_v4(ip), AddrClass::SpecialPurpose);
    }
    if v6_in(ip, [0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96) {
        return embedded(low_v4(ip), AddrClass::SpecialPurpose);
    }
    if v6_in(ip, [0x2002, 0, 0, 0, 0, 0, 0, 0], 16) {
        let s = ip.segments();
        let v4 = Ipv4Addr::new(
            (s[1] >> 8) as u8,
            (s[1] & 0xff) as u8,
            (s[2] >> 8) as u8,
            (s[2] & 0xff) as u8,
        );
        return embedded(v4, AddrClass::SpecialPurpose);
    }
    const TABLE: &[([u16; 8], u32, AddrClass)] = &[
        (
            [0x64, 0xff9b, 1, 0, 0, 0, 0, 0],
            48,
            AddrClass::SpecialPurpose,
        ),
        ([0x100, 0, 0, 0, 0, 0, 0, 0], 64, AddrClass::SpecialPurpose),
        ([0x2001, 0x2, 0, 0, 0, 0, 0, 0], 48, AddrClass::Benchmarking),
        (
            [0x2001, 0xdb8, 0, 0, 0, 0, 0, 0],
            32,
            AddrClass::Documentation,
        ),
        ([0x2001, 0, 0, 0, 0, 0, 0, 0], 23, AddrClass::SpecialPurpose),
        (
            [0x2620, 0x4f, 0x8000, 0, 0, 0, 0, 0],
            48,
            AddrClass::SpecialPurpose,
        ),
        ([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20, AddrClass::Documentation),
        ([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7, AddrClass::UniqueLocal),
        ([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, AddrClass::LinkLocal),
        ([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10, AddrClass::SiteLocal),
        ([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, AddrClass::Multicast),
    ];
    for (net, prefix, class) in TABLE {
        if v6_in(ip, *net, *prefix) {
            return *class;
        }
    }
    if v6_in(ip, [0x2000, 0, 0, 0, 0, 0, 0, 0], 3) {
        AddrClass::Public
    } else {
        AddrClass::Reserved
    }
}

/// Classify any address.
pub fn classify(ip: IpAddr) -> AddrClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

/// A grant's `allow_ips`: exact addresses and CIDRs explicitly allowed although non-public.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowIps {
    nets: Vec<IpNet>,
}

/// An `allow_ips` entry that is neither an IP address nor a CIDR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("allow_ips entry {0:?} is not an IP address or CIDR")]
pub struct InvalidAllowIp(pub String);

impl AllowIps {
    /// Parse one entry (`10.0.0.5`, `10.1.0.0/16`, `fd00::1`, `fd00::/64`).
    pub fn parse_entry(entry: &str) -> Result<IpNet, InvalidAllowIp> {
        let e = entry.trim();
        if let Ok(ip) = e.parse::<IpAddr>() {
            return Ok(IpNet::from(ip));
        }
        e.parse::<IpNet>()
            .map(|n| n.trunc())
            .map_err(|_| InvalidAllowIp(entry.to_string()))
    }

    /// Parse all entries; the first invalid one is an error.
    pub fn parse(entries: &[String]) -> Result<Self, InvalidAllowIp> {
        let nets = entries
            .iter()
            .map(|e| Self::parse_entry(e))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AllowIps { nets })
    }

    /// Whether `ip` (or, for an IPv4-mapped address, its IPv4 form) is covered.
    pub fn covers(&self, ip: IpAddr) -> bool {
        let canon = ip.to_canonical();
        self.nets
            .iter()
            .any(|n| n.contains(&ip) || n.contains(&canon))
    }
}

/// The egress decision for one address: `Ok` when it is public or covered by `allow_ips`,
/// otherwise the class that makes it refused.
pub fn check_addr(ip: IpAddr, allow: &AllowIps) -> Result<(), AddrClass> {
    if allow.covers(ip) {
        return Ok(());
    }
    match classify(ip) {
        AddrClass::Public => Ok(()),
        class => Err(class),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AddrClass::*;

    #[test]
    fn classification_table() {
        let table: &[(&str, AddrClass)] = &[
            // IPv4 public, incl. edges around special ranges
            ("8.8.8.8", Public),
            ("1.1.1.1", Public),
            ("93.184.216.34", Public),
            ("59.154.201.255", Public),
            ("100.63.255.254", Public),
            ("100.128.0.1", Public),
            ("172.15.255.255", Public),
            ("172.32.0.0", Public),
            ("192.167.255.255", Public),
            ("192.169.0.0", Public),
            ("198.17.255.255", Public),
            ("198.20.0.0", Public),
            ("223.255.255.255", Public),
            ("9.255.255.255", Public),
            ("11.0.0.0", Public),
            ("126.255.255.255", Public),
            ("128.0.0.0", Public),
            // IPv4 refused
            ("0.0.0.0", Unspecified),
            ("0.1.1.1", ThisNetwork),
            ("0.255.255.255", ThisNetwork),
            ("10.0.0.1", Private),
            ("10.255.255.255", Private),
            ("100.64.0.0", Cgnat),
            ("100.127.255.255", Cgnat),
            ("127.0.0.1", Loopback),
            ("127.255.255.254", Loopback),
            ("127.127.127.127", Loopback),
            ("169.254.169.254", LinkLocal),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("192.0.0.8", SpecialPurpose),
            ("192.0.2.1", Documentation),
            ("192.31.196.1", SpecialPurpose),
            ("192.52.193.1", SpecialPurpose),
            ("192.88.99.0", SpecialPurpose),
            ("192.168.0.1", Private),
            ("192.168.255.255", Private),
            ("192.175.48.1", SpecialPurpose),
            ("198.18.0.1", Benchmarking),
            ("198.19.255.255", Benchmarking),
            ("198.51.100.7", Documentation),
            ("203.0.113.9", Documentation),
            ("224.0.0.1", Multicast),
            ("239.255.255.250", Multicast),
            ("240.0.0.1", Reserved),
            ("255.255.255.254", Reserved),
            ("255.255.255.255", Broadcast),
            // IPv6 public
            ("2606:4700:4700::1111", Public),
            ("2a00:1450:4001:80e::200e", Public),
            ("2001:4860:4860::8888", Public),
            ("2001:200::1", Public),
            ("3fff:1000::1", Public),
            // IPv6 refused
            ("::", Unspecified),
            ("::1", Loopback),
            ("0000::1", Loopback),
            ("fe80::1", LinkLocal),
            ("febf::1", LinkLocal),
            ("fec0::1", SiteLocal),
            ("fc00::1", UniqueLocal),
            ("fd12:3456::1", UniqueLocal),
            ("ff02::1", Multicast),
            ("ff05::2", Multicast),
            ("2001:db8::1", Documentation),
            ("3fff::1", Documentation),
            ("2001:2::1", Benchmarking),
            ("2001::1", SpecialPurpose),
            ("2001:0000:4136:e378:8000:63bf:3f57:fdf2", SpecialPurpose),
            ("2620:4f:8000::1", SpecialPurpose),
            ("100::1", SpecialPurpose),
            ("64:ff9b:1::1", SpecialPurpose),
            ("1000::1", Reserved),
            ("4000::1", Reserved),
            ("e000::1", Reserved),
            // IPv4-mapped: classified as the IPv4 address
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:7f00:1", Loopback),
            ("::ffff:10.1.2.3", Private),
            ("::ffff:169.254.169.254", LinkLocal),
            ("::ffff:192.0.2.1", Documentation),
            ("::ffff:0.0.0.0", Unspecified),
            ("::ffff:129.144.52.38", Public),
            // IPv4-compatible (deprecated)
            ("::127.0.0.1", Loopback),
            ("::10.0.0.1", Private),
            ("::8.8.8.8", SpecialPurpose),
            // NAT64
            ("64:ff9b::7f00:1", Loopback),
            ("64:ff9b::192.168.2.1", Private),
            ("64:ff9b::a9fe:a9fe", LinkLocal),
            ("64:ff9b::8.8.8.8", SpecialPurpose),
            // 6to4
            ("2002:c0a8:ffff::", Private),
            ("2002:7f00:1::1", Loopback),
            ("2002:a9fe:a9fe::1", LinkLocal),
            ("2002:0808:0808::1", SpecialPurpose),
        ];
        for (ip, want) in table {
            let parsed: IpAddr = ip.parse().unwrap_or_else(|_| panic!("bad table ip {ip}"));
            assert_eq!(classify(parsed), *want, "{ip}");
        }
    }

    #[test]
    fn allow_ips_cover_exact_and_cidr() {
        let allow = AllowIps::parse(&[
            "10.0.0.5".into(),
            "10.1.0.0/16".into(),
            "fd00::1".into(),
            "192.168.1.7/24".into(),
        ])
        .unwrap();
        let ok = [
            "10.0.0.5",
            "10.1.200.3",
            "fd00::1",
            "::ffff:10.0.0.5",
            "192.168.1.200",
            "8.8.8.8",
        ];
        let refused = [
            ("10.0.0.6", Private),
            ("10.2.0.1", Private),
            ("fd00::2", UniqueLocal),
            ("127.0.0.1", Loopback),
            ("64:ff9b::a00:5", Private),
            ("::10.0.0.5", Private),
            ("192.168.2.1", Private),
        ];
        for ip in ok {
            assert_eq!(check_addr(ip.parse().unwrap(), &allow), Ok(()), "{ip}");
        }
        for (ip, class) in refused {
            assert_eq!(check_addr(ip.parse().unwrap(), &allow), Err(class), "{ip}");
        }
        assert_eq!(
            check_addr("127.0.0.1".parse().unwrap(), &AllowIps::default()),
            Err(Loopback)
        );
    }

    #[test]
    fn invalid_allow_ips_are_rejected() {
        for bad in [
            "",
            "localhost",
            "10.0.0.0/33",
            "10.0.0",
            "::1/129",
            "1.2.3.4:80",
        ] {
            assert!(AllowIps::parse_entry(bad).is_err(), "{bad}");
        }
    }
}
