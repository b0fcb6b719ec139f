//! `sockmesh check`: what this kernel offers, one line per capability, each claim backed by a
//! real probe (programs are loaded and attached in a scratch child cgroup, then removed).
use std::path::Path;

use serde::Serialize;

use crate::cgroup::{self, ChildCgroup};
use crate::intercept::ebpf::{attach_link, load_object};
use crate::intercept::pins::remove_pins;
use crate::intercept::selftest;
use crate::sys::{self, AttachType};

#[derive(Debug, Serialize)]
pub struct Line {
    pub capability: String,
    /// ok, missing, or limited (works with a documented restriction).
    pub state: &'static str,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub lines: Vec<Line>,
    /// The whole eBPF path (connect rewrite, original destination, sockmap) is available.
    pub full_ebpf: bool,
}

fn line(capability: &str, r: Result<String, String>) -> Line {
    match r {
        Ok(detail) => Line {
            capability: capability.into(),
            state: "ok",
            detail,
        },
        Err(detail) => Line {
            capability: capability.into(),
            state: "missing",
            detail,
        },
    }
}

const PROGRAMS: &[(&str, &str, AttachType)] = &[
    ("cgroup/connect4", "sm_connect4", AttachType::Inet4Connect),
    ("cgroup/connect6", "sm_connect6", AttachType::Inet6Connect),
    (
        "cgroup/getpeername4",
        "sm_getpeername4",
        AttachType::Inet4Getpeername,
    ),
    (
        "cgroup/getpeername6",
        "sm_getpeername6",
        AttachType::Inet6Getpeername,
    ),
    (
        "cgroup/sock_release",
        "sm_sock_release",
        AttachType::InetSockRelease,
    ),
    ("cgroup/getsockopt", "sm_getsockopt", AttachType::CgroupGetsockopt),
    ("sock_ops", "sm_sockops", AttachType::SockOps),
];

pub fn run() -> Report {
    let mut lines = Vec::new();
    let btf = Path::new("/sys/kernel/btf/vmlinux");
    lines.push(line(
        "BTF",
        if btf.exists() {
            Ok(btf.display().to_string())
        } else {
            Err(format!(
                "{} not found (kernel built without CONFIG_DEBUG_INFO_BTF)",
                btf.display()
            ))
        },
    ));
    let mount = cgroup::cgroup2_mount();
    lines.push(line(
        "cgroup v2",
        mount
            .as_ref()
            .map(|m| format!("mounted at {}", m.display()))
            .map_err(|e| format!("{e:#}")),
    ));
    let bpffs = Path::new("/sys/fs/bpf");
    let fs = sys::ensure_bpffs(bpffs);
    lines.push(line(
        "bpffs",
        match &fs {
            Ok(true) => Ok("was not mounted; mounted it at /sys/fs/bpf".into()),
            Ok(false) => Ok("mounted at /sys/fs/bpf".into()),
            Err(e) => Err(format!("cannot mount bpffs at /sys/fs/bpf: {e}")),
        },
    ));

    let scratch = bpffs.join(format!("sockmesh-check-{}", std::process::id()));
    let mut programs_ok = false;
    match (&mount, &fs) {
        (Ok(mount), Ok(_)) => {
            let probe = probe_programs(mount, &scratch, &mut lines);
            let _ = remove_pins(&scratch);
            programs_ok = probe;
        }
        _ => {
            for (name, _, _) in PROGRAMS {
                lines.push(line(name, Err("not probed: cgroup v2 or bpffs missing".into())));
            }
        }
    }

    let mut selftest_ok = false;
    if fs.is_ok() {
        match selftest::run(bpffs) {
            Ok(t) => {
                selftest_ok = t.sockmap_safe();
                for c in &t.checks {
                    let state = if c.ok {
                        "ok"
                    } else if c.name == "splice" {
                        "limited"
                    } else {
                        "missing"
                    };
                    lines.push(Line {
                        capability: format!("sk_msg redirect: {}", c.name),
                        state,
                        detail: c.detail.clone(),
                    });
                }
            }
            Err(e) => lines.push(line("sk_msg redirect self-test", Err(format!("{e:#}")))),
        }
    }
    Report {
        lines,
        full_ebpf: programs_ok && selftest_ok,
    }
}

fn probe_programs(mount: &Path, scratch: &Path, lines: &mut Vec<Line>) -> bool {
    let bpf = match load_object(&scratch.join("maps"), 0) {
        Ok(b) => b,
        Err(e) => {
            for (name, _, _) in PROGRAMS {
                lines.push(line(name, Err(format!("BPF object did not load: {e:#}"))));
            }
            return false;
        }
    };
    let cg = match ChildCgroup::create(mount, &format!("sockmesh-check-{}", std::process::id())) {
        Ok(c) => c,
        Err(e) => {
            lines.push(line("scratch cgroup", Err(format!("{e:#}"))));
            return false;
        }
    };
    let rel = cgroup::display_rel(mount, cg.path());
    let mut all = true;
    let dir = match std::fs::File::open(cg.path()) {
        Ok(f) => f,
        Err(e) => {
            lines.push(line("scratch cgroup", Err(e.to_string())));
            return false;
        }
    };
    for (name, prog, at) in PROGRAMS {
        let r = attach_link(&bpf, prog, &dir, *at)
            .map(|link| {
                drop(link); // closing the only fd detaches it again
                format!("loaded, attached to scratch cgroup {rel}, detached")
            })
            .map_err(|e| format!("{e:#}"));
        all &= r.is_ok();
        lines.push(line(name, r));
    }
    let r = match bpf.map("SM_SOCKS") {
        Some(aya::maps::Map::SockHash(m)) => attach_link(&bpf, "sm_skmsg", m.fd(), AttachType::SkMsgVerdict)
            .map(|_| "loaded and attached to a sockhash".to_string())
            .map_err(|e| format!("{e:#}")),
        _ => Err("SM_SOCKS sockhash missing".to_string()),
    };
    all &= r.is_ok();
    lines.push(line("sk_msg + sockhash", r));
    all
}

impl Report {
    pub fn print(&self) {
        for l in &self.lines {
            println!("{:<34} {:<8} {}", l.capability, l.state, l.detail);
        }
        if self.full_ebpf {
            println!("\nfull eBPF path available: ebpf-connect and ebpf-sockmap modes work on this kernel");
        } else {
            let missing: Vec<&str> = self
                .lines
                .iter()
                .filter(|l| l.state == "missing")
                .map(|l| l.capability.as_str())
                .collect();
            println!("\nfull eBPF path NOT available; missing: {}", missing.join(", "));
        }
    }
}
