//! One Motan2 message (spec section 1): the 13-byte header, meta, body; builders for the frames
//! an agent makes itself (heartbeats, exceptions), read-only request/response views of the
//! well-known meta keys, encoding into one contiguous buffer, and the gzip rules (spec 1.6).
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

use super::error::{Exception, FrameError};
use super::meta::{Meta, keys};

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

/// Serialization numbers (spec 1.2); the wire byte is the number shifted left by 3.
pub mod serialization {
    pub const HESSIAN2: u8 = 0;
    pub const GRPC_PB: u8 = 1;
    pub const JSON: u8 = 2;
    pub const MSGPACK: u8 = 3;
    pub const HPROSE: u8 = 4;
    pub const PROTOBUF: u8 = 5;
    pub const SIMPLE: u8 = 6;
    pub const GRPC_PB_JSON: u8 = 7;
    pub const BREEZE: u8 = 8;
}

/// The 13-byte header, kept as on the wire (a relaying agent passes bits it does not know
/// through unchanged, as motan-go does).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Message type bits (`FLAG_*`); bits 7..5 are unused but preserved.
    pub flags: u8,
    /// Version in bits 7..3, status in bits 2..0.
    pub version_status: u8,
    /// Serialization number in bits 7..3 (see [`Header::serialization`]).
    pub serialization_byte: u8,
    pub request_id: u64,
}

impl Header {
    /// A motan2 header with the given flags, status 0.
    pub fn new(flags: u8, serialization: u8, request_id: u64) -> Header {
        Header {
            flags,
            version_status: VERSION_MOTAN2 << 3,
            serialization_byte: serialization << 3,
            request_id,
        }
    }

    /// A plain request header (no flags).
    pub fn request(request_id: u64, serialization: u8) -> Header {
        Header::new(0, serialization, request_id)
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
    pub fn is_exception(&self) -> bool {
        self.status() == STATUS_EXCEPTION
    }

    /// The serialization number (`serialization::*`).
    pub fn serialization(&self) -> u8 {
        self.serialization_byte >> 3
    }
    pub fn set_serialization(&mut self, number: u8) {
        self.serialization_byte = number << 3;
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

/// One Motan2 message. A decoded frame's meta and body are slices of the read buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub header: Header,
    pub meta: Meta,
    pub body: Bytes,
}

impl Frame {
    /// A request with `M_p` and `M_m`, simple serialization.
    pub fn request(request_id: u64, service: &str, method: &str, body: Bytes) -> Frame {
        let mut meta = Meta::with_capacity(8);
        meta.insert(keys::SERVICE, Bytes::copy_from_slice(service.as_bytes()));
        meta.insert(keys::METHOD, Bytes::copy_from_slice(method.as_bytes()));
        Frame {
            header: Header::request(request_id, serialization::SIMPLE),
            meta,
            body,
        }
    }

    /// A heartbeat request exactly as motan-go sends it: `F1F1 12 08 30 <id> 0 0` (spec 1.7).
    pub fn heartbeat_request(request_id: u64) -> Frame {
        Frame {
            header: Header::new(FLAG_HEARTBEAT | FLAG_PROXY, serialization::SIMPLE, request_id),
            meta: Meta::new(),
            body: Bytes::new(),
        }
    }

    /// The heartbeat response motan-go builds whatever the request looked like: flags 0x13.
    pub fn heartbeat_response(request_id: u64) -> Frame {
        let mut f = Frame::heartbeat_request(request_id);
        f.header.flags |= FLAG_RESPONSE;
        f
    }

    /// An exception response: status 1, empty body, `M_e` in Go's format. Plain servers use the
    /// request's serialization and no proxy bit; see also [`Frame::agent_exception`].
    pub fn exception_response(request_id: u64, e: &Exception, serialization: u8, proxy: bool) -> Frame {
        let mut meta = Meta::with_capacity(2);
        meta.insert(keys::EXCEPTION, Bytes::from(e.to_json()));
        let mut header = Header::new(
            FLAG_RESPONSE | if proxy { FLAG_PROXY } else { 0 },
            serialization,
            request_id,
        );
        header.set_status(STATUS_EXCEPTION);
        Frame {
            header,
            meta,
            body: Bytes::new(),
        }
    }

    /// An exception the agent itself answers with (no cluster, no provider, ...): flags 0x03,
    /// serialization 0, as motan-go agents build them (spec 1.10).
    pub fn agent_exception(request_id: u64, e: &Exception) -> Frame {
        Frame::exception_response(request_id, e, serialization::HESSIAN2, true)
    }

    /// A success response to `req`: same id and serialization, flags 0x01, no meta.
    pub fn response_to(req: &Frame, body: Bytes) -> Frame {
        Frame {
            header: Header {
                flags: FLAG_RESPONSE,
                version_status: VERSION_MOTAN2 << 3,
                serialization_byte: req.header.serialization_byte,
                request_id: req.header.request_id,
            },
            meta: Meta::new(),
            body,
        }
    }

    /// Record `M_pt` (decimal milliseconds) unless a provider already set it (spec 1.10).
    pub fn set_process_time_if_absent(&mut self, took: Duration) {
        if !self.meta.contains(keys::PROCESS_TIME) {
            let ms = took.as_millis().to_string();
            self.meta.insert(keys::PROCESS_TIME, Bytes::from(ms));
        }
    }

    pub fn is_request(&self) -> bool {
        !self.header.is_response()
    }

    pub fn is_exception(&self) -> bool {
        self.header.is_exception()
    }

    /// The well-known request keys, if this is a request.
    pub fn as_request(&self) -> Option<Request<'_>> {
        self.is_request().then_some(Request { frame: self })
    }

    /// The response status and keys, if this is a response.
    pub fn as_response(&self) -> Option<Response<'_>> {
        self.header.is_response().then_some(Response { frame: self })
    }

    pub fn encoded_len(&self) -> usize {
        MIN_FRAME + self.meta.encoded_len() + self.body.len()
    }

    /// Append the frame to `dst` as one contiguous run of bytes, reserving once.
    ///
    /// # Panics
    /// If meta or body is 4 GiB or more (the length fields are u32); the codec's `Encoder`
    /// returns an error instead.
    pub fn encode(&self, dst: &mut BytesMut) {
        self.encode_with_id(dst, self.header.request_id);
    }

    /// [`Frame::encode`] with `request_id` in the header instead of the frame's own.
    fn encode_with_id(&self, dst: &mut BytesMut, request_id: u64) {
        let body_len32 = u32::try_from(self.body.len()).expect("body under 4 GiB");
        dst.reserve(MIN_FRAME + self.meta.max_encoded_len() + self.body.len());
        dst.put_u16(MAGIC);
        dst.put_u8(self.header.flags);
        dst.put_u8(self.header.version_status);
        dst.put_u8(self.header.serialization_byte);
        dst.put_u64(request_id);
        // The meta length is back-patched: one pass over the entries instead of two.
        let at = dst.len();
        dst.put_u32(0);
        self.meta.encode_into(dst);
        let meta_len = u32::try_from(dst.len() - at - 4).expect("meta block under 4 GiB");
        dst[at..at + 4].copy_from_slice(&meta_len.to_be_bytes());
        dst.put_u32(body_len32);
        dst.put_slice(&self.body);
    }

    /// The frame as one buffer, so it goes out in a single write (some clients break on
    /// fragmented frames).
    pub fn encode_to_bytes(&self) -> Bytes {
        self.encode_to_bytes_with_id(self.header.request_id)
    }

    /// [`Frame::encode_to_bytes`] with `request_id` in the header instead of the frame's own
    /// (a channel's id on the next hop), so relaying a frame needs no copy of it.
    pub fn encode_to_bytes_with_id(&self, request_id: u64) -> Bytes {
        let mut b = BytesMut::with_capacity(MIN_FRAME + self.meta.max_encoded_len() + self.body.len());
        self.encode_with_id(&mut b, request_id);
        b.freeze()
    }

    /// Same as [`Frame::encode_to_bytes`] (the name [`super::Value::to_bytes`] uses).
    pub fn to_bytes(&self) -> Bytes {
        self.encode_to_bytes()
    }

    /// Gunzip a gzip-flagged body and clear the flag (spec 1.6). The output may not exceed
    /// `max` bytes (use the body limit). On error the frame is left as it was; motan-go then
    /// clears the flag and goes on with the compressed bytes, which the caller may copy.
    pub fn gunzip(&mut self, max: usize) -> Result<(), FrameError> {
        if !self.header.is_gzip() {
            return Ok(());
        }
        // Go leaves an empty body as it is.
        if !self.body.is_empty() {
            self.body = gunzip(&self.body, max)?;
        }
        self.header.set_flag(FLAG_GZIP, false);
        Ok(())
    }

    /// Whether [`Frame::gzip_if_larger`] would compress the body.
    pub fn wants_gzip(&self, min_size: usize) -> bool {
        min_size > 0 && self.body.len() > min_size && !self.header.is_gzip()
    }

    /// Gzip the body (level 1, as motan-go) when `min_size > 0`, the body is longer than
    /// `min_size` and not yet compressed (the `mingzSize` rule). True when it compressed.
    pub fn gzip_if_larger(&mut self, min_size: usize) -> bool {
        if !self.wants_gzip(min_size) {
            return false;
        }
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(
            Vec::with_capacity(self.body.len() / 2 + 64),
            flate2::Compression::fast(),
        );
        // Writing into a Vec cannot fail.
        if enc.write_all(&self.body).is_err() {
            return false;
        }
        let Ok(z) = enc.finish() else { return false };
        self.body = Bytes::from(z);
        self.header.set_flag(FLAG_GZIP, true);
        true
    }
}

/// Decompress a gzip stream (all members, like Go's reader) into at most `max` bytes.
fn gunzip(z: &[u8], max: usize) -> Result<Bytes, FrameError> {
    use std::io::Read;
    // The trailer's ISIZE is the usual output size; trust it only as far as deflate's maximum
    // ratio (about 1032:1) allows, so a forged trailer cannot make us reserve more than the
    // stream could really produce.
    let hint = match z.len() {
        n if n >= 18 => u32::from_le_bytes(z[n - 4..].try_into().unwrap_or_default()) as usize,
        _ => 0,
    };
    let reserve = hint.min(max).min(z.len().saturating_mul(1032)).saturating_add(1);
    let mut out = Vec::with_capacity(reserve);
    let mut dec = flate2::read::MultiGzDecoder::new(z).take(max as u64 + 1);
    dec.read_to_end(&mut out)
        .map_err(|e| FrameError::Gzip(e.to_string()))?;
    if out.len() > max {
        return Err(FrameError::BodyTooLarge { len: out.len(), max });
    }
    Ok(Bytes::from(out))
}

/// Decimal as Go's `strconv.ParseInt` reads it (no surrounding spaces).
fn parse_decimal<T: std::str::FromStr>(v: &str) -> Option<T> {
    v.parse().ok()
}

/// Read-only view of a request's well-known meta keys (spec 1.11).
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    frame: &'a Frame,
}

impl<'a> Request<'a> {
    pub fn frame(&self) -> &'a Frame {
        self.frame
    }
    fn get(&self, key: &str) -> Option<&'a str> {
        self.frame.meta.get(key)
    }
    /// `M_p`, the routing key.
    pub fn service(&self) -> Option<&'a str> {
        self.get(keys::SERVICE)
    }
    /// `M_m`.
    pub fn method(&self) -> Option<&'a str> {
        self.get(keys::METHOD)
    }
    /// `M_md`.
    pub fn method_desc(&self) -> Option<&'a str> {
        self.get(keys::METHOD_DESC)
    }
    /// `M_g`.
    pub fn group(&self) -> Option<&'a str> {
        self.get(keys::GROUP)
    }
    /// `M_v`.
    pub fn version(&self) -> Option<&'a str> {
        self.get(keys::VERSION)
    }
    /// `M_mdu`.
    pub fn module(&self) -> Option<&'a str> {
        self.get(keys::MODULE)
    }
    /// `M_s`, the caller's application.
    pub fn source(&self) -> Option<&'a str> {
        self.get(keys::SOURCE)
    }
    /// `M_pp`, the protocol the caller wants.
    pub fn proxy_protocol(&self) -> Option<&'a str> {
        self.get(keys::PROXY_PROTOCOL)
    }
    /// `host`, the caller IP the previous hop saw.
    pub fn host(&self) -> Option<&'a str> {
        self.get(keys::HOST)
    }
    /// `M_rid` as motan-go reads it: signed decimal, unparsable counts as 0.
    pub fn meta_request_id(&self) -> Option<i64> {
        self.frame
            .meta
            .get_bytes(keys::REQUEST_ID)
            .map(|v| std::str::from_utf8(v).ok().and_then(parse_decimal).unwrap_or(0))
    }
    /// The logical request id for logs: `M_rid` if present, else the header id as a signed
    /// number (spec 1.9).
    pub fn logical_request_id(&self) -> i64 {
        self.meta_request_id()
            .unwrap_or(self.frame.header.request_id as i64)
    }
    /// `M_tmo`, the caller's per-request timeout.
    pub fn timeout(&self) -> Option<Duration> {
        self.get(keys::TIMEOUT)
            .and_then(parse_decimal)
            .map(Duration::from_millis)
    }
    /// `M_fws` non-empty: a framework-internal call (meta service).
    pub fn is_framework_service(&self) -> bool {
        self.frame
            .meta
            .get_bytes(keys::FRAMEWORK_SERVICE)
            .is_some_and(|v| !v.is_empty())
    }
}

/// Read-only view of a response's status and well-known meta keys.
#[derive(Clone, Copy, Debug)]
pub struct Response<'a> {
    frame: &'a Frame,
}

impl<'a> Response<'a> {
    pub fn frame(&self) -> &'a Frame {
        self.frame
    }
    pub fn is_exception(&self) -> bool {
        self.frame.is_exception()
    }
    /// `M_pt`, the server's process time.
    pub fn process_time(&self) -> Option<Duration> {
        self.frame
            .meta
            .get(keys::PROCESS_TIME)
            .and_then(parse_decimal)
            .map(Duration::from_millis)
    }
    /// The exception of a status-1 response; a missing, empty or unreadable `M_e` gives the
    /// generic service exception Java builds.
    pub fn exception(&self) -> Option<Exception> {
        if !self.is_exception() {
            return None;
        }
        Some(
            self.frame
                .meta
                .get_bytes(keys::EXCEPTION)
                .and_then(|j| Exception::parse(j))
                .unwrap_or_else(Exception::default_remote),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::motan2::error::ErrorType;

    #[test]
    fn heartbeats_are_the_go_bytes() {
        let hb = Frame::heartbeat_request(1).encode_to_bytes();
        assert_eq!(&hb[..], b"\xf1\xf1\x12\x08\x30\0\0\0\0\0\0\0\x01\0\0\0\0\0\0\0\0");
        let r = Frame::heartbeat_response(1).encode_to_bytes();
        assert_eq!(&r[..], b"\xf1\xf1\x13\x08\x30\0\0\0\0\0\0\0\x01\0\0\0\0\0\0\0\0");
    }

    #[test]
    fn header_fields() {
        let mut h = Header::request(5, serialization::BREEZE);
        assert_eq!(
            (h.serialization_byte, h.serialization(), h.version()),
            (0x40, 8, 1)
        );
        h.set_flag(FLAG_ONEWAY, true);
        h.set_flag(FLAG_GZIP, true);
        h.set_flag(FLAG_GZIP, false);
        assert!(h.is_oneway() && !h.is_gzip() && !h.is_proxy() && !h.is_response());
        h.set_status(STATUS_EXCEPTION);
        assert_eq!((h.version_status, h.is_exception()), (0x09, true));
        h.set_serialization(serialization::SIMPLE);
        assert_eq!(h.serialization_byte, 0x30);
    }

    #[test]
    fn views_read_the_well_known_keys() {
        let mut f = Frame::request(u64::MAX, "com.weibo.Hello", "hi", Bytes::new());
        assert!(f.as_response().is_none());
        assert_eq!(f.as_request().unwrap().logical_request_id(), -1);
        for (k, v) in [
            ("M_md", "java.lang.String"),
            ("M_g", "g"),
            ("M_v", "1.0"),
            ("M_mdu", "m"),
            ("M_s", "app"),
            ("M_pp", "motan2"),
            ("host", "10.0.0.1"),
            ("M_rid", "-7"),
            ("M_tmo", "250"),
            ("M_fws", "y"),
        ] {
            f.meta.insert(k, v);
        }
        let r = f.as_request().unwrap();
        assert_eq!(
            (r.service(), r.method(), r.method_desc(), r.group(), r.version()),
            (
                Some("com.weibo.Hello"),
                Some("hi"),
                Some("java.lang.String"),
                Some("g"),
                Some("1.0")
            )
        );
        assert_eq!(
            (r.module(), r.source(), r.proxy_protocol(), r.host()),
            (Some("m"), Some("app"), Some("motan2"), Some("10.0.0.1"))
        );
        assert_eq!((r.meta_request_id(), r.logical_request_id()), (Some(-7), -7));
        assert_eq!(r.timeout(), Some(Duration::from_millis(250)));
        assert!(r.is_framework_service());
        f.meta.insert("M_rid", " 5");
        f.meta.insert("M_fws", "");
        let r = f.as_request().unwrap();
        assert_eq!(r.meta_request_id(), Some(0));
        assert!(!r.is_framework_service());
    }

    #[test]
    fn exceptions_and_process_time() {
        let e = Exception::service(400, "nope");
        let mut f = Frame::agent_exception(9, &e);
        assert_eq!(
            (
                f.header.flags,
                f.header.version_status,
                f.header.serialization_byte
            ),
            (0x03, 0x09, 0)
        );
        f.set_process_time_if_absent(Duration::from_millis(12));
        f.set_process_time_if_absent(Duration::from_millis(99));
        let r = f.as_response().unwrap();
        assert_eq!(r.exception().unwrap(), e);
        assert_eq!(r.process_time(), Some(Duration::from_millis(12)));
        let plain = Frame::exception_response(9, &e, serialization::SIMPLE, false);
        assert_eq!(
            (plain.header.flags, plain.header.serialization_byte),
            (0x01, 0x30)
        );
        // Status 1 without (or with an empty) M_e: Java's generic exception.
        f.meta.insert("M_e", "");
        assert_eq!(
            f.as_response().unwrap().exception().unwrap(),
            Exception::default_remote()
        );
        f.meta.remove("M_e");
        let generic = f.as_response().unwrap().exception().unwrap();
        assert_eq!((generic.errcode, generic.errtype), (500, ErrorType::Service));
        // A normal response has none.
        let req = Frame::request(1, "s", "m", Bytes::new());
        assert!(
            Frame::response_to(&req, Bytes::new())
                .as_response()
                .unwrap()
                .exception()
                .is_none()
        );
    }

    #[test]
    fn gzip_round_trip_bound_and_errors() {
        let mut f = Frame::request(1, "s", "m", Bytes::from(vec![b'x'; 5000]));
        assert!(!f.gzip_if_larger(0) && !f.gzip_if_larger(5000));
        assert!(f.gzip_if_larger(100));
        assert!(f.header.is_gzip() && f.body.len() < 5000);
        assert!(!f.gzip_if_larger(100), "already compressed");
        let mut small = f.clone();
        assert!(matches!(
            small.gunzip(1000),
            Err(FrameError::BodyTooLarge { len: 1001, max: 1000 })
        ));
        assert_eq!(small, f, "left as it was");
        f.gunzip(5000).unwrap();
        assert!(!f.header.is_gzip());
        assert_eq!(f.body, Bytes::from(vec![b'x'; 5000]));
        // Not gzip at all.
        let mut bad = f.clone();
        bad.header.set_flag(FLAG_GZIP, true);
        assert!(matches!(bad.gunzip(1 << 20), Err(FrameError::Gzip(_))));
        // Empty gzip-flagged body: Go keeps it and the flag is cleared.
        bad.body = Bytes::new();
        bad.gunzip(10).unwrap();
        assert!(!bad.header.is_gzip());
    }

    #[test]
    fn gunzip_reads_every_member() {
        let z = |data: &[u8]| {
            let mut f = Frame::request(1, "s", "m", Bytes::copy_from_slice(data));
            assert!(f.gzip_if_larger(1));
            f.body
        };
        let mut f = Frame::request(1, "s", "m", [z(b"hello "), z(b"world")].concat().into());
        f.header.set_flag(FLAG_GZIP, true);
        f.gunzip(100).unwrap();
        assert_eq!(&f.body[..], b"hello world");
    }
}
