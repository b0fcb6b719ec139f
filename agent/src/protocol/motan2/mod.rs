//! Motan2 wire protocol: frames and meta (`frame`), the `M_e` exception convention and typed
//! decode errors (`error`), and the simple serialization (`simple`). Spec: shared motan2.md,
//! vectors in tests/data/motan2/.
pub mod error;
pub mod frame;
pub mod simple;

pub use error::{ErrorType, Exception, FrameError, SimpleError};
pub use frame::{CodecError, DecodeLimits, Frame, Header, Meta, Motan2Codec, keys};
pub use simple::Value;
