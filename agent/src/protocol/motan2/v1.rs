//! Just enough of the legacy motan v1 framing (spec 1.12) to split v1 frames off a stream and
//! answer v1 heartbeats, so old Java clients' keepalive works. Everything else about v1 (the Java
//! object stream payload) is out of scope.
use bytes::Bytes;

use super::error::FrameError;

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
}
