//! The HTTP side of the mesh (issue #18) with real processes on loopback: agents
//! (`sockmesh run`), HTTP applications (axum, over TCP and a unix socket), the Motan2 test
//! provider, curl as the HTTP caller and the agents' own Motan2 channel as the RPC caller.
//! - server role: the Weibo Mesh article's HTTP_URL entry, URL_FORMAT, a unix proxyAddress,
//!   each http-locations rule type, GET and POST, status codes with and without
//!   enableHttpException, a hung backend;
//! - client role: curl through hport to a Motan2 provider (/proxy_to_rpc) and to an HTTP
//!   provider over Motan2 (http-client), plain HTTP for the rest, bounded errors;
//! - the same curl from an intercepted cgroup, without proxy settings (privileged).
mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::motan::{self, Value};
use common::{Daemon, Ports, agent_addr, direct_registry, export_addr, privileged, serial, test_cgroup};

/// An HTTP application: `/slow` answers after 5 s, `/status/{code}` with that status and body
/// `status {code}`, anything else echoes the request as JSON (method, path, query, body,
/// headers: name → values). Every answer carries `x-app: demo`.
fn app() -> axum::Router {
    use axum::extract::{Path as UrlPath, Request};
    use axum::http::StatusCode;
    use axum::routing::any;
    async fn echo(req: Request) -> ([(&'static str, &'static str); 1], axum::Json<serde_json::Value>) {
        let (parts, body) = req.into_parts();
        let mut headers = serde_json::Map::new();
        for (name, value) in &parts.headers {
            headers
                .entry(name.as_str())
                .or_insert_with(|| serde_json::json!([]))
                .as_array_mut()
                .unwrap()
                .push(String::from_utf8_lossy(value.as_bytes()).into());
        }
        let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        (
            [("x-app", "demo")],
            axum::Json(serde_json::json!({
                "method": parts.method.as_str(),
                "path": parts.uri.path(),
                "query": parts.uri.query(),
                "body": String::from_utf8_lossy(&body),
                "headers": headers,
            })),
        )
    }
    axum::Router::new()
        .route(
            "/slow",
            any(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        )
        .route(
            "/status/{code}",
            any(|UrlPath(code): UrlPath<u16>| async move {
                (
                    StatusCode::from_u16(code).unwrap(),
                    [("x-app", "demo")],
                    format!("status {code}"),
                )
            }),
        )
        .fallback(echo)
}

fn http_app(rt: &tokio::runtime::Runtime) -> SocketAddr {
    let l = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = l.local_addr().unwrap();
    rt.spawn(async move { axum::serve(l, app()).await });
    addr
}

fn unix_app(rt: &tokio::runtime::Runtime, path: &Path) {
    let _ = std::fs::remove_file(path);
    let l = {
        let _g = rt.enter();
        tokio::net::UnixListener::bind(path).unwrap()
    };
    rt.spawn(async move { axum::serve(l, app()).await });
}

/// `sockmesh config validate` agrees with `sockmesh run` (which is serving `d`) on its
/// configuration: every HTTP configuration of this suite is also a config_parity case.
fn validated(d: Daemon) -> Daemon {
    let out = Command::new(common::bin())
        .args(["config", "validate"])
        .arg(d.config_path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "run serves it, validate refuses it: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    d
}

/// The simple value of a successful answer as text (string or bytes).
fn text(f: &motan::Frame) -> String {
    assert_eq!(motan::exception(f), None, "{f:?}");
    match motan::simple::decode_all(&f.body).unwrap().as_slice() {
        [Value::String(b) | Value::Bytes(b)] => String::from_utf8(b.to_vec()).unwrap(),
        other => panic!("not one string: {other:?}"),
    }
}

fn json(f: &motan::Frame) -> serde_json::Value {
    serde_json::from_str(&text(f)).unwrap()
}

fn string_map(entries: &[(&str, &str)]) -> Value {
    Value::StringMap(
        entries
            .iter()
            .map(|(k, v)| (k.to_string().into(), v.to_string().into()))
            .collect(),
    )
}

/// A client agent with one refer per `(refer id, service path)`, group `web`, over a direct
/// registry of `server`.
fn client_for(name: &str, server: &Daemon, services: &[(&str, &str)]) -> Daemon {
    let mut motan = format!(
        "motan-registry:\n{}motan-refer:\n",
        direct_registry("servers", &[export_addr(server)])
    );
    for (id, path) in services {
        motan.push_str(&format!(
            "  {id}:\n    path: {path}\n    group: web\n    registry: servers\n    requestTimeout: 3000\n"
        ));
    }
    validated(Daemon::mesh(name, Ports::pick(), &motan))
}

#[test]
fn article_http_url_config_exports_the_http_interface() {
    let _serial = serial();
    let rt = motan::rt();
    let app = http_app(&rt);
    let ports = Ports::pick();
    // The article's entry as it is, but for a loopback HTTP_URL, a direct registry and the
    // test's export port.
    let server = validated(Daemon::mesh(
        "article-server",
        ports,
        &format!(
            r#"motan-registry:
  zk-registry:
    protocol: direct
    address: "127.0.0.1:1"
motan-basicService:
  mesh-server-basicService:
    group: hello-group
motan-service:
  http-mesh-example-helloworld:
    path: com.weibo.motan.HelloWorldService
    export: "motan2:{}"
    provider: http
    registry: "zk-registry"
    HTTP_URL: http://{app}/http_server
    basicRefer: mesh-server-basicService
"#,
            ports.eport
        ),
    ));
    let client = validated(Daemon::mesh(
        "article-client",
        Ports::pick(),
        &format!(
            "motan-registry:\n{}motan-refer:\n  hello:\n    path: com.weibo.motan.HelloWorldService\n    group: hello-group\n    registry: servers\n",
            direct_registry("servers", &[export_addr(&server)])
        ),
    ));
    rt.block_on(async {
        let ch = motan::connect(agent_addr(&client)).await;
        let svc = "com.weibo.motan.HelloWorldService";
        let hello = |meta: &'static [(&'static str, &'static str)], name: &'static str| {
            let ch = &ch;
            async move {
                motan::call(
                    ch,
                    motan::request(svc, "hello", meta, &[string_map(&[("name", name)])]),
                )
                .await
            }
        };
        // GET (motan-go's default): the map argument as the query, attachments as headers.
        let r = hello(&[("trace", "t-1")], "bob").await;
        let e = json(&r);
        assert_eq!(
            (e["method"].as_str(), e["path"].as_str()),
            (Some("GET"), Some("/http_server"))
        );
        let query = e["query"].as_str().unwrap();
        assert!(
            query.starts_with("requestIdFromClient=") && query.ends_with("&name=bob"),
            "{query}"
        );
        let h = &e["headers"];
        assert_eq!(
            h["motan-p"][0], svc,
            "M_* attachments become MOTAN-* headers: {h}"
        );
        assert_eq!(h["motan-m"][0], "hello");
        assert_eq!(h["motan-g"][0], "hello-group");
        assert_eq!(h["trace"][0], "t-1", "other attachments are headers as they are");
        // The response headers come back as attachments, with the status.
        assert_eq!(motan::meta(&r, "X-App"), "demo", "{r:?}");
        assert_eq!(motan::meta(&r, "Content-Type"), "application/json");
        assert_eq!(motan::meta(&r, "upstreamCode"), "200");
        // POST: the argument as a form body.
        let r = hello(&[("HTTP_Method", "POST")], "amy").await;
        let e = json(&r);
        assert_eq!(e["method"], "POST");
        let body = e["body"].as_str().unwrap();
        assert!(body.starts_with("name=amy&requestIdFromClient="), "{body}");
        assert_eq!(
            e["headers"]["content-type"][0],
            "application/x-www-form-urlencoded"
        );
    });
}

#[test]
fn provider_modes_status_codes_and_a_hung_backend() {
    let _serial = serial();
    let rt = motan::rt();
    let app = http_app(&rt);
    let dir = std::env::temp_dir().join(format!("sockmesh-http-unix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("app.sock");
    unix_app(&rt, &sock);
    let ports = Ports::pick();
    let e = ports.eport;
    let service = |id: &str, path: &str, extra: &str| {
        format!(
            "  {id}:\n    path: {path}\n    group: web\n    registry: d\n    export: \"motan2:{e}\"\n    provider: http\n{extra}"
        )
    };
    let motan = [
        "motan-registry:\n  d: {protocol: direct, address: \"127.0.0.1:1\"}\n".to_string(),
        "http-locations:\n  api.loc.test:\n".to_string(),
        "    - {match: /exact, type: exact, upstream: loc}\n".to_string(),
        "    - {match: /v1/, type: start, upstream: loc, rewriteRules: ['start /v1/ ^/v1/(.*) /v2/$1']}\n".to_string(),
        "    - {match: '^/re/[0-9]+$', type: regexp, upstream: loc, rewriteRules: ['regexp ^/re/ ^/re/(.*) /id/$1']}\n".to_string(),
        "motan-service:\n".to_string(),
        service("fmt", "svc.fmt", &format!("    URL_FORMAT: \"http://{app}/fmt/%s\"\n")),
        service("unix", "svc.unix", &format!("    proxyAddress: \"unix://{}\"\n    enableRewrite: false\n", sock.display())),
        service("loc", "svc.loc", &format!("    proxyAddress: \"{app}\"\n    domain: api.loc.test\n")),
        service("codes", "svc.codes", &format!("    proxyAddress: \"{app}\"\n    enableRewrite: false\n")),
        service(
            "codes-ex",
            "svc.codes.ex",
            &format!("    proxyAddress: \"{app}\"\n    enableRewrite: false\n    enableHttpException: true\n"),
        ),
        service(
            "slow",
            "svc.slow",
            &format!("    proxyAddress: \"{app}\"\n    enableRewrite: false\n    requestTimeout: 300\n"),
        ),
    ]
    .concat();
    let server = validated(Daemon::mesh("http-modes-server", ports, &motan));
    let client = client_for(
        "http-modes-client",
        &server,
        &[
            ("fmt", "svc.fmt"),
            ("unix", "svc.unix"),
            ("loc", "svc.loc"),
            ("codes", "svc.codes"),
            ("codes-ex", "svc.codes.ex"),
            ("slow", "svc.slow"),
        ],
    );
    rt.block_on(async {
        let ch = motan::connect(agent_addr(&client)).await;
        let call = |svc: &'static str, m: &'static str, meta: &'static [(&'static str, &'static str)]| {
            let ch = &ch;
            async move { motan::call(ch, motan::request(svc, m, meta, &[string_map(&[("k", "v")])])).await }
        };
        // URL_FORMAT: %s is M_m; GET sends the query, POST the form.
        let e = json(&call("svc.fmt", "hello", &[]).await);
        assert_eq!(
            (e["method"].as_str(), e["path"].as_str()),
            (Some("GET"), Some("/fmt/hello"))
        );
        assert!(e["query"].as_str().unwrap().ends_with("&k=v"), "{e}");
        let e = json(&call("svc.fmt", "hello", &[("HTTP_Method", "POST")]).await);
        assert_eq!(e["method"], "POST");
        assert!(
            e["body"]
                .as_str()
                .unwrap()
                .starts_with("k=v&requestIdFromClient="),
            "{e}"
        );

        // A unix socket proxyAddress.
        let r = call("svc.unix", "/over/unix", &[]).await;
        let e = json(&r);
        assert_eq!(
            (e["path"].as_str(), e["query"].as_str()),
            (Some("/over/unix"), Some("k=v"))
        );
        assert_eq!(motan::meta(&r, "X-App"), "demo");

        // http-locations: exact, start (prefix) with a rewrite, regexp with a rewrite, no match.
        assert_eq!(json(&call("svc.loc", "/exact", &[]).await)["path"], "/exact");
        assert_eq!(
            json(&call("svc.loc", "/v1/users", &[]).await)["path"],
            "/v2/users"
        );
        assert_eq!(json(&call("svc.loc", "/re/42", &[]).await)["path"], "/id/42");
        let r = call("svc.loc", "/nowhere", &[]).await;
        let (code, msg, errtype) = motan::exception(&r).expect("no location: an exception");
        assert_eq!((code, errtype), (404, 2), "{msg}");

        // Status codes: a success with upstreamCode, or (enableHttpException) an exception
        // with the status as errcode, errtype 2.
        for status in [404, 503] {
            let path: &'static str = if status == 404 {
                "/status/404"
            } else {
                "/status/503"
            };
            let r = call("svc.codes", path, &[]).await;
            assert_eq!(text(&r), format!("status {status}"));
            assert_eq!(motan::meta(&r, "upstreamCode"), status.to_string());
            let r = call("svc.codes.ex", path, &[]).await;
            assert_eq!(
                motan::exception(&r),
                Some((status, format!("status {status}"), 2)),
                "{r:?}"
            );
        }
        assert_eq!(
            text(&call("svc.codes.ex", "/status/200", &[]).await),
            "status 200"
        );

        // A hung backend: requestTimeout (300 ms) gives exception 503 errtype 2, and the
        // agent keeps serving meanwhile and after.
        let started = Instant::now();
        let (slow, fast) = tokio::join!(call("svc.slow", "/slow", &[]), async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let t = Instant::now();
            let r = call("svc.codes", "/status/200", &[]).await;
            (r, t.elapsed())
        });
        let took = started.elapsed();
        let (code, msg, errtype) = motan::exception(&slow).expect("timeout: an exception");
        assert_eq!((code, errtype), (503, 2), "{msg}");
        assert!(msg.contains("300 ms"), "{msg}");
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(3),
            "{took:?}"
        );
        assert_eq!(text(&fast.0), "status 200");
        assert!(
            fast.1 < Duration::from_millis(300),
            "a fast call waited for the slow one: {:?}",
            fast.1
        );
        assert_eq!(text(&call("svc.codes", "/status/200", &[]).await), "status 200");
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// curl's answer: (status, body). `args` are curl's (a URL among them).
fn curl(args: &[&str]) -> (u16, String) {
    curl_from(None, args)
}

/// curl run inside `cgroup` when given (the shell joins it, then becomes curl).
fn curl_from(cgroup: Option<&Path>, args: &[&str]) -> (u16, String) {
    let mut cmd = match cgroup {
        Some(cg) => {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(format!("echo $$ > {}/cgroup.procs && exec \"$@\"", cg.display()))
                .args(["sh", "curl"]);
            c
        }
        None => Command::new("curl"),
    };
    let out = cmd
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl (Debian package curl) must be installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        code.trim().parse().unwrap_or_else(|_| {
            panic!(
                "curl {args:?}: no status: {text:?} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        }),
        body.to_string(),
    )
}

/// The application's echo of `GET /api/hello?x=1` that travelled over Motan2: the HTTP
/// provider (transparent mode) added the call's MOTAN-* headers.
fn over_motan2((code, body): (u16, String)) -> serde_json::Value {
    assert_eq!(code, 200, "{body}");
    let e: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (e["path"].as_str(), e["query"].as_str()),
        (Some("/api/hello"), Some("x=1"))
    );
    assert_eq!(
        e["headers"]["motan-p"][0], "localhost.api",
        "not over Motan2: {e}"
    );
    e
}

/// A server agent exporting `localhost.api` (group web) as an HTTP provider in front of `app`.
fn api_server(name: &str, app: SocketAddr) -> Daemon {
    let ports = Ports::pick();
    validated(Daemon::mesh(
        name,
        ports,
        &format!(
            "motan-registry:\n  d: {{protocol: direct, address: \"127.0.0.1:1\"}}\nmotan-service:\n  api:\n    path: localhost.api\n    group: web\n    registry: d\n    export: \"motan2:{}\"\n    provider: http\n    proxyAddress: \"{app}\"\n    domain: localhost\n    enableRewrite: false\n",
            ports.eport
        ),
    ))
}

/// Motan sections of a client agent whose `http-client` serves domain `localhost`: paths
/// under /api/ go to service `localhost.api` at `server`; refer `echo` reaches `provider`.
fn http_client_motan(server: &Daemon, provider: SocketAddr) -> String {
    format!(
        "motan-registry:\n{}{}http-locations:\n  localhost:\n    - {{match: /api/, type: start, upstream: localhost.api}}\nhttp-client:\n  web:\n    domain: localhost\n    group: web\n    registry: servers\n    requestTimeout: 3000\nmotan-refer:\n  echo:\n    path: com.example.Echo\n    group: g1\n    registry: echo\n",
        direct_registry("servers", &[export_addr(server)]),
        direct_registry("echo", &[provider]),
    )
}

#[test]
fn hport_sends_served_paths_over_motan2_and_the_rest_as_plain_http() {
    let _serial = serial();
    let rt = motan::rt();
    let app = http_app(&rt);
    let other = http_app(&rt);
    let provider = common::Provider::start("echo-provider", 0);
    let server = api_server("hport-server", app);
    let hport = common::free_ports(1)[0];
    let client = validated(Daemon::mesh_with_agent(
        "hport-client",
        Ports::pick(),
        &format!(
            "  hport: {hport}\n  httpProxyEnable: true\n  httpProxyTimeout: 1500\n  httpProxyMaxRequestBodySize: 4096\n"
        ),
        &http_client_motan(&server, provider.addr),
    ));
    let proxy = format!("http://127.0.0.1:{hport}");
    let via = |url: &str, extra: &[&str]| {
        let mut args = vec!["-x", proxy.as_str()];
        args.extend_from_slice(extra);
        args.push(url);
        curl(&args)
    };
    let served = format!("http://localhost:{}/api/hello?x=1", app.port());

    // A served path: over Motan2 to the server agent's HTTP provider (transparent mode: the
    // provider adds the MOTAN-* headers of the call).
    let e = over_motan2(via(&served, &[]));
    assert_eq!(e["headers"]["host"][0], format!("localhost:{}", app.port()));
    // A PHP-style form POST.
    let form = format!("http://localhost:{}/api/form", app.port());
    let (code, body) = via(&form, &["-d", "name=a+b&lang=php"]);
    assert_eq!(code, 200, "{body}");
    let e: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (e["method"].as_str(), e["body"].as_str()),
        (Some("POST"), Some("name=a+b&lang=php"))
    );
    assert_eq!(
        e["headers"]["content-type"][0],
        "application/x-www-form-urlencoded"
    );
    assert_eq!(e["headers"]["motan-p"][0], "localhost.api");

    // Not served: plain HTTP, to the same host on another path and to an unknown host.
    let (code, body) = via(&format!("http://localhost:{}/other", app.port()), &[]);
    assert_eq!(code, 200, "{body}");
    let e: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(e["path"], "/other");
    assert!(
        e["headers"]["motan-p"].is_null(),
        "plain HTTP went over Motan2: {e}"
    );
    let (code, body) = via(&format!("http://127.0.0.1:{}/elsewhere", other.port()), &[]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["path"],
        "/elsewhere"
    );

    // /proxy_to_rpc: a Motan2 call through the client role to a Motan2 provider.
    let (code, body) = curl(&[
        "-d",
        "service=com.example.Echo&method=echo&group=g1&arg_type=string&arg=hi",
        &format!("{proxy}/proxy_to_rpc"),
    ]);
    assert_eq!((code, body.as_str()), (200, "hi"));
    let (code, body) = curl(&["-d", "method=echo", &format!("{proxy}/proxy_to_rpc")]);
    assert_eq!(code, 400);
    assert!(body.contains("musn't be empty"), "{body}");

    // Bad requests get an HTTP error with a clear body, never a hang.
    let big = "x".repeat(5000);
    let (code, body) = via(&form, &["-d", &big]);
    assert_eq!(code, 413, "{body}");
    assert!(body.contains("httpProxyMaxRequestBodySize"), "{body}");
    let started = Instant::now();
    let (code, body) = via(&format!("http://localhost:{}/slow", app.port()), &[]);
    assert_eq!(code, 504, "{body}");
    assert!(body.contains("1500 ms"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(4));
    let (code, body) = via(&format!("{proxy}/loop"), &[]);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("is this proxy"), "{body}");
    let (code, _) = via(&format!("http://127.0.0.1:{}/", common::free_ports(1)[0]), &[]);
    assert_eq!(code, 502);
    // ...and the proxy still serves.
    assert_eq!(via(&served, &[]).0, 200);

    // An RPC on the agent port whose M_p is the http-client domain: M_m a served path goes
    // to the service's cluster; another path is plain HTTP to the domain's port 80.
    rt.block_on(async {
        let ch = motan::connect(agent_addr(&client)).await;
        let r = motan::call(&ch, motan::request("localhost", "/api/rpc", &[], &[])).await;
        let e = json(&r);
        assert_eq!(e["path"], "/api/rpc");
        assert_eq!(e["headers"]["motan-p"][0], "localhost.api", "{e}");
        let r = motan::call(&ch, motan::request("localhost", "/not/served", &[], &[])).await;
        let (code, msg, errtype) = motan::exception(&r).expect("nothing listens on localhost:80");
        assert_eq!((code, errtype), (503, 2), "{msg}");
        assert!(msg.contains("localhost:80"), "{msg}");
    });

    // The status lists the http-client and its service cluster.
    let st = client.admin_json("/sockmesh/status").to_string();
    assert!(
        st.contains("http_clients") && st.contains("localhost.api"),
        "{st}"
    );
    drop(server);
}

#[test]
fn intercepted_http_takes_the_same_path_without_proxy_settings() {
    if !privileged("intercepted_http_takes_the_same_path_without_proxy_settings") {
        return;
    }
    let _serial = serial();
    let rt = motan::rt();
    let app = http_app(&rt);
    let provider = common::Provider::start("echo-provider", 0);
    let server = api_server("intercept-http-server", app);
    let client = validated(Daemon::launch(
        "intercept-http-client",
        Ports::pick(),
        &http_client_motan(&server, provider.addr),
        "",
    ));
    let (cg, rel) = test_cgroup("smt-http");
    client.enable(&rel, "ebpf-connect");
    // No proxy setting: the app dials the HTTP application itself.
    over_motan2(curl_from(
        Some(cg.path()),
        &[
            "--ipv4",
            &format!("http://localhost:{}/api/hello?x=1", app.port()),
        ],
    ));
    let (code, body) = curl_from(
        Some(cg.path()),
        &[
            "--ipv4",
            "-d",
            "name=a+b&lang=php",
            &format!("http://localhost:{}/api/form", app.port()),
        ],
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["body"],
        "name=a+b&lang=php"
    );
    // A path no location serves: plain HTTP to the original destination.
    let (code, body) = curl_from(
        Some(cg.path()),
        &["--ipv4", &format!("http://localhost:{}/other", app.port())],
    );
    assert_eq!(code, 200, "{body}");
    let e: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(e["path"], "/other");
    assert!(e["headers"]["motan-p"].is_null(), "{e}");
    let st = client.admin_json("/sockmesh/status");
    assert!(st["transparent_proxy"]["routed"].as_u64().unwrap() >= 3, "{st}");
    let (redirected, _, _) = client.counters(&rel);
    assert!(redirected >= 3, "{redirected}");
}
