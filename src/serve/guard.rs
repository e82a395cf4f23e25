//! The page's door. A browser on another site must not be able to use the page's API with
//! the user's network position: a cross-site form post, a `fetch` without a preflight, or
//! a DNS-rebinding page that reads the answers. So:
//! - the `Host` header must name the server by an IP address, as `localhost`, or by a name
//!   given with `--allow-host` (a rebinding page's requests carry the attacker's name:
//!   `http::Hosts`);
//! - a request the browser marks `Sec-Fetch-Site: cross-site` is refused, whatever its
//!   method (a cross-site `GET /api/customer/1` would start a worker's work), except a
//!   top-level navigation to `/`, so a link to the page works; any request with an
//!   `Origin` must come from the page's own origin;
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

use crate::http::Hosts;

pub struct Guard {
    hosts: Hosts,
}

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; \
    frame-ancestors 'none'";

impl Guard {
    pub fn new(allowed: &[String]) -> Self {
        Guard {
            hosts: Hosts::new(allowed),
        }
    }

    /// Why a request for `path` is refused, if it is.
    pub fn refusal(&self, method: &Method, path: &str, headers: &HeaderMap) -> Option<String> {
        let text = |name: header::HeaderName| {
            headers
                .get(name)
                .map(|v| v.to_str().unwrap_or("\u{fffd}").to_string())
        };
        let host = text(header::HOST);
        if let Some(why) = self.hosts.refusal(host.as_deref(), "--allow-host") {
            return Some(why);
        }
        let is = |name: &str, value: &[u8]| {
            headers
                .get(name)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(value))
        };
        let read = method == Method::GET || method == Method::HEAD;
        // A link followed from another site: the page itself, which starts no work.
        let navigation = read && path == "/" && is("sec-fetch-mode", b"navigate");
        if is("sec-fetch-site", b"cross-site") && !navigation {
            return Some("cross-site requests are refused".into());
        }
        if let Some(origin) = text(header::ORIGIN) {
            let own = host.is_some_and(|h| {
                origin.eq_ignore_ascii_case(&format!("http://{h}"))
                    || origin.eq_ignore_ascii_case(&format!("https://{h}"))
            });
            if !own && !navigation {
                return Some(format!(
                    "requests from the origin `{origin}` are refused: only the page's own"
                ));
            }
        }
        None
    }
}

/// The middleware: refuses what [`Guard::refusal`] refuses (403), adds the headers.
pub async fn check(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    let refused = guard.refusal(request.method(), request.uri().path(), request.headers());
    let mut response = match refused {
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
    fn cross_site_requests_are_refused_but_navigations_to_the_page_and_own_requests_pass() {
        let g = Guard::new(&[]);
        let host = ("host", "127.0.0.1:8080");
        let (get, post) = (&Method::GET, &Method::POST);
        assert_eq!(g.refusal(get, "/api/overview", &headers(&[host])), None);
        let link = [
            host,
            ("sec-fetch-site", "cross-site"),
            ("sec-fetch-mode", "navigate"),
        ];
        assert_eq!(
            g.refusal(get, "/", &headers(&link)),
            None,
            "a link from elsewhere opens the page"
        );
        for (method, path, mode) in [
            (get, "/api/customer/1", "navigate"),
            (get, "/api/overview", "cors"),
            (get, "/", "no-cors"),
            (&Method::HEAD, "/api/snapshot", "no-cors"),
            (post, "/", "navigate"),
        ] {
            let h = headers(&[
                host,
                ("sec-fetch-site", "cross-site"),
                ("sec-fetch-mode", mode),
            ]);
            assert_eq!(
                g.refusal(method, path, &h).as_deref(),
                Some("cross-site requests are refused"),
                "{method} {path} {mode}"
            );
        }
        let e = g
            .refusal(
                get,
                "/api/customer/1",
                &headers(&[host, ("origin", "http://evil.example")]),
            )
            .unwrap();
        assert!(e.contains("origin `http://evil.example`"), "{e}");
        assert_eq!(
            g.refusal(
                post,
                "/api/sql",
                &headers(&[
                    host,
                    ("origin", "http://127.0.0.1:8080"),
                    ("sec-fetch-site", "same-origin")
                ])
            ),
            None
        );
        assert_eq!(g.refusal(post, "/api/sql", &headers(&[host])), None, "curl");
        let e = g
            .refusal(
                post,
                "/api/sql",
                &headers(&[host, ("origin", "http://evil.example")]),
            )
            .unwrap();
        assert!(e.contains("origin `http://evil.example`"), "{e}");
        let e = g
            .refusal(get, "/", &headers(&[("host", "rebound.example:8080")]))
            .unwrap();
        assert!(e.contains("--allow-host rebound.example"), "{e}");
    }
}
