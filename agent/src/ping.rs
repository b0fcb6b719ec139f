//! ICMP echo ("ping") round-trip times to one host, as motan-go's core/ping.go measures them to
//! choose an IDC's group (`${idc}` without `-idc`): `count` echo requests `interval` apart, each
//! carrying an 8-byte send timestamp and `payload` more bytes, replies collected until all are
//! in or `timeout` has passed since the first request.
//!
//! A raw ICMP socket needs CAP_NET_RAW; without it an unprivileged ICMP datagram socket is used
//! (allowed for the groups in `net.ipv4.ping_group_range`), where the kernel assigns the echo
//! identifier and filters replies by it. IPv4 and IPv6. These sockets are not upstream
//! connections (nothing is sent through them but echo requests), so they are made here rather
//! than by the upstream socket factory.
//!
//! [`ping`] blocks (at most `timeout`); [`ping_host`] runs it on tokio's blocking pool under a
//! hard bound, so callers may ping many hosts at once from async code.
use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use socket2::{Domain, Protocol, Socket, Type};

const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP6_ECHO_REQUEST: u8 = 128;
const ICMP6_ECHO_REPLY: u8 = 129;
const ICMP_HEADER_LEN: usize = 8;
const TIMESTAMP_LEN: usize = 8;

/// What one measurement sends (motan-go's `NewPinger(host, 5, 1s, 1024, ..)`, 1 ms apart).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PingOptions {
    pub count: u16,
    pub interval: Duration,
    /// Bound of the whole measurement, from the first request.
    pub timeout: Duration,
    /// Bytes after the timestamp.
    pub payload: usize,
}

impl Default for PingOptions {
    fn default() -> PingOptions {
        PingOptions {
            count: 5,
            interval: Duration::from_millis(1),
            timeout: Duration::from_secs(1),
            payload: 1024,
        }
    }
}

/// The mean of `rtts` without their minimum and maximum (motan-go `getBestGroup`), `None` with
/// fewer than 3 (a host that loses packets is not a candidate).
pub fn trimmed_mean(rtts: &[Duration]) -> Option<Duration> {
    if rtts.len() < 3 {
        return None;
    }
    let (min, max) = (rtts.iter().min()?, rtts.iter().max()?);
    let total: Duration = rtts.iter().sum();
    Some((total - *min - *max) / (rtts.len() as u32 - 2))
}

/// An ICMP socket for `ip`: raw when allowed, else an unprivileged datagram socket. The bool
/// says raw.
fn icmp_socket(ip: IpAddr) -> io::Result<(Socket, bool)> {
    let (domain, proto) = match ip {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6),
    };
    match Socket::new(domain, Type::RAW, Some(proto)) {
        Ok(s) => Ok((s, true)),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES)) => {
            Socket::new(domain, Type::DGRAM, Some(proto)).map(|s| (s, false))
        }
        Err(e) => Err(e),
    }
}

/// The Internet checksum (RFC 1071).
fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// One echo request: type, code, checksum (IPv4 only: the kernel fills ICMPv6's), identifier,
/// sequence, the send time in nanoseconds, `payload` zero bytes.
fn echo_request(v6: bool, id: u16, seq: u16, payload: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(ICMP_HEADER_LEN + TIMESTAMP_LEN + payload);
    p.push(if v6 { ICMP6_ECHO_REQUEST } else { ICMP_ECHO_REQUEST });
    p.push(0);
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    p.extend_from_slice(&(now.as_nanos() as u64).to_be_bytes());
    p.resize(ICMP_HEADER_LEN + TIMESTAMP_LEN + payload, 0);
    if !v6 {
        let c = checksum(&p);
        p[2..4].copy_from_slice(&c.to_be_bytes());
    }
    p
}

/// The sequence number of an echo reply to us in `packet` (as received: a raw IPv4 socket
/// includes the IP header), from `from`. `id` is checked on raw sockets only: a datagram
/// socket's identifier is the kernel's, which also filters the replies.
fn reply_seq(packet: &[u8], from: IpAddr, to: IpAddr, raw: bool, id: u16) -> Option<u16> {
    if from != to {
        return None;
    }
    let icmp = match to {
        IpAddr::V4(_) if raw => {
            let ihl = usize::from(*packet.first()? & 0x0f) * 4;
            packet.get(ihl..)?
        }
        _ => packet,
    };
    let want = if to.is_ipv6() {
        ICMP6_ECHO_REPLY
    } else {
        ICMP_ECHO_REPLY
    };
    if icmp.len() < ICMP_HEADER_LEN || icmp[0] != want || icmp[1] != 0 {
        return None;
    }
    if raw && u16::from_be_bytes([icmp[4], icmp[5]]) != id {
        return None;
    }
    Some(u16::from_be_bytes([icmp[6], icmp[7]]))
}

/// Ping `ip` (blocking, at most `opts.timeout`): the round-trip time of every reply, in the
/// order they came. An error only when no socket could be made or nothing could be sent.
pub fn ping(ip: IpAddr, opts: &PingOptions) -> io::Result<Vec<Duration>> {
    let (sock, raw) = icmp_socket(ip)?;
    let dest = SocketAddr::new(ip, 0).into();
    let id = fastrand::u16(..);
    let count = usize::from(opts.count);
    let start = Instant::now();
    let deadline = start + opts.timeout;
    let mut sent_at: Vec<Instant> = Vec::with_capacity(count);
    let mut answered = vec![false; count];
    let mut rtts = Vec::with_capacity(count);
    let mut buf = vec![0u8; 64 + ICMP_HEADER_LEN + TIMESTAMP_LEN + opts.payload];
    let mut last_error = None;
    loop {
        let now = Instant::now();
        if now >= deadline || rtts.len() == count {
            break;
        }
        let next_send = (sent_at.len() < count).then(|| start + opts.interval * sent_at.len() as u32);
        if next_send.is_some_and(|t| t <= now) {
            let seq = sent_at.len() as u16;
            sent_at.push(Instant::now());
            if let Err(e) = sock.send_to(&echo_request(ip.is_ipv6(), id, seq, opts.payload), &dest) {
                last_error = Some(e);
            }
            continue;
        }
        let wait = next_send.unwrap_or(deadline).min(deadline) - now;
        sock.set_read_timeout(Some(wait.max(Duration::from_micros(100))))?;
        // SAFETY: recv_from only writes into the buffer, and u8 has no invalid bit patterns,
        // so viewing initialized bytes as MaybeUninit is sound.
        let uninit = unsafe { &mut *(buf.as_mut_slice() as *mut [u8] as *mut [MaybeUninit<u8>]) };
        match sock.recv_from(uninit) {
            Ok((n, from)) => {
                let Some(from) = from.as_socket().map(|a| a.ip()) else {
                    continue;
                };
                if let Some(seq) = reply_seq(&buf[..n], from, ip, raw, id) {
                    let i = usize::from(seq);
                    if i < sent_at.len() && !answered[i] {
                        answered[i] = true;
                        rtts.push(sent_at[i].elapsed());
                    }
                }
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    match last_error {
        Some(e) if rtts.is_empty() => Err(e),
        _ => Ok(rtts),
    }
}

/// Ping `host` (an IP, or a name resolved first) from async code: on the blocking pool, bounded
/// by `opts.timeout` plus a little (resolution included). The RTTs, or why there are none.
pub async fn ping_host(host: &str, opts: PingOptions) -> Result<Vec<Duration>, String> {
    let bound = opts.timeout + Duration::from_millis(100);
    let work = async {
        let ip = match host.parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) => tokio::net::lookup_host((host, 0))
                .await
                .map_err(|e| format!("resolving {host}: {e}"))?
                .next()
                .ok_or_else(|| format!("{host} has no address"))?
                .ip(),
        };
        tokio::task::spawn_blocking(move || ping(ip, &opts))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("ping {ip}: {e}"))
    };
    tokio::time::timeout(bound, work)
        .await
        .unwrap_or_else(|_| Err(format!("ping {host}: no answer within {bound:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trimmed_mean_drops_min_and_max() {
        let ms = Duration::from_millis;
        assert_eq!(trimmed_mean(&[ms(1), ms(2)]), None);
        assert_eq!(trimmed_mean(&[ms(5), ms(1), ms(3)]), Some(ms(3)));
        assert_eq!(
            trimmed_mean(&[ms(1), ms(2), ms(4), ms(100), ms(0)]),
            Some(ms(7) / 3)
        );
    }

    #[test]
    fn echo_requests_carry_a_valid_checksum_and_our_id() {
        let p = echo_request(false, 0x1234, 3, 1024);
        assert_eq!(p.len(), 8 + 8 + 1024);
        assert_eq!((p[0], p[1]), (8, 0));
        assert_eq!(checksum(&p), 0, "a packet with its checksum sums to zero");
        // The reply as a raw IPv4 socket reads it: a 20-byte IP header first.
        let mut reply = vec![0x45; 20];
        reply.extend_from_slice(&p);
        reply[20] = ICMP_ECHO_REPLY;
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(reply_seq(&reply, ip, ip, true, 0x1234), Some(3));
        assert_eq!(reply_seq(&reply, ip, ip, true, 0x9999), None);
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(reply_seq(&reply, other, ip, true, 0x1234), None);
        // Our own request (seen on loopback) is not a reply.
        let mut req = vec![0x45; 20];
        req.extend_from_slice(&p);
        assert_eq!(reply_seq(&req, ip, ip, true, 0x1234), None);
        // A datagram socket: no IP header, the kernel's identifier.
        let mut dgram = p.clone();
        dgram[0] = ICMP_ECHO_REPLY;
        assert_eq!(reply_seq(&dgram, ip, ip, false, 1), Some(3));
        let v6 = echo_request(true, 1, 0, 16);
        assert_eq!(v6[0], ICMP6_ECHO_REQUEST);
    }

    #[test]
    fn loopback_answers_within_the_bound() {
        // Needs a raw socket (root) or ping_group_range; either way the bound holds.
        let opts = PingOptions::default();
        for host in ["127.0.0.1", "::1"] {
            let t0 = Instant::now();
            let r = ping(host.parse().unwrap(), &opts);
            assert!(t0.elapsed() < opts.timeout + Duration::from_millis(200), "{host}");
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } == 0 {
                assert!(r.is_ok(), "{host}: root makes a raw socket: {r:?}");
            }
            if let Ok(rtts) = r {
                assert_eq!(rtts.len(), 5, "{host}: loopback answers every echo");
                assert!(trimmed_mean(&rtts).unwrap() < Duration::from_millis(100));
            }
        }
    }
}
