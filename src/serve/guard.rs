//! The page's door. A browser on another site must not be able to use the page's API with
//! the user's network position: a cross-site form post, a `fetch` without a preflight, or
//! a DNS-rebinding page that reads the answers. So:
//! - the `Host` header must name the server by an IP address, as `localhost`, or by a name
//!   given with `--allow-host` (a rebinding page's requests carry the attacker's name);
//! - a request that changes nothing may come from anywhere (a link to the page works), but
//!   any other request with an `Origin` must come from the page's own origin, and one the
//!   browser marks `Sec-Fetch-Site: cross-site` is refused;
//! - `POST /api/sql` takes `application/json` only (checked by the handler), which a
//!   cross-site form cannot send and a cross-site `fetch` cannot send without a preflight
//!   this server never grants;
//! - every response says what it is (`X-Content-Type-Options`), allows only the page's own
//!   script, style and API (`Content-Security-Policy`), sends no referrer, and may not be
//!   framed.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

pub struct Guard {
    /// Lowercase host names allowed besides IP addresses and `localhost`.
    hosts: Vec<String>,
    any_host: bool,
}

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; \
    frame-ancestors 'none'";

impl Guard {
    pub fn new(allowed: &[String]) -> Self {
        Guard {
            hosts: allowed
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
            any_host: allowed.iter().any(|h| h.trim() == "*"),
        }
    }

    /// Whether `host` (a `Host` header, or the host of an `Origin`) names this server.
    fn host_allowed(&self, host: &str) -> bool {
        if self.any_host {
            return true;
        }
        let name = host_name(host).to_ascii_lowercase();
        name == "localhost"
            || name
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok()
            || self.hosts.contains(&name)
    }

    /// Why a request is refused, if it is.
    pub fn refusal(&self, method: &Method, headers: &HeaderMap) -> Option<String> {
        let text = |name: header::HeaderName| {
            headers
                .get(name)
                .map(|v| v.to_str().unwrap_or("\u{fffd}").to_string())
        };
        let host = text(header::HOST);
        if let Some(host) = &host {
            if !self.host_allowed(host) {
                return Some(format!(
                    "this server does not answer to the host name `{}`; start it with \
                     --allow-host {} to allow it",
                    host_name(host),
                    host_name(host)
                ));
            }
        }
        if method == Method::GET || method == Method::HEAD {
            return None;
        }
        if headers
            .get("sec-fetch-site")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"))
        {
            return Some("cross-site requests are refused".into());
        }
        if let Some(origin) = text(header::ORIGIN) {
            let own = host.is_some_and(|h| {
                origin.eq_ignore_ascii_case(&format!("http://{h}"))
                    || origin.eq_ignore_ascii_case(&format!("https://{h}"))
            });
            if !own {
                return Some(format!(
                    "requests from the origin `{origin}` are refused: only the page's own"
                ));
            }
        }
        None
    }
}

/// `example.com:8080` → `example.com`, `[::1]:8080` → `[::1]`.
fn host_name(host: &str) -> &str {
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

/// The middleware: refuses what [`Guard::refusal`] refuses (403), adds the headers.
pub async fn check(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    let mut response = match guard.refusal(request.method(), request.headers()) {
        Some(why) => super::api::ApiError(StatusCode::FORBIDDEN, why).into_response(),
        None => next.run(request).await,
    };
    let h = response.headers_mut();
    for (name, value) in [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn hosts_by_address_or_localhost_or_allowed_name() {
        let g = Guard::new(&["Shop.example".into()]);
        for host in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST",
            "[::1]:8080",
            "10.1.2.3",
            "shop.example:80",
        ] {
            assert!(g.host_allowed(host), "{host}");
        }
        for host in [
            "evil.example:8080",
            "127.0.0.1.nip.io",
            "localhost.evil.example",
        ] {
            assert!(!g.host_allowed(host), "{host}");
        }
        assert!(Guard::new(&["*".into()]).host_allowed("anything.example"));
        // An empty `ALLOW_HOST` (compose's default) allows nothing more.
        assert!(!Guard::new(&["".into()]).host_allowed(":8080"));
    }

    #[test]
    fn cross_site_writes_are_refused_and_reads_and_own_writes_pass() {
        let g = Guard::new(&[]);
        let host = ("host", "127.0.0.1:8080");
        assert_eq!(g.refusal(&Method::GET, &headers(&[host])), None);
        assert_eq!(
            g.refusal(
                &Method::GET,
                &headers(&[
                    host,
                    ("origin", "http://evil.example"),
                    ("sec-fetch-site", "cross-site")
                ])
            ),
            None,
            "a link from elsewhere opens the page"
        );
        assert_eq!(
            g.refusal(
                &Method::POST,
                &headers(&[
                    host,
                    ("origin", "http://127.0.0.1:8080"),
                    ("sec-fetch-site", "same-origin")
                ])
            ),
            None
        );
        assert_eq!(g.refusal(&Method::POST, &headers(&[host])), None, "curl");
        let e = g
            .refusal(
                &Method::POST,
                &headers(&[host, ("origin", "http://evil.example")]),
            )
            .unwrap();
        assert!(e.contains("origin `http://evil.example`"), "{e}");
        assert!(g
            .refusal(
                &Method::POST,
                &headers(&[host, ("sec-fetch-site", "cross-site")])
            )
            .is_some());
        let e = g
            .refusal(&Method::GET, &headers(&[("host", "rebound.example:8080")]))
            .unwrap();
        assert!(e.contains("--allow-host rebound.example"), "{e}");
    }
}
