//! Where `http` tasks may connect: the egress policy.
//!
//! A workflow names its URLs, and a model's answer or an input can fill them in, so the
//! address a task connects to is outside input. By default only public unicast addresses
//! are reachable, over `https`: loopback (the Lambda Runtime API, local emulators),
//! link-local (`169.254.169.254` instance metadata, `169.254.170.2` container credentials),
//! private, shared (CGNAT), unique-local, multicast, documentation and reserved ranges are
//! refused, IPv4 and IPv6 alike (an IPv4 address mapped or embedded in IPv6 is judged as
//! IPv4). An operator allow-lists networks (`LLMO_EGRESS_ALLOW=10.1.0.0/16,::1`) and plain
//! `http` (`LLMO_EGRESS_ALLOW_HTTP=1`).
//!
//! The check is made on the address actually connected to: the client resolves names through
//! [`Egress::client`]'s resolver, which drops refused addresses before hyper sees them, so a
//! name that resolves to loopback (or re-resolves to it between two lookups: DNS rebinding)
//! never connects there. IP literals skip the resolver and are checked by
//! [`Egress::check_url`], which the executor calls for the first URL and every redirect.
//! Proxies from the environment are not used (they would connect on the task's behalf,
//! unchecked).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::Url;

/// A refused destination; the message names the address and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("egress refused: {0}")]
pub struct Refused(pub String);

/// The egress policy of `http` tasks.
#[derive(Debug, Clone, Default)]
pub struct Egress {
    allow: Vec<IpNet>,
    allow_http: bool,
}

/// Why an address is not public, if it is not.
pub fn restricted(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => restricted_v4(v4),
        IpAddr::V6(v6) => restricted_v6(v6),
    }
}

fn restricted_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, ..) => "unspecified",
        (127, ..) => "loopback",
        (10, ..) | (172, 16..=31, _) | (192, 168, _) => "private",
        (100, 64..=127, _) => "shared (carrier-grade NAT)",
        (169, 254, _) => "link-local",
        (192, 0, 0) => "IETF protocol assignment",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (198, 18..=19, _) => "benchmarking",
        (224..=239, ..) => "multicast",
        (240..=255, ..) => "reserved",
        _ => return None,
    })
}

fn restricted_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return restricted_v4(v4);
    }
    let s = ip.segments();
    // NAT64 (64:ff9b::/96, 64:ff9b:1::/48) and 6to4 (2002::/16) carry an IPv4 address.
    if s[0] == 0x64 && s[1] == 0xff9b {
        let [.., c, d] = s;
        return restricted_v4(Ipv4Addr::from(((c as u32) << 16) | d as u32)).or(if s[2] == 1 {
            Some("NAT64 (local use)")
        } else {
            None
        });
    }
    if s[0] == 0x2002 {
        return restricted_v4(Ipv4Addr::from(((s[1] as u32) << 16) | s[2] as u32));
    }
    Some(match s[0] {
        _ if ip.is_unspecified() => "unspecified",
        _ if ip.is_loopback() => "loopback",
        0x0000..=0x00ff => "reserved",
        0x0100 if s[1..4] == [0, 0, 0] => "discard",
        0x2001 if s[1] == 0 => "Teredo",
        0x2001 if s[1] == 0x0db8 => "documentation",
        0xfc00..=0xfdff => "unique-local",
        0xfe80..=0xfebf => "link-local",
        0xfec0..=0xfeff => "site-local",
        0xff00..=0xffff => "multicast",
        _ => return None,
    })
}

impl Egress {
    /// Public addresses over `https` only.
    pub fn strict() -> Self {
        Egress::default()
    }

    /// `allow`: comma-separated networks or addresses (`10.1.0.0/16`, `::1`, `127.0.0.1`),
    /// or `loopback`; `allow_http`: plain `http` too.
    pub fn parse(allow: &str, allow_http: bool) -> Result<Self, String> {
        let mut nets = Vec::new();
        for part in allow.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "loopback" => nets.extend(["127.0.0.0/8", "::1/128"].map(|n| n.parse::<IpNet>().expect("net"))),
                _ => nets.push(
                    part.parse::<IpNet>()
                        .or_else(|_| part.parse::<IpAddr>().map(IpNet::from))
                        .map_err(|_| format!("LLMO_EGRESS_ALLOW: `{part}` is not a network or an address"))?,
                ),
            }
        }
        Ok(Egress { allow: nets, allow_http })
    }

    /// Loopback and plain `http` allowed: tests against local fakes, `llmo run` against a
    /// local model server when the operator says so.
    pub fn loopback() -> Self {
        Self::parse("loopback", true).expect("valid")
    }

    /// Read once by a `main`: `LLMO_EGRESS_ALLOW` and `LLMO_EGRESS_ALLOW_HTTP` (`1`/`true`).
    pub fn from_env() -> Result<Self, String> {
        let allow = std::env::var("LLMO_EGRESS_ALLOW").unwrap_or_default();
        let http = std::env::var("LLMO_EGRESS_ALLOW_HTTP").is_ok_and(|v| matches!(v.as_str(), "1" | "true" | "yes"));
        Self::parse(&allow, http)
    }

    /// The networks allowed beyond the public internet, and whether `http` is, for logs.
    pub fn describe(&self) -> String {
        let nets: Vec<String> = self.allow.iter().map(ToString::to_string).collect();
        format!(
            "public addresses{}{}",
            if nets.is_empty() { String::new() } else { format!(" and {}", nets.join(", ")) },
            if self.allow_http { ", https and http" } else { ", https only" }
        )
    }

    fn allowed(&self, ip: IpAddr) -> bool {
        let mapped = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        self.allow.iter().any(|n| n.contains(&ip) || mapped.is_some_and(|m| n.contains(&m)))
    }

    /// May a connection go to `ip`?
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Refused> {
        match restricted(ip) {
            Some(why) if !self.allowed(ip) => {
                Err(Refused(format!("{ip} is a {why} address (an operator can allow it with LLMO_EGRESS_ALLOW)")))
            }
            _ => Ok(()),
        }
    }

    /// The scheme, and the host when it is an IP literal (names are checked when resolved).
    pub fn check_url(&self, url: &Url) -> Result<(), Refused> {
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            "http" => {
                return Err(Refused(format!(
                    "{url}: plain http is not allowed (use https, or an operator sets LLMO_EGRESS_ALLOW_HTTP=1)"
                )));
            }
            other => return Err(Refused(format!("{url}: the `{other}` scheme is not allowed"))),
        }
        match url.host() {
            Some(url::Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip)),
            Some(url::Host::Domain(_)) => Ok(()),
            None => Err(Refused(format!("{url}: no host"))),
        }
    }

    /// A client that connects only where this policy allows: names resolve through the
    /// policy, environment proxies are ignored, redirects are not followed (the caller follows
    /// them, checking each).
    pub fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .user_agent(concat!("llmo/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(Guarded(Arc::new(self.clone()))))
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("http client")
    }
}

/// Resolves names, keeping only the addresses the policy allows.
struct Guarded(Arc<Egress>);

impl reqwest::dns::Resolve for Guarded {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let kept: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match restricted(a.ip()) {
                    Some(why) if !policy.allowed(a.ip()) => {
                        refused.get_or_insert((a.ip(), why));
                        false
                    }
                    _ => true,
                })
                .collect();
            match (kept.is_empty(), refused) {
                (true, Some((ip, why))) => Err(Box::new(Refused(format!(
                    "{host} resolves to {ip}, a {why} address (an operator can allow it with LLMO_EGRESS_ALLOW)"
                ))) as Box<dyn std::error::Error + Send + Sync>),
                _ => Ok(Box::new(kept.into_iter()) as reqwest::dns::Addrs),
            }
        })
    }
}

/// The policy refusal inside a request error, if that is what stopped it.
pub fn refusal(e: &(dyn std::error::Error + 'static)) -> Option<Refused> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<Refused>() {
            return Some(r.clone());
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_public_ranges_are_restricted_and_public_ones_are_not() {
        for (ip, why) in [
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("10.0.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("169.254.170.2", "link-local"),
            ("100.100.100.200", "shared (carrier-grade NAT)"),
            ("0.0.0.0", "unspecified"),
            ("255.255.255.255", "reserved"),
            ("224.0.0.1", "multicast"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
            ("2002:7f00:1::", "loopback"),
            ("fd00:ec2::254", "unique-local"),
            ("fe80::1", "link-local"),
            ("ff02::1", "multicast"),
            ("::127.0.0.1", "reserved"),
        ] {
            assert_eq!(restricted(ip.parse().unwrap()), Some(why), "{ip}");
        }
        for ip in ["93.184.215.14", "8.8.8.8", "172.32.0.1", "2606:4700:4700::1111", "64:ff9b::808:808"] {
            assert_eq!(restricted(ip.parse().unwrap()), None, "{ip}");
        }
    }

    #[test]
    fn urls_are_checked_for_scheme_and_literal_hosts() {
        let strict = Egress::strict();
        let u = |s: &str| Url::parse(s).unwrap();
        assert!(strict.check_url(&u("https://api.example.com/x")).is_ok());
        assert!(strict.check_url(&u("https://8.8.8.8/")).is_ok());
        for bad in [
            "http://api.example.com/",
            "ftp://api.example.com/",
            "https://127.0.0.1/",
            "https://[::1]:8443/",
            "https://169.254.169.254/latest/meta-data/",
            "https://[::ffff:a9fe:a9fe]/",
            "https://2130706433/",
            "https://0x7f.1/",
        ] {
            assert!(strict.check_url(&u(bad)).is_err(), "{bad}");
        }
        let local = Egress::loopback();
        assert!(local.check_url(&u("http://127.0.0.1:9000/")).is_ok());
        assert!(local.check_url(&u("http://[::1]/")).is_ok());
        assert!(local.check_url(&u("http://169.254.169.254/")).is_err(), "loopback only");
        let e = strict.check_url(&u("https://169.254.169.254/")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "egress refused: 169.254.169.254 is a link-local address (an operator can allow it with LLMO_EGRESS_ALLOW)"
        );
    }

    #[test]
    fn the_allow_list_parses_networks_addresses_and_loopback() {
        let e = Egress::parse("10.1.0.0/16, fd00::/8,192.168.1.7", false).unwrap();
        assert!(e.check_ip("10.1.2.3".parse().unwrap()).is_ok());
        assert!(e.check_ip("10.2.0.1".parse().unwrap()).is_err());
        assert!(e.check_ip("fd00::1".parse().unwrap()).is_ok());
        assert!(e.check_ip("192.168.1.7".parse().unwrap()).is_ok());
        assert!(e.check_ip("::ffff:192.168.1.7".parse().unwrap()).is_ok());
        assert_eq!(
            Egress::parse("10.0.0.0/33", false).unwrap_err(),
            "LLMO_EGRESS_ALLOW: `10.0.0.0/33` is not a network or an address"
        );
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused_at_connect_time() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = tokio::spawn(async move {
            tokio::time::timeout(std::time::Duration::from_millis(500), listener.accept()).await.is_ok()
        });
        let strict = Egress { allow_http: true, ..Egress::strict() };
        let err = strict.client().get(format!("http://localhost:{port}/")).send().await.unwrap_err();
        let r = refusal(&err).expect("a refusal in the chain");
        assert!(r.0.starts_with("localhost resolves to "), "{r}");
        assert!(!accepted.await.unwrap(), "nothing connected");
        let ok = Egress::loopback().client().get(format!("http://localhost:{port}/")).send().await;
        assert!(ok.is_err(), "the listener is gone, but the refusal is not the reason");
        assert!(refusal(&ok.unwrap_err()).is_none());
    }
}
