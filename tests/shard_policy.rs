//! `sockmesh.shard_policy`: the scheduling policy of the data-plane shards' threads, read from
//! /proc while the daemon serves.
mod common;

use common::motan::{self, Value};
use common::{Daemon, Ports, Provider, SVC, agent_addr, client_motan};

/// A mesh daemon with two shards and `sockmesh.<policy_line>` calling `provider`.
fn agent(name: &str, provider: &Provider, policy_line: &str) -> Daemon {
    let motan = client_motan(&[provider.addr], "");
    // Extra lines after `sockmesh.admin`'s control socket: a 2-space indent is a sockmesh key.
    Daemon::launch_admin(
        name,
        Ports::pick(),
        "",
        &format!("{policy_line}  worker_threads: 2\n"),
        &motan,
        "    enabled: false\n",
    )
}

/// The scheduling policy of the daemon's thread `thread`: field 41 of /proc/PID/task/TID/stat
/// (the 39th after the command in parentheses).
fn policy(d: &Daemon, thread: &str) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{}/task/{}/stat", d.pid(), d.thread(thread))).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    fields[38].parse().unwrap()
}

/// Twenty echo calls through the agent port answer.
fn serves(d: &Daemon) {
    motan::rt().block_on(async {
        let ch = motan::connect(agent_addr(d)).await;
        for i in 0..20 {
            let arg = Value::from(format!("call {i}"));
            let resp = motan::call(&ch, motan::request(SVC, "echo", &[], std::slice::from_ref(&arg))).await;
            assert_eq!(motan::exception(&resp), None, "{resp:?}");
            assert_eq!(motan::simple::decode_all(&resp.body).unwrap(), vec![arg]);
        }
    });
}

/// `sockmesh.shard_policy: batch` schedules every shard's thread SCHED_BATCH, and the agent
/// serves through them as before; the default leaves them SCHED_OTHER. A policy it does not
/// know is a config error naming the key.
#[test]
fn batch_runs_the_shards_sched_batch() {
    let provider = Provider::start("batch", 0);
    let batch = agent("shard-batch", &provider, "  shard_policy: batch\n");
    let normal = agent("shard-normal", &provider, "");
    for k in 0..2 {
        let shard = format!("sm-shard-{k}");
        assert_eq!(
            policy(&batch, &shard),
            libc::SCHED_BATCH as u32,
            "{shard} of the batch agent"
        );
        assert_eq!(
            policy(&normal, &shard),
            libc::SCHED_OTHER as u32,
            "{shard} of the default agent"
        );
    }
    serves(&batch);
    // The policy is set when the shards start: a reload names it as needing a restart and the
    // threads keep theirs.
    let cfg = std::fs::read_to_string(batch.config_path()).unwrap();
    std::fs::write(
        batch.config_path(),
        cfg.replace("shard_policy: batch", "shard_policy: normal"),
    )
    .unwrap();
    let (ok, out, err) = batch.cli(&["reload"]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("needs a restart: sockmesh.worker_threads / shards / shard_policy"),
        "{out}"
    );
    assert_eq!(policy(&batch, "sm-shard-0"), libc::SCHED_BATCH as u32);
    serves(&batch);
    let bad = batch.dir.join("bad-policy.yaml");
    std::fs::write(&bad, "sockmesh:\n  shard_policy: fifo\n").unwrap();
    let out = std::process::Command::new(common::bin())
        .args(["config", "validate"])
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(
            "section sockmesh, key shard_policy: unknown variant `fifo`, expected `normal` or `batch`"
        ),
        "{err}"
    );
}
