//! Trust boundaries of the control plane (issue #15), against real daemons on loopback: an
//! unprivileged local user (uid 65534, `nobody`) cannot change the daemon over the TCP admin
//! port nor reach the control socket; root's CLI works as before over the socket; the TCP port
//! refuses foreign Host headers and serves only the mutations the configuration enables (with
//! the token when one is set); intercepting the cgroup root needs --force.
//!
//! The unprivileged caller is a child forked from this (root) test process that drops to the
//! given uid, gid and groups and then only makes system calls (see [`as_user`]).
mod common;

use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::*;
use sockmesh_testkit::http;

const NOBODY: u32 = 65534;
/// A uid and gid no account uses: a local user outside every group of interest.
const STRANGER: u32 = 42424;

/// Where the unprivileged request goes.
#[derive(Clone, Copy)]
enum Door<'a> {
    Tcp(SocketAddr),
    Socket(&'a Path),
}

/// What the unprivileged caller got.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// connect() failed with this errno.
    Refused(i32),
    /// The HTTP answer: status and body.
    Answer(u16, String),
}

impl Outcome {
    fn status(&self) -> u16 {
        match self {
            Outcome::Answer(code, _) => *code,
            Outcome::Refused(e) => panic!("connect refused: errno {e}"),
        }
    }

    fn body(&self) -> &str {
        match self {
            Outcome::Answer(_, body) => body,
            Outcome::Refused(e) => panic!("connect refused: errno {e}"),
        }
    }
}

/// An HTTP/1.1 request with `headers` (each "Name: value").
fn raw(method: &str, path: &str, host: &str, headers: &[&str]) -> String {
    let mut r =
        format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: 0\r\n");
    for h in headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r
}

/// Send `request` from a child process running as `uid`/`gid` with supplementary `groups`.
///
/// Everything the child needs is prepared before fork(): in this multi-threaded test process the
/// child may only make system calls (no allocation, no locks) until it exits. It reports over a
/// pipe: 0 then the raw answer, 1 and the errno of a failed connect(), 2 and the errno of a
/// failed privilege drop.
fn as_user(uid: u32, gid: u32, groups: &[u32], door: Door, request: &str) -> Outcome {
    // SAFETY: plain system calls on memory this function owns; the child only makes system
    // calls on buffers allocated before the fork, then _exit()s.
    unsafe {
        let mut addr: libc::sockaddr_storage = std::mem::zeroed();
        let (family, len) = match door {
            Door::Tcp(SocketAddr::V4(a)) => {
                let sin = &mut *(&mut addr as *mut _ as *mut libc::sockaddr_in);
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = a.port().to_be();
                sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
                (libc::AF_INET, std::mem::size_of::<libc::sockaddr_in>())
            }
            Door::Tcp(SocketAddr::V6(_)) => panic!("the tests use IPv4 loopback"),
            Door::Socket(p) => {
                let sun = &mut *(&mut addr as *mut _ as *mut libc::sockaddr_un);
                sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
                let bytes = p.as_os_str().as_encoded_bytes();
                assert!(bytes.len() < sun.sun_path.len(), "socket path too long");
                for (d, s) in sun.sun_path.iter_mut().zip(bytes) {
                    *d = *s as libc::c_char;
                }
                (libc::AF_UNIX, std::mem::size_of::<libc::sockaddr_un>())
            }
        };
        let req = request.as_bytes();
        let mut fds = [0; 2];
        assert_eq!(libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC), 0);
        let pid = libc::fork();
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            let w = fds[1];
            let report = |code: u8| -> ! {
                let e = (*libc::__errno_location()).to_ne_bytes();
                let msg = [code, e[0], e[1], e[2], e[3]];
                libc::write(w, msg.as_ptr().cast(), msg.len());
                libc::_exit(1)
            };
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                report(2);
            }
            let s = libc::socket(family, libc::SOCK_STREAM, 0);
            if s < 0 {
                report(1);
            }
            let timeout = libc::timeval {
                tv_sec: 20,
                tv_usec: 0,
            };
            libc::setsockopt(
                s,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
            if libc::connect(
                s,
                (&addr as *const libc::sockaddr_storage).cast(),
                len as libc::socklen_t,
            ) != 0
            {
                report(1);
            }
            let mut sent = 0;
            while sent < req.len() {
                let n = libc::write(s, req[sent..].as_ptr().cast(), req.len() - sent);
                if n <= 0 {
                    libc::_exit(3);
                }
                sent += n as usize;
            }
            libc::write(w, [0u8].as_ptr().cast(), 1);
            let mut buf = [0u8; 16384];
            loop {
                let n = libc::read(s, buf.as_mut_ptr().cast(), buf.len());
                if n <= 0 {
                    break;
                }
                libc::write(w, buf.as_ptr().cast(), n as usize);
            }
            libc::_exit(0);
        }
        libc::close(fds[1]);
        let mut out = Vec::new();
        let mut buf = [0u8; 16384];
        loop {
            let n = libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len());
            if n <= 0 {
                break;
            }
            out.extend_from_slice(&buf[..n as usize]);
        }
        libc::close(fds[0]);
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
        let errno = || i32::from_ne_bytes(out[1..5].try_into().unwrap());
        match out.first() {
            Some(0) => {
                let (code, body) = http::parse_response(&out[1..])
                    .unwrap_or_else(|e| panic!("{e:#}: {:?}", String::from_utf8_lossy(&out[1..])));
                Outcome::Answer(code, body)
            }
            Some(1) => Outcome::Refused(errno()),
            Some(2) => panic!(
                "dropping to uid {uid} failed: {}",
                std::io::Error::from_raw_os_error(errno())
            ),
            _ => panic!("the unprivileged child said nothing (wait status {status})"),
        }
    }
}

/// `request` as nobody (uid and gid 65534, no other groups).
fn as_nobody(door: Door, request: &str) -> Outcome {
    as_user(NOBODY, NOBODY, &[], door, request)
}

/// Every mutation of the admin API, as an attacker would send it.
const MUTATIONS: &[(&str, &str)] = &[
    ("POST", "/200"),
    ("GET", "/200"),
    ("POST", "/503"),
    ("GET", "/503"),
    ("POST", "/switcher/set?name=feature.x&value=true"),
    ("GET", "/switcher/set?name=feature.x&value=true"),
    ("POST", "/ratelimit/set?service=com.example.Echo&rate=1"),
    ("POST", "/logConfig/set?access=false"),
    ("GET", "/logConfig/set?access=false"),
    ("POST", "/logConfig/set?level=trace"),
    ("POST", "/reload"),
    ("POST", "/reload/clusters"),
    ("POST", "/shutdown"),
    ("GET", "/shutdown"),
    ("POST", "/intercept/enable?cgroup=/&mode=iptables&force=true"),
    ("POST", "/intercept/disable?all=true"),
    ("POST", "/meta/update?META_WEIGHT=500"),
    ("POST", "/meta/delete?key=META_WEIGHT"),
];

/// A daemon without interception (no BPF needed) and with extra `sockmesh.admin` keys.
fn admin_daemon(name: &str, admin: &str) -> Daemon {
    Daemon::launch_admin(
        name,
        Ports::pick(),
        "",
        admin,
        "switcher:\n  feature.x: false\n",
        "    enabled: false\n",
    )
}

#[test]
fn an_unprivileged_user_cannot_change_the_daemon() {
    if !privileged("an_unprivileged_user_cannot_change_the_daemon") {
        return;
    }
    let _g = serial();
    let d = admin_daemon("trust-nobody", "");
    let tcp = Door::Tcp(d.admin);
    let host = d.admin.to_string();

    // The socket file: root's, 0600, in a directory anyone may enter, so its mode alone is what
    // refuses nobody: connect() fails with EACCES, whatever the request.
    let meta = std::fs::metadata(&d.control).unwrap();
    assert!(meta.file_type().is_socket(), "{}", d.control.display());
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o600));
    assert_ne!(
        std::fs::metadata(d.control.parent().unwrap()).unwrap().mode() & 0o001,
        0
    );
    for (method, path) in MUTATIONS.iter().chain(&[("GET", "/status")]) {
        assert_eq!(
            as_nobody(Door::Socket(&d.control), &raw(method, path, "localhost", &[])),
            Outcome::Refused(libc::EACCES),
            "{method} {path} on the control socket"
        );
    }

    // The TCP port: reads answer, every mutation is refused with a reason, for nobody and for
    // root alike (the port cannot tell who calls).
    let status = as_nobody(tcp, &raw("GET", "/status", &host, &[]));
    assert_eq!(status.status(), 200, "{status:?}");
    for (method, path) in MUTATIONS {
        let r = as_nobody(tcp, &raw(method, path, &host, &[]));
        assert_eq!(r.status(), 403, "{method} {path}: {r:?}");
        assert!(
            r.body().contains("control socket") && r.body().contains(&d.control.display().to_string()),
            "{method} {path}: {}",
            r.body()
        );
        let (code, body) = http::request(d.admin, method, path, "").unwrap();
        assert_eq!(code, 403, "root over TCP, {method} {path}: {body}");
    }

    // Nothing changed: still running, still offline (exports not announced), switch and access
    // log as configured, nothing intercepted; every refusal was logged.
    let st = d.admin_json("/sockmesh/status");
    assert_eq!(st["status"], 503, "{st}");
    assert_eq!(
        http::get(d.admin, "/switcher/get?name=feature.x").unwrap().1,
        "Switcher value for feature.x is false!"
    );
    assert_eq!(
        d.admin_json("/intercept/status")["cgroups"],
        serde_json::json!([])
    );
    let log = d.log();
    assert!(
        log.contains("admin request refused") && log.contains("caller=tcp 127.0.0.1:"),
        "{log}"
    );
    assert!(!log.contains("shutdown requested"), "{log}");
}

#[test]
fn the_control_socket_admits_root_and_the_control_group_only() {
    if !privileged("the_control_socket_admits_root_and_the_control_group_only") {
        return;
    }
    let _g = serial();
    // Group 65534 (nogroup on Debian) may use the socket: 0660 root:65534.
    let d = admin_daemon("trust-group", "    control_group: \"65534\"\n");
    let meta = std::fs::metadata(&d.control).unwrap();
    assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o777), (0, NOBODY, 0o660));
    let socket = Door::Socket(&d.control);
    let reload = raw("POST", "/reload", "localhost", &[]);
    // A member by its primary group, and one by a supplementary group.
    let r = as_user(NOBODY, NOBODY, &[], socket, &reload);
    assert_eq!(r.status(), 200, "{r:?}");
    let r = as_user(STRANGER, STRANGER, &[NOBODY], socket, &reload);
    assert_eq!(r.status(), 200, "{r:?}");
    // Anyone else cannot even connect.
    assert_eq!(
        as_user(STRANGER, STRANGER, &[], socket, &reload),
        Outcome::Refused(libc::EACCES)
    );
    // Were the file opened up by mistake, the daemon's own check (SO_PEERCRED, SO_PEERGROUPS)
    // still refuses, naming why.
    std::fs::set_permissions(&d.control, std::fs::Permissions::from_mode(0o666)).unwrap();
    let r = as_user(
        STRANGER,
        STRANGER,
        &[],
        socket,
        &raw("GET", "/status", "localhost", &[]),
    );
    assert_eq!(r.status(), 403, "{r:?}");
    assert!(
        r.body()
            .contains("control socket: uid 42424 is neither root nor a member of group 65534"),
        "{}",
        r.body()
    );
    let r = as_user(
        STRANGER,
        STRANGER,
        &[],
        socket,
        &raw("POST", "/shutdown", "localhost", &[]),
    );
    assert_eq!(r.status(), 403, "{r:?}");
    assert_eq!(d.admin_json("/sockmesh/status")["status"], 503, "still running");
    let log = d.log();
    assert!(
        log.contains("admin POST /reload caller=uid 65534 gid 65534"),
        "{log}"
    );
    assert!(
        log.contains("admin request refused") && log.contains("caller=uid 42424"),
        "{log}"
    );
}

/// `sockmesh ARGS` as root with the control socket named by SOCKMESH_CONTROL, the way an
/// operator's shell would have it; (success, stdout, stderr).
fn cli_env(d: &Daemon, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin())
        .args(args)
        .env("SOCKMESH_CONTROL", &d.control)
        .env_remove("SOCKMESH_ADMIN")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn root_cli_works_over_the_socket_and_the_cgroup_root_needs_force() {
    if !privileged("root_cli_works_over_the_socket_and_the_cgroup_root_needs_force") {
        return;
    }
    let _g = serial();
    let d = Daemon::start("trust-cli");
    let (_cg, rel) = test_cgroup("smt-trust");

    let (ok, out, err) = cli_env(&d, &["status"]);
    assert!(
        ok && out.contains("listener control") && out.contains("control.sock"),
        "{out}{err}"
    );
    let (ok, out, err) = cli_env(
        &d,
        &["intercept", "enable", "--cgroup", &rel, "--mode", "ebpf-connect"],
    );
    assert!(ok, "{out}{err}");
    let (ok, out, err) = cli_env(&d, &["intercept", "status"]);
    assert!(ok && out.contains(&rel), "{out}{err}");
    let (ok, out, err) = cli_env(&d, &["reload"]);
    assert!(ok && out.contains("reloaded"), "{out}{err}");
    let (ok, out, err) = cli_env(&d, &["intercept", "disable", "--cgroup", &rel]);
    assert!(ok, "{out}{err}");

    // `--admin ADDR` speaks TCP: reads work, mutations are refused with the way to the socket.
    let admin = d.admin.to_string();
    let (ok, out, err) = cli_env(&d, &["status", "--json", "--admin", &admin]);
    assert!(ok && out.contains("\"listeners\""), "{out}{err}");
    let (ok, _, err) = cli_env(&d, &["reload", "--admin", &admin]);
    assert!(
        !ok && err.contains("/reload is served only on the control socket"),
        "{err}"
    );

    // The cgroup root means every process on the host: refused without --force, for root too,
    // however it is spelled.
    for root in ["/", "//", "/."] {
        let (ok, _, err) = cli_env(
            &d,
            &["intercept", "enable", "--cgroup", root, "--mode", "ebpf-connect"],
        );
        assert!(
            !ok && err.contains("cgroup root") && err.contains("every process on the host"),
            "{root}: {err}"
        );
    }
    let (code, body) = d.control_post("/intercept/enable?cgroup=/&mode=iptables");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("force=true"), "{body}");
    assert_eq!(d.intercept_status()["cgroups"], serde_json::json!([]));
}

#[test]
fn force_passes_the_cgroup_root_check() {
    if !privileged("force_passes_the_cgroup_root_check") {
        return;
    }
    let _g = serial();
    // Without interception the request fails further on, so nothing on the host is touched:
    // what matters is that it got past the root check.
    let d = admin_daemon("trust-force", "");
    let (ok, _, err) = d.cli(&[
        "intercept",
        "enable",
        "--cgroup",
        "/",
        "--mode",
        "ebpf-connect",
        "--force",
    ]);
    assert!(
        !ok && err.contains("eBPF interception is unavailable") && !err.contains("cgroup root"),
        "{err}"
    );
}

#[test]
fn the_tcp_port_refuses_foreign_host_headers() {
    if !privileged("the_tcp_port_refuses_foreign_host_headers") {
        return;
    }
    let _g = serial();
    let d = admin_daemon("trust-host", "");
    let tcp = Door::Tcp(d.admin);
    let port = d.admin.port();
    for host in [
        "evil.example".to_string(),
        format!("evil.example:{port}"),
        format!("localhost.evil.example:{port}"),
    ] {
        let r = as_nobody(tcp, &raw("GET", "/status", &host, &[]));
        assert_eq!(r.status(), 403, "{host}: {r:?}");
        assert!(r.body().contains("foreign Host header"), "{}", r.body());
    }
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        "127.0.0.1".to_string(),
    ] {
        assert_eq!(
            as_nobody(tcp, &raw("GET", "/status", &host, &[])).status(),
            200,
            "{host}"
        );
    }
}

#[test]
fn tcp_mutations_need_the_config_and_the_token() {
    if !privileged("tcp_mutations_need_the_config_and_the_token") {
        return;
    }
    let _g = serial();
    let token = "t0k3n-for-the-deploy-scripts";
    let d = admin_daemon(
        "trust-token",
        &format!("    tcp_mutations: [\"/200\", \"/503\"]\n    token: {token}\n"),
    );
    let tcp = Door::Tcp(d.admin);
    let host = d.admin.to_string();
    let bearer = format!("Authorization: Bearer {token}");
    let online = || d.admin_json("/sockmesh/status")["status"].as_u64().unwrap();

    // Enabled, but without the token: 401 naming the key.
    let r = as_nobody(tcp, &raw("POST", "/200", &host, &[]));
    assert_eq!(r.status(), 401, "{r:?}");
    assert!(r.body().contains("sockmesh.admin.token"), "{}", r.body());
    let r = as_nobody(tcp, &raw("POST", "/200", &host, &["Authorization: Bearer guess"]));
    assert_eq!(r.status(), 401, "{r:?}");
    assert_eq!(online(), 503);
    // With it: POST /200, and GET /503 as motan-go's deploy scripts send it.
    let r = as_nobody(tcp, &raw("POST", "/200", &host, &[&bearer]));
    assert_eq!((r.status(), r.body()), (200, "ok."));
    assert_eq!(online(), 200);
    let r = as_nobody(tcp, &raw("GET", &format!("/503?token={token}"), &host, &[]));
    assert_eq!((r.status(), r.body()), (200, "ok."));
    assert_eq!(online(), 503);
    // Not from a browser page, token or not.
    let r = as_nobody(
        tcp,
        &raw("POST", "/200", &host, &[&bearer, "Origin: http://evil.example"]),
    );
    assert_eq!(r.status(), 403, "{r:?}");
    // What is not listed stays refused, the token does not open it.
    for (method, path) in [
        ("POST", "/switcher/set?name=feature.x&value=true"),
        ("POST", "/reload"),
        ("POST", "/shutdown"),
    ] {
        let r = as_nobody(tcp, &raw(method, path, &host, &[&bearer]));
        assert_eq!(r.status(), 403, "{method} {path}: {r:?}");
    }

    // A reload changes the TCP rules in place: without a token, /200 needs none.
    let cfg = std::fs::read_to_string(d.config_path()).unwrap();
    std::fs::write(d.config_path(), cfg.replace(&format!("    token: {token}\n"), "")).unwrap();
    let (code, body) = d.control_post("/reload");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("sockmesh.admin.token"), "{body}");
    let r = as_nobody(tcp, &raw("GET", "/200", &host, &[]));
    assert_eq!((r.status(), r.body()), (200, "ok."));
    assert_eq!(online(), 200);
}

#[test]
fn shutdown_over_the_socket_exits_zero_and_a_stale_socket_is_replaced() {
    if !privileged("shutdown_over_the_socket_exits_zero_and_a_stale_socket_is_replaced") {
        return;
    }
    let _g = serial();
    let mut d = admin_daemon("trust-stop", "");
    // A daemon killed with -9 leaves its socket file; the next one replaces it, as nothing
    // answers there.
    d.kill9();
    assert!(d.control.exists());
    assert_eq!(
        http::unix_get(&d.control, "/sockmesh/status")
            .err()
            .map(|e| format!("{e:#}")),
        Some(format!(
            "cannot reach the control socket {}: Connection refused (os error 111)",
            d.control.display()
        ))
    );
    d.spawn();
    assert!(d.log().contains("removed the stale control socket"));
    // The admin-requested stop: root only, exit status 0 (documented in the README), socket gone.
    let (code, body) = d.control_post("/shutdown");
    assert_eq!((code, body.as_str()), (200, "shutting down"));
    assert!(d.wait_exit(), "an admin-requested shutdown exits 0");
    assert!(!d.control.exists(), "the socket file is removed on the way out");
}
