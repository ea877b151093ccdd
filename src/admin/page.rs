//! The admin page at `GET /`: one HTML document with its style and script
//! inline (no external assets, so it works behind `kubectl port-forward` with
//! no network), which polls `/upstreams` and `/ready?verbose` once a second and
//! draws what `breakwater status` prints, with a chart per destination. The
//! data stays the JSON's; this module only serves the document.

use std::sync::LazyLock;

use bytes::Bytes;
use http::{HeaderValue, Response, header};

use crate::body::ProxyBody;

/// The document, with this build's version in its header.
static PAGE: LazyLock<Bytes> = LazyLock::new(|| {
    let version = concat!("v", env!("CARGO_PKG_VERSION"));
    Bytes::from(include_str!("page.html").replace("{{version}}", version))
});

/// Nothing but this document's own script and style, and requests to its own
/// origin: a destination name that looked like markup could run nothing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

pub fn response() -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::local(PAGE.clone()));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_its_version_and_loads_nothing_from_elsewhere() {
        let page = std::str::from_utf8(&PAGE).unwrap_or_default();
        assert!(page.contains(env!("CARGO_PKG_VERSION")));
        assert!(!page.contains("{{"), "every placeholder filled");
        for external in ["http://", "https://", "src=", "<link"] {
            let allowed = page.matches("http://www.w3.org/2000/svg").count();
            let found = page.matches(external).count();
            let found = if external == "http://" {
                found - allowed
            } else {
                found
            };
            assert_eq!(found, 0, "{external} in the page");
        }
        assert!(!page.contains("innerHTML"), "data goes in as text only");
    }
}
