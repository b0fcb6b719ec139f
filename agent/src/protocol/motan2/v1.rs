//! The legacy motan v1 framing (spec 1.12) as old Java clients send it: split v1 frames off a
//! stream, answer v1 heartbeats, and turn a v1 request into a Motan2 request (and the Motan2
//! response back into a v1 response), so a v1 caller is served by Motan2 providers.
//!
//! A v1 request's payload is a Java object stream (motan-go protocol/motan1Protocol.go
//! `parseReq` reads it the same way): a block of UTF strings (service, method, parameter
//! descriptor), each argument as a `byte[]` holding its hessian2 serialization (or a null), then
//! a block with the attachments. Converted, the arguments' hessian2 bytes one after another are
//! the body of a hessian2 Motan2 request, as Java's Motan2 codec writes one.
//!
//! One difference from motan-go on purpose: motan-go relays the v1 frame itself to a provider
//! that speaks v1 (Java servers take both versions on one port); here the request continues as
//! Motan2, so every provider of the mesh serves it (filters, metrics and routing see an
//! ordinary request).
//!
//! Compressed v1 (inner version 2, Java motan's `CompressRpcCodec`; motan-go reads it in
//! `newObjectStream`/`parseReq`/`readAttachments`): the object stream may be gzipped whole, the
//! attachment count is 16 bits, and the method is normally a signature (`"1"`, then
//! `<4 chars of the method><12 hex digits of an md5>`) that only the Java provider holding the
//! interface can map back. Gzip, the short count and full method names are served; a signature
//! is refused with a v1 exception that says so (motan-go names such a request's service
//! `v1compressMethodSign`, which no cluster serves either). The answer is a version-1 response,
//! which Java's compress codec reads with its v1 codec.
use bytes::{BufMut, Bytes, BytesMut};

use super::error::FrameError;
use super::frame::{Frame, serialization};
use super::meta::keys;
use super::simple::{self, Value};

/// Outer plus inner header.
pub const HEADER_LEN: usize = 32;
const OUTER_HEADER_LEN: usize = 16;
const INNER_MAGIC: [u8; 2] = [0xF0, 0xF0];
const HEARTBEAT_SERVICE: &[u8] = b"com.weibo.api.motan.rpc.heartbeat";
const HEARTBEAT_METHOD: &[u8] = b"heartbeat";

/// motan-go's v1 heartbeat templates (weibocom/motan-go protocol/motan1Protocol.go
/// `baseV1HeartbeatReq`/`baseV1HeartbeatRes`), request id 0; ids go at offsets 4 and 20.
const HEARTBEAT_REQUEST: [u8; 94] = [
    0xf1, 0xf1, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x00, 0x00, 0x4e, 0xf0, 0xf0, 0x01, 0x00, 0, 0, 0,
    0, 0, 0, 0, 0, 0x00, 0x00, 0x00, 0x3e, 0xac, 0xed, 0x00, 0x05, 0x77, 0x38, 0x00, 0x21, b'c', b'o', b'm',
    b'.', b'w', b'e', b'i', b'b', b'o', b'.', b'a', b'p', b'i', b'.', b'm', b'o', b't', b'a', b'n', b'.',
    b'r', b'p', b'c', b'.', b'h', b'e', b'a', b'r', b't', b'b', b'e', b'a', b't', 0x00, 0x09, b'h', b'e',
    b'a', b'r', b't', b'b', b'e', b'a', b't', 0x00, 0x04, b'v', b'o', b'i', b'd', 0x00, 0x00, 0x00, 0x00,
];
const HEARTBEAT_RESPONSE: [u8; 97] = [
    0xf1, 0xf1, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x00, 0x00, 0x51, 0xf0, 0xf0, 0x01, 0x01, 0, 0, 0,
    0, 0, 0, 0, 0, 0x00, 0x00, 0x00, 0x41, 0xac, 0xed, 0x00, 0x05, 0x77, 0x1a, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x10, b'j', b'a', b'v', b'a', b'.', b'l', b'a', b'n', b'g', b'.', b'S', b't',
    b'r', b'i', b'n', b'g', 0x75, 0x72, 0x00, 0x02, 0x5b, 0x42, 0xac, 0xf3, 0x17, 0xf8, 0x06, 0x08, 0x54,
    0xe0, 0x02, 0x00, 0x00, 0x78, 0x70, 0x00, 0x00, 0x00, 0x0a, 0x09, b'h', b'e', b'a', b'r', b't', b'b',
    b'e', b'a', b't',
];

/// The length of the v1 frame at the start of `src` once its outer header is buffered (None
/// before). Like motan-go: 16 + outer length must lie in [32, 16 + `max_content_length`].
pub fn frame_len(src: &[u8], max_content_length: usize) -> Result<Option<usize>, FrameError> {
    let Some(outer) = src.get(12..16) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(outer.try_into().expect("4 bytes")) as usize;
    let total = OUTER_HEADER_LEN + len;
    if total < HEADER_LEN || len > max_content_length {
        return Err(FrameError::V1Frame("length out of range"));
    }
    Ok(Some(total))
}

/// The fields of a complete v1 frame's inner header that an agent needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct V1Header {
    pub request_id: u64,
    /// 0x01; 0x02 is the deprecated compressed variant.
    pub inner_version: u8,
    /// 0x00 request, 0x01 response, 0x03 void response, 0x05 exception, 0x07 with attachments.
    pub flag: u8,
}

/// Check a complete v1 frame's inner header (magic, inner length) and read it.
pub fn decode_header(frame: &[u8]) -> Result<V1Header, FrameError> {
    if frame.len() < HEADER_LEN {
        return Err(FrameError::V1Frame("shorter than its headers"));
    }
    if frame[16..18] != INNER_MAGIC {
        return Err(FrameError::V1Frame("wrong inner magic"));
    }
    let inner_len = u32::from_be_bytes(frame[28..32].try_into().expect("4 bytes")) as usize;
    if inner_len.checked_add(HEADER_LEN) != Some(frame.len()) {
        return Err(FrameError::V1Frame("inner length does not match"));
    }
    Ok(V1Header {
        request_id: u64::from_be_bytes(frame[20..28].try_into().expect("8 bytes")),
        inner_version: frame[18],
        flag: frame[19],
    })
}

/// Is this complete v1 frame a heartbeat request (service `com.weibo.api.motan.rpc.heartbeat`,
/// method `heartbeat`, read from the Java object stream as motan-go does)?
pub fn is_heartbeat_request(frame: &[u8]) -> bool {
    let Ok(h) = decode_header(frame) else {
        return false;
    };
    if h.flag != 0x00 {
        return false;
    }
    let mut r = &frame[HEADER_LEN..];
    // Object stream magic and version, then a block-data record holding the UTF strings.
    let Some(rest) = r.strip_prefix(&[0xac, 0xed, 0x00, 0x05][..]) else {
        return false;
    };
    let block = match rest.first() {
        Some(0x77) => rest.get(1).map(|&n| (2usize, n as usize)),
        Some(0x7a) => rest
            .get(1..5)
            .map(|n| (5, u32::from_be_bytes(n.try_into().expect("4 bytes")) as usize)),
        _ => None,
    };
    r = match block.and_then(|(at, n)| rest.get(at..at.checked_add(n)?)) {
        Some(b) => b,
        None => return false,
    };
    let mut utf = || {
        let n = u16::from_be_bytes(r.get(..2)?.try_into().ok()?) as usize;
        let s = r.get(2..2 + n)?;
        r = &r[2 + n..];
        Some(s)
    };
    utf() == Some(HEARTBEAT_SERVICE) && utf() == Some(HEARTBEAT_METHOD)
}

fn with_request_id(template: &[u8], request_id: u64) -> Bytes {
    let mut out = template.to_vec();
    out[4..12].copy_from_slice(&request_id.to_be_bytes());
    out[20..28].copy_from_slice(&request_id.to_be_bytes());
    Bytes::from(out)
}

/// motan-go's v1 heartbeat request (`BuildV1HeartbeatReq`).
pub fn heartbeat_request(request_id: u64) -> Bytes {
    with_request_id(&HEARTBEAT_REQUEST, request_id)
}

/// motan-go's v1 heartbeat response (`BuildV1HeartbeatRes`): the value is the string
/// `heartbeat`.
pub fn heartbeat_response(request_id: u64) -> Bytes {
    with_request_id(&HEARTBEAT_RESPONSE, request_id)
}

/// The response to `frame` if it is a v1 heartbeat request.
pub fn answer_heartbeat(frame: &[u8]) -> Option<Bytes> {
    if !is_heartbeat_request(frame) {
        return None;
    }
    Some(heartbeat_response(decode_header(frame).ok()?.request_id))
}

const OUTER_MAGIC: [u8; 2] = [0xF1, 0xF1];
const FLAG_REQUEST: u8 = 0x00;
const FLAG_RESPONSE: u8 = 0x01;
const FLAG_RESPONSE_VOID: u8 = 0x03;
const VERSION_V1: u8 = 0x01;
const VERSION_V1_COMPRESS: u8 = 0x02;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// Java motan's `CompressRpcCodec`: the first string `"1"` means a method signature follows;
/// its own attachment keys (attachment signature, unknown signature, client request id).
const METHOD_SIGN_FLAG: &str = "1";
const SIGN_ATTACHMENT: &str = "_A";
const UNSIGNED_ATTACHMENT: &str = "_UA";
const CLIENT_REQUEST_ID: &str = "_RID";
const REQUEST_ID_FROM_CLIENT: &str = "requestIdFromClient";
const OS_HEADER: [u8; 4] = [0xac, 0xed, 0x00, 0x05];
const TC_ARRAY: u8 = 0x75;
const TC_CLASSDESC: u8 = 0x72;
const TC_REFERENCE: u8 = 0x71;
const TC_NULL: u8 = 0x70;
const TC_BLOCKDATA: u8 = 0x77;
const TC_BLOCKDATALONG: u8 = 0x7a;
const MAX_BLOCK_SIZE: usize = 1024;
/// The class descriptor of `byte[]` in a Java object stream (TC_ARRAY excluded).
const BYTE_ARRAY_DESC: [u8; 18] = [
    0x72, 0x00, 0x02, b'[', b'B', 0xac, 0xf3, 0x17, 0xf8, 0x06, 0x08, 0x54, 0xe0, 0x02, 0x00, 0x00, 0x78,
    0x70,
];
/// The v1 attachment keys a Motan2 request carries as `M_g`, `M_v`, `M_s` (motan-go
/// server/motanserver.go `setV1Attachments`).
const V1_GROUP: &str = "group";
const V1_VERSION: &str = "version";
const V1_APPLICATION: &str = "application";

/// motan-go's v1 exception response pieces (`BuildV1ExceptionResponse`): the headers, the
/// object stream up to the exception's `byte[]`, and the hessian2 class definitions of
/// `MotanServiceException` and `MotanErrorMsg`.
const EXCEPTION_HEADER: [u8; 32] = [
    241, 241, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 70, 240, 240, 1, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 54,
];
const EXCEPTION_STREAM: [u8; 86] = [
    172, 237, 0, 5, 119, 61, 0, 0, 0, 0, 0, 0, 0, 2, 0, 51, 99, 111, 109, 46, 119, 101, 105, 98, 111, 46, 97,
    112, 105, 46, 109, 111, 116, 97, 110, 46, 101, 120, 99, 101, 112, 116, 105, 111, 110, 46, 77, 111, 116,
    97, 110, 83, 101, 114, 118, 105, 99, 101, 69, 120, 99, 101, 112, 116, 105, 111, 110, 117, 114, 0, 2, 91,
    66, 172, 243, 23, 248, 6, 8, 84, 224, 2, 0, 0, 120, 112,
];
const H_EXCEPTION_DESC: [u8; 131] = [
    67, 48, 51, 99, 111, 109, 46, 119, 101, 105, 98, 111, 46, 97, 112, 105, 46, 109, 111, 116, 97, 110, 46,
    101, 120, 99, 101, 112, 116, 105, 111, 110, 46, 77, 111, 116, 97, 110, 83, 101, 114, 118, 105, 99, 101,
    69, 120, 99, 101, 112, 116, 105, 111, 110, 150, 8, 101, 114, 114, 111, 114, 77, 115, 103, 13, 100, 101,
    116, 97, 105, 108, 77, 101, 115, 115, 97, 103, 101, 5, 99, 97, 117, 115, 101, 13, 109, 111, 116, 97, 110,
    69, 114, 114, 111, 114, 77, 115, 103, 10, 115, 116, 97, 99, 107, 84, 114, 97, 99, 101, 20, 115, 117, 112,
    112, 114, 101, 115, 115, 101, 100, 69, 120, 99, 101, 112, 116, 105, 111, 110, 115, 96,
];
const H_MOTAN_ERROR_MSG_DESC: [u8; 73] = [
    67, 48, 43, 99, 111, 109, 46, 119, 101, 105, 98, 111, 46, 97, 112, 105, 46, 109, 111, 116, 97, 110, 46,
    101, 120, 99, 101, 112, 116, 105, 111, 110, 46, 77, 111, 116, 97, 110, 69, 114, 114, 111, 114, 77, 115,
    103, 147, 6, 115, 116, 97, 116, 117, 115, 9, 101, 114, 114, 111, 114, 99, 111, 100, 101, 7, 109, 101,
    115, 115, 97, 103, 101, 97,
];

/// A v1 request's content (motan-go `DecodeMotanV1Request`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct V1Request {
    pub request_id: u64,
    pub service: String,
    pub method: String,
    pub param_desc: String,
    /// Each argument's hessian2 bytes (the content of its `byte[]`), `None` for a null.
    pub args: Vec<Option<Bytes>>,
    pub attachments: Vec<(String, String)>,
}

/// Why a well-framed v1 request cannot be served: answered with a v1 exception.
fn bad(why: &'static str) -> FrameError {
    FrameError::V1Frame(why)
}

/// A cursor over a byte slice; every read is bounds checked.
struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.b.len());
        let end = end.ok_or(bad("object stream ends early"))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u16(&mut self) -> Result<u16, FrameError> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self) -> Result<u32, FrameError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn utf(&mut self) -> Result<String, FrameError> {
        let n = self.u16()? as usize;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }
    fn remaining(&self) -> usize {
        self.b.len() - self.pos
    }

    /// A block-data record; a full (1024-byte) block continues in the blocks after it.
    fn block(&mut self) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::new();
        loop {
            let n = match self.take(1)?[0] {
                TC_BLOCKDATA => self.take(1)?[0] as usize,
                TC_BLOCKDATALONG => self.u32()? as usize,
                _ => return Err(bad("expected block data")),
            };
            out.extend_from_slice(self.take(n)?);
            if n != MAX_BLOCK_SIZE || !matches!(self.peek(), Some(TC_BLOCKDATA | TC_BLOCKDATALONG)) {
                return Ok(out);
            }
        }
    }

    /// A `byte[]` object (class descriptor or a reference to it, then length and content).
    fn byte_array(&mut self) -> Result<&'a [u8], FrameError> {
        self.take(1)?; // TC_ARRAY
        match self.peek() {
            Some(TC_CLASSDESC) => {
                self.take(18)?;
            }
            Some(TC_REFERENCE) => {
                self.take(5)?;
            }
            _ => return Err(bad("unsupported array class in object stream")),
        }
        let n = self.u32()? as usize;
        self.take(n)
    }
}

/// Decode a complete v1 request frame. Framing is checked by [`decode_header`]; the errors
/// here are about the payload. A compressed request (inner version 2) may be gzipped whole;
/// `max_inflated` bounds what it inflates to.
pub fn decode_request(frame: &[u8], max_inflated: usize) -> Result<V1Request, FrameError> {
    let h = decode_header(frame)?;
    if h.flag != FLAG_REQUEST {
        return Err(bad("not a request"));
    }
    let payload = &frame[HEADER_LEN..];
    match h.inner_version {
        VERSION_V1 => decode_stream(h.request_id, payload, false),
        VERSION_V1_COMPRESS if payload.starts_with(&GZIP_MAGIC) => {
            decode_stream(h.request_id, &gunzip(payload, max_inflated)?, true)
        }
        VERSION_V1_COMPRESS => decode_stream(h.request_id, payload, true),
        _ => Err(bad("unknown inner version")),
    }
}

/// Inflate a gzipped object stream, at most `max` bytes.
fn gunzip(data: &[u8], max: usize) -> Result<Vec<u8>, FrameError> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|_| bad("compressed body is not valid gzip"))?;
    if out.len() > max {
        return Err(bad("compressed body inflates beyond the body limit"));
    }
    Ok(out)
}

/// The object stream of a request. `compressed` (inner version 2, Java motan's
/// `CompressRpcCodec`): the method may be a signature (`"1"`, then the signature), the
/// attachment count is 16 bits, and the codec's own attachments are undone: `_A` and `_UA`
/// (attachment signatures, which only a Java server keeps) are dropped, `_RID` is the client's
/// `requestIdFromClient`.
fn decode_stream(request_id: u64, stream: &[u8], compressed: bool) -> Result<V1Request, FrameError> {
    let mut os = Cursor { b: stream, pos: 0 };
    if os.take(4).ok() != Some(&OS_HEADER[..]) {
        return Err(bad("not a Java object stream"));
    }
    let info = os.block()?;
    let mut info = Cursor { b: &info, pos: 0 };
    let service = info.utf()?;
    if compressed && service == METHOD_SIGN_FLAG {
        // The signature is md5-based over group, interface, method, parameter types and
        // version; only a Java server holding the interface can map it back.
        let sign = info.utf()?;
        return Err(FrameError::V1Unsupported(format!(
            "compressed motan v1 request with method signature {sign:?}: sockmesh cannot map method signatures to methods (only the Java provider that has the interface can); configure the client with codec motan or motan2"
        )));
    }
    let method = info.utf()?;
    let param_desc = info.utf()?;
    let mut args = Vec::new();
    let attachments_block;
    let mut attachments = if info.remaining() > 0 {
        info
    } else {
        loop {
            match os.peek() {
                Some(TC_NULL) => {
                    os.take(1)?;
                    args.push(None);
                }
                Some(TC_ARRAY) => args.push(Some(Bytes::copy_from_slice(os.byte_array()?))),
                Some(TC_BLOCKDATA | TC_BLOCKDATALONG) => break,
                Some(_) => return Err(bad("unsupported argument type in object stream")),
                None => return Err(bad("no attachments")),
            }
        }
        attachments_block = os.block()?;
        Cursor {
            b: &attachments_block,
            pos: 0,
        }
    };
    let n = if compressed {
        attachments.u16()? as usize
    } else {
        attachments.u32()? as usize
    };
    // Each entry takes at least 4 bytes: a count beyond that is a lie, not an allocation.
    if n > attachments.remaining() / 4 {
        return Err(bad("attachment count larger than the frame"));
    }
    let mut list = Vec::with_capacity(n);
    for _ in 0..n {
        let (k, v) = (attachments.utf()?, attachments.utf()?);
        if compressed {
            match k.as_str() {
                SIGN_ATTACHMENT | UNSIGNED_ATTACHMENT => continue,
                CLIENT_REQUEST_ID => {
                    list.push((REQUEST_ID_FROM_CLIENT.to_string(), v));
                    continue;
                }
                _ => {}
            }
        }
        list.push((k, v));
    }
    Ok(V1Request {
        request_id,
        service,
        method,
        param_desc,
        args,
        attachments: list,
    })
}

impl V1Request {
    /// The Motan2 request it becomes: hessian2 serialization, the arguments' bytes as body (a
    /// null argument is hessian2 `N`), every attachment as meta, and `M_md`, `M_g`, `M_v`,
    /// `M_s` from the descriptor and the v1 keys `group`, `version`, `application`.
    pub fn to_motan2(&self) -> Frame {
        let len = self.args.iter().map(|a| a.as_ref().map_or(1, Bytes::len)).sum();
        let mut body = BytesMut::with_capacity(len);
        for a in &self.args {
            body.put_slice(a.as_deref().unwrap_or(b"N"));
        }
        let mut f = Frame::request(self.request_id, &self.service, &self.method, body.freeze());
        f.header.set_serialization(serialization::HESSIAN2);
        if !self.param_desc.is_empty() {
            f.meta.insert(keys::METHOD_DESC, self.param_desc.clone());
        }
        for (k, v) in &self.attachments {
            f.meta.insert(k.clone(), v.clone());
        }
        for (v1, v2) in [
            (V1_GROUP, keys::GROUP),
            (V1_VERSION, keys::VERSION),
            (V1_APPLICATION, keys::SOURCE),
        ] {
            if let Some((_, v)) = self.attachments.iter().find(|(k, v)| k == v1 && !v.is_empty()) {
                f.meta.insert_if_absent(v2, v.clone());
            }
        }
        f
    }
}

/// A hessian2 string (motan-go `writeHessianString`, with the length in UTF-16 units as
/// hessian counts them; longer texts are cut).
fn hessian_string(text: &str, out: &mut BytesMut) {
    let mut units = 0usize;
    let end = text
        .char_indices()
        .find(|(_, c)| {
            units += c.len_utf16();
            units > 0xffff
        })
        .map_or(text.len(), |(i, _)| i);
    let text = &text[..end];
    let n = text.encode_utf16().count();
    match n {
        0..=0x1f => out.put_u8(n as u8),
        0x20..=0x3ff => out.put_slice(&[0x30 + (n >> 8) as u8, n as u8]),
        _ => out.put_slice(&[b'S', (n >> 8) as u8, n as u8]),
    }
    out.put_slice(text.as_bytes());
}

/// Set both request ids and both lengths of a v1 frame built in `out`.
fn finish_frame(mut out: BytesMut, request_id: u64) -> Bytes {
    let total = out.len();
    out[4..12].copy_from_slice(&request_id.to_be_bytes());
    out[20..28].copy_from_slice(&request_id.to_be_bytes());
    out[12..16].copy_from_slice(&((total - OUTER_HEADER_LEN) as u32).to_be_bytes());
    out[28..32].copy_from_slice(&((total - HEADER_LEN) as u32).to_be_bytes());
    out.freeze()
}

/// How [`encode_request`] writes a request: Java motan's v1 codec (`DefaultRpcCodec`) or its
/// compress codec (inner version 2, 16-bit attachment count), optionally gzipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum V1Encoding {
    Plain,
    Compressed { gzip: bool },
}

/// A v1 request frame as a Java client writes one (for tests and tools; the agent itself only
/// reads requests): the object stream of [`decode_request`] with the method named in full.
pub fn encode_request(req: &V1Request, encoding: V1Encoding) -> Bytes {
    fn utf(text: &str, out: &mut Vec<u8>) {
        out.extend_from_slice(&(text.len() as u16).to_be_bytes());
        out.extend_from_slice(text.as_bytes());
    }
    fn block(data: &[u8], out: &mut Vec<u8>) {
        match u8::try_from(data.len()) {
            Ok(n) => out.extend_from_slice(&[TC_BLOCKDATA, n]),
            Err(_) => {
                out.push(TC_BLOCKDATALONG);
                out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            }
        }
        out.extend_from_slice(data);
    }
    let compressed = matches!(encoding, V1Encoding::Compressed { .. });
    let mut info = Vec::new();
    for t in [&req.service, &req.method, &req.param_desc] {
        utf(t, &mut info);
    }
    let mut atts = Vec::new();
    if compressed {
        atts.extend_from_slice(&(req.attachments.len() as u16).to_be_bytes());
    } else {
        atts.extend_from_slice(&(req.attachments.len() as u32).to_be_bytes());
    }
    for (k, v) in &req.attachments {
        utf(k, &mut atts);
        utf(v, &mut atts);
    }
    let mut stream = OS_HEADER.to_vec();
    if req.args.is_empty() {
        info.extend_from_slice(&atts);
        block(&info, &mut stream);
    } else {
        block(&info, &mut stream);
        for a in &req.args {
            match a {
                None => stream.push(TC_NULL),
                Some(b) => {
                    stream.push(TC_ARRAY);
                    stream.extend_from_slice(&BYTE_ARRAY_DESC);
                    stream.extend_from_slice(&(b.len() as u32).to_be_bytes());
                    stream.extend_from_slice(b);
                }
            }
        }
        block(&atts, &mut stream);
    }
    if encoding == (V1Encoding::Compressed { gzip: true }) {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&stream).expect("writing to memory");
        stream = gz.finish().expect("writing to memory");
    }
    let mut out = BytesMut::with_capacity(HEADER_LEN + stream.len());
    out.put_slice(&OUTER_MAGIC);
    out.put_slice(&[0, FLAG_REQUEST]);
    out.put_slice(&[0; 12]);
    out.put_slice(&INNER_MAGIC);
    out.put_u8(if compressed {
        VERSION_V1_COMPRESS
    } else {
        VERSION_V1
    });
    out.put_u8(FLAG_REQUEST);
    out.put_slice(&[0; 12]);
    out.put_slice(&stream);
    finish_frame(out, req.request_id)
}

/// A v1 exception response with `message` (a `MotanServiceException`, byte for byte as
/// motan-go's `BuildV1ExceptionResponse` builds it).
pub fn exception_response(request_id: u64, message: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(350 + message.len());
    out.put_slice(&EXCEPTION_HEADER);
    out.put_slice(&EXCEPTION_STREAM);
    let array_len_at = out.len();
    out.put_u32(0);
    out.put_slice(&H_EXCEPTION_DESC);
    out.put_slice(b"NNN");
    out.put_slice(&H_MOTAN_ERROR_MSG_DESC);
    out.put_slice(&[201, 247, 212, 39, 17]);
    hessian_string(message, &mut out);
    out.put_slice(b"NN");
    let array_len = (out.len() - array_len_at - 4) as u32;
    out[array_len_at..array_len_at + 4].copy_from_slice(&array_len.to_be_bytes());
    finish_frame(out, request_id)
}

/// The Java class a v1 response names for a hessian2 value (the client deserializes the bytes
/// as that class); `Object` lets hessian pick the value's own type.
fn java_class(hessian: &[u8]) -> &'static str {
    match hessian.first() {
        Some(0x00..=0x1f | 0x30..=0x33 | b'S' | b'R') => "java.lang.String",
        Some(0x80..=0xd7 | b'I') => "java.lang.Integer",
        Some(0xd8..=0xff | 0x38..=0x3f | 0x59 | b'L') => "java.lang.Long",
        Some(b'T' | b'F') => "java.lang.Boolean",
        Some(0x5b..=0x5f | b'D') => "java.lang.Double",
        _ => "java.lang.Object",
    }
}

/// A Motan2 simple value as hessian2, for the kinds a v1 (Java) caller can take without a
/// class of its own: null, strings, booleans, integers.
fn simple_to_hessian(v: &Value) -> Option<Bytes> {
    let mut out = BytesMut::new();
    match v {
        Value::Null => out.put_u8(b'N'),
        Value::String(s) => hessian_string(std::str::from_utf8(s).ok()?, &mut out),
        Value::Bool(b) => out.put_u8(if *b { b'T' } else { b'F' }),
        Value::Byte(n) => out.put_slice(&[b'I', 0, 0, 0, *n]),
        Value::I16(n) => out.put_slice(&[&[b'I'][..], &i32::from(*n).to_be_bytes()].concat()),
        Value::I32(n) => out.put_slice(&[&[b'I'][..], &n.to_be_bytes()].concat()),
        Value::I64(n) => out.put_slice(&[&[b'L'][..], &n.to_be_bytes()].concat()),
        _ => return None,
    }
    Some(out.freeze())
}

/// The v1 response to a v1 request that became the Motan2 request answered by `resp`: its
/// value's hessian2 bytes in a v1 response (void when there is none), or a v1 exception with
/// the Motan2 exception's text (motan-go's `EncodeMotanV1Response` prefix).
pub fn response_from_motan2(request_id: u64, resp: &Frame) -> Bytes {
    let Some(r) = resp.as_response() else {
        return exception_response(request_id, "build v1 exception res. org err:not a response");
    };
    if let Some(e) = r.exception() {
        return exception_response(
            request_id,
            &format!("build v1 exception res. org err:{}", e.errmsg),
        );
    }
    let value = match resp.header.serialization() {
        _ if resp.body.is_empty() => None,
        serialization::HESSIAN2 => Some(resp.body.clone()),
        serialization::SIMPLE => match simple::decode_all(&resp.body).as_deref() {
            Ok([v]) => match simple_to_hessian(v) {
                Some(h) => Some(h),
                None => {
                    return exception_response(
                        request_id,
                        "motan v1: the provider's simple-serialized value has no hessian2 form here (null, string, bool, integers only)",
                    );
                }
            },
            _ => {
                return exception_response(
                    request_id,
                    "motan v1: the provider's response body does not decode",
                );
            }
        },
        n => {
            return exception_response(
                request_id,
                &format!(
                    "motan v1: responses of serialization {n} cannot be converted (hessian2 and simple can)"
                ),
            );
        }
    };
    let value = value.filter(|v| v[..] != *b"N");
    let process_time: i64 = resp
        .meta
        .get(keys::PROCESS_TIME)
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let mut out = BytesMut::with_capacity(96 + value.as_ref().map_or(0, Bytes::len));
    out.put_slice(&OUTER_MAGIC);
    out.put_slice(&[0x00, 0x01]);
    out.put_slice(&[0; 12]);
    out.put_slice(&INNER_MAGIC);
    out.put_u8(VERSION_V1);
    out.put_u8(if value.is_some() {
        FLAG_RESPONSE
    } else {
        FLAG_RESPONSE_VOID
    });
    out.put_slice(&[0; 12]);
    out.put_slice(&OS_HEADER);
    match value {
        None => {
            out.put_slice(&[TC_BLOCKDATA, 8]);
            out.put_i64(process_time);
        }
        Some(v) => {
            let class = java_class(&v);
            out.put_slice(&[TC_BLOCKDATA, (8 + 2 + class.len()) as u8]);
            out.put_i64(process_time);
            out.put_u16(class.len() as u16);
            out.put_slice(class.as_bytes());
            out.put_u8(TC_ARRAY);
            out.put_slice(&BYTE_ARRAY_DESC);
            out.put_u32(v.len() as u32);
            out.put_slice(&v);
        }
    }
    finish_frame(out, request_id)
}

/// The request id of a v1 frame whose outer header is buffered (for an error answer to a
/// frame that cannot be read further).
pub fn outer_request_id(src: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(src.get(4..12)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_round_trip() {
        let req = heartbeat_request(0x0102_0304_0506_0708);
        assert_eq!(frame_len(&req, 1 << 20), Ok(Some(req.len())));
        assert_eq!(frame_len(&req[..15], 1 << 20), Ok(None));
        let h = decode_header(&req).unwrap();
        assert_eq!(
            (h.request_id, h.inner_version, h.flag),
            (0x0102_0304_0506_0708, 1, 0)
        );
        assert!(is_heartbeat_request(&req));
        let resp = answer_heartbeat(&req).unwrap();
        assert_eq!(resp, heartbeat_response(0x0102_0304_0506_0708));
        assert_eq!(decode_header(&resp).unwrap().flag, 1);
        assert!(!is_heartbeat_request(&resp));
        assert!(answer_heartbeat(&resp).is_none());
    }

    #[test]
    fn malformed_v1_frames() {
        let req = heartbeat_request(1);
        assert!(matches!(frame_len(&req, 10), Err(FrameError::V1Frame(_))));
        let mut short = req.to_vec();
        short[12..16].copy_from_slice(&10u32.to_be_bytes());
        assert!(matches!(frame_len(&short, 1 << 20), Err(FrameError::V1Frame(_))));
        let mut bad = req.to_vec();
        bad[16] = 0;
        assert!(decode_header(&bad).is_err() && !is_heartbeat_request(&bad));
        assert!(decode_header(&req[..req.len() - 1]).is_err());
        // Another service is not a heartbeat; a truncated payload neither, without panicking.
        let mut other = req.to_vec();
        other[40] = b'x';
        assert!(!is_heartbeat_request(&other));
        for cut in HEADER_LEN..req.len() {
            let mut t = req[..cut].to_vec();
            t[28..32].copy_from_slice(&((cut - HEADER_LEN) as u32).to_be_bytes());
            assert!(!is_heartbeat_request(&t), "cut {cut}");
        }
    }

    /// An upstream capture from tests/data/motan1.
    fn vector(name: &str) -> Vec<u8> {
        sockmesh_testkit::vectors::motan1(name)
    }

    fn attachment<'a>(r: &'a V1Request, k: &str) -> &'a str {
        r.attachments
            .iter()
            .find(|(key, _)| key == k)
            .map_or("", |(_, v)| v)
    }

    #[test]
    fn java_requests_decode_as_upstream_reads_them() {
        let r = decode_request(&vector("request_hello"), 1 << 20).unwrap();
        assert_eq!(
            (&*r.service, &*r.method, &*r.param_desc),
            (
                "com.weibo.motan.demo.service.MotanDemoService",
                "hello",
                "java.lang.String"
            )
        );
        assert_eq!(r.args, vec![Some(Bytes::from_static(b"\x06motan0"))]);
        assert_eq!(
            (r.attachments.len(), attachment(&r, "group")),
            (5, "motan-demo-rpc")
        );
        let f = r.to_motan2();
        assert_eq!(f.header.request_id, r.request_id);
        assert_eq!(f.header.serialization(), serialization::HESSIAN2);
        assert_eq!(&f.body[..], b"\x06motan0");
        for (k, v) in [
            ("M_p", "com.weibo.motan.demo.service.MotanDemoService"),
            ("M_m", "hello"),
            ("M_md", "java.lang.String"),
            ("M_g", "motan-demo-rpc"),
            ("M_v", "1.0"),
            ("M_s", "myMotanDemo"),
            ("module", "motan-demo-rpc"),
        ] {
            assert_eq!(f.meta.get(k), Some(v), "{k}");
        }

        let r = decode_request(&vector("request_no_param"), 1 << 20).unwrap();
        assert_eq!((&*r.method, &*r.param_desc, r.args.len()), ("noParam", "void", 0));
        assert_eq!(r.attachments.len(), 5);
        assert!(r.to_motan2().body.is_empty());

        let r = decode_request(&vector("request_multi_param"), 1 << 20).unwrap();
        assert_eq!(r.method, "rename");
        assert_eq!(r.args.len(), 2);
        assert_eq!(
            r.args[1].as_deref(),
            Some(&b"\x04ray0"[..]),
            "the TC_REFERENCE argument"
        );
        assert_eq!(
            r.to_motan2().body.len(),
            r.args.iter().map(|a| a.as_ref().unwrap().len()).sum::<usize>()
        );

        let r = decode_request(&vector("request_long_attachment"), 1 << 20).unwrap();
        assert_eq!(attachment(&r, "tempkey").len(), 1200);
        assert_eq!(attachment(&r, "group"), "motan-demo-rpc");

        // Java's compress codec signs the method: refused, naming the signature.
        let e = decode_request(&vector("request_compressed"), 1 << 20).unwrap_err();
        assert!(
            e.to_string().contains("method signature \"hell817ff3733269\""),
            "{e}"
        );
    }

    #[test]
    fn compressed_requests_with_method_names_gzipped_or_not() {
        let mut want = decode_request(&vector("request_hello"), 1 << 20).unwrap();
        // The codec's own keys as a compress-codec client adds them.
        let mut sent = want.clone();
        sent.attachments.push(("_A".into(), "4996".into()));
        sent.attachments.push(("_RID".into(), "77".into()));
        want.attachments.push(("requestIdFromClient".into(), "77".into()));
        for gzip in [false, true] {
            let frame = encode_request(&sent, V1Encoding::Compressed { gzip });
            assert_eq!(decode_header(&frame).unwrap().inner_version, 2);
            assert_eq!(frame[HEADER_LEN..].starts_with(&GZIP_MAGIC), gzip);
            assert_eq!(decode_request(&frame, 1 << 20).unwrap(), want, "gzip {gzip}");
        }
        // Plain encoding is what Java's v1 codec writes: the capture decodes the same.
        let plain = encode_request(&want, V1Encoding::Plain);
        assert_eq!(decode_request(&plain, 1 << 20).unwrap(), want);
        // No arguments: attachments share the service block.
        let mut none = decode_request(&vector("request_no_param"), 1 << 20).unwrap();
        none.attachments.push(("k".into(), "v".repeat(300)));
        let frame = encode_request(&none, V1Encoding::Compressed { gzip: true });
        assert_eq!(decode_request(&frame, 1 << 20).unwrap(), none);
        // Inflating beyond the limit, or not gzip after the magic: refused, no panic.
        let big = V1Request {
            args: vec![Some(Bytes::from(vec![b'x'; 100_000]))],
            ..want.clone()
        };
        let frame = encode_request(&big, V1Encoding::Compressed { gzip: true });
        assert!(frame.len() < 10_000);
        let e = decode_request(&frame, 50_000).unwrap_err();
        assert!(e.to_string().contains("beyond the body limit"), "{e}");
        assert!(decode_request(&frame, 200_000).is_ok());
        let mut broken = encode_request(&want, V1Encoding::Compressed { gzip: true }).to_vec();
        let n = broken.len();
        broken[n - 12..].fill(0);
        assert!(decode_request(&broken, 1 << 20).is_err());
    }

    #[test]
    fn motan2_responses_become_java_v1_responses() {
        // The hessian2 value "Hello motan0!", process time 1: byte for byte the Java capture.
        let want = vector("response_string");
        let id = decode_header(&want).unwrap().request_id;
        let req = Frame::request(id, "s", "m", Bytes::new());
        let mut resp = Frame::response_to(&req, Bytes::from_static(b"\x0dHello motan0!"));
        resp.header.set_serialization(serialization::HESSIAN2);
        resp.meta.insert("M_pt", "1");
        assert_eq!(response_from_motan2(id, &resp)[..], want[..]);

        let want = vector("response_void");
        let id = decode_header(&want).unwrap().request_id;
        let mut resp = Frame::response_to(&req, Bytes::new());
        resp.meta.insert("M_pt", "1");
        assert_eq!(response_from_motan2(id, &resp)[..], want[..]);

        // A simple-serialized string is carried over as hessian2.
        let mut resp = Frame::response_to(&req, Value::from("hi").to_bytes());
        resp.header.set_serialization(serialization::SIMPLE);
        let v1 = response_from_motan2(9, &resp);
        assert_eq!(
            decode_header(&v1).unwrap(),
            V1Header {
                request_id: 9,
                inner_version: 1,
                flag: 1
            }
        );
        assert!(v1.ends_with(b"\x00\x00\x00\x03\x02hi"), "{v1:?}");
    }

    #[test]
    fn exceptions_and_malformed_requests() {
        let e = exception_response(7, "boom");
        let h = decode_header(&e).unwrap();
        assert_eq!((h.request_id, h.flag), (7, 0x05));
        assert_eq!(frame_len(&e, 1 << 20), Ok(Some(e.len())));
        assert!(e.windows(5).any(|w| w == b"\x04boom"));
        // motan-go's text for a relayed exception.
        let ex = Frame::exception_response(1, &super::super::Exception::service(503, "down"), 6, false);
        let v1 = response_from_motan2(3, &ex);
        assert_eq!(decode_header(&v1).unwrap().flag, 0x05);
        assert!(v1.windows(4).any(|w| w == b"down"));

        // Every truncation of a real request fails cleanly (no panic).
        let good = vector("request_multi_param");
        for cut in HEADER_LEN..good.len() {
            let mut t = good[..cut].to_vec();
            t[28..32].copy_from_slice(&((cut - HEADER_LEN) as u32).to_be_bytes());
            assert!(decode_request(&t, 1 << 20).is_err(), "cut {cut}");
        }
        // A lying attachment count or a wrong object-stream magic.
        let mut lie = vector("request_no_param");
        // Headers, object stream magic, block header, then service, method and descriptor.
        let at = HEADER_LEN + 4 + 2 + (2 + 45) + (2 + 7) + (2 + 4);
        assert_eq!(&lie[at..at + 4], &[0, 0, 0, 5]);
        lie[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_request(&lie, 1 << 20).is_err());
        let mut magic = vector("request_hello");
        magic[HEADER_LEN] = 0;
        assert!(
            decode_request(&magic, 1 << 20)
                .unwrap_err()
                .to_string()
                .contains("object stream")
        );
        assert!(
            decode_request(&heartbeat_response(1), 1 << 20).is_err(),
            "a response is not a request"
        );
    }
}
