//! Free loopback ports. A port is free when the kernel hands it out for 127.0.0.1:0; all `n` are
//! held until every one is chosen, so they differ. Another process may still take one before the
//! caller binds it: harnesses that race with others retry rather than assume.
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// `n` distinct free ports on 127.0.0.1.
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("a bound listener has an address").port())
        .collect()
}

/// One free port on 127.0.0.1.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// Whether something accepts a TCP connection on `addr` (within half a second).
pub fn accepts(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_differ_and_accept_once_bound() {
        let p = free_ports(5);
        let mut sorted = p.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 5, "{p:?}");
        let addr: SocketAddr = ([127, 0, 0, 1], p[0]).into();
        assert!(!accepts(addr));
        let _l = TcpListener::bind(addr).unwrap();
        assert!(accepts(addr));
    }
}
