//! Which `Host` names a server answers to: IP addresses, `localhost`, and the names given
//! (`--allow-host`, `--metrics-allow-host`). A DNS-rebinding page reaches a server on this
//! machine under the attacker's own name, so a request naming anything else is refused
//! before it reads anything.

/// The names a server answers to besides IP addresses and `localhost`.
#[derive(Debug, Clone, Default)]
pub struct Hosts {
    /// Lowercase host names.
    names: Vec<String>,
    any: bool,
}

impl Hosts {
    /// `allowed` as given on the command line; `*` allows any name.
    pub fn new(allowed: &[String]) -> Self {
        Hosts {
            names: allowed
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
            any: allowed.iter().any(|h| h.trim() == "*"),
        }
    }

    /// Whether `host` (a `Host` header, or the host of an `Origin`) names this server.
    pub fn allowed(&self, host: &str) -> bool {
        if self.any {
            return true;
        }
        let name = host_name(host).to_ascii_lowercase();
        name == "localhost"
            || name
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok()
            || self.names.contains(&name)
    }

    /// Why a request with this `Host` header is refused, if it is; `flag` is how to allow
    /// it. A request without one (HTTP/1.0) is answered.
    pub fn refusal(&self, host: Option<&str>, flag: &str) -> Option<String> {
        let host = host?;
        if self.allowed(host) {
            return None;
        }
        let name = host_name(host);
        Some(format!(
            "this server does not answer to the host name `{name}`; start it with \
             {flag} {name} to allow it"
        ))
    }
}

/// `example.com:8080` → `example.com`, `[::1]:8080` → `[::1]`.
pub fn host_name(host: &str) -> &str {
    let host = host.trim();
    let host = host
        .split_once("://")
        .map_or(host, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or_default();
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    host.rsplit_once(':')
        .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
        .map_or(host, |(name, _)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_by_address_or_localhost_or_allowed_name() {
        let g = Hosts::new(&["Shop.example".into()]);
        for host in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST",
            "[::1]:8080",
            "10.1.2.3",
            "shop.example:80",
        ] {
            assert!(g.allowed(host), "{host}");
        }
        for host in [
            "evil.example:8080",
            "127.0.0.1.nip.io",
            "localhost.evil.example",
        ] {
            assert!(!g.allowed(host), "{host}");
        }
        assert!(Hosts::new(&["*".into()]).allowed("anything.example"));
        // An empty `ALLOW_HOST` (compose's default) allows nothing more.
        assert!(!Hosts::new(&["".into()]).allowed(":8080"));
        assert_eq!(
            g.refusal(Some("evil.example:9464"), "--metrics-allow-host")
                .unwrap(),
            "this server does not answer to the host name `evil.example`; start it with \
             --metrics-allow-host evil.example to allow it"
        );
        assert_eq!(g.refusal(None, "--allow-host"), None);
    }
}
