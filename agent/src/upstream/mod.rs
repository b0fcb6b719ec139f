//! Upstream connections: multiplexed Motan2 channels and the pools that hold them, and pooled
//! HTTP/1.1 connections to HTTP upstreams.
pub mod channel;
pub mod http;
