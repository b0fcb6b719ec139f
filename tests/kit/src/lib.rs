//! sockmesh-testkit: what the integration tests (`tests/`), `cargo xtask bench` and the demo
//! (`sockmesh-demo`) share to run an agent and the things around it.
//!
//! Every guard removes what its own harness created, and only that (processes by the PID they
//! were started with, cgroups, namespaces, pins and chains by name), also when the harness fails:
//! on drop. One concern per module:
//!
//! - [`proc`]: a started child process ([`ChildProcess`]): its `ready` line, waiting until it
//!   answers, SIGTERM then SIGKILL on drop.
//! - [`ports`]: free loopback ports.
//! - [`cgroup`]: the cgroup2 mount (also on hybrid hosts) and a [`ChildCgroup`] removed on drop.
//! - [`netns`]: a network namespace ([`NetNs`]) deleted on drop; commands and threads inside it.
//! - [`pins`]: an agent's BPF pin directory ([`PinDir`]), removed by `sockmesh uninstall`.
//! - [`iptables`]: the nat chain an agent adds in iptables mode ([`NatChain`]), removed on drop.
//! - [`http`]: a blocking HTTP/1.1 client for the agent's admin API (TCP port or control socket).
//! - [`agent`]: start `sockmesh run --config FILE` and wait until its admin API answers.
//! - [`privilege`]: root or an explicit skip (SOCKMESH_SKIP_PRIVILEGED=1).
//! - [`zk`]: a real ZooKeeper server on a loopback port ([`ZkServer`]), killed and its data
//!   dir removed on drop.
//! - [`vectors`]: the wire captures under tests/data (`.hex` files), also for the agent's unit
//!   tests.
//!
//! The crate does not depend on the `sockmesh` crate: xtask depends on it and has to build before
//! the BPF object the agent embeds exists. Agent functions are reached through the `sockmesh`
//! binary, whose path the caller gives, and through the admin API.
pub mod agent;
pub mod cgroup;
pub mod http;
pub mod iptables;
pub mod netns;
pub mod pins;
pub mod ports;
pub mod privilege;
pub mod proc;
pub mod vectors;
pub mod zk;

pub use cgroup::{ChildCgroup, cgroup2_mount};
pub use iptables::NatChain;
pub use netns::NetNs;
pub use pins::PinDir;
pub use ports::{free_port, free_ports};
pub use privilege::{is_root, privileged};
pub use proc::ChildProcess;
pub use zk::ZkServer;
