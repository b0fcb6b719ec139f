//! Every filter (spec 4.7) proving its behaviour through a real agent: app → client agent (the
//! refer's `filter` list) → Motan2 provider, plus a server agent for the trace hop. Admin routes
//! read and change the filter state at run time. The tests share one lock so that the timing
//! assertions (rate limit, circuit breaker) do not compete with each other for the CPU.
mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::motan::{self, Frame, Value};
use common::{Daemon, Ports, Provider, SVC, agent_addr, client_agent, client_motan, serial};

/// How many requests a provider served besides our own `count` probes (the provider counts
/// every request it receives, the probe included).
struct Served {
    ch: motan::Channel,
    probes: u64,
}

impl Served {
    async fn new(p: &Provider) -> Served {
        Served {
            ch: motan::connect(p.addr).await,
            probes: 0,
        }
    }

    async fn now(&mut self) -> u64 {
        let resp = motan::call(&self.ch, motan::request(SVC, "count", &[], &[])).await;
        self.probes += 1;
        let n: u64 = body_str(&resp).parse().expect("count answers a number");
        n - self.probes
    }
}

/// The body of a response holding one simple-encoded string.
fn body_str(f: &Frame) -> String {
    let values = motan::simple::decode_all(&f.body).unwrap_or_else(|e| panic!("body of {f:?}: {e}"));
    match values.as_slice() {
        [v] => v
            .as_str()
            .unwrap_or_else(|| panic!("not a string: {v:?}"))
            .to_string(),
        other => panic!("expected one value, got {other:?}"),
    }
}

/// An echo request for SVC with `meta`.
fn echo(method: &str, meta: &[(&str, &str)], arg: &str) -> Frame {
    motan::request(SVC, method, meta, &[Value::from(arg)])
}

/// GET an admin path on the TCP admin port; (status, body).
fn admin(d: &Daemon, path: &str) -> (u16, String) {
    sockmesh_testkit::http::get(d.admin, path).unwrap_or_else(|e| panic!("GET {path}: {e:#}"))
}

/// The fields of the daemon's log events with message `msg` whose first field is `first`.
/// The daemon logs text, `<time> INFO <msg> k=v k="debug-quoted" ...` (no target shown), so an
/// event is recognised by its message and first field.
fn events(log: &str, msg: &str, first: &str) -> Vec<HashMap<String, String>> {
    let marker = format!(" {msg} {first}=");
    log.lines()
        .filter_map(|l| l.find(&marker).map(|i| parse_fields(&l[i + msg.len() + 2..])))
        .collect()
}

fn event_count(d: &Daemon, msg: &str, first: &str) -> usize {
    events(&flushed_log(d), msg, first).len()
}

/// The daemon's log once what it buffered has been written (`Daemon::log` waits for that).
fn flushed_log(d: &Daemon) -> String {
    d.log()
}

/// `k=v k="quoted \" value" k=` into a map (quoted values unescaped).
fn parse_fields(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            return out;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| *c != ' ') {
                value.push(c);
            }
        }
        out.insert(key, value);
    }
}

fn field<'a>(f: &'a HashMap<String, String>, k: &str) -> &'a str {
    f.get(k).unwrap_or_else(|| panic!("no field {k} in {f:?}"))
}

#[test]
fn access_log_writes_one_line_per_request_until_switched_off() {
    let _serial = serial();
    let provider = Provider::start("p1", 0);
    let mut agent = client_agent("access", &[provider.addr], "    filter: accessLog\n");
    let rt = motan::rt();
    // Request id (M_rid, logged as the request id) → (meta, the app's round trip).
    let plan: Vec<(i64, Vec<(&str, &str)>)> = vec![
        (1001, vec![]),
        (1002, vec![("fail", "biz")]),
        (1003, vec![("delay-ms", "60")]),
        (1004, vec![]),
        (1005, vec![("fail", "biz")]),
        (1006, vec![]),
    ];
    let round_trips: HashMap<i64, Duration> = rt.block_on(async {
        let ch = motan::connect(agent_addr(&agent)).await;
        let mut out = HashMap::new();
        for (rid, meta) in &plan {
            let rid_text = rid.to_string();
            let mut m = meta.clone();
            m.push(("M_rid", &rid_text));
            let start = Instant::now();
            let resp = motan::call(&ch, echo("echo", &m, "hi")).await;
            out.insert(*rid, start.elapsed());
            let failed = meta.contains(&("fail", "biz"));
            assert_eq!(motan::exception(&resp).is_some(), failed, "{resp:?}");
        }
        out
    });
    // Lines are queued and written by the agent's access-log thread in batches.
    let lines = events(&flushed_log(&agent), "access", "role");
    assert_eq!(lines.len(), plan.len(), "{lines:?}");
    for (rid, meta) in &plan {
        let l = lines
            .iter()
            .find(|l| field(l, "request_id") == rid.to_string())
            .unwrap_or_else(|| panic!("no access line for request {rid}: {lines:?}"));
        let biz = meta.contains(&("fail", "biz"));
        assert_eq!(field(l, "role"), "client-agent");
        assert_eq!(field(l, "conf_id"), "echo");
        assert_eq!(field(l, "service"), SVC);
        assert_eq!(field(l, "method"), "echo");
        assert_eq!(field(l, "code"), if biz { "503" } else { "200" }, "{l:?}");
        assert_eq!(field(l, "success"), if biz { "false" } else { "true" }, "{l:?}");
        assert_eq!(field(l, "peer").split(':').next(), Some("127.0.0.1"), "{l:?}");
        if biz {
            let e: serde_json::Value = serde_json::from_str(field(l, "exception")).unwrap();
            assert_eq!((&e["errcode"], &e["errtype"]), (&503.into(), &2.into()), "{l:?}");
            assert_eq!(e["errmsg"], "biz failure at p1");
        } else {
            assert_eq!(field(l, "exception"), "");
            assert_eq!(field(l, "res_size"), field(l, "req_size"), "echoed body: {l:?}");
        }
        let latency = Duration::from_micros(field(l, "latency_us").parse().expect("latency_us is a number"));
        assert!(
            latency > Duration::ZERO && latency <= round_trips[rid],
            "request {rid}: agent latency {latency:?}, app round trip {:?}",
            round_trips[rid]
        );
        if meta.contains(&("delay-ms", "60")) {
            assert!(
                latency >= Duration::from_millis(60),
                "delayed request: {latency:?}"
            );
        }
    }

    // Switched off: calls still work, no line is written; on again: lines resume.
    let (code, body) = agent.control_post("/logConfig/set?access=false");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["body"], "set accessLog status:false");
    rt.block_on(async {
        let ch = motan::connect(agent_addr(&agent)).await;
        for _ in 0..3 {
            let resp = motan::call(&ch, echo("echo", &[], "quiet")).await;
            assert_eq!(body_str(&resp), "quiet");
        }
    });
    assert_eq!(event_count(&agent, "access", "role"), plan.len());
    assert_eq!(agent.control_post("/logConfig/set?access=true").0, 200);
    rt.block_on(async {
        let ch = motan::connect(agent_addr(&agent)).await;
        motan::call(&ch, echo("echo", &[("M_rid", "2001")], "loud")).await;
    });
    let lines = events(&flushed_log(&agent), "access", "role");
    assert_eq!(lines.len(), plan.len() + 1);
    assert_eq!(field(lines.last().unwrap(), "request_id"), "2001");

    // Lines still queued when the agent stops are written before it exits.
    rt.block_on(async {
        let ch = motan::connect(agent_addr(&agent)).await;
        for rid in 3000..3100 {
            motan::call(&ch, echo("echo", &[("M_rid", &rid.to_string())], "last")).await;
        }
    });
    agent.sigterm();
    assert!(agent.wait_exit(), "the agent stops cleanly");
    let lines = events(&agent.log(), "access", "role");
    let last: Vec<&str> = lines
        .iter()
        .map(|l| field(l, "request_id"))
        .filter(|r| r.starts_with('3'))
        .collect();
    let want: Vec<String> = (3000..3100).map(|r| r.to_string()).collect();
    assert_eq!(last, want, "every answered request has its line, in order");
}

/// The value of the sample `name` whose labels include `labels`.
fn sample(samples: &[prometheus_parse::Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{name}: unexpected {other:?}"),
        })
}

#[test]
fn metrics_counts_requests_and_errors_by_type() {
    let _serial = serial();
    let provider = Provider::start("p1", 0);
    let agent = client_agent("metrics", &[provider.addr], "    filter: metrics\n");
    let (ok, biz, service) = (7, 3, 2);
    motan::rt().block_on(async {
        let ch = motan::connect(agent_addr(&agent)).await;
        for (n, meta) in [(ok, None), (biz, Some("biz")), (service, Some("service"))] {
            let meta: Vec<(&str, &str)> = meta.map(|f| ("fail", f)).into_iter().collect();
            for _ in 0..n {
                let resp = motan::call(&ch, echo("echo", &meta, "m")).await;
                assert_eq!(motan::exception(&resp).is_some(), !meta.is_empty());
            }
        }
        // Another method has its own series.
        motan::call(&ch, echo("other", &[], "m")).await;
    });
    let (code, text) = admin(&agent, "/metrics");
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("# TYPE sockmesh_requests_total counter"), "{text}");
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let samples = prometheus_parse::Scrape::parse(lines)
        .unwrap_or_else(|e| panic!("/metrics is not Prometheus text ({e}):\n{text}"))
        .samples;
    let labels = |method| {
        vec![
            ("role", "client-agent"),
            ("group", "g1"),
            ("service", SVC),
            ("method", method),
        ]
    };
    let errors = |t| {
        let mut l = labels("echo");
        l.push(("type", t));
        sample(&samples, "sockmesh_request_errors_total", &l)
    };
    assert_eq!(
        sample(&samples, "sockmesh_requests_total", &labels("echo")),
        Some(f64::from(ok + biz + service)),
        "{text}"
    );
    assert_eq!(
        (errors("biz"), errors("other")),
        (Some(f64::from(biz)), Some(f64::from(service))),
        "{text}"
    );
    assert_eq!(
        sample(
            &samples,
            "sockmesh_request_duration_seconds_count",
            &labels("echo")
        ),
        Some(f64::from(ok + biz + service)),
        "{text}"
    );
    assert_eq!(
        sample(&samples, "sockmesh_requests_total", &labels("other")),
        Some(1.0)
    );
}

#[test]
fn circuit_breaker_opens_probes_half_open_and_closes() {
    let _serial = serial();
    let provider = Provider::start("p1", 0);
    let sleep_window = Duration::from_millis(700);
    let extra = format!(
        "    filter: circuitBreaker\n    circuitBreaker.requestThreshold: 4\n    circuitBreaker.errorPercent: 50\n    circuitBreaker.sleepWindow: {}\n    errorCountThreshold: 0\n",
        sleep_window.as_millis()
    );
    let agent = client_agent("breaker", &[provider.addr], &extra);
    let circuit = || {
        let list = agent.admin_json("/circuitBreaker/list");
        let all = list.as_object().expect("a JSON object");
        assert_eq!(all.len(), 1, "{list}");
        let (name, c) = all.iter().next().unwrap();
        assert!(name.contains(SVC), "{name}");
        c.clone()
    };
    let is_open = |resp: &Frame| {
        motan::exception(resp)
            .is_some_and(|(code, msg, t)| (code, msg.as_str(), t) == (400, "hystrix: circuit open", 1))
    };
    let rt = motan::rt();
    let ch = Arc::new(rt.block_on(motan::connect(agent_addr(&agent))));
    let mut served = rt.block_on(Served::new(&provider));
    let fail = [("fail", "service")];
    let opened_at = rt.block_on(async {
        // Four failures reach the provider (relayed as they are) and fill the window.
        for _ in 0..4 {
            let resp = motan::call(&ch, echo("echo", &fail, "x")).await;
            let (code, msg, _) = motan::exception(&resp).expect("the provider's exception");
            assert_eq!((code, msg.as_str()), (503, "service failure at p1"));
        }
        assert_eq!(served.now().await, 4);
        // The next request opens the circuit; open, nothing reaches the provider.
        for _ in 0..6 {
            let resp = motan::call(&ch, echo("echo", &[], "x")).await;
            assert!(is_open(&resp), "{resp:?}");
        }
        let opened_at = Instant::now();
        assert_eq!(served.now().await, 4, "an open circuit calls nobody");
        opened_at
    });
    let c = circuit();
    assert_eq!(c["open"], true, "{c}");
    assert_eq!((&c["requests"], &c["errors"]), (&10.into(), &10.into()), "{c}");
    assert_eq!(c["settings"]["request_threshold"], 4, "{c}");
    assert_eq!(
        c["settings"]["sleep_window"],
        sleep_window.as_millis() as u64,
        "{c}"
    );

    rt.block_on(async {
        // After the sleep window one probe goes through; it fails, so the circuit stays open.
        tokio::time::sleep_until((opened_at + sleep_window + Duration::from_millis(200)).into()).await;
        let probe_at = Instant::now();
        let resp = motan::call(&ch, echo("echo", &fail, "probe")).await;
        assert_eq!(motan::exception(&resp).map(|e| e.0), Some(503), "{resp:?}");
        assert!(is_open(&motan::call(&ch, echo("echo", &[], "x")).await));
        assert_eq!(served.now().await, 5, "exactly the failed probe went through");

        // Next window: a slow successful probe; while it runs (half-open) others are refused.
        tokio::time::sleep_until((probe_at + sleep_window + Duration::from_millis(200)).into()).await;
        let probe = {
            let ch = ch.clone();
            tokio::spawn(async move { motan::call(&ch, echo("echo", &[("delay-ms", "400")], "probe")).await })
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while served.now().await < 6 {
            assert!(Instant::now() < deadline, "the probe never reached the provider");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(is_open(&motan::call(&ch, echo("echo", &[], "x")).await));
        let resp = probe.await.unwrap();
        assert_eq!(body_str(&resp), "probe", "{resp:?}");
        assert_eq!(served.now().await, 6);
    });
    let c = circuit();
    assert_eq!(c["open"], false, "the successful probe closes it: {c}");
    assert_eq!((&c["requests"], &c["errors"]), (&1.into(), &0.into()), "{c}");
    // Closed: requests reach the provider again.
    rt.block_on(async {
        for i in 0..5 {
            let resp = motan::call(&ch, echo("echo", &[], &format!("again {i}"))).await;
            assert_eq!(body_str(&resp), format!("again {i}"), "{resp:?}");
        }
        assert_eq!(served.now().await, 11);
    });
}

/// `n` concurrent requests sent `every` apart: (succeeded, shed by the rate limiter, time taken
/// to send them all).
async fn burst(
    ch: &Arc<motan::Channel>,
    n: usize,
    every: Duration,
    shed_msg: &str,
) -> (usize, usize, Duration) {
    let start = Instant::now();
    let mut tick = tokio::time::interval(every);
    let mut tasks = Vec::new();
    for i in 0..n {
        tick.tick().await;
        let ch = ch.clone();
        tasks.push(tokio::spawn(async move {
            motan::call(&ch, echo("echo", &[], &i.to_string())).await
        }));
    }
    let sent_over = start.elapsed();
    let (mut ok, mut shed) = (0, 0);
    for t in tasks {
        let resp = t.await.unwrap();
        match motan::exception(&resp) {
            None => ok += 1,
            Some((400, msg, 1)) if msg == shed_msg => shed += 1,
            Some(e) => panic!("unexpected answer {e:?}"),
        }
    }
    (ok, shed, sent_over)
}

#[test]
fn rate_limit_sheds_above_the_rate_and_changes_at_run_time() {
    let _serial = serial();
    let provider = Provider::start("p1", 0);
    let (rate, capacity, timeout_ms) = (20.0, 5.0, 200.0);
    // requestTimeout bounds the wait for a token (and the call).
    let motan = client_motan(
        &[provider.addr],
        &format!("    filter: rateLimit\n    rateLimit: {rate}\n    capacity: {capacity}\n"),
    )
    .replace("requestTimeout: 3000", &format!("requestTimeout: {timeout_ms}"));
    let agent = Daemon::mesh("ratelimit", Ports::pick(), &motan);
    let list = agent.admin_json("/ratelimit/list");
    assert_eq!(
        list[SVC]["service"],
        serde_json::json!({"rate": rate, "capacity": 5}),
        "{list}"
    );
    let shed_msg = "[rateLimit] wait time exceed timeout(200ms)";
    let rt = motan::rt();
    let ch = Arc::new(rt.block_on(motan::connect(agent_addr(&agent))));
    let mut served = rt.block_on(Served::new(&provider));

    // 200 requests over about a second, ten times the rate: the bucket's capacity passes at
    // once, then the rate, plus what may wait up to the timeout for a token (and a little for
    // requests reaching the agent later than they were sent).
    let (ok, shed, over) = rt.block_on(burst(&ch, 200, Duration::from_millis(5), shed_msg));
    let secs = over.as_secs_f64();
    let expected_max = capacity + rate * (secs + timeout_ms / 1000.0 + 0.25) + 2.0;
    let expected_min = (capacity + rate * secs) * 0.8;
    assert_eq!(ok + shed, 200);
    assert!(
        (expected_min..=expected_max).contains(&(ok as f64)),
        "{ok} of 200 allowed over {over:?}; expected {expected_min:.0}..{expected_max:.0}"
    );
    assert_eq!(
        rt.block_on(served.now()),
        ok as u64,
        "shed requests never reach the provider"
    );

    // Lowered at run time (the capacity becomes the default for the rate, but the bucket keeps
    // at most the old capacity's tokens): over half a second at 2/s only those and about one
    // more pass, where the old rate would let at least ten through.
    let (code, body) = agent.control_post(&format!("/ratelimit/set?service={SVC}&rate=2"));
    assert_eq!(code, 200, "{body}");
    let list = agent.admin_json("/ratelimit/list");
    assert_eq!(
        list[SVC]["service"],
        serde_json::json!({"rate": 2.0, "capacity": 1000}),
        "{list}"
    );
    let (ok2, shed2, over2) = rt.block_on(burst(&ch, 100, Duration::from_millis(5), shed_msg));
    let lowered_max = capacity + 2.0 * (over2.as_secs_f64() + timeout_ms / 1000.0) + 1.0;
    assert_eq!(ok2 + shed2, 100);
    assert!(
        ok2 as f64 <= lowered_max,
        "rate 2: {ok2} of 100 allowed over {over2:?}, expected at most {lowered_max:.0}"
    );

    // Raised at run time: a burst of the first pace passes whole.
    let (code, body) = agent.control_post(&format!("/ratelimit/set?service={SVC}&rate=400"));
    assert_eq!(code, 200, "{body}");
    let list = agent.admin_json("/ratelimit/list");
    assert_eq!(list[SVC]["service"]["rate"], 400.0, "{list}");
    let (ok3, shed3, _) = rt.block_on(burst(&ch, 100, Duration::from_millis(5), shed_msg));
    assert_eq!((ok3, shed3), (100, 0));
    assert_eq!(rt.block_on(served.now()), (ok + ok2 + ok3) as u64);
}

#[test]
fn degrade_switch_answers_the_configured_value_without_the_provider() {
    let _serial = serial();
    let provider = Provider::start("p1", 0);
    let agent = client_agent(
        "degrade",
        &[provider.addr],
        "    filter: degrade\n    degrade.echo.value: \"degraded answer\"\n",
    );
    let rt = motan::rt();
    let ch = rt.block_on(motan::connect(agent_addr(&agent)));
    let mut served = rt.block_on(Served::new(&provider));
    let call = |method: &str, arg: &str| rt.block_on(motan::call(&ch, echo(method, &[], arg)));

    let resp = call("echo", "real");
    assert_eq!(
        (body_str(&resp), motan::meta(&resp, "provider")),
        ("real".into(), "p1")
    );

    let (code, body) = agent.control_post("/switcher/set?name=echo.echo.degrade&value=true");
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        admin(&agent, "/switcher/get?name=echo.echo.degrade"),
        (200, "Switcher value for echo.echo.degrade is true!".into())
    );
    for i in 0..3 {
        let resp = call("echo", &format!("degraded {i}"));
        assert_eq!(motan::exception(&resp), None, "{resp:?}");
        assert_eq!(body_str(&resp), "degraded answer");
        assert_eq!(motan::meta(&resp, "provider"), "", "answered by the agent");
    }
    // Only that method is degraded.
    let resp = call("hello", "other method");
    assert_eq!(
        (body_str(&resp), motan::meta(&resp, "provider")),
        ("other method".into(), "p1")
    );
    assert_eq!(
        rt.block_on(served.now()),
        2,
        "degraded calls never reach the provider"
    );

    assert_eq!(
        agent
            .control_post("/switcher/set?name=echo.echo.degrade&value=false")
            .0,
        200
    );
    let resp = call("echo", "restored");
    assert_eq!(
        (body_str(&resp), motan::meta(&resp, "provider")),
        ("restored".into(), "p1")
    );
    assert_eq!(rt.block_on(served.now()), 3);
    let switches = agent.admin_json("/switcher/list");
    assert_eq!(switches["echo.echo.degrade"], false, "{switches}");
}

#[test]
fn mock_answers_a_method_without_the_provider() {
    let _serial = serial();
    let provider = Provider::start("p1", 0);
    let agent = client_agent(
        "mock",
        &[provider.addr],
        "    filter: mock\n    mock.greet: \"hi from mock\"\n",
    );
    let rt = motan::rt();
    rt.block_on(async {
        let ch = motan::connect(agent_addr(&agent)).await;
        let mut served = Served::new(&provider).await;
        for _ in 0..3 {
            let resp = motan::call(&ch, echo("greet", &[], "ignored")).await;
            assert_eq!(motan::exception(&resp), None, "{resp:?}");
            assert_eq!(body_str(&resp), "hi from mock");
            assert_eq!(motan::meta(&resp, "provider"), "");
        }
        assert_eq!(served.now().await, 0, "mocked calls never reach the provider");
        let resp = motan::call(&ch, echo("echo", &[], "real")).await;
        assert_eq!(
            (body_str(&resp), motan::meta(&resp, "provider")),
            ("real".into(), "p1")
        );
        assert_eq!(served.now().await, 1);
    });
}

/// A Motan2 provider in this process: echoes the body and returns the `traceparent` it received
/// in meta `seen-traceparent` (the test peer does not report it).
async fn traceparent_provider() -> SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut conn =
                    tokio_util::codec::Framed::new(s, sockmesh::protocol::motan2::Motan2Codec::default());
                while let Some(Ok(req)) = conn.next().await {
                    let resp = if req.header.is_heartbeat() {
                        Frame::heartbeat_response(req.header.request_id)
                    } else {
                        let mut r = Frame::response_to(&req, req.body.clone());
                        if let Some(tp) = req.meta.get("traceparent") {
                            r.meta
                                .insert("seen-traceparent", Bytes::copy_from_slice(tp.as_bytes()));
                        }
                        r
                    };
                    if conn.send(resp).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn trace_context_crosses_both_agents_and_each_logs_a_span() {
    let _serial = serial();
    let rt = motan::rt();
    let provider = rt.block_on(traceparent_provider());
    let ports = Ports::pick();
    let server = Daemon::mesh(
        "trace-server",
        ports,
        &format!(
            "motan-service:\n  echo:\n    path: {SVC}\n    group: g1\n    export: \"motan2:{}\"\n    provider: motan2\n    proxy: \"motan2:{}\"\n    filter: trace\n",
            ports.eport,
            provider.port()
        ),
    );
    let client = client_agent(
        "trace-client",
        &[common::export_addr(&server)],
        "    filter: trace\n",
    );
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let app_parent = "00f067aa0ba902b7";
    let seen = rt.block_on(async {
        let ch = motan::connect(agent_addr(&client)).await;
        let tp = format!("00-{trace_id}-{app_parent}-01");
        let meta = [("traceparent", tp.as_str()), ("M_rid", "4242")];
        let resp = motan::call(&ch, echo("echo", &meta, "traced")).await;
        assert_eq!(body_str(&resp), "traced", "{resp:?}");
        motan::meta(&resp, "seen-traceparent").to_string()
    });
    let span = |d: &Daemon| {
        let spans = events(&flushed_log(d), "span", "trace_id");
        assert_eq!(spans.len(), 1, "{spans:?}");
        spans.into_iter().next().unwrap()
    };
    let (c, s) = (span(&client), span(&server));
    // One trace: the app's span → client agent span → server agent span → provider.
    for (f, role) in [(&c, "client-agent"), (&s, "server-agent")] {
        assert_eq!(field(f, "trace_id"), trace_id, "{f:?}");
        assert_eq!(field(f, "role"), role, "{f:?}");
        assert_eq!(
            (field(f, "service"), field(f, "method"), field(f, "group")),
            (SVC, "echo", "g1")
        );
        assert_eq!(field(f, "request_id"), "4242", "the caller's id in every hop");
        assert_eq!(field(f, "error"), "false");
        assert!(field(f, "duration_us").parse::<u64>().is_ok(), "{f:?}");
    }
    assert_eq!(field(&c, "parent_id"), app_parent);
    assert_eq!(field(&s, "parent_id"), field(&c, "span_id"));
    assert_ne!(field(&s, "span_id"), field(&c, "span_id"));
    assert_eq!(seen, format!("00-{trace_id}-{}-01", field(&s, "span_id")));
}

/// Switch a provider's `set-fail` mode (`service`, `biz`, `off`) on a direct connection.
async fn set_fail(p: &Provider, mode: &str) {
    let ch = motan::connect(p.addr).await;
    motan::call(&ch, echo("set-fail", &[], mode)).await;
}

#[test]
fn circuit_breaker_is_per_endpoint_and_the_others_serve_every_request() {
    let _serial = serial();
    let providers: Vec<Provider> = ["p1", "p2", "p3"].iter().map(|n| Provider::start(n, 0)).collect();
    let addrs: Vec<SocketAddr> = providers.iter().map(|p| p.addr).collect();
    let sleep_window = Duration::from_millis(1000);
    // errorCountThreshold 0: the endpoint's own health check stays out of the way, so only
    // its circuit keeps traffic off the failing node. One retry: a request that meets the
    // open circuit is answered by another endpoint.
    let extra = format!(
        "    filter: circuitBreaker\n    circuitBreaker.requestThreshold: 4\n    circuitBreaker.sleepWindow: {}\n    errorCountThreshold: 0\n    retries: 1\n    loadbalance: roundrobin\n",
        sleep_window.as_millis()
    );
    let agent = client_agent("ep-breaker", &addrs, &extra);
    let circuits = || -> HashMap<String, serde_json::Value> {
        let list = agent.admin_json("/circuitBreaker/list");
        let all = list.as_object().expect("a JSON object");
        addrs
            .iter()
            .map(|a| {
                let (_, c) = all
                    .iter()
                    .find(|(name, _)| name.contains(&a.to_string()))
                    .unwrap_or_else(|| panic!("no circuit for {a}: {list}"));
                (a.to_string(), c.clone())
            })
            .collect()
    };
    let rt = motan::rt();
    let ch = Arc::new(rt.block_on(motan::connect(agent_addr(&agent))));
    let mut served = Vec::new();
    for p in &providers {
        served.push(rt.block_on(Served::new(p)));
    }
    let bad = providers[2].addr.to_string();
    // Requests answered by the agent: (successes, errors, answered by p3).
    let send = |n: usize| {
        let ch = ch.clone();
        rt.block_on(async move {
            let (mut ok, mut errors, mut by_bad) = (0, 0, 0);
            for i in 0..n {
                let resp = motan::call(&ch, echo("echo", &[], &format!("r{i}"))).await;
                match motan::exception(&resp) {
                    None => {
                        assert_eq!(body_str(&resp), format!("r{i}"));
                        ok += 1;
                        by_bad += usize::from(motan::meta(&resp, "provider") == "p3");
                    }
                    Some(_) => errors += 1,
                }
            }
            (ok, errors, by_bad)
        })
    };
    rt.block_on(set_fail(&providers[2], "service"));
    // p3 fails every call; its failures are retried on p1/p2. Once p3's window holds 4
    // failures its circuit opens.
    let (ok, errors, _) = send(30);
    assert_eq!((ok, errors), (30, 0), "failover hides p3's failures");
    let c = circuits();
    assert_eq!(c[&bad]["open"], true, "{c:?}");
    for a in &addrs[..2] {
        assert_eq!(c[&a.to_string()]["open"], false, "only p3's circuit opens: {c:?}");
        assert_eq!(c[&a.to_string()]["errors"], 0, "{c:?}");
    }
    let p3_before = rt.block_on(served[2].now());
    let (p1_before, p2_before) = (rt.block_on(served[0].now()), rt.block_on(served[1].now()));
    let opened_at = Instant::now();
    // Open: p3 is not called at all; p1 and p2 serve every request.
    let (ok, errors, by_bad) = send(60);
    assert!(
        opened_at.elapsed() < sleep_window,
        "the batch outlasted the sleep window"
    );
    assert_eq!((ok, errors, by_bad), (60, 0, 0));
    assert_eq!(
        rt.block_on(served[2].now()),
        p3_before,
        "an open circuit keeps p3 out"
    );
    let (p1, p2) = (
        rt.block_on(served[0].now()) - p1_before,
        rt.block_on(served[1].now()) - p2_before,
    );
    assert_eq!(p1 + p2, 60, "p1 {p1} + p2 {p2}");
    assert!(
        p1 >= 20 && p2 >= 20,
        "both healthy endpoints share the load: {p1}/{p2}"
    );

    // After the sleep window one probe reaches p3; it still fails, so the circuit stays open.
    std::thread::sleep(sleep_window + Duration::from_millis(100));
    let (ok, errors, by_bad) = send(20);
    assert_eq!((ok, errors, by_bad), (20, 0, 0));
    assert_eq!(rt.block_on(served[2].now()), p3_before + 1, "exactly one probe");
    assert_eq!(circuits()[&bad]["open"], true);

    // p3 recovers: the next probe succeeds and closes the circuit; p3 takes its share again.
    rt.block_on(set_fail(&providers[2], "off"));
    std::thread::sleep(sleep_window + Duration::from_millis(100));
    let (ok, errors, by_bad) = send(30);
    assert_eq!((ok, errors), (30, 0));
    assert_eq!(circuits()[&bad]["open"], false, "the successful probe closed it");
    assert!(by_bad >= 8, "p3 serves again after closing: {by_bad} of 30");
}

#[test]
fn failfast_takes_an_endpoint_out_after_ten_exceptions_business_ones_too() {
    let _serial = serial();
    let providers: Vec<Provider> = ["p1", "p2"].iter().map(|n| Provider::start(n, 0)).collect();
    let addrs: Vec<SocketAddr> = providers.iter().map(|p| p.addr).collect();
    let agent = client_agent(
        "failfast",
        &addrs,
        "    filter: failfast\n    errorCountThreshold: 0\n    loadbalance: roundrobin\n",
    );
    let rt = motan::rt();
    rt.block_on(async {
        let ch = motan::connect(agent_addr(&agent)).await;
        let mut bad = Served::new(&providers[1]).await;
        set_fail(&providers[1], "biz").await;
        // Business exceptions are not retried: the caller sees p2's ten, then p2 is out.
        let mut biz = 0;
        for i in 0..40 {
            let resp = motan::call(&ch, echo("echo", &[], &i.to_string())).await;
            if let Some((code, msg, t)) = motan::exception(&resp) {
                assert_eq!((code, msg.as_str(), t), (503, "biz failure at p2", 2));
                biz += 1;
            }
        }
        assert_eq!(biz, 10, "ten business errors make p2 unavailable");
        assert_eq!(bad.now().await, 10, "p2 is not picked any more");
        for i in 0..20 {
            let resp = motan::call(&ch, echo("echo", &[], &i.to_string())).await;
            assert!(motan::exception(&resp).is_none(), "{resp:?}");
            assert_eq!(motan::meta(&resp, "provider"), "p1");
        }
        assert_eq!(bad.now().await, 10);
    });
}
