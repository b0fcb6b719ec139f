//! sockmesh kernel programs.
//!
//! App side (attached per enabled cgroup): `connect4`/`connect6` rewrite the destination to the
//! agent's listener (only a listener that carries the agent's mark) and record the original one,
//! `getpeername4`/`getpeername6` show the app its original peer, `sock_release` forgets the
//! records. Host side (attached once at the cgroup v2 root): `sockops` keeps the tuple record the
//! agent reads and fills the sockhash, `getsockopt` answers `SO_ORIGINAL_DST` (IPv4) and
//! `IP6T_SO_ORIGINAL_DST` (IPv6) to the agent's sockets only. `skmsg` (attached to the sockhash)
//! short-circuits data between app and agent sockets.
#![no_std]
#![no_main]
// atomic_xadd: core's AtomicU64::fetch_add is not available for the BPF target.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod connect;
mod getpeername;
mod getsockopt;
mod maps;
mod skmsg;
mod sock_release;
mod sockops;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// Programs are GPL-compatible: several helpers (sk lookup, redirect) are GPL-only.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
