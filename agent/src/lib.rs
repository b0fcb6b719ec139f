//! sockmesh: a Motan2 service-mesh node agent with eBPF socket interception.
//!
//! Data flows one way: intercept -> proxy (accept, detect protocol) -> filters -> cluster
//! (route, pick endpoint, retry) -> pool -> upstream. See ARCHITECTURE.md.

pub mod admin;
pub mod app;
pub mod cgroup;
pub mod check;
pub mod cluster;
pub mod config;
pub mod control;
pub mod drain;
pub mod filter;
pub mod install;
pub mod intercept;
pub mod locks;
pub mod log_file;
pub mod log_writer;
pub mod meta;
pub mod metrics;
pub mod net;
pub mod observe;
pub mod ping;
pub mod protocol;
pub mod provider;
pub mod proxy;
pub mod recent;
pub mod registry;
pub mod shard;
pub mod switcher;
pub mod sys;
pub mod unix_socket;
pub mod upstream;
pub mod url;
pub mod write_queue;

/// The BPF object built by `cargo xtask build-ebpf`, embedded at compile time.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("SOCKMESH_EBPF_OBJECT"));
