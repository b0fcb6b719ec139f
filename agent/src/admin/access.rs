//! Who may call what on the admin API (issue #15). Two doors lead to the same router:
//!
//! - the control socket serves the whole API to root (and the daemon's own uid) and to members
//!   of `sockmesh.admin.control_group`; the file's mode keeps everyone else from connecting,
//!   and every connection's peer is checked again here (SO_PEERCRED, SO_PEERGROUPS);
//! - the loopback TCP port (motan-go's mport, what its tooling calls) serves reads to anyone on
//!   the host, and of the mutations only those `sockmesh.admin.tcp_mutations` lists, with the
//!   token when `sockmesh.admin.token` is set; interception, reload and shutdown never. Its
//!   requests must name an IP literal or `localhost` as Host (no DNS rebinding from a browser),
//!   and a browser's cross-site request may not mutate.
//! - motan-go's `managementUnixSock`, when set, replaces the TCP port: root (SO_PEERCRED) gets
//!   what the control socket gives, any other local user what the TCP port gives.
//!
//! Mutations are POSTs, except /200 and /503 which motan-go's scripts GET. Every refusal is a
//! 401, 403 or 405 whose body says why, and is logged (a burst, then a count of the rest).
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::IncomingStream;
use serde_json::json;
use tokio::net::{TcpListener, UnixListener};

use crate::config::admin::Mutation;
use crate::control::AppState;

/// Who is on the other end of an admin connection.
#[derive(Clone, Debug)]
pub enum Caller {
    /// A connection to the TCP admin port.
    Tcp(SocketAddr),
    /// A connection to the control socket, with the peer's credentials as of its connect().
    Socket(Peer),
    /// A connection to motan-go's management Unix socket (`managementUnixSock`): root gets
    /// what the control socket gives, anyone else what the TCP admin port gives.
    Management(Peer),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub pid: Option<i32>,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, or why they could not be read.
    pub groups: Result<Vec<u32>, String>,
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Tcp(a) => write!(f, "tcp {a}"),
            Caller::Socket(p) | Caller::Management(p) => {
                if let Caller::Management(_) = self {
                    write!(f, "managementUnixSock ")?;
                }
                write!(f, "uid {} gid {}", p.uid, p.gid)?;
                match p.pid {
                    Some(pid) => write!(f, " pid {pid}"),
                    None => Ok(()),
                }
            }
        }
    }
}

impl Connected<IncomingStream<'_, TcpListener>> for Caller {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Caller {
        Caller::Tcp(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, UnixListener>> for Caller {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Caller {
        Caller::unix(stream.io())
    }
}

impl Caller {
    /// The peer of a control-socket connection, with its credentials as of its connect().
    pub fn unix(io: &tokio::net::UnixStream) -> Caller {
        Caller::Socket(peer_of(io))
    }
}

/// The credentials of a Unix socket's peer as of its connect() (the control socket's, or
/// `managementUnixSock`'s); a peer whose credentials cannot be read is nobody: no uid, no group,
/// every request the control socket serves is refused.
pub fn peer_of(io: &tokio::net::UnixStream) -> Peer {
    match io.peer_cred() {
        Ok(c) => Peer {
            pid: c.pid(),
            uid: c.uid(),
            gid: c.gid(),
            groups: crate::sys::peer_groups(io).map_err(|e| format!("SO_PEERGROUPS: {e}")),
        },
        Err(e) => Peer {
            pid: None,
            uid: u32::MAX,
            gid: u32::MAX,
            groups: Err(format!("SO_PEERCRED: {e}")),
        },
    }
}

/// What the guard decides by, besides the running configuration's `sockmesh.admin` keys (read
/// per request, so a reload changes `tcp_mutations` and `token` in place).
pub struct Access {
    pub state: Arc<AppState>,
    /// The gid of `sockmesh.admin.control_group`, resolved when the socket was made.
    pub group: Option<u32>,
    /// The control socket's path, for the messages that send callers there.
    pub socket: PathBuf,
    log: RefusalLog,
}

impl Access {
    pub fn new(state: Arc<AppState>, group: Option<u32>, socket: PathBuf) -> Arc<Access> {
        Arc::new(Access {
            state,
            group,
            socket,
            log: RefusalLog::default(),
        })
    }
}

/// A refused request: its status, why, and a header to add (Allow, WWW-Authenticate).
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub reason: String,
    pub header: Option<(header::HeaderName, &'static str)>,
}

impl Refusal {
    fn new(status: StatusCode, reason: String) -> Refusal {
        Refusal {
            status,
            reason,
            header: None,
        }
    }

    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(json!({ "error": self.reason }))).into_response();
        if let Some((k, v)) = self.header {
            r.headers_mut().insert(k, HeaderValue::from_static(v));
        }
        r
    }
}

/// The rules, as a pure function of the caller, the request and the settings.
pub struct Rules<'a> {
    pub group: Option<u32>,
    pub socket: &'a std::path::Path,
    pub tcp_mutations: &'a [Mutation],
    pub token: Option<&'a str>,
}

impl Rules<'_> {
    pub fn check(
        &self,
        caller: &Caller,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Result<(), Refusal> {
        let forbidden = |reason: String| Err(Refusal::new(StatusCode::FORBIDDEN, reason));
        let socket = self.socket.display();
        // Root on the management socket is served as on the control socket; anyone else there
        // as on the TCP port (reads, and the listed tcp_mutations).
        let remote = match caller {
            Caller::Tcp(_) => true,
            Caller::Management(p) => p.uid != 0,
            Caller::Socket(_) => false,
        };
        let door = match caller {
            Caller::Management(_) => "managementUnixSock (to callers other than root)",
            _ => "the TCP admin port",
        };
        match caller {
            Caller::Management(_) => {}
            Caller::Socket(peer) => {
                if let Err(why) = self.trusted(peer) {
                    return forbidden(format!("control socket: {why}"));
                }
            }
            Caller::Tcp(_) => {
                if let Err(host) = local_host(uri, headers) {
                    return forbidden(format!(
                        "foreign Host header {host:?}: the admin port answers only requests for an IP \
                         address or localhost (DNS rebinding protection)"
                    ));
                }
            }
        }
        let Some(m) = Mutation::from_path(uri.path()) else {
            return Ok(());
        };
        let path = m.path();
        if remote {
            if m.socket_only() {
                return forbidden(format!(
                    "{path} is served only on the control socket {socket} (root or sockmesh.admin.control_group), \
                     never over {door}; run the sockmesh CLI as root"
                ));
            }
            if !self.tcp_mutations.contains(&m) {
                return forbidden(format!(
                    "{path} changes the daemon and is not enabled over {door} (add it to \
                     sockmesh.admin.tcp_mutations, or use the control socket {socket})"
                ));
            }
        }
        if !(method == Method::POST || (method == Method::GET && m.allows_get())) {
            return Err(Refusal {
                status: StatusCode::METHOD_NOT_ALLOWED,
                reason: format!("{path} changes the daemon: use POST, not {method}"),
                header: Some((header::ALLOW, if m.allows_get() { "GET, POST" } else { "POST" })),
            });
        }
        if remote {
            if let Some(h) = cross_site(headers) {
                return forbidden(format!(
                    "{path}: a browser's cross-site request ({h}) may not change the daemon"
                ));
            }
            if let Some(token) = self.token
                && !carries_token(token, uri, headers)
            {
                return Err(Refusal {
                    status: StatusCode::UNAUTHORIZED,
                    reason: format!(
                        "{path} over {door} needs the admin token (sockmesh.admin.token): \
                         send `Authorization: Bearer <token>` or the parameter token=<token>"
                    ),
                    header: Some((header::WWW_AUTHENTICATE, "Bearer realm=\"sockmesh admin\"")),
                });
            }
        }
        Ok(())
    }

    /// Root, the daemon's own user, or a member of the control group.
    fn trusted(&self, p: &Peer) -> Result<(), String> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let own = unsafe { libc::geteuid() };
        if p.uid == 0 || p.uid == own {
            return Ok(());
        }
        let Some(g) = self.group else {
            return Err(format!(
                "uid {} is not root, and no sockmesh.admin.control_group is configured",
                p.uid
            ));
        };
        match &p.groups {
            _ if p.gid == g => Ok(()),
            Ok(groups) if groups.contains(&g) => Ok(()),
            Ok(_) => Err(format!(
                "uid {} is neither root nor a member of group {g} (sockmesh.admin.control_group)",
                p.uid
            )),
            Err(e) => Err(format!(
                "uid {} is not root and its groups could not be read ({e})",
                p.uid
            )),
        }
    }
}

/// The Host header (and an absolute-form request target) must name an IP literal or
/// `localhost`, with any port; otherwise a web page on a name that resolves to 127.0.0.1 (DNS
/// rebinding) could talk to the admin port. No Host at all passes: browsers always send one.
fn local_host(uri: &Uri, headers: &HeaderMap) -> Result<(), String> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err("(several)".into());
    }
    if let Some(h) = host {
        let h = h
            .to_str()
            .map_err(|_| String::from_utf8_lossy(h.as_bytes()).into_owned())?;
        if !is_local_name(h) {
            return Err(h.to_string());
        }
    }
    match uri.authority() {
        Some(a) if !is_local_name(a.as_str()) => Err(a.to_string()),
        _ => Ok(()),
    }
}

fn is_local_name(host: &str) -> bool {
    let port_ok = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split_once(']').is_some_and(|(ip, port)| {
            ip.parse::<Ipv6Addr>().is_ok() && (port.is_empty() || port.strip_prefix(':').is_some_and(port_ok))
        });
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port_ok(port) => name,
        Some(_) => return false,
        None => host,
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<Ipv4Addr>().is_ok()
}

/// A browser marks requests a page makes: `Origin` on cross-origin and scripted POSTs,
/// `Sec-Fetch-Site` on everything (`none` when the user typed the address).
fn cross_site(headers: &HeaderMap) -> Option<String> {
    if let Some(o) = headers.get(header::ORIGIN) {
        return Some(format!("Origin: {}", o.to_str().unwrap_or("?")));
    }
    match headers.get("sec-fetch-site").map(|v| v.to_str().unwrap_or("?")) {
        Some(site) if site != "none" && site != "same-origin" => Some(format!("Sec-Fetch-Site: {site}")),
        _ => None,
    }
}

fn carries_token(token: &str, uri: &Uri, headers: &HeaderMap) -> bool {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| same(t.trim().as_bytes(), token.as_bytes()));
    bearer
        || form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .any(|(k, v)| k == "token" && same(v.as_bytes(), token.as_bytes()))
}

/// Equal, in a time that does not depend on where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// The middleware in front of every admin route, on both doors.
pub async fn guard(State(access): State<Arc<Access>>, req: Request, next: Next) -> Response {
    let Some(ConnectInfo(caller)) = req.extensions().get::<ConnectInfo<Caller>>().cloned() else {
        // Served without connection info: a wiring mistake; refuse rather than guess.
        return Refusal::new(StatusCode::FORBIDDEN, "admin caller unknown".into()).into_response();
    };
    let verdict = {
        let cfg = access.state.config.read().unwrap();
        let admin = &cfg.sockmesh.admin;
        Rules {
            group: access.group,
            socket: &access.socket,
            tcp_mutations: &admin.tcp_mutations,
            token: admin.token.as_deref(),
        }
        .check(&caller, req.method(), req.uri(), req.headers())
    };
    match verdict {
        Ok(()) => {
            if let Some(m) = Mutation::from_path(req.uri().path()) {
                tracing::info!(caller = %caller, "admin {} {}", req.method(), m.path());
            }
            next.run(req).await
        }
        Err(refusal) => {
            access.log.record(|| {
                tracing::warn!(
                    caller = %caller,
                    method = %req.method(),
                    path = req.uri().path(),
                    status = refusal.status.as_u16(),
                    "admin request refused: {}",
                    refusal.reason
                )
            });
            refusal.into_response()
        }
    }
}

/// At most [`LOG_BURST`] refusal lines per [`LOG_WINDOW`]; the rest are counted and the count
/// is logged when the next window opens, so a local user hammering the port cannot flood the
/// journal.
#[derive(Default)]
struct RefusalLog(Mutex<Option<LogWindow>>);

struct LogWindow {
    started: Instant,
    logged: u32,
    suppressed: u64,
}

const LOG_BURST: u32 = 10;
const LOG_WINDOW: Duration = Duration::from_secs(10);

impl RefusalLog {
    fn record(&self, log: impl FnOnce()) {
        let mut g = self.0.lock().unwrap();
        let w = g.get_or_insert_with(|| LogWindow {
            started: Instant::now(),
            logged: 0,
            suppressed: 0,
        });
        if w.started.elapsed() >= LOG_WINDOW {
            if w.suppressed > 0 {
                tracing::warn!(
                    "{} more admin request(s) were refused without a log line in the last {LOG_WINDOW:?}",
                    w.suppressed
                );
            }
            *w = LogWindow {
                started: Instant::now(),
                logged: 0,
                suppressed: 0,
            };
        }
        if w.logged < LOG_BURST {
            w.logged += 1;
            drop(g);
            log();
        } else {
            w.suppressed += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOCKET: &str = "/run/sockmesh/control.sock";
    const HOST: (&str, &str) = ("host", "127.0.0.1:8002");

    fn rules<'a>(tcp: &'a [Mutation], token: Option<&'a str>) -> Rules<'a> {
        Rules {
            group: Some(4242),
            socket: std::path::Path::new(SOCKET),
            tcp_mutations: tcp,
            token,
        }
    }

    fn tcp() -> Caller {
        Caller::Tcp("127.0.0.1:40000".parse().unwrap())
    }

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> Caller {
        Caller::Socket(Peer {
            pid: Some(7),
            uid,
            gid,
            groups: Ok(groups.to_vec()),
        })
    }

    type Case<'a> = (&'a Caller, &'a str, &'a str, &'a [(&'a str, &'a str)]);

    #[test]
    fn the_management_socket_gives_root_everything_and_others_the_tcp_rules() {
        let mgmt = |uid| {
            Caller::Management(Peer {
                pid: Some(7),
                uid,
                gid: uid,
                groups: Ok(vec![]),
            })
        };
        let (root, nobody) = (mgmt(0), mgmt(65534));
        let r = rules(&[Mutation::Online], None);
        expect(
            &r,
            &[
                ((&root, "POST", "/shutdown", &[]), 200),
                ((&root, "POST", "/503", &[]), 200),
                // No Host check: a browser cannot reach a Unix socket.
                ((&nobody, "GET", "/status", &[("host", "evil.example")]), 200),
                ((&nobody, "POST", "/200", &[]), 200),
                ((&nobody, "POST", "/503", &[]), 403),
                ((&nobody, "POST", "/shutdown", &[]), 403),
                ((&nobody, "POST", "/200", &[("origin", "http://x")]), 403),
            ],
        );
        let e = check(&r, (&nobody, "POST", "/503", &[])).unwrap_err();
        assert!(e.reason.contains("managementUnixSock"), "{}", e.reason);
    }

    fn check(r: &Rules, (caller, method, uri, headers): Case) -> Result<(), Refusal> {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            let name = header::HeaderName::from_bytes(k.as_bytes()).unwrap();
            h.append(name, HeaderValue::from_str(v).unwrap());
        }
        r.check(caller, &method.parse().unwrap(), &uri.parse().unwrap(), &h)
    }

    /// Each case's status: 200 when allowed, else the refusal's.
    fn expect(r: &Rules, cases: &[(Case, u16)]) {
        for (case, want) in cases {
            let got = check(r, *case).err().map_or(200, |e| e.status.as_u16());
            assert_eq!(got, *want, "{} {} {:?} from {}", case.1, case.2, case.3, case.0);
        }
    }

    #[test]
    fn the_tcp_port_reads_and_mutates_only_what_is_enabled() {
        let (t, h) = (tcp(), &[HOST][..]);
        let none = rules(&[], None);
        let reads = [
            "/",
            "/status",
            "/metrics",
            "/switcher/get?name=x",
            "/intercept/status",
        ];
        let cases: Vec<_> = reads.iter().map(|p| ((&t, "GET", *p, h), 200)).collect();
        expect(&none, &cases);
        for m in Mutation::ALL {
            let r = check(&none, (&t, "POST", m.path(), h)).unwrap_err();
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", m.path());
            assert!(
                r.reason.contains("control socket /run/sockmesh/control.sock"),
                "{}",
                r.reason
            );
        }
        // Socket-only mutations stay refused even if a configuration listed them.
        let all = rules(&Mutation::ALL, None);
        for m in Mutation::ALL.into_iter().filter(|m| m.socket_only()) {
            let r = check(&all, (&t, "POST", m.path(), h)).unwrap_err();
            assert!(
                r.reason.contains("served only on the control socket"),
                "{}",
                r.reason
            );
        }
        let some = rules(
            &[Mutation::Online, Mutation::Offline, Mutation::SwitcherSet],
            None,
        );
        expect(
            &some,
            &[
                ((&t, "POST", "/200", h), 200),
                ((&t, "GET", "/503", h), 200),
                ((&t, "PUT", "/200", h), 405),
                ((&t, "POST", "/logConfig/set?access=false", h), 403),
            ],
        );
        let r = check(&some, (&t, "GET", "/switcher/set?name=a&value=true", h)).unwrap_err();
        assert_eq!(r.header, Some((header::ALLOW, "POST")));
        assert!(r.reason.contains("use POST, not GET"), "{}", r.reason);
    }

    #[test]
    fn the_token_guards_tcp_mutations_only() {
        let r = rules(&[Mutation::Online], Some("s3cret"));
        let (t, root) = (tcp(), peer(0, 0, &[]));
        let host = ("host", "localhost:8002");
        expect(
            &r,
            &[
                ((&t, "POST", "/200", &[host]), 401),
                (
                    (&t, "POST", "/200", &[host, ("authorization", "Bearer wrong")]),
                    401,
                ),
                (
                    (&t, "POST", "/200", &[host, ("authorization", "Bearer s3cret")]),
                    200,
                ),
                ((&t, "GET", "/200?token=s3cret", &[host]), 200),
                ((&t, "GET", "/200?token=s3cre", &[host]), 401),
                ((&t, "GET", "/status", &[host]), 200),
                // The socket needs no token: the peer's credentials are the proof.
                ((&root, "POST", "/reload", &[]), 200),
            ],
        );
        let e = check(&r, (&t, "POST", "/200", &[host])).unwrap_err();
        assert_eq!(e.header.unwrap().0, header::WWW_AUTHENTICATE);
    }

    #[test]
    fn host_names_other_than_ip_literals_and_localhost_are_refused() {
        let r = rules(&[], None);
        let (t, root) = (tcp(), peer(0, 0, &[]));
        let hosts = [
            ("127.0.0.1", 200),
            ("127.0.0.1:8002", 200),
            ("localhost", 200),
            ("LOCALHOST:1", 200),
            ("[::1]:8002", 200),
            ("[::1]", 200),
            ("10.1.2.3", 200),
            ("evil.example", 403),
            ("evil.example:8002", 403),
            ("localhost.evil.example", 403),
            ("127.0.0.1:", 403),
            ("[::1]x", 403),
            ("127.0.0.1.nip.io", 403),
        ];
        for (host, want) in hosts {
            expect(&r, &[((&t, "GET", "/status", &[("host", host)]), want)]);
        }
        let e = check(&r, (&t, "GET", "/status", &[("host", "evil.example")])).unwrap_err();
        assert!(
            e.reason.starts_with("foreign Host header \"evil.example\""),
            "{}",
            e.reason
        );
        expect(
            &r,
            &[
                ((&t, "GET", "/status", &[HOST, ("host", "evil.example")]), 403),
                ((&t, "GET", "http://evil.example/status", &[HOST]), 403),
                // A client without Host (HTTP/1.0 tools) is no browser.
                ((&t, "GET", "/status", &[]), 200),
                // The socket does not look at Host.
                ((&root, "GET", "/status", &[("host", "evil.example")]), 200),
            ],
        );
    }

    #[test]
    fn browsers_may_not_mutate_over_tcp() {
        let (r, t) = (rules(&[Mutation::Offline], None), tcp());
        expect(
            &r,
            &[
                (
                    (&t, "POST", "/503", &[HOST, ("origin", "http://evil.example")]),
                    403,
                ),
                (
                    (&t, "GET", "/503", &[HOST, ("sec-fetch-site", "cross-site")]),
                    403,
                ),
                ((&t, "GET", "/503", &[HOST, ("sec-fetch-site", "none")]), 200),
            ],
        );
    }

    #[test]
    fn the_socket_trusts_root_and_the_control_group() {
        let r = rules(&[], None);
        let (root, primary, supplementary) = (
            peer(0, 0, &[]),
            peer(1000, 4242, &[]),
            peer(1000, 100, &[27, 4242]),
        );
        let nobody = peer(65534, 65534, &[65534]);
        expect(
            &r,
            &[
                ((&root, "POST", "/shutdown", &[]), 200),
                ((&primary, "POST", "/reload", &[]), 200),
                ((&supplementary, "POST", "/reload", &[]), 200),
                ((&nobody, "GET", "/status", &[]), 403),
                // Over the socket mutations are POSTs too, except /200 and /503.
                ((&root, "GET", "/shutdown", &[]), 405),
                ((&root, "GET", "/200", &[]), 200),
            ],
        );
        let reason = |r: &Rules, c: &Caller| check(r, (c, "GET", "/", &[])).unwrap_err().reason;
        assert!(
            reason(&r, &nobody).contains("uid 65534 is neither root nor a member of group 4242"),
            "{}",
            reason(&r, &nobody)
        );
        let unread = Caller::Socket(Peer {
            pid: None,
            uid: 1000,
            gid: 100,
            groups: Err("SO_PEERGROUPS: nope".into()),
        });
        assert!(reason(&r, &unread).contains("could not be read"));
        let root_only = Rules { group: None, ..r };
        assert!(reason(&root_only, &primary).contains("no sockmesh.admin.control_group"));
    }

    #[test]
    fn refusal_lines_come_in_bursts() {
        let log = RefusalLog::default();
        let mut lines = 0;
        for _ in 0..50 {
            log.record(|| lines += 1);
        }
        assert_eq!(lines, LOG_BURST);
        assert_eq!(log.0.lock().unwrap().as_ref().unwrap().suppressed, 40);
    }
}
