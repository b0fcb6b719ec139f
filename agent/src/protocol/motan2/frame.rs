//! Motan2 frames (spec section 1): header, meta block, body; a streaming tokio codec that checks
//! declared sizes against limits before allocating and hands out the body as a `Bytes` slice of
//! the read buffer (no copy).
use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::error::{Exception, FrameError};

pub const MAGIC: u16 = 0xF1F1;
pub const HEADER_LEN: usize = 13;
/// Header plus the two length fields: the smallest frame.
pub const MIN_FRAME: usize = 21;

pub const FLAG_RESPONSE: u8 = 0x01;
pub const FLAG_PROXY: u8 = 0x02;
pub const FLAG_ONEWAY: u8 = 0x04;
pub const FLAG_GZIP: u8 = 0x08;
pub const FLAG_HEARTBEAT: u8 = 0x10;

pub const VERSION_MOTAN2: u8 = 1;
pub const STATUS_NORMAL: u8 = 0;
pub const STATUS_EXCEPTION: u8 = 1;

/// Serialization numbers (spec 1.2).
pub const SERIALIZATION_HESSIAN2: u8 = 0;
pub const SERIALIZATION_SIMPLE: u8 = 6;

/// Well-known meta keys (spec 1.11).
pub mod keys {
    pub const SERVICE: &str = "M_p";
    pub const METHOD: &str = "M_m";
    pub const METHOD_DESC: &str = "M_md";
    pub const GROUP: &str = "M_g";
    pub const VERSION: &str = "M_v";
    pub const MODULE: &str = "M_mdu";
    pub const SOURCE: &str = "M_s";
    pub const PROXY_PROTOCOL: &str = "M_pp";
    pub const REQUEST_ID: &str = "M_rid";
    pub const TIMEOUT: &str = "M_tmo";
    pub const FRAMEWORK_SERVICE: &str = "M_fws";
    pub const EXCEPTION: &str = "M_e";
    pub const PROCESS_TIME: &str = "M_pt";
    pub const HOST: &str = "host";
}

/// Limits checked before anything is allocated for a frame.
#[derive(Clone, Copy, Debug)]
pub struct DecodeLimits {
    pub max_meta: usize,
    pub max_body: usize,
    pub max_meta_entries: usize,
}

impl Default for DecodeLimits {
    /// motan-go's `maxContentLength` default (10 MiB) for meta and body; 4096 meta entries.
    fn default() -> Self {
        DecodeLimits {
            max_meta: 10 << 20,
            max_body: 10 << 20,
            max_meta_entries: 4096,
        }
    }
}

/// The 13-byte header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub flags: u8,
    /// Version (bits 7..3) and status (bits 2..0) as on the wire.
    pub version_status: u8,
    /// The serialization number (the wire byte shifted right by 3).
    pub serialization: u8,
    pub request_id: u64,
}

impl Header {
    pub fn request(request_id: u64, serialization: u8) -> Header {
        Header {
            flags: 0,
            version_status: VERSION_MOTAN2 << 3,
            serialization,
            request_id,
        }
    }
    pub fn version(&self) -> u8 {
        self.version_status >> 3
    }
    pub fn status(&self) -> u8 {
        self.version_status & 0x07
    }
    pub fn set_status(&mut self, status: u8) {
        self.version_status = (self.version_status & !0x07) | (status & 0x07);
    }
    fn flag(&self, f: u8) -> bool {
        self.flags & f != 0
    }
    pub fn is_response(&self) -> bool {
        self.flag(FLAG_RESPONSE)
    }
    pub fn is_proxy(&self) -> bool {
        self.flag(FLAG_PROXY)
    }
    pub fn is_oneway(&self) -> bool {
        self.flag(FLAG_ONEWAY)
    }
    pub fn is_gzip(&self) -> bool {
        self.flag(FLAG_GZIP)
    }
    /// Receivers recognise heartbeats by this flag alone (spec 1.7).
    pub fn is_heartbeat(&self) -> bool {
        self.flag(FLAG_HEARTBEAT)
    }
    pub fn set_flag(&mut self, f: u8, on: bool) {
        if on { self.flags |= f } else { self.flags &= !f }
    }
}

/// The meta map: string keys and values, last one wins, insertion order kept for encoding.
/// Keys and values are `Bytes` slices of the frame (no copies); nothing validates UTF-8 here.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    entries: Vec<(Bytes, Bytes)>,
}

impl Meta {
    pub fn new() -> Meta {
        Meta::default()
    }

    pub fn get_bytes(&self, key: &str) -> Option<&Bytes> {
        self.entries
            .iter()
            .rev()
            .find(|(k, _)| k.as_ref() == key.as_bytes())
            .map(|(_, v)| v)
    }

    /// The value as UTF-8 text (None when absent or not UTF-8).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.get_bytes(key).and_then(|v| std::str::from_utf8(v).ok())
    }

    pub fn contains(&self, key: &str) -> bool {
        self.get_bytes(key).is_some()
    }

    /// Set a key (replacing every earlier value of it).
    pub fn insert(&mut self, key: impl Into<Bytes>, value: impl Into<Bytes>) {
        let key = key.into();
        self.entries.retain(|(k, _)| *k != key);
        self.entries.push((key, value.into()));
    }

    pub fn remove(&mut self, key: &str) -> Option<Bytes> {
        let v = self.get_bytes(key).cloned();
        self.entries.retain(|(k, _)| k.as_ref() != key.as_bytes());
        v
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Bytes, &Bytes)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Go's encoder drops entries with an empty key or value, or with a newline in either
    /// (spec 1.3); we encode the same way so every peer can read what we send.
    fn encodable(k: &[u8], v: &[u8]) -> bool {
        !k.is_empty() && !v.is_empty() && !k.contains(&b'\n') && !v.contains(&b'\n')
    }

    pub fn encoded_len(&self) -> usize {
        let mut n = 0;
        let mut first = true;
        for (k, v) in &self.entries {
            if Meta::encodable(k, v) {
                n += k.len() + v.len() + 1 + if first { 0 } else { 1 };
                first = false;
            }
        }
        n
    }

    fn encode_into(&self, dst: &mut BytesMut) {
        let mut first = true;
        for (k, v) in &self.entries {
            if Meta::encodable(k, v) {
                if !first {
                    dst.put_u8(b'\n');
                }
                dst.put_slice(k);
                dst.put_u8(b'\n');
                dst.put_slice(v);
                first = false;
            }
        }
    }

    /// Decode like motan-go: split on `\n`, segments alternate key and value; an empty segment
    /// where a key is expected is skipped (Go shifts pairs the same way); an odd number of
    /// segments is an error; duplicates: last wins.
    pub fn decode(block: Bytes, max_entries: usize) -> Result<Meta, FrameError> {
        if block.is_empty() {
            return Ok(Meta::default());
        }
        let bytes = block.as_ref();
        let segments = bytes.iter().filter(|b| **b == b'\n').count() + 1;
        let mut entries: Vec<(Bytes, Bytes)> = Vec::with_capacity((segments / 2).min(max_entries));
        let mut key: Option<Bytes> = None;
        let mut start = 0;
        for i in 0..=bytes.len() {
            if i < bytes.len() && bytes[i] != b'\n' {
                continue;
            }
            let seg = block.slice(start..i);
            start = i + 1;
            match key.take() {
                None if seg.is_empty() => {}
                None => key = Some(seg),
                Some(k) => {
                    if entries.len() >= max_entries {
                        return Err(FrameError::TooManyMetaEntries(max_entries));
                    }
                    // Duplicates stay in the list (linear decode even for hostile input);
                    // lookups take the last one, as every upstream decoder does.
                    entries.push((k, seg));
                }
            }
        }
        if key.is_some() {
            return Err(FrameError::BadMeta(
                "a key without a value (odd number of segments)",
            ));
        }
        Ok(Meta { entries })
    }
}

/// One Motan2 message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub header: Header,
    pub meta: Meta,
    pub body: Bytes,
}

impl Frame {
    pub fn request(request_id: u64, service: &str, method: &str, body: Bytes) -> Frame {
        let mut meta = Meta::new();
        meta.insert(keys::SERVICE, Bytes::copy_from_slice(service.as_bytes()));
        meta.insert(keys::METHOD, Bytes::copy_from_slice(method.as_bytes()));
        Frame {
            header: Header::request(request_id, SERIALIZATION_SIMPLE),
            meta,
            body,
        }
    }

    /// A heartbeat request exactly as motan-go sends it (flags 0x12, 0x08, 0x30).
    pub fn heartbeat_request(request_id: u64) -> Frame {
        Frame {
            header: Header {
                flags: FLAG_HEARTBEAT | FLAG_PROXY,
                version_status: VERSION_MOTAN2 << 3,
                serialization: SERIALIZATION_SIMPLE,
                request_id,
            },
            meta: Meta::new(),
            body: Bytes::new(),
        }
    }

    /// The heartbeat response motan-go builds, whatever the request looked like (spec 1.7).
    pub fn heartbeat_response(request_id: u64) -> Frame {
        let mut f = Frame::heartbeat_request(request_id);
        f.header.flags |= FLAG_RESPONSE;
        f
    }

    /// An exception response (status 1, empty body, `M_e`, `M_pt`). Agent-built ones use
    /// serialization 0 and the proxy bit (spec 1.10).
    pub fn exception_response(request_id: u64, e: &Exception, serialization: u8, proxy: bool) -> Frame {
        let mut meta = Meta::new();
        meta.insert(keys::EXCEPTION, Bytes::from(e.to_json()));
        meta.insert(keys::PROCESS_TIME, Bytes::from_static(b"0"));
        let mut header = Header {
            flags: FLAG_RESPONSE | if proxy { FLAG_PROXY } else { 0 },
            version_status: (VERSION_MOTAN2 << 3) | STATUS_EXCEPTION,
            serialization,
            request_id,
        };
        header.set_status(STATUS_EXCEPTION);
        Frame {
            header,
            meta,
            body: Bytes::new(),
        }
    }

    /// A normal response to `req` with `body` (same id and serialization).
    pub fn response_to(req: &Frame, body: Bytes) -> Frame {
        Frame {
            header: Header {
                flags: FLAG_RESPONSE,
                version_status: VERSION_MOTAN2 << 3,
                serialization: req.header.serialization,
                request_id: req.header.request_id,
            },
            meta: Meta::new(),
            body,
        }
    }

    pub fn is_request(&self) -> bool {
        !self.header.is_response()
    }

    pub fn service(&self) -> Option<&str> {
        self.meta.get(keys::SERVICE)
    }
    pub fn method(&self) -> Option<&str> {
        self.meta.get(keys::METHOD)
    }
    pub fn method_desc(&self) -> Option<&str> {
        self.meta.get(keys::METHOD_DESC)
    }
    pub fn group(&self) -> Option<&str> {
        self.meta.get(keys::GROUP)
    }
    pub fn version(&self) -> Option<&str> {
        self.meta.get(keys::VERSION)
    }
    pub fn source(&self) -> Option<&str> {
        self.meta.get(keys::SOURCE)
    }
    pub fn proxy_protocol(&self) -> Option<&str> {
        self.meta.get(keys::PROXY_PROTOCOL)
    }
    /// `M_rid`: the caller's original request id (signed decimal); unparsable counts as 0.
    pub fn meta_request_id(&self) -> Option<i64> {
        self.meta
            .get(keys::REQUEST_ID)
            .map(|v| v.trim().parse().unwrap_or(0))
    }
    /// `M_tmo` in milliseconds.
    pub fn timeout_ms(&self) -> Option<u64> {
        self.meta.get(keys::TIMEOUT).and_then(|v| v.trim().parse().ok())
    }
    /// `M_pt` in milliseconds.
    pub fn process_time_ms(&self) -> Option<u64> {
        self.meta
            .get(keys::PROCESS_TIME)
            .and_then(|v| v.trim().parse().ok())
    }
    pub fn is_exception(&self) -> bool {
        self.header.status() == STATUS_EXCEPTION
    }
    /// The exception of a status-1 response (a generic one when `M_e` is missing or broken).
    pub fn exception(&self) -> Option<Exception> {
        if !self.is_exception() {
            return None;
        }
        Some(
            self.meta
                .get_bytes(keys::EXCEPTION)
                .and_then(|j| Exception::parse(j))
                .unwrap_or_else(Exception::default_remote),
        )
    }

    pub fn encoded_len(&self) -> usize {
        MIN_FRAME + self.meta.encoded_len() + self.body.len()
    }

    /// Append the frame to `dst` as one contiguous run of bytes.
    pub fn encode(&self, dst: &mut BytesMut) {
        let meta_len = self.meta.encoded_len();
        dst.reserve(MIN_FRAME + meta_len + self.body.len());
        dst.put_u16(MAGIC);
        dst.put_u8(self.header.flags);
        dst.put_u8(self.header.version_status);
        dst.put_u8(self.header.serialization << 3);
        dst.put_u64(self.header.request_id);
        dst.put_u32(meta_len as u32);
        self.meta.encode_into(dst);
        dst.put_u32(self.body.len() as u32);
        dst.put_slice(&self.body);
    }

    /// The frame as one buffer (write it with a single write: some clients break on fragments).
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(self.encoded_len());
        self.encode(&mut b);
        b.freeze()
    }

    /// Gunzip a gzip-flagged body (bounded by `max`) and clear the flag (spec 1.6).
    pub fn gunzip(&mut self, max: usize) -> Result<(), FrameError> {
        if !self.header.is_gzip() {
            return Ok(());
        }
        use std::io::Read;
        let mut out = Vec::new();
        let mut dec = flate2::read::GzDecoder::new(self.body.as_ref()).take(max as u64 + 1);
        dec.read_to_end(&mut out)
            .map_err(|e| FrameError::Gzip(e.to_string()))?;
        if out.len() > max {
            return Err(FrameError::BodyTooLarge { len: out.len(), max });
        }
        self.body = Bytes::from(out);
        self.header.set_flag(FLAG_GZIP, false);
        Ok(())
    }

    /// Gzip the body (level 1) when `min_size > 0`, the body is longer and not gzipped yet.
    pub fn gzip_if_larger(&mut self, min_size: usize) {
        if min_size == 0 || self.body.len() <= min_size || self.header.is_gzip() {
            return;
        }
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        if enc.write_all(&self.body).is_ok()
            && let Ok(z) = enc.finish()
        {
            self.body = Bytes::from(z);
            self.header.set_flag(FLAG_GZIP, true);
        }
    }
}

/// tokio codec for Motan2 frames.
#[derive(Clone, Debug, Default)]
pub struct Motan2Codec {
    pub limits: DecodeLimits,
}

impl Motan2Codec {
    pub fn new(limits: DecodeLimits) -> Motan2Codec {
        Motan2Codec { limits }
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

/// Check what the buffered prefix says; returns the full frame length once the length fields
/// are in, None while more bytes are needed. Never allocates.
pub fn frame_len(src: &[u8], limits: &DecodeLimits) -> Result<Option<usize>, FrameError> {
    if src.len() >= 2 {
        let magic = u16::from_be_bytes([src[0], src[1]]);
        if magic != MAGIC {
            return Err(FrameError::WrongMagic(magic));
        }
    }
    if src.len() >= 4 {
        match src[3] >> 3 {
            VERSION_MOTAN2 => {}
            0 => return Err(FrameError::MotanV1),
            v => return Err(FrameError::UnsupportedVersion(v)),
        }
    }
    if src.len() < HEADER_LEN + 4 {
        return Ok(None);
    }
    let meta_len = u32::from_be_bytes(src[13..17].try_into().unwrap()) as usize;
    if meta_len > limits.max_meta {
        return Err(FrameError::MetaTooLarge {
            len: meta_len,
            max: limits.max_meta,
        });
    }
    let body_len_at = HEADER_LEN + 4 + meta_len;
    if src.len() < body_len_at + 4 {
        return Ok(None);
    }
    let body_len = u32::from_be_bytes(src[body_len_at..body_len_at + 4].try_into().unwrap()) as usize;
    if body_len > limits.max_body {
        return Err(FrameError::BodyTooLarge {
            len: body_len,
            max: limits.max_body,
        });
    }
    Ok(Some(body_len_at + 4 + body_len))
}

impl Decoder for Motan2Codec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        let Some(total) = frame_len(src, &self.limits)? else {
            return Ok(None);
        };
        if src.len() < total {
            // Sizes were checked against the limits, so this reservation is bounded.
            src.reserve(total - src.len());
            return Ok(None);
        }
        let mut frame = src.split_to(total).freeze();
        let header = Header {
            flags: frame[2],
            version_status: frame[3],
            serialization: frame[4] >> 3,
            request_id: u64::from_be_bytes(frame[5..13].try_into().unwrap()),
        };
        frame.advance(HEADER_LEN);
        let meta_len = frame.get_u32() as usize;
        let meta = Meta::decode(frame.split_to(meta_len), self.limits.max_meta_entries)?;
        let body_len = frame.get_u32() as usize;
        let body = frame.split_to(body_len);
        Ok(Some(Frame { header, meta, body }))
    }
}

impl Encoder<&Frame> for Motan2Codec {
    type Error = CodecError;
    fn encode(&mut self, item: &Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        item.encode(dst);
        Ok(())
    }
}

impl Encoder<Frame> for Motan2Codec {
    type Error = CodecError;
    fn encode(&mut self, item: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        item.encode(dst);
        Ok(())
    }
}

/// The motan v1 heartbeat response template (vector frame_15) for a v1 heartbeat request's id,
/// so old Java clients' keepalive works (spec 1.12). Returns None unless `req` is a v1 heartbeat
/// request (service `com.weibo.api.motan.rpc.heartbeat`).
pub fn motan1_heartbeat_response(req: &[u8]) -> Option<Bytes> {
    const RESPONSE_TEMPLATE: &str =
        include_str!("../../../../tests/data/motan2/frame_15_motan1_heartbeat_response.hex");
    if req.len() < 32 || req[0..2] != [0xF1, 0xF1] || req[3] >> 3 != 0 || req[16..18] != [0xF0, 0xF0] {
        return None;
    }
    let needle = b"com.weibo.api.motan.rpc.heartbeat";
    if !req.windows(needle.len()).any(|w| w == needle) {
        return None;
    }
    let hex: String = RESPONSE_TEMPLATE
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<String>();
    let mut out: Vec<u8> = (0..hex.trim().len() / 2)
        .filter_map(|i| u8::from_str_radix(hex.trim().get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    if out.len() < 32 {
        return None;
    }
    // The request id sits in the outer (4..12) and inner (20..28) headers.
    out[4..12].copy_from_slice(&req[4..12]);
    out[20..28].copy_from_slice(&req[20..28]);
    Some(Bytes::from(out))
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn round_trip_and_streaming() {
        let f = hello();
        let bytes = f.to_bytes();
        assert_eq!(bytes.len(), f.encoded_len());
        let mut codec = Motan2Codec::default();
        // Every split point: partial frames wait for more bytes.
        for cut in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..cut]);
            assert!(codec.decode(&mut buf).unwrap().is_none(), "cut {cut}");
            buf.extend_from_slice(&bytes[cut..]);
            assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), f);
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn body_is_a_slice_of_the_read_buffer() {
        let bytes = hello().to_bytes();
        let mut buf = BytesMut::from(&bytes[..]);
        let base = buf.as_ptr() as usize;
        let f = Motan2Codec::default().decode(&mut buf).unwrap().unwrap();
        let at = f.body.as_ptr() as usize;
        assert!(at >= base && at < base + bytes.len(), "body was copied");
    }

    #[test]
    fn typed_errors() {
        let limits = DecodeLimits {
            max_meta: 64,
            max_body: 64,
            max_meta_entries: 2,
        };
        let mut c = Motan2Codec::new(limits);
        let mut b = BytesMut::from(&b"\xf0\xf0\x00\x08"[..]);
        assert!(matches!(
            c.decode(&mut b),
            Err(CodecError::Frame(FrameError::WrongMagic(0xf0f0)))
        ));
        let mut b = BytesMut::from(&b"\xf1\xf1\x00\x01"[..]);
        assert!(matches!(
            c.decode(&mut b),
            Err(CodecError::Frame(FrameError::MotanV1))
        ));
        let mut b = BytesMut::from(&b"\xf1\xf1\x00\x10"[..]);
        assert!(matches!(
            c.decode(&mut b),
            Err(CodecError::Frame(FrameError::UnsupportedVersion(2)))
        ));
        // Oversized meta declared: refused from the 17-byte prefix, nothing reserved.
        let mut b = BytesMut::from(&b"\xf1\xf1\x00\x08\x30\0\0\0\0\0\0\0\x01\xff\xff\xff\xff"[..]);
        let cap = b.capacity();
        assert!(matches!(
            c.decode(&mut b),
            Err(CodecError::Frame(FrameError::MetaTooLarge { .. }))
        ));
        assert_eq!(b.capacity(), cap);
        let mut f = hello();
        f.body = Bytes::from(vec![0u8; 65]);
        let mut b = BytesMut::from(&f.to_bytes()[..]);
        assert!(matches!(
            c.decode(&mut b),
            Err(CodecError::Frame(FrameError::BodyTooLarge { len: 65, max: 64 }))
        ));
        f.body = Bytes::new();
        let mut b = BytesMut::from(&f.to_bytes()[..]);
        assert!(matches!(
            c.decode(&mut b),
            Err(CodecError::Frame(FrameError::TooManyMetaEntries(2)))
        ));
    }

    #[test]
    fn meta_decoding_follows_motan_go() {
        let m = Meta::decode(Bytes::from_static(b"a\n\nb\nc"), 10).unwrap();
        assert_eq!((m.get("a"), m.get("b")), (Some(""), Some("c")));
        let m = Meta::decode(Bytes::from_static(b"a\nx\nb\n"), 10).unwrap();
        assert_eq!((m.get("a"), m.get("b")), (Some("x"), Some("")));
        let m = Meta::decode(Bytes::from_static(b"k\n1\nk\n2"), 10).unwrap();
        assert_eq!(m.get("k"), Some("2"));
        assert!(matches!(
            Meta::decode(Bytes::from_static(b"a\nb\nc"), 10),
            Err(FrameError::BadMeta(_))
        ));
        // Encoding drops what Go cannot send.
        let mut m = Meta::new();
        m.insert("ok", "1");
        m.insert("empty", "");
        m.insert("nl", "a\nb");
        let mut b = BytesMut::new();
        m.encode_into(&mut b);
        assert_eq!(&b[..], b"ok\n1");
        assert_eq!(m.encoded_len(), 4);
    }

    #[test]
    fn heartbeats_and_exceptions() {
        let hb = Frame::heartbeat_request(1).to_bytes();
        assert_eq!(&hb[..], b"\xf1\xf1\x12\x08\x30\0\0\0\0\0\0\0\x01\0\0\0\0\0\0\0\0");
        let r = Frame::heartbeat_response(1);
        assert!(r.header.is_heartbeat() && r.header.is_response());
        let e = Exception::service(400, "nope");
        let f = Frame::exception_response(9, &e, 0, true);
        assert_eq!(
            (f.header.flags, f.header.version_status, f.header.serialization),
            (0x03, 0x09, 0)
        );
        let back = Motan2Codec::default()
            .decode(&mut BytesMut::from(&f.to_bytes()[..]))
            .unwrap()
            .unwrap();
        assert_eq!(back.exception().unwrap(), e);
        let mut no_me = back.clone();
        no_me.meta.remove("M_e");
        assert_eq!(no_me.exception().unwrap(), Exception::default_remote());
    }

    #[test]
    fn gzip_round_trip_and_bound() {
        let mut f = hello();
        f.body = Bytes::from(vec![b'x'; 5000]);
        f.gzip_if_larger(100);
        assert!(f.header.is_gzip() && f.body.len() < 5000);
        let mut small = f.clone();
        assert!(matches!(small.gunzip(1000), Err(FrameError::BodyTooLarge { .. })));
        f.gunzip(10_000).unwrap();
        assert!(!f.header.is_gzip());
        assert_eq!(f.body, Bytes::from(vec![b'x'; 5000]));
    }
}
