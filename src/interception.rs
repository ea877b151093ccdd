//! Transparent interception: where a redirected connection was going, whether
//! it speaks HTTP, and the opaque TCP relay for everything else. The rules that
//! redirect connections here are in [`iptables`] (`breakwater init-iptables`).

pub mod detect;
pub mod iptables;
pub mod relay;

use std::net::SocketAddr;

use socket2::SockRef;
use tokio::net::TcpStream;

/// The address a connection was headed for before iptables REDIRECT sent it
/// here (`SO_ORIGINAL_DST`, `IP6T_SO_ORIGINAL_DST` for IPv6), or `None` for a
/// connection that was made to breakwater directly.
pub fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let local = stream.local_addr().ok()?;
    let sock = SockRef::from(stream);
    let orig = if local.is_ipv4() {
        sock.original_dst_v4()
    } else {
        sock.original_dst_v6()
    };
    // Without a NAT entry the kernel answers ENOENT, or the local address itself.
    let orig = orig.ok()?.as_socket()?;
    (orig != local).then_some(orig)
}

/// Whether `orig` is one of breakwater's own listeners: proxying to it would
/// loop forever, each hop taking a connection.
pub fn is_own_listener(orig: SocketAddr, local: SocketAddr, listener_ports: &[u16]) -> bool {
    listener_ports.contains(&orig.port())
        && (orig.ip().is_loopback() || orig.ip().is_unspecified() || orig.ip() == local.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_direct_connection_has_no_original_destination() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await;
        let Ok(listener) = listener else { return };
        let Ok(addr) = listener.local_addr() else {
            return;
        };
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (Ok(_client), Ok((server, _))) = (client, accepted) else {
            panic!("loopback connection")
        };
        assert_eq!(original_dst(&server), None);
    }

    #[test]
    fn own_listeners_are_recognised() {
        let local: SocketAddr = ([10, 0, 0, 5], 15001).into();
        let ports = [15006, 15001, 15000];
        assert!(is_own_listener(
            ([127, 0, 0, 1], 15001).into(),
            local,
            &ports
        ));
        assert!(is_own_listener(
            ([10, 0, 0, 5], 15006).into(),
            local,
            &ports
        ));
        assert!(!is_own_listener(
            ([10, 0, 0, 9], 15006).into(),
            local,
            &ports
        ));
        assert!(!is_own_listener(
            ([127, 0, 0, 1], 8080).into(),
            local,
            &ports
        ));
    }
}
