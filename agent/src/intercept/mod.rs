//! Transparent interception: steer app sockets to the agent's transparent listener.
pub mod ebpf;
pub mod iptables;
pub mod netns;
pub mod pins;
pub mod selftest;

pub use ebpf::{CgroupStatus, Cidr, EbpfInterceptor, InterceptSettings, StartError};
