//! Where an outbound request is going: the rule that finds its
//! [`Destination`] in a request (absolute-form target, else `Host`).

use http::uri::{Authority, Scheme};
use http::{Request, header};

pub use crate::addr::Destination;
use crate::error::ProxyError;

/// The target of an outbound request, borrowed from it: `(host, port)`.
///
/// Order, as in DESIGN.md: an absolute-form target (`GET http://host/path`, what
/// clients send to an HTTP proxy; HTTP/2's `:authority`), else the `Host` header.
/// Original destinations of redirected connections come with transparent interception.
pub fn target_of<B>(req: &Request<B>) -> Result<(&str, u16), ProxyError> {
    if let Some(authority) = req.uri().authority() {
        let scheme = req.uri().scheme();
        if scheme == Some(&Scheme::HTTPS) && req.version() < http::Version::HTTP_2 {
            return Err(ProxyError::BadRequest(
                "https:// targets are tunnelled: send CONNECT host:443",
            ));
        }
        let default = if scheme == Some(&Scheme::HTTPS) {
            443
        } else {
            80
        };
        return Ok((authority.host(), port_of(authority, default)?));
    }
    let host = req.headers().get(header::HOST).ok_or(ProxyError::NoRoute(
        "the request has no absolute target and no Host header",
    ))?;
    let authority: Authority =
        host.to_str()
            .ok()
            .and_then(|h| h.parse().ok())
            .ok_or(ProxyError::BadRequest(
                "the Host header is not a valid host[:port]",
            ))?;
    // `authority` borrows nothing from the request, so find the same text in it.
    let text = host.to_str().unwrap_or_default();
    let host_len = authority.host().len();
    Ok((&text[..host_len], port_of(&authority, 80)?))
}

/// The authority's port, `default` when it names none. A port that does not fit
/// in 16 bits is an error, not the default: `host:99999` must not become `host:80`.
fn port_of(authority: &Authority, default: u16) -> Result<u16, ProxyError> {
    let text = authority.as_str();
    let text = text.rsplit_once('@').map_or(text, |(_, hostport)| hostport);
    // An IPv6 host has colons of its own: the port comes after its bracket.
    let tail = text.rfind(']').map_or(text, |i| &text[i + 1..]);
    let port = match tail.split_once(':') {
        Some((_, p)) if !p.is_empty() => p,
        _ => return Ok(default),
    };
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(ProxyError::BadRequest("the target's port is not 1-65535")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, host: Option<&str>) -> Request<()> {
        let uri: http::Uri = uri.parse().unwrap_or_default();
        let mut b = Request::builder().uri(uri);
        if let Some(h) = host {
            b = b.header(header::HOST, h);
        }
        b.body(()).unwrap_or_default()
    }

    #[test]
    fn absolute_form_wins_over_host() {
        let r = req("http://payments:8080/pay", Some("ignored"));
        assert_eq!(target_of(&r).ok(), Some(("payments", 8080)));
    }

    #[test]
    fn host_header_with_default_port() {
        let r = req("/pay", Some("Payments.svc"));
        assert_eq!(target_of(&r).ok(), Some(("Payments.svc", 80)));
        let r = req("/pay", Some("[::1]:9000"));
        assert_eq!(target_of(&r).ok(), Some(("[::1]", 9000)));
    }

    #[test]
    fn no_target_is_no_route_and_bad_host_is_bad_request() {
        assert!(matches!(
            target_of(&req("/", None)),
            Err(ProxyError::NoRoute(_))
        ));
        assert!(matches!(
            target_of(&req("/", Some("a b"))),
            Err(ProxyError::BadRequest(_))
        ));
        assert!(matches!(
            target_of(&req("https://x/", None)),
            Err(ProxyError::BadRequest(_))
        ));
        for bad_port in ["x:99999", "x:0", "x:http"] {
            assert!(matches!(
                target_of(&req("/", Some(bad_port))),
                Err(ProxyError::BadRequest(_))
            ));
        }
        assert_eq!(
            target_of(&req("/", Some("[::1]"))).ok(),
            Some(("[::1]", 80))
        );
        assert!(matches!(
            target_of(&req("http://x:99999/", None)),
            Err(ProxyError::BadRequest(_))
        ));
    }

    #[test]
    fn destination_compares_without_allocating() {
        let d = Destination::new("[::1]", 9000);
        assert!(d.is("[::1]", 9000));
        assert_eq!(d.to_string(), "[::1]:9000");
        assert_eq!(d.authority().as_str(), "[::1]:9000");
        assert!(Destination::new("Payments", 80).is("payments", 80));
    }
}
