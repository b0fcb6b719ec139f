//! Motan2 frames, meta and the simple serialization (see shared spec).
