//! Outbound HTTP to places a policy can name — an LLM endpoint, external MCP servers,
//! notification webhooks — and the credentials sent there.
//!
//! Contract: [`client`] builds the one kind of client for such calls: no redirects (a 3xx is
//! an answer, not an instruction to send the credential elsewhere), a connect timeout, and a
//! resolver that drops link-local and cloud metadata addresses ([`refused`]) unless the
//! operator allowed them ([`allow_link_local`], from `--allow-link-local-egress`).
//! [`check_url`] applies the same rule to a URL whose host is an address literal (which no
//! resolver sees). [`bound_to`] says whether a Secret's credential may go to a URL: only to
//! the host its `reflex.dev/credentials-host` annotation names, so a policy cannot send
//! another server's key to an endpoint of its choosing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::Duration;

/// The annotation naming the one host a credential Secret's values may be sent to.
pub const CREDENTIALS_HOST: &str = "reflex.dev/credentials-host";

static ALLOW_LINK_LOCAL: OnceLock<bool> = OnceLock::new();

/// Let outbound calls reach link-local and metadata addresses (an operator's decision, made
/// once at start: `--allow-link-local-egress`).
pub fn allow_link_local(allow: bool) {
    let _ = ALLOW_LINK_LOCAL.set(allow);
}

fn link_local_allowed() -> bool {
    ALLOW_LINK_LOCAL.get().copied().unwrap_or(false)
}

/// Why an address is not reached by default: link-local (which holds every cloud's instance
/// metadata service), the metadata addresses outside it, or no address at all.
pub fn refused(ip: IpAddr) -> Option<&'static str> {
    let v4 = |a: Ipv4Addr| -> Option<&'static str> {
        if a.is_link_local() {
            Some("a link-local address (instance metadata lives there)")
        } else if a == Ipv4Addr::new(100, 100, 100, 200) || a == Ipv4Addr::new(168, 63, 129, 16) {
            Some("a cloud metadata address")
        } else if a.is_unspecified() || a.is_broadcast() {
            Some("not an address to connect to")
        } else {
            None
        }
    };
    match ip {
        IpAddr::V4(a) => v4(a),
        IpAddr::V6(a) => {
            if let Some(mapped) = a.to_ipv4_mapped() {
                return v4(mapped);
            }
            // NAT64 (64:ff9b::/96) carries an IPv4 address in its last 32 bits.
            let s = a.segments();
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return v4(Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8));
            }
            if (a.segments()[0] & 0xffc0) == 0xfe80 {
                Some("a link-local address (instance metadata lives there)")
            } else if a == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
                Some("a cloud metadata address")
            } else if a.is_unspecified() {
                Some("not an address to connect to")
            } else {
                None
            }
        }
    }
}

/// An http(s) URL whose host, if an address, is one outbound calls may reach.
///
/// # Errors
/// What is wrong with it, for the policy's author.
pub fn check_url(url: &str) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("{url:?}: only http and https URLs are called"));
    }
    let Some(host) = parsed.host_str() else { return Err(format!("{url:?} has no host")) };
    let ip = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().ok();
    if let Some(why) = ip.and_then(refused).filter(|_| !link_local_allowed()) {
        return Err(format!("{url:?} is {why}; the operator must allow it (--allow-link-local-egress)"));
    }
    Ok(parsed)
}

/// Resolves names as the system does, without the addresses [`refused`] names.
struct Resolver;

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> =
                found.iter().copied().filter(|a| link_local_allowed() || refused(a.ip()).is_none()).collect();
            if allowed.is_empty() && !found.is_empty() {
                let why = found.iter().find_map(|a| refused(a.ip())).unwrap_or("refused");
                return Err(format!("{host} resolves only to {why}; the operator must allow it").into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

/// The client for calls to URLs a policy names: no redirects, link-local and metadata
/// addresses refused, `timeout` per request when given (streams such as MCP's bound their
/// calls themselves).
///
/// # Errors
/// The TLS backend cannot be set up.
pub fn client(timeout: Option<Duration>) -> reqwest::Result<reqwest::Client> {
    crate::install_crypto_provider();
    let connect = timeout.unwrap_or(Duration::from_secs(10)).min(Duration::from_secs(10));
    let builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        // A proxy would resolve the name itself, past the resolver's filter.
        .no_proxy()
        .connect_timeout(connect)
        .dns_resolver(std::sync::Arc::new(Resolver));
    match timeout {
        Some(t) => builder.timeout(t),
        None => builder,
    }
    .build()
}

/// Whether a credential from a Secret carrying `annotations` may be sent to `url`: only to
/// the host (and port, when the annotation gives one) it is bound to, and over https unless
/// the annotation says `http://` itself.
///
/// # Errors
/// Why not, naming the annotation to set.
pub fn bound_to(
    secret: &str,
    annotations: Option<&std::collections::BTreeMap<String, String>>,
    url: &str,
) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let host = parsed.host_str().unwrap_or_default().to_ascii_lowercase();
    let port = parsed.port_or_known_default();
    let Some(bound) = annotations.and_then(|a| a.get(CREDENTIALS_HOST)).map(|b| b.trim().to_ascii_lowercase()) else {
        return Err(format!(
            "Secret {secret} is not bound to a host: annotate it {CREDENTIALS_HOST}={host} to send its value to {host}"
        ));
    };
    let (plain_http, bound) = match bound.strip_prefix("http://") {
        Some(rest) => (true, rest.to_owned()),
        None => (false, bound.strip_prefix("https://").unwrap_or(&bound).to_owned()),
    };
    let matches = match bound.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') || h.ends_with(']') => {
            h.trim_start_matches('[').trim_end_matches(']') == host.trim_start_matches('[').trim_end_matches(']')
                && p.parse::<u16>().ok() == port
        }
        _ => bound.trim_start_matches('[').trim_end_matches(']') == host.trim_start_matches('[').trim_end_matches(']'),
    };
    if !matches {
        return Err(format!(
            "Secret {secret} is bound to {bound} ({CREDENTIALS_HOST}), not {host}: its value is not sent to another server"
        ));
    }
    if parsed.scheme() != "https" && !plain_http {
        return Err(format!(
            "Secret {secret} goes over https only; {url:?} is {}: annotate it {CREDENTIALS_HOST}=http://{bound} to allow plain http",
            parsed.scheme()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn link_local_and_metadata_addresses_are_refused() {
        for ip in [
            "169.254.169.254",
            "169.254.0.1",
            "100.100.100.200",
            "168.63.129.16",
            "64:ff9b::a9fe:a9fe",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
            "0.0.0.0",
        ] {
            assert!(refused(ip.parse().unwrap()).is_some(), "{ip}");
        }
        for ip in ["127.0.0.1", "10.0.0.7", "203.0.113.5", "::1", "2001:db8::1"] {
            assert!(refused(ip.parse().unwrap()).is_none(), "{ip}");
        }
        assert!(check_url("http://169.254.169.254/latest/meta-data/").unwrap_err().contains("link-local"));
        assert!(check_url("http://[fd00:ec2::254]/").unwrap_err().contains("metadata"));
        assert!(check_url("file:///etc/passwd").unwrap_err().contains("only http and https"));
        assert!(check_url("https://llm.example/v1").is_ok());
    }

    #[test]
    fn a_credential_goes_only_to_the_host_it_is_bound_to() {
        let bound = |v: &str| BTreeMap::from([(CREDENTIALS_HOST.to_owned(), v.to_owned())]);
        assert!(bound_to("ns/key", Some(&bound("llm.example")), "https://llm.example/v1").is_ok());
        assert!(bound_to("ns/key", Some(&bound("LLM.example")), "https://llm.example:443/v1").is_ok());
        assert!(bound_to("ns/key", Some(&bound("llm.example:8443")), "https://llm.example:8443/v1").is_ok());
        let e = bound_to("ns/key", Some(&bound("llm.example")), "https://attacker.example/v1").unwrap_err();
        assert!(e.contains("bound to llm.example") && e.contains("not attacker.example"), "{e}");
        assert!(bound_to("ns/key", Some(&bound("llm.example:8443")), "https://llm.example/v1").is_err());
        let e = bound_to("ns/key", Some(&bound("llm.example")), "http://llm.example/v1").unwrap_err();
        assert!(e.contains("https only"), "no cleartext without saying so: {e}");
        assert!(bound_to("ns/key", Some(&bound("http://llm.local:8080")), "http://llm.local:8080/v1").is_ok());
        let e = bound_to("ns/key", None, "https://llm.example/v1").unwrap_err();
        assert!(e.contains("annotate it reflex.dev/credentials-host=llm.example"), "{e}");
    }
}
