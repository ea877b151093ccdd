//! Reading breakwater's admin endpoint from the demo: a GET's body, and sums
//! of Prometheus samples by their labels.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// A GET's body as text, for reading the admin endpoint.
pub async fn fetch(addr: SocketAddr, path: &str) -> Option<String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri = format!("http://{addr}{path}");
    let resp = client.get(uri.parse().ok()?).await.ok()?;
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some(String::from_utf8_lossy(&body).into_owned())
}

/// Samples of metric `name` in Prometheus text whose labels include every pair
/// of `labels`, summed.
pub fn sum(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (have, value) = match rest.strip_prefix('{') {
                Some(rest) => parse_labels(rest)?,
                None if rest.starts_with(' ') => (Vec::new(), rest),
                None => return None,
            };
            let wanted = labels
                .iter()
                .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v));
            if !wanted {
                return None;
            }
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

/// `k="v",...}` and what follows the `}`.
fn parse_labels(mut s: &str) -> Option<(Vec<(&str, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches(',');
        if let Some(rest) = s.strip_prefix('}') {
            return Some((labels, rest));
        }
        let (key, rest) = s.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((key.trim(), value));
        s = &rest[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_the_samples_whose_labels_match() {
        let text = "\
# TYPE breakwater_split_total counter
breakwater_split_total{route=\"127.0.0.1:1/orders\",destination=\"127.0.0.1:1\"} 900
breakwater_split_total{route=\"127.0.0.1:1/orders\",destination=\"127.0.0.1:2\"} 100
breakwater_split_total_other{route=\"127.0.0.1:1/orders\",destination=\"127.0.0.1:2\"} 7
breakwater_mirror_total{destination=\"127.0.0.1:2\",outcome=\"match\"} 873
breakwater_mirror_total{destination=\"a\\\"b\",outcome=\"match\"} 5
";
        let route = [("route", "127.0.0.1:1/orders")];
        assert_eq!(sum(text, "breakwater_split_total", &route), 1000.0);
        let new = [
            ("route", "127.0.0.1:1/orders"),
            ("destination", "127.0.0.1:2"),
        ];
        assert_eq!(sum(text, "breakwater_split_total", &new), 100.0);
        let escaped = [("destination", "a\"b")];
        assert_eq!(sum(text, "breakwater_mirror_total", &escaped), 5.0);
        assert_eq!(sum(text, "breakwater_mirror_total", &[]), 878.0);
    }
}
