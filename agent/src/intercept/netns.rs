//! Apps in other network namespaces (containers). The connect hook rewrites to 127.0.0.1 of the
//! app's own namespace, so the agent keeps a transparent listener inside every namespace that
//! has processes in an intercepted cgroup. Upstream sockets for those connections are created in
//! the same namespace (a socket belongs to the namespace it was created in), so the agent dials
//! the original destination with the app's view of the network.
//!
//! A namespace gets its listener within one watcher period of its first process appearing in an
//! enabled cgroup; until then the connect hook finds no listener there and lets connections go
//! direct (fail-open), so nothing breaks in between. The namespace thread that binds the
//! listener and makes the sockets is `crate::net::NetnsSockets`.
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The network namespace inode of a process (`/proc/PID/ns/net`).
pub fn netns_ino(pid: u32) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| m.ino())
}

/// Every pid in `cg` and its descendants.
pub fn pids_in(cg: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    let mut stack = vec![cg.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if let Ok(s) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            out.extend(s.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if let Ok(rd) = std::fs::read_dir(&dir) {
            stack.extend(
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    out
}

/// Network namespaces (inode -> a /proc path that opens it) of processes in the given cgroups,
/// other than `own`.
pub fn foreign_namespaces(cgroups: &[PathBuf], own: u64) -> HashMap<u64, PathBuf> {
    let mut found = HashMap::new();
    for cg in cgroups {
        for pid in pids_in(cg) {
            if let Some(ino) = netns_ino(pid)
                && ino != own
            {
                found
                    .entry(ino)
                    .or_insert_with(|| PathBuf::from(format!("/proc/{pid}/ns/net")));
            }
        }
    }
    found
}
