//! Protocol detection on a redirected connection: peek at the first bytes, within
//! a time and size bound, without consuming them. HTTP/1 (a method and a space)
//! or the HTTP/2 preface go to the HTTP stack with every policy; anything else —
//! a database protocol, a TLS ClientHello the app originates, a server-first
//! protocol that sends nothing — is relayed as opaque TCP.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

/// What a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Opaque,
}

/// Request methods that open an HTTP/1 request line.
const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"TRACE ",
    b"CONNECT ",
];
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";
/// Enough to decide: the longest method with its space, and the preface prefix.
const PEEK_BYTES: usize = 16;
/// Between peeks when the first packet was too short to decide.
const REPEEK: Duration = Duration::from_millis(2);

/// Decides from a prefix: `Some` when the bytes settle it, `None` to read more.
pub fn classify(prefix: &[u8]) -> Option<Protocol> {
    let candidates = METHODS.iter().copied().chain(std::iter::once(H2_PREFACE));
    let mut undecided = false;
    for token in candidates {
        let n = prefix.len().min(token.len());
        if prefix[..n] == token[..n] {
            if n == token.len() {
                return Some(Protocol::Http);
            }
            undecided = true;
        }
    }
    if prefix.is_empty() || undecided {
        None
    } else {
        Some(Protocol::Opaque)
    }
}

/// Peeks until the first bytes settle the protocol or `timeout` passes (a client
/// that says nothing is waiting for a server-first protocol: opaque).
pub async fn detect(stream: &TcpStream, timeout: Duration) -> Protocol {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; PEEK_BYTES];
    loop {
        let peeked = tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await;
        let n = match peeked {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Protocol::Opaque,
            Ok(Ok(n)) => n,
        };
        if let Some(p) = classify(&buf[..n]) {
            return p;
        }
        if n == PEEK_BYTES || Instant::now() >= deadline {
            return Protocol::Opaque;
        }
        // Some bytes, not enough: peek returns at once now, so pause briefly.
        tokio::time::sleep(REPEEK).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_and_everything_else() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http));
        assert_eq!(classify(b"OPTIONS * HTTP/1.1"), Some(Protocol::Http));
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n\r\nSM"), Some(Protocol::Http));
        assert_eq!(
            classify(&[0x16, 0x03, 0x01, 0x02, 0x00]),
            Some(Protocol::Opaque),
            "TLS ClientHello"
        );
        assert_eq!(
            classify(b"\0\0\0\x08\x04\xd2\x16\x2f"),
            Some(Protocol::Opaque),
            "Postgres SSLRequest"
        );
        assert_eq!(classify(b"GETX"), Some(Protocol::Opaque));
        assert_eq!(classify(b"PO"), None, "could still be POST");
        assert_eq!(classify(b""), None);
    }

    #[tokio::test]
    async fn silence_is_opaque_after_the_timeout() {
        let Ok(listener) = tokio::net::TcpListener::bind("127.0.0.1:0").await else {
            return;
        };
        let Ok(addr) = listener.local_addr() else {
            return;
        };
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (Ok(mut client), Ok((server, _))) = (client, accepted) else {
            panic!("loopback connection")
        };
        let started = Instant::now();
        assert_eq!(
            detect(&server, Duration::from_millis(100)).await,
            Protocol::Opaque
        );
        assert!(started.elapsed() >= Duration::from_millis(90));
        use tokio::io::AsyncWriteExt;
        let _ = client.write_all(b"PO").await;
        let slow = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            let _ = client.write_all(b"ST /x HTTP/1.1\r\n").await;
            client
        });
        assert_eq!(
            detect(&server, Duration::from_secs(2)).await,
            Protocol::Http
        );
        let _ = slow.await;
    }
}
