//! Wire protocols the agent speaks.
pub mod motan2;
