//! Privileged harnesses (BPF, cgroups, network namespaces, iptables) need root. Without it a
//! test fails with the reason; it is skipped only when SOCKMESH_SKIP_PRIVILEGED=1 asks for that
//! explicitly, and then it says why.

/// The variable that lets privileged tests be skipped without root.
pub const SKIP_VAR: &str = "SOCKMESH_SKIP_PRIVILEGED";

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// True when `test` may run. Without root it panics with the reason, unless
/// SOCKMESH_SKIP_PRIVILEGED=1 is set: then it prints that it skips and returns false.
pub fn privileged(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var(SKIP_VAR).as_deref() == Ok("1") {
        eprintln!("SKIPPED {test}: needs root (cgroups, BPF, network namespaces); {SKIP_VAR}=1 is set");
        return false;
    }
    panic!(
        "{test} needs root to load BPF programs and create cgroups/netns; run as root or set {SKIP_VAR}=1 to skip it explicitly"
    );
}
