//! Connection handling: accept, recover the original destination, detect the protocol, forward.
pub mod budget;
pub mod http_proxy;
pub mod http_route;
pub mod inbound;
pub mod mesh;
pub mod outbound;
pub mod passthrough;
pub mod read_hook;
pub mod serve;
pub mod transparent;
