//! Wire protocols the agent speaks.
pub mod http;
pub mod motan2;
