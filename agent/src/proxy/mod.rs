//! Connection handling: accept, recover the original destination, detect the protocol, forward.
pub mod passthrough;
pub mod transparent;
