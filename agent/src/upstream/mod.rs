//! Upstream connections: multiplexed Motan2 channels (`channel`) and the pools that hold them
//! (`pool`).
pub mod channel;
pub mod pool;
