//! Upstream connections: multiplexed Motan2 channels and the pools that hold them.
pub mod channel;
