//! Streaming tokio codec for Motan2 frames: waits until a whole frame is buffered, checks the
//! declared sizes against limits before reserving anything, and hands out meta and body as
//! slices of the read buffer (no copies).
use bytes::{Buf, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::error::FrameError;
use super::frame::{Frame, HEADER_LEN, Header, MAGIC, MIN_FRAME, VERSION_MOTAN2};
use super::meta::Meta;

/// Limits checked before anything is allocated for a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest meta block, bytes.
    pub max_meta: usize,
    /// Largest body, bytes (also the bound for a gunzipped body).
    pub max_body: usize,
    /// Most meta entries (duplicates counted).
    pub max_meta_entries: usize,
}

/// motan-go's default `maxContentLength`: 10 MiB, for meta and body separately.
pub const DEFAULT_MAX_CONTENT_LENGTH: usize = 10 << 20;

impl DecodeLimits {
    /// The URL parameter `maxContentLength`: one value for meta and body (spec 1.5).
    pub fn with_max_content_length(n: usize) -> DecodeLimits {
        DecodeLimits {
            max_meta: n,
            max_body: n,
            ..DecodeLimits::default()
        }
    }
}

impl Default for DecodeLimits {
    /// 10 MiB meta and body; 4096 meta entries (upstream has no count limit, real frames carry
    /// about ten).
    fn default() -> Self {
        DecodeLimits {
            max_meta: DEFAULT_MAX_CONTENT_LENGTH,
            max_body: DEFAULT_MAX_CONTENT_LENGTH,
            max_meta_entries: 4096,
        }
    }
}

/// Decoder errors: a malformed frame or an I/O error of the stream.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Which framing a connection speaks, from the first 4 bytes of a frame (spec 1.12).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireVersion {
    /// Legacy motan v1 (see [`super::v1`]).
    Motan1,
    Motan2,
}

/// Peek at the start of a frame: None while fewer than 4 bytes are buffered; wrong magic or an
/// unknown version is an error (motan-go closes the connection).
pub fn sniff(src: &[u8]) -> Result<Option<WireVersion>, FrameError> {
    if src.len() >= 2 {
        let magic = u16::from_be_bytes([src[0], src[1]]);
        if magic != MAGIC {
            return Err(FrameError::WrongMagic(magic));
        }
    }
    if src.len() < 4 {
        return Ok(None);
    }
    match src[3] >> 3 {
        VERSION_MOTAN2 => Ok(Some(WireVersion::Motan2)),
        0 => Ok(Some(WireVersion::Motan1)),
        v => Err(FrameError::UnsupportedVersion(v)),
    }
}

/// The whole frame's length once its length fields are buffered (None while more bytes are
/// needed), after checking magic, version and both sizes. Never allocates.
pub fn frame_len(src: &[u8], limits: &DecodeLimits) -> Result<Option<usize>, FrameError> {
    if let Some(WireVersion::Motan1) = sniff(src)? {
        return Err(FrameError::MotanV1);
    }
    let Some(meta_len) = be_u32_at(src, HEADER_LEN) else {
        return Ok(None);
    };
    if meta_len > limits.max_meta {
        return Err(FrameError::MetaTooLarge {
            len: meta_len,
            max: limits.max_meta,
        });
    }
    // Both sizes are at most u32::MAX, so on 64-bit targets nothing here can overflow; the
    // saturating adds keep 32-bit targets from wrapping (the buffer can never be that long).
    let body_len_at = (HEADER_LEN + 4).saturating_add(meta_len);
    let Some(body_len) = be_u32_at(src, body_len_at) else {
        return Ok(None);
    };
    if body_len > limits.max_body {
        return Err(FrameError::BodyTooLarge {
            len: body_len,
            max: limits.max_body,
        });
    }
    Ok(Some((MIN_FRAME + meta_len).saturating_add(body_len)))
}

fn be_u32_at(src: &[u8], at: usize) -> Option<usize> {
    let b = src.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes(b.try_into().ok()?) as usize)
}

/// tokio codec for Motan2 frames. A motan v1 frame is reported as [`FrameError::MotanV1`] with
/// its bytes left in the buffer, so the caller can hand them to [`super::v1`] or close.
#[derive(Clone, Debug, Default)]
pub struct Motan2Codec {
    pub limits: DecodeLimits,
}

impl Motan2Codec {
    pub fn new(limits: DecodeLimits) -> Motan2Codec {
        Motan2Codec { limits }
    }
}

impl Decoder for Motan2Codec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        let Some(total) = frame_len(src, &self.limits)? else {
            return Ok(None);
        };
        if src.len() < total {
            // Sizes are within the limits: reserve exactly the rest of this frame.
            src.reserve(total - src.len());
            return Ok(None);
        }
        let mut frame = src.split_to(total).freeze();
        let header = Header {
            flags: frame[2],
            version_status: frame[3],
            serialization_byte: frame[4],
            request_id: u64::from_be_bytes(frame[5..HEADER_LEN].try_into().expect("8 bytes")),
        };
        frame.advance(HEADER_LEN);
        let meta_len = frame.get_u32() as usize;
        let meta = Meta::decode(frame.split_to(meta_len), self.limits.max_meta_entries)?;
        frame.advance(4);
        Ok(Some(Frame {
            header,
            meta,
            body: frame,
        }))
    }
}

fn check_encodable(item: &Frame) -> Result<(), FrameError> {
    for (what, len) in [("meta", item.meta.encoded_len()), ("body", item.body.len())] {
        if u32::try_from(len).is_err() {
            return Err(FrameError::TooLargeToEncode { what, len });
        }
    }
    Ok(())
}

impl Encoder<&Frame> for Motan2Codec {
    type Error = CodecError;
    fn encode(&mut self, item: &Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        check_encodable(item)?;
        item.encode(dst);
        Ok(())
    }
}

impl Encoder<Frame> for Motan2Codec {
    type Error = CodecError;
    fn encode(&mut self, item: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        Encoder::<&Frame>::encode(self, &item, dst)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn hello() -> Frame {
        let mut f = Frame::request(
            7,
            "com.weibo.HelloService",
            "hello",
            Bytes::from_static(b"\x01\x00\x00\x00\x05world"),
        );
        f.meta.insert("M_g", "g");
        f
    }

    fn decode_err(c: &mut Motan2Codec, bytes: &[u8]) -> FrameError {
        match c.decode(&mut BytesMut::from(bytes)) {
            Err(CodecError::Frame(e)) => e,
            other => panic!("expected a frame error, got {other:?}"),
        }
    }

    #[test]
    fn every_split_point_waits_then_decodes() {
        let f = hello();
        let bytes = f.encode_to_bytes();
        assert_eq!(bytes.len(), f.encoded_len());
        let mut codec = Motan2Codec::default();
        for cut in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..cut]);
            assert!(codec.decode(&mut buf).unwrap().is_none(), "cut {cut}");
            buf.extend_from_slice(&bytes[cut..]);
            assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), f);
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn back_to_back_frames() {
        let mut buf = BytesMut::new();
        let mut codec = Motan2Codec::default();
        for id in 0..3 {
            codec.encode(Frame::heartbeat_request(id), &mut buf).unwrap();
        }
        codec.encode(&hello(), &mut buf).unwrap();
        let ids: Vec<u64> = std::iter::from_fn(|| codec.decode(&mut buf).unwrap())
            .map(|f| f.header.request_id)
            .collect();
        assert_eq!(ids, [0, 1, 2, 7]);
    }

    #[test]
    fn meta_and_body_are_slices_of_the_read_buffer() {
        let bytes = hello().encode_to_bytes();
        let mut buf = BytesMut::from(&bytes[..]);
        let range = buf.as_ptr() as usize..buf.as_ptr() as usize + bytes.len();
        let f = Motan2Codec::default().decode(&mut buf).unwrap().unwrap();
        assert!(range.contains(&(f.body.as_ptr() as usize)), "body was copied");
        let (k, v) = f.meta.iter().next().unwrap();
        assert!(range.contains(&(k.as_ptr() as usize)) && range.contains(&(v.as_ptr() as usize)));
    }

    #[test]
    fn reserves_only_what_the_frame_needs() {
        let mut f = hello();
        f.body = Bytes::from(vec![7u8; 100_000]);
        let bytes = f.encode_to_bytes();
        let mut buf = BytesMut::with_capacity(64);
        buf.extend_from_slice(&bytes[..64]);
        assert!(Motan2Codec::default().decode(&mut buf).unwrap().is_none());
        assert!(buf.capacity() >= bytes.len() && buf.capacity() < 2 * bytes.len());
    }

    #[test]
    fn typed_errors() {
        let limits = DecodeLimits {
            max_meta: 64,
            max_body: 64,
            max_meta_entries: 2,
        };
        let mut c = Motan2Codec::new(limits);
        assert_eq!(decode_err(&mut c, b"\xf0\xf0"), FrameError::WrongMagic(0xf0f0));
        assert_eq!(decode_err(&mut c, b"\xf1\xf1\x00\x01"), FrameError::MotanV1);
        assert_eq!(
            decode_err(&mut c, b"\xf1\xf1\x00\x10"),
            FrameError::UnsupportedVersion(2)
        );
        // Oversized meta: refused from the 17-byte prefix, nothing reserved.
        let mut b = BytesMut::from(&b"\xf1\xf1\x00\x08\x30\0\0\0\0\0\0\0\x01\xff\xff\xff\xff"[..]);
        let cap = b.capacity();
        assert!(matches!(
            c.decode(&mut b),
            Err(CodecError::Frame(FrameError::MetaTooLarge {
                len: 0xffff_ffff,
                max: 64
            }))
        ));
        assert_eq!(b.capacity(), cap);
        let mut f = hello();
        f.body = Bytes::from(vec![0u8; 65]);
        let wire = f.encode_to_bytes();
        // Refused as soon as the body length is in, before the body arrives.
        assert_eq!(
            decode_err(&mut c, &wire[..wire.len() - 65]),
            FrameError::BodyTooLarge { len: 65, max: 64 }
        );
        f.body = Bytes::new();
        assert_eq!(
            decode_err(&mut c, &f.encode_to_bytes()),
            FrameError::TooManyMetaEntries(2)
        );
        let mut odd = BytesMut::from(&b"\xf1\xf1\x00\x08\x30\0\0\0\0\0\0\0\x01\0\0\0\x01k\0\0\0\0"[..]);
        assert!(matches!(
            c.decode(&mut odd),
            Err(CodecError::Frame(FrameError::BadMeta(_)))
        ));
    }

    #[test]
    fn sniffing_and_limits_helpers() {
        assert_eq!(sniff(b"\xf1"), Ok(None));
        assert_eq!(sniff(b"\xf1\xf1\x00\x08"), Ok(Some(WireVersion::Motan2)));
        assert_eq!(sniff(b"\xf1\xf1\x00\x01"), Ok(Some(WireVersion::Motan1)));
        assert_eq!(sniff(b"GET "), Err(FrameError::WrongMagic(0x4745)));
        let l = DecodeLimits::with_max_content_length(100);
        assert_eq!((l.max_meta, l.max_body), (100, 100));
    }

    #[test]
    fn unknown_header_bits_pass_through() {
        let mut f = hello();
        f.header.flags = 0xe5;
        f.header.serialization_byte = 0x47;
        f.header.version_status = 0x0f;
        let wire = f.encode_to_bytes();
        let back = Motan2Codec::default()
            .decode(&mut BytesMut::from(&wire[..]))
            .unwrap()
            .unwrap();
        assert_eq!(back, f);
        assert_eq!(back.encode_to_bytes(), wire);
    }
}
