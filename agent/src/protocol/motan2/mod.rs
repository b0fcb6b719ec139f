//! Motan2 wire protocol (spec: shared motan2.md sections 1-3, vectors in tests/data/motan2/):
//! - `frame`: header, [`Frame`], heartbeat and exception builders, request/response views, gzip;
//! - `meta`: the meta block and the well-known keys;
//! - `codec`: the streaming tokio codec with size limits;
//! - `error`: typed decode errors and the `M_e` exception convention;
//! - `simple`: the simple serialization ([`Value`]);
//! - `breeze`: the Breeze string map of the MetaService (`getDynamicMeta`);
//! - `v1`: legacy motan v1 framing, enough to answer v1 heartbeats.
pub mod breeze;
pub mod call;
pub mod codec;
pub mod error;
pub mod frame;
pub mod meta;
pub mod simple;
pub mod v1;

pub use call::{CallError, ErrorKind};
pub use codec::{CodecError, DecodeLimits, Motan2Codec, WireVersion};
pub use error::{ErrorType, Exception, FrameError, SimpleError};
pub use frame::{Frame, Header, Request, Response};
pub use meta::{Meta, keys};
pub use simple::Value;
