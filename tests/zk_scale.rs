//! Discovery at fleet scale (issue #21), run by `cargo xtask scale` (ignored otherwise): a real
//! ZooKeeper, `S x P` providers created as persistent nodes in motan's layout (not listening),
//! one agent referring every service. Reports time to converge, RSS at convergence and 40 s
//! after, CPU 30–40 s after, single add/delete visibility (p99 over 20 changes) and a 10% bulk change, per size,
//! into `$SOCKMESH_SCALE_OUT/{report.md,results.json}`.
mod common;
#[path = "common/zk.rs"]
mod zk_server;

use std::time::{Duration, Instant};

use common::{Daemon, Ports, Provider, SVC, agent_addr, motan};
use serde_json::{Value, json};
use sockmesh::url::Url;
use zk_server::{ZkServer, raw_client, zookeeper};
use zookeeper_client as zk;

/// ZooKeeper writes in flight while creating or deleting providers.
const WRITES_IN_FLIGHT: usize = 256;

fn service(i: usize) -> String {
    format!("com.scale.Service{i}")
}

fn provider(group: &str, i: usize, j: usize) -> Url {
    // Addresses nothing listens on: 127.1.x.y, one port per service.
    let host = format!("127.1.{}.{}", j / 250, j % 250 + 1);
    Url::new("motan2", &host, 20000 + i as u16, &service(i), group).with_param("nodeType", "service")
}

fn node(url: &Url) -> String {
    format!("/motan/{}/{}/server/{}", url.group, url.path, url.address())
}

/// Create (or delete) nodes with up to `WRITES_IN_FLIGHT` requests outstanding.
async fn write_all(c: &zk::Client, urls: Vec<Url>, create: bool) {
    let mut tasks = tokio::task::JoinSet::new();
    for url in urls {
        while tasks.len() >= WRITES_IN_FLIGHT {
            tasks.join_next().await.unwrap().unwrap();
        }
        let c = c.clone();
        tasks.spawn(async move {
            let path = node(&url);
            let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
            if !create {
                c.delete(&path, None).await.unwrap();
                return;
            }
            let data = url.to_node_string();
            match c.create(&path, data.as_bytes(), &persistent).await {
                Ok(_) => {}
                Err(zk::Error::NoNode) => {
                    let parent = &path[..path.rfind('/').unwrap()];
                    match c.mkdir(parent, &persistent).await {
                        Ok(()) | Err(zk::Error::NodeExists) => {}
                        Err(e) => panic!("mkdir {parent}: {e}"),
                    }
                    c.create(&path, data.as_bytes(), &persistent).await.unwrap();
                }
                Err(e) => panic!("create {path}: {e}"),
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
}

/// Endpoints per cluster (by service index) as /registry/list reports them.
fn counts(d: &Daemon, services: usize) -> Vec<usize> {
    let st = d.admin_json("/registry/list");
    let mut out = vec![0; services];
    for s in st["subscriptions"].as_array().unwrap() {
        let path = s["service"].as_str().unwrap();
        if let Some(i) = path
            .strip_prefix("com.scale.Service")
            .and_then(|n| n.parse::<usize>().ok())
        {
            out[i] = s["endpoints"].as_u64().unwrap() as usize;
        }
    }
    out
}

fn wait_until(timeout: Duration, mut ok: impl FnMut() -> bool) -> Option<Duration> {
    let t0 = Instant::now();
    loop {
        if ok() {
            return Some(t0.elapsed());
        }
        if t0.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn rss_mb(pid: u32) -> f64 {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = st
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kb / 1024.0
}

/// utime + stime of `pid`, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &st[st.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

fn ms(d: Option<Duration>) -> Value {
    d.map_or(Value::Null, |d| {
        json!((d.as_secs_f64() * 1000.0 * 10.0).round() / 10.0)
    })
}

/// Open-loop load at `rate` req/s for `secs` to the healthy service; `during` runs on this
/// thread meanwhile (e.g. a ZooKeeper restart). Latencies in ms of the answered calls, and
/// the count of failed ones.
fn load(d: &Daemon, rate: u64, secs: u64, during: impl FnOnce()) -> (Vec<f64>, usize) {
    let rt = motan::rt();
    let addr = agent_addr(d);
    let handle = std::thread::spawn(move || {
        rt.block_on(async move {
            let ch = std::sync::Arc::new(motan::connect(addr).await);
            let mut tasks = tokio::task::JoinSet::new();
            let mut lat = Vec::new();
            let mut errors = 0;
            let mut gather = |r: Result<Result<f64, ()>, tokio::task::JoinError>| match r.unwrap() {
                Ok(ms) => lat.push(ms),
                Err(()) => errors += 1,
            };
            let every = Duration::from_micros(1_000_000 / rate);
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for i in 0..rate * secs {
                tick.tick().await;
                let ch = ch.clone();
                tasks.spawn(async move {
                    let t = Instant::now();
                    let req = motan::request(SVC, "echo", &[], &[motan::Value::from(i as i64)]);
                    match ch.call(req, Duration::from_secs(2)).await {
                        Ok(r) if motan::exception(&r).is_none() => Ok(t.elapsed().as_secs_f64() * 1000.0),
                        _ => Err(()),
                    }
                });
                while let Some(r) = tasks.try_join_next() {
                    gather(r);
                }
            }
            while let Some(r) = tasks.join_next().await {
                gather(r);
            }
            (lat, errors)
        })
    });
    during();
    handle.join().unwrap()
}

fn percentile(v: &mut [f64], p: f64) -> Value {
    if v.is_empty() {
        return Value::Null;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    json!((v[i] * 1000.0).round() / 1000.0)
}

/// The agent a wrapper (`SOCKMESH_TEST_AGENT_WRAPPER`, our child `wrapper`) started: its
/// descendant named sockmesh*.
fn wrapped_agent(wrapper: u32) -> Option<i32> {
    std::env::var_os("SOCKMESH_TEST_AGENT_WRAPPER")?;
    let mut todo = vec![wrapper];
    while let Some(p) = todo.pop() {
        let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
        if p != wrapper && comm.starts_with("sockmesh") {
            return Some(p as i32);
        }
        let kids = std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
        todo.extend(kids.split_whitespace().filter_map(|k| k.parse::<u32>().ok()));
    }
    None
}

fn run_size(zk: &mut ZkServer, services: usize, per: usize) -> Value {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let c = rt.block_on(raw_client(zk));
    // A group per size: a fresh tree.
    let group = format!("scale{services}x{per}");
    let group = group.as_str();
    let all: Vec<Url> = (0..services)
        .flat_map(|i| (0..per).map(move |j| provider(group, i, j)))
        .collect();
    let t = Instant::now();
    rt.block_on(write_all(&c, all, true));
    eprintln!(
        "{services}x{per}: {} providers created in {:?}",
        services * per,
        t.elapsed()
    );

    // The healthy service: one real provider.
    let healthy = Provider::start(&format!("healthy{services}"), 0);
    let healthy_url =
        Url::new("motan2", "127.0.0.1", healthy.addr.port(), SVC, group).with_param("nodeType", "service");
    rt.block_on(write_all(&c, vec![healthy_url], true));
    let mut motan = format!(
        "motan-registry:\n  zk:\n    protocol: zookeeper\n    host: 127.0.0.1\n    port: {}\n    registrySessionTimeout: 10\nmotan-refer:\n",
        zk.port()
    );
    motan.push_str(&format!(
        "  healthy:\n    path: {SVC}\n    group: {group}\n    registry: zk\n    requestTimeout: 1000\n"
    ));
    for i in 0..services {
        motan.push_str(&format!(
            "  s{i}:\n    path: {}\n    group: {group}\n    registry: zk\n    requestTimeout: 1000\n",
            service(i)
        ));
    }
    let name = format!("scale-{services}x{per}");
    let snap = std::env::temp_dir().join(format!("sockmesh-{name}-snap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&snap);
    let agent = format!("  snapshot_dir: {}\n  localIP: 127.0.0.1\n", snap.display());
    let started = Instant::now();
    let mut d = Daemon::mesh_with_agent(&name, Ports::pick(), &agent, &motan);
    let total = services * per;
    let converged = wait_until(Duration::from_secs(120), || {
        counts(&d, services).iter().sum::<usize>() == total
    })
    .map(|_| started.elapsed());
    let pid = d.pid();
    let rss = rss_mb(pid);
    eprintln!("{name}: converged {converged:?}, RSS {rss:.0} MB");
    if std::env::var_os("SOCKMESH_SCALE_PROFILE").is_some() {
        // Profiling (with SOCKMESH_TEST_AGENT_WRAPPER): the heap live 5 s after convergence
        // is what a SIGKILL leaves unfreed.
        std::thread::sleep(Duration::from_secs(5));
        if let Some(agent) = wrapped_agent(d.pid()) {
            // SAFETY: a signal to the agent the wrapper (our child) started.
            unsafe { libc::kill(agent, libc::SIGKILL) };
            // The wrapper writes its profile once the agent is gone.
            wait_until(Duration::from_secs(120), || {
                !std::path::Path::new(&format!("/proc/{agent}")).exists()
            });
            std::thread::sleep(Duration::from_secs(10));
        }
        d.kill9();
        let _ = std::fs::remove_dir_all(&snap);
        return json!({ "size": format!("{services}x{per}"), "converge_ms": ms(converged), "rss_mb": rss });
    }
    // CPU 30–40 s after convergence.
    std::thread::sleep(Duration::from_secs(30));
    let c0 = cpu_secs(pid);
    std::thread::sleep(Duration::from_secs(10));
    let cpu = (cpu_secs(pid) - c0) / 10.0 * 100.0;
    let rss_settled = rss_mb(pid);
    eprintln!("{name}: CPU {cpu:.1}% of a core 30-40 s after convergence, RSS then {rss_settled:.0} MB");

    // Single changes: add a provider to a random service, then delete it; 20 changes.
    let mut single = Vec::new();
    for k in 0..10 {
        let i = fastrand::usize(0..services);
        let url = provider(group, i, per + k);
        let t = Instant::now();
        rt.block_on(write_all(&c, vec![url.clone()], true));
        single.push(
            wait_until(Duration::from_secs(10), || counts(&d, services)[i] == per + 1).map(|_| t.elapsed()),
        );
        let t = Instant::now();
        rt.block_on(write_all(&c, vec![url], false));
        single.push(
            wait_until(Duration::from_secs(10), || counts(&d, services)[i] == per).map(|_| t.elapsed()),
        );
    }
    let missed = single.iter().filter(|s| s.is_none()).count();
    let mut seen: Vec<Duration> = single.into_iter().flatten().collect();
    seen.sort();
    let p99 = match missed {
        0 => seen.last().copied(),
        _ => None,
    };
    eprintln!("{name}: single change p99 {p99:?} ({missed} not seen within 10 s)");

    // 10% bulk change: delete 10% of every service's providers at once, then add them back.
    let tenth = (per / 10).max(1);
    let bulk: Vec<Url> = (0..services)
        .flat_map(|i| (0..tenth).map(move |j| provider(group, i, j)))
        .collect();
    let t = Instant::now();
    rt.block_on(write_all(&c, bulk.clone(), false));
    let written_del = t.elapsed();
    let want = total - services * tenth;
    let del = wait_until(Duration::from_secs(60), || {
        counts(&d, services).iter().sum::<usize>() == want
    })
    .map(|_| t.elapsed());
    let t = Instant::now();
    rt.block_on(write_all(&c, bulk, true));
    let written_add = t.elapsed();
    let add = wait_until(Duration::from_secs(60), || {
        counts(&d, services).iter().sum::<usize>() == total
    })
    .map(|_| t.elapsed());
    eprintln!(
        "{name}: bulk delete {del:?} (writes {written_del:?}), bulk add {add:?} (writes {written_add:?})"
    );

    // 1,000 req/s to the healthy service, then again while ZooKeeper is killed and restarted.
    let (mut lat, errors) = load(&d, 1000, 10, || {});
    let (lp50, lp99) = (percentile(&mut lat, 0.5), percentile(&mut lat, 0.99));
    eprintln!("{name}: 1000 req/s p50 {lp50} ms p99 {lp99} ms, {errors} errors");
    drop(c);
    let mut restart_converge = None;
    let (mut rlat, rerrors) = load(&d, 1000, 20, || {
        std::thread::sleep(Duration::from_secs(2));
        zk.stop();
        std::thread::sleep(Duration::from_secs(5));
        zk.spawn().unwrap();
        let t = Instant::now();
        restart_converge = wait_until(Duration::from_secs(30), || {
            counts(&d, services).iter().sum::<usize>() == total
        })
        .map(|_| t.elapsed());
    });
    let (rp50, rp99) = (percentile(&mut rlat, 0.5), percentile(&mut rlat, 0.99));
    eprintln!(
        "{name}: during a ZooKeeper restart p50 {rp50} ms p99 {rp99} ms, {rerrors} errors; lists equal after restart {restart_converge:?}"
    );
    let _ = std::fs::remove_dir_all(&snap);
    json!({
        "load_p50_ms": lp50,
        "load_p99_ms": lp99,
        "load_errors": errors,
        "zk_restart_p50_ms": rp50,
        "zk_restart_p99_ms": rp99,
        "zk_restart_errors": rerrors,
        "zk_restart_requests": rlat.len() + rerrors,
        "after_restart_equal_ms": ms(restart_converge),
        "size": format!("{services}x{per}"),
        "providers": total,
        "converge_ms": ms(converged),
        "rss_mb": (rss * 10.0).round() / 10.0,
        "rss_40s_after_mb": (rss_settled * 10.0).round() / 10.0,
        "cpu_percent_30_40s": (cpu * 10.0).round() / 10.0,
        "single_change_p99_ms": ms(p99),
        "single_changes_missed": missed,
        "bulk_delete_10pct_ms": ms(del),
        "bulk_delete_writes_ms": ms(Some(written_del)),
        "bulk_delete_after_writes_ms": ms(del.map(|d| d.saturating_sub(written_del))),
        "bulk_add_10pct_ms": ms(add),
        "bulk_add_writes_ms": ms(Some(written_add)),
        "bulk_add_after_writes_ms": ms(add.map(|d| d.saturating_sub(written_add))),
    })
}

#[test]
#[ignore = "minutes long; run by cargo xtask scale"]
fn discovery_at_scale() {
    let sizes = std::env::var("SOCKMESH_SCALE_SIZES").unwrap_or_else(|_| "100x10".into());
    let Some(mut zk) = zookeeper("scale") else {
        return;
    };
    let mut results = Vec::new();
    for size in sizes.split(',') {
        let (s, p) = size.split_once('x').expect("sizes are SxP");
        results.push(run_size(&mut zk, s.parse().unwrap(), p.parse().unwrap()));
    }
    let mut md = String::from(
        "# Discovery at scale (issue #21)\n\nOne agent referring every service; providers are persistent nodes in motan's layout, not listening. Single change: p99 over 20 (10 adds, 10 deletes); bulk: 10% of every service's providers deleted, then added back, timed from the first write.\n\n| size | converge | RSS at convergence / 40 s after | CPU 30–40 s after | single add/delete p99 | 10% bulk delete (ZooKeeper writes; after the last) | 10% bulk add (writes; after the last) | 1,000 req/s p50 / p99, errors | during ZooKeeper kill+restart p50 / p99, errors | lists equal after restart |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in &results {
        let f = |k: &str| match &r[k] {
            Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        md.push_str(&format!(
            "| {} | {} ms | {} / {} MB | {}% | {} ms | {} ms ({}; {}) | {} ms ({}; {}) | {} / {} ms, {} | {} / {} ms, {} of {} | {} ms |\n",
            f("size"),
            f("converge_ms"),
            f("rss_mb"),
            f("rss_40s_after_mb"),
            f("cpu_percent_30_40s"),
            f("single_change_p99_ms"),
            f("bulk_delete_10pct_ms"),
            f("bulk_delete_writes_ms"),
            f("bulk_delete_after_writes_ms"),
            f("bulk_add_10pct_ms"),
            f("bulk_add_writes_ms"),
            f("bulk_add_after_writes_ms"),
            f("load_p50_ms"),
            f("load_p99_ms"),
            f("load_errors"),
            f("zk_restart_p50_ms"),
            f("zk_restart_p99_ms"),
            f("zk_restart_errors"),
            f("zk_restart_requests"),
            f("after_restart_equal_ms"),
        ));
    }
    eprintln!("{md}");
    if let Ok(out) = std::env::var("SOCKMESH_SCALE_OUT") {
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(format!("{out}/report.md"), &md).unwrap();
        std::fs::write(
            format!("{out}/results.json"),
            serde_json::to_string_pretty(&json!({ "sizes": results })).unwrap(),
        )
        .unwrap();
    }
}
