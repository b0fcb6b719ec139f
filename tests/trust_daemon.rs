//! Trust boundaries of the daemon and its pins (issue #15): one daemon per pin directory, pinned
//! maps of another layout refused, an uninstall that stops the installation's daemon before it
//! removes anything and refuses what it must not touch, and churn (deleted cgroups, short-lived
//! network namespaces) that leaves nothing behind. Real daemons, cgroups and namespaces; traffic
//! only on loopback.
mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn lock_file(pin_dir: &Path) -> PathBuf {
    sockmesh::intercept::pins::lock_path(pin_dir)
}

/// `sockmesh run --config CONFIG` that is expected to refuse: it must exit (non-zero) within
/// 30 s; returns its stderr.
fn run_refused(config: &Path) -> String {
    let mut child = Command::new(bin())
        .args(["run", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the refused daemon was still running after 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    use std::io::Read;
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(!status.success(), "it should have refused: {err}");
    err
}

/// `sockmesh ARGS`: (success, stdout, stderr).
fn sockmesh(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin()).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_second_daemon_is_refused_before_it_touches_anything() {
    if !privileged("a_second_daemon_is_refused_before_it_touches_anything") {
        return;
    }
    let _g = serial();
    let echo = EchoServer::start("127.0.0.9:0", None);
    let d = Daemon::start("lock");
    let (cg, rel) = test_cgroup("smt-lock");
    d.enable(&rel, "ebpf-connect");
    assert_eq!(client(Some(cg.path()), echo.addr, 4096, "blocking")["ok"], true);
    let bpf_line = format!("sockmesh: redirected connect to {}", echo.addr);
    d.wait_log(&bpf_line, 1);
    let programs = link_programs(&d.pin_dir);
    let maps = pinned_map_ids(&d.pin_dir);
    assert!(programs.len() >= 8, "host and cgroup links: {programs:?}");
    let lock = std::fs::read_to_string(lock_file(&d.pin_dir)).unwrap();
    assert_eq!(lock.lines().next(), Some(d.pid().to_string().as_str()), "{lock}");

    // Same configuration: the lock stops it, naming the running daemon.
    let err = run_refused(d.config_path());
    assert!(
        err.contains(&format!("another sockmesh daemon (pid {})", d.pid()))
            && err.contains(&d.pin_dir.display().to_string()),
        "{err}"
    );
    assert!(
        !err.contains("kernel self-test"),
        "it got as far as the self-test: {err}"
    );
    // Nothing was swapped or rewritten: the same programs behind the same links, same maps.
    assert_eq!(link_programs(&d.pin_dir), programs);
    assert_eq!(pinned_map_ids(&d.pin_dir), maps);

    // Another pin directory but the same ports: a bind fails before any BPF state is touched.
    let other_pins = format!("/sys/fs/bpf/sockmesh-test-lock2-{}", std::process::id());
    let _other_guard = PinDir::new(bin(), &other_pins);
    let other_cfg = d.dir.join("other.yaml");
    let text = std::fs::read_to_string(d.config_path()).unwrap();
    std::fs::write(
        &other_cfg,
        text.replace(&d.pin_dir.display().to_string(), &other_pins),
    )
    .unwrap();
    let err = run_refused(&other_cfg);
    assert!(err.contains("Address already in use"), "{err}");
    assert!(
        !Path::new(&other_pins).exists(),
        "the second daemon created {other_pins}"
    );
    assert!(!lock_file(Path::new(&other_pins)).exists());

    // The first one still intercepts, and its BPF log forwarding still works.
    assert_eq!(client(Some(cg.path()), echo.addr, 4096, "blocking")["ok"], true);
    assert_eq!(d.counters(&rel).0, 2);
    d.wait_log(&bpf_line, 2);
}

#[test]
fn maps_of_another_layout_or_shape_are_refused() {
    if !privileged("maps_of_another_layout_or_shape_are_refused") {
        return;
    }
    let _g = serial();
    let mut d = Daemon::start("layout");
    let (_cg, rel) = test_cgroup("smt-layout");
    d.enable(&rel, "ebpf-connect");
    d.sigterm();
    assert!(d.wait_exit());
    let ours = maps_dir(&d.pin_dir);
    let version = sockmesh_common::MAP_LAYOUT_VERSION;
    let other = d.pin_dir.join(format!("maps-v{}", version + 7));

    // The layout marker says another version.
    std::fs::rename(&ours, &other).unwrap();
    let err = run_refused(d.config_path());
    assert!(
        err.contains(&format!("have layout v{}", version + 7))
            && err.contains(&format!("uses map layout v{version}"))
            && err.contains(&format!("sockmesh uninstall --pin-dir {}", d.pin_dir.display())),
        "{err}"
    );
    assert!(!ours.exists(), "no maps of our layout may be created beside them");
    std::fs::rename(&other, &ours).unwrap();
    d.spawn();
    assert!(
        d.log()
            .contains("interception from the previous run is active again")
    );
    assert_eq!(d.intercept_status()["cgroups"][0]["cgroup"], rel.as_str());
    d.sigterm();
    assert!(d.wait_exit());

    // Same version, but a map of another shape (the layout changed without a new version).
    let cgroups = ours.join("SM_CGROUPS");
    std::fs::remove_file(&cgroups).unwrap();
    let made = Command::new("bpftool")
        .args(["map", "create"])
        .arg(&cgroups)
        .args([
            "type",
            "hash",
            "key",
            "8",
            "value",
            "32",
            "entries",
            "16",
            "name",
            "SM_CGROUPS",
        ])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let err = run_refused(d.config_path());
    assert!(
        err.contains(&format!("pinned map {} does not match", cgroups.display()))
            && err.contains("16 entries")
            && err.contains("1024 entries"),
        "{err}"
    );
}

#[test]
fn uninstall_stops_the_installed_daemon_and_refuses_what_it_must_not_touch() {
    if !privileged("uninstall_stops_the_installed_daemon_and_refuses_what_it_must_not_touch") {
        return;
    }
    let _g = serial();
    let root = std::env::temp_dir().join(format!("sockmesh-uninst-{}", std::process::id()));
    // A configuration with this test's own (non-default) ports, pin directory and chain.
    let mut d = Daemon::start("uninst");
    assert_ne!(d.admin.port(), 8002);
    d.kill9();
    let cfg_file = root.with_extension("yaml");
    std::fs::copy(d.config_path(), &cfg_file).unwrap();
    let (ok, out, err) = sockmesh(&[
        "install",
        "--root",
        root.to_str().unwrap(),
        "--config",
        cfg_file.to_str().unwrap(),
    ]);
    assert!(ok, "{out}{err}");
    let installed_bin = root.join("usr/local/bin/sockmesh");
    let installed_cfg = root.join("etc/sockmesh/sockmesh.yaml");
    let state = root.join("var/lib/sockmesh");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("snapshot"), "x").unwrap();

    // --pin-dir alone removes only pins: the installation stays (issue #21).
    let (ok, out, err) = sockmesh(&["uninstall", "--pin-dir", d.pin_dir.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    assert!(installed_bin.exists() && installed_cfg.exists() && state.join("snapshot").exists());

    let log = d.dir.join("installed.log");
    let mut daemon = sockmesh_testkit::agent::spawn(
        "installed daemon",
        Command::new(&installed_bin),
        &installed_cfg,
        &log,
    )
    .unwrap();
    sockmesh_testkit::agent::await_admin(&mut daemon, d.admin, &log).unwrap();
    let (cg1, rel) = test_cgroup("smt-uninst");
    d.enable(&rel, "ebpf-sockmap");
    let (cg2, rel2) = test_cgroup("smt-uninst-ipt");
    d.enable(&rel2, "iptables");
    let ours = BpfObjects::pinned_under(&d.pin_dir);

    // While the daemon uses the pins, --pin-dir alone is refused and changes nothing.
    let (ok, _, err) = sockmesh(&["uninstall", "--pin-dir", d.pin_dir.to_str().unwrap()]);
    assert!(!ok, "unpinning under a live daemon must be refused");
    assert!(err.contains(&format!("pid {}", daemon.pid())), "{err}");
    assert!(maps_dir(&d.pin_dir).join("SM_CGROUPS").exists());
    assert_eq!(d.intercept_status()["cgroups"].as_array().unwrap().len(), 2);
    // A directory that is not on bpffs is refused, and nothing in it is removed.
    let not_bpf = d.dir.join("not-bpffs");
    std::fs::create_dir_all(not_bpf.join("links")).unwrap();
    std::fs::write(not_bpf.join("links/keep"), "x").unwrap();
    let (ok, _, err) = sockmesh(&["uninstall", "--pin-dir", not_bpf.to_str().unwrap()]);
    assert!(!ok && err.contains("not on a bpffs"), "{err}");
    assert!(not_bpf.join("links/keep").exists());

    // The installation: the daemon is stopped (found by its lock, whatever its admin port),
    // then everything goes.
    let (ok, out, err) = sockmesh(&["uninstall", "--root", root.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains(&format!("stopping the daemon (pid {})", daemon.pid())),
        "{out}"
    );
    let st = daemon.wait().unwrap();
    assert!(st.success(), "the daemon should drain and exit cleanly: {st}");
    for p in [
        &installed_bin,
        &installed_cfg,
        &root.join("etc/sockmesh"),
        &root.join("etc/systemd/system/sockmesh.service"),
        &state,
    ] {
        assert!(!p.exists(), "{} left after uninstall: {out}", p.display());
    }
    assert!(!d.pin_dir.exists(), "pins left: {out}");
    assert!(!lock_file(&d.pin_dir).exists(), "lock file left");
    ours.assert_gone();
    for cg in [&cg1, &cg2] {
        assert_nothing_attached(cg.path());
    }
    let saved = String::from_utf8_lossy(&Command::new("iptables-save").output().unwrap().stdout).into_owned();
    assert!(!saved.contains(&d.iptables_chain), "rules left:\n{saved}");
    // Twice is safe.
    let (ok, out, err) = sockmesh(&["uninstall", "--root", root.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_file(&cfg_file);
}

#[test]
fn a_deleted_cgroup_loses_its_state_within_seconds() {
    if !privileged("a_deleted_cgroup_loses_its_state_within_seconds") {
        return;
    }
    let _g = serial();
    let d = Daemon::start("cgchurn");
    let (mut cg, rel) = test_cgroup("smt-cgchurn");
    let (_keep, keep_rel) = test_cgroup("smt-cgkeep");
    d.enable(&rel, "ebpf-connect");
    d.enable(&keep_rel, "ebpf-connect");
    let id = std::fs::metadata(cg.path()).unwrap();
    let id = std::os::unix::fs::MetadataExt::ino(&id);
    let links_of = |id: u64| {
        bpftool(&["link", "show"])
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["cgroup_id"].as_u64() == Some(id))
            .count()
    };
    assert_eq!(links_of(id), 5, "connect4/6, getpeername4/6, sock_release");
    cg.remove().unwrap();
    let started = Instant::now();
    wait_for(
        "the deleted cgroup leaves the status",
        Duration::from_secs(5),
        || {
            let st = d.intercept_status();
            st["cgroups"].as_array().unwrap().len() == 1
        },
    );
    eprintln!("deleted cgroup forgotten after {:?}", started.elapsed());
    assert_eq!(d.intercept_status()["cgroups"][0]["cgroup"], keep_rel.as_str());
    assert!(!d.pin_dir.join(format!("links/cg-{id}")).exists());
    wait_for("its links are released", Duration::from_secs(5), || {
        links_of(id) == 0
    });
    d.wait_log("intercepted cgroup was deleted", 1);
    assert!(d.log().contains(&format!("cgroup_id={id}")));
}

/// The daemon's threads named `name`.
fn threads_named(pid: u32, name: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .count()
}

/// The daemon's open sockets (their `socket:[inode]` names).
fn sockets_of(pid: u32) -> BTreeSet<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|f| std::fs::read_link(f.path()).ok())
        .map(|t| t.to_string_lossy().into_owned())
        .filter(|t| t.starts_with("socket:"))
        .collect()
}

/// Processes, each in a network namespace of its own (loopback up) and in a test cgroup, until
/// [`Residents::end`] or drop closes their stdin. (They used to sleep a fixed time: under load,
/// starting 200 of them took longer than that, the first were gone before the last came, and
/// the daemon never had a listener in all of them at once.)
struct Residents(Vec<Child>);

fn namespaced_residents(n: usize, cgroup: &Path) -> Residents {
    let script = format!(
        "ip link set lo up && echo $$ > {}/cgroup.procs && exec cat > /dev/null",
        cgroup.display()
    );
    Residents(
        (0..n)
            .map(|_| {
                Command::new("unshare")
                    .args(["--net", "sh", "-c", &script])
                    .stdin(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect(),
    )
}

impl Residents {
    /// Their network namespaces (inodes), once every one has joined `cgroup` (it unshared
    /// before): what the daemon should have listeners in.
    fn namespaces(&self, cgroup: &Path) -> BTreeSet<u64> {
        use std::os::unix::fs::MetadataExt;
        let pids: BTreeSet<String> = self.0.iter().map(|c| c.id().to_string()).collect();
        wait_for("the residents in their cgroup", Duration::from_secs(60), || {
            let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
            procs.lines().filter(|p| pids.contains(*p)).count() == pids.len()
        });
        self.0
            .iter()
            .map(|c| {
                std::fs::metadata(format!("/proc/{}/ns/net", c.id()))
                    .unwrap()
                    .ino()
            })
            .collect()
    }

    /// Close their stdin and wait until they exited.
    fn end(&mut self) {
        for c in &mut self.0 {
            drop(c.stdin.take());
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

impl Drop for Residents {
    fn drop(&mut self) {
        self.end();
    }
}

/// The network namespaces (inodes) the daemon has a transparent listener in.
fn netns_listeners(d: &Daemon) -> BTreeSet<u64> {
    d.intercept_status()["netns_listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap())
        .collect()
}

#[test]
fn two_hundred_short_lived_namespaces_leave_nothing_behind() {
    if !privileged("two_hundred_short_lived_namespaces_leave_nothing_behind") {
        return;
    }
    let _g = serial();
    let d = Daemon::start("nschurn");
    let (cg, rel) = test_cgroup("smt-nschurn");
    d.enable(&rel, "ebpf-connect");
    std::thread::sleep(Duration::from_secs(1));
    let sockets_before = sockets_of(d.pid());
    assert_eq!(threads_named(d.pid(), "sockmesh-netns"), 0);

    let t0 = Instant::now();
    let mut residents = namespaced_residents(200, cg.path());
    let namespaces = residents.namespaces(cg.path());
    assert_eq!(namespaces.len(), 200, "a namespace each");
    // Exactly theirs (a count could be reached by other namespaces while some of these lack one).
    wait_for(
        "a listener in each of the 200 namespaces",
        Duration::from_secs(60),
        || netns_listeners(&d) == namespaces,
    );
    eprintln!(
        "200 namespaces started, a listener in each, after {:?}",
        t0.elapsed()
    );
    // A listener is reported once its thread has bound it.
    assert_eq!(threads_named(d.pid(), "sockmesh-netns"), 200);
    // The sockets the namespaces brought: each of them must go.
    let theirs: BTreeSet<String> = sockets_of(d.pid()).difference(&sockets_before).cloned().collect();
    assert!(theirs.len() >= 200, "a listening socket each: {}", theirs.len());
    residents.end();
    wait_for(
        "the listeners of the gone namespaces closed",
        Duration::from_secs(30),
        || netns_listeners(&d).is_empty(),
    );
    wait_for("their threads ended", Duration::from_secs(30), || {
        threads_named(d.pid(), "sockmesh-netns") == 0
    });
    wait_for("their sockets closed", Duration::from_secs(30), || {
        sockets_of(d.pid()).is_disjoint(&theirs)
    });
    let st = d.intercept_status();
    let cgroups = st["cgroups"].as_array().unwrap();
    assert_eq!(cgroups.len(), 1, "{st}");
    assert_eq!(cgroups[0]["cgroup"], rel.as_str());
    let orig = bpftool(&[
        "map",
        "dump",
        "pinned",
        maps_dir(&d.pin_dir).join("SM_ORIG_DST").to_str().unwrap(),
    ])
    .unwrap();
    assert_eq!(orig.as_array().unwrap().len(), 0, "{orig}");
}

#[test]
fn namespace_listeners_are_capped() {
    if !privileged("namespace_listeners_are_capped") {
        return;
    }
    let _g = serial();
    let d = Daemon::start_with("nscap", "    max_netns_listeners: 3\n");
    let (cg, rel) = test_cgroup("smt-nscap");
    d.enable(&rel, "ebpf-connect");
    let mut residents = namespaced_residents(5, cg.path());
    let namespaces = residents.namespaces(cg.path());
    wait_for("three listeners", Duration::from_secs(30), || {
        netns_listeners(&d).len() == 3
    });
    d.wait_log("max_netns_listeners reached", 1);
    assert!(d.log().contains("namespaces=2"), "{}", d.log());
    let listeners = netns_listeners(&d);
    assert_eq!(listeners.len(), 3, "never more than the cap");
    assert!(
        listeners.is_subset(&namespaces),
        "{listeners:?} in {namespaces:?}"
    );
    residents.end();
    wait_for("all closed", Duration::from_secs(30), || {
        netns_listeners(&d).is_empty()
    });
}

#[test]
fn pin_directories_others_may_write_to_are_refused_and_our_bpffs_is_private() {
    if !privileged("pin_directories_others_may_write_to_are_refused_and_our_bpffs_is_private") {
        return;
    }
    let _g = serial();
    let mut d = Daemon::start("perm");
    d.sigterm();
    assert!(d.wait_exit());

    // A pin directory someone else could write to is refused before anything is pinned in it.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&d.pin_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = run_refused(d.config_path());
    assert!(
        err.contains(&format!("refusing {}", d.pin_dir.display()))
            && err.contains("not be writable by group or others")
            && err.contains("mode 777"),
        "{err}"
    );
    std::fs::set_permissions(&d.pin_dir, std::fs::Permissions::from_mode(0o700)).unwrap();

    // Where sockmesh mounts bpffs itself (here: in a mount namespace of its own whose
    // /sys/fs/bpf was unmounted), the mount is root's only.
    let log = d.dir.join("private-bpffs.log");
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("umount -l /sys/fs/bpf && exec \"$0\" \"$@\"")
        .arg(bin());
    let mut daemon =
        sockmesh_testkit::agent::spawn("daemon with its own bpffs", cmd, d.config_path(), &log).unwrap();
    sockmesh_testkit::agent::await_admin(&mut daemon, d.admin, &log).unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("mounted bpffs at /sys/fs/bpf (mode 0700)"),
        "{text}"
    );
    use std::os::unix::fs::MetadataExt;
    let bpffs = std::fs::metadata(format!("/proc/{}/root/sys/fs/bpf", daemon.pid())).unwrap();
    assert_eq!(bpffs.mode() & 0o7777, 0o1700, "mode {:o}", bpffs.mode() & 0o7777);
    let private_pins = PathBuf::from(format!("/proc/{}/root{}", daemon.pid(), d.pin_dir.display()));
    assert_eq!(std::fs::metadata(&private_pins).unwrap().mode() & 0o7777, 0o700);
    // Its pins, and with them its programs and maps, go with its mount namespace when it ends.
    let ours = BpfObjects::pinned_under(&private_pins);
    daemon.stop().unwrap();
    ours.assert_gone();
}

#[test]
fn uninstall_refuses_pins_whose_programs_a_live_process_holds() {
    if !privileged("uninstall_refuses_pins_whose_programs_a_live_process_holds") {
        return;
    }
    let _g = serial();
    let mut d = Daemon::start("holder");
    let (_cg, rel) = test_cgroup("smt-holder");
    d.enable(&rel, "ebpf-connect");
    d.sigterm();
    assert!(d.wait_exit());
    // A process that holds the programs without the lock (as a daemon of a build without one
    // would): this test process.
    let (_, prog) = link_programs(&d.pin_dir)[0].clone();
    let held = aya::programs::loaded_programs()
        .flatten()
        .find(|p| u64::from(p.id()) == prog)
        .expect("the link's program is loaded")
        .fd()
        .unwrap();
    let pin_dir = d.pin_dir.to_str().unwrap().to_string();
    let (ok, _, err) = sockmesh(&["uninstall", "--pin-dir", &pin_dir]);
    assert!(!ok, "unpinning programs a live process holds must be refused");
    assert!(
        err.contains(&format!("process {} holds program {prog}", std::process::id())),
        "{err}"
    );
    assert!(maps_dir(&d.pin_dir).exists());
    assert!(
        !lock_file(&d.pin_dir).exists(),
        "a refused uninstall leaves no lock file"
    );
    drop(held);
    let (ok, out, err) = sockmesh(&["uninstall", "--pin-dir", &pin_dir]);
    assert!(ok, "{out}{err}");
    assert!(!d.pin_dir.exists());
}
