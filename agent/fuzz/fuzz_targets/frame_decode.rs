//! Arbitrary bytes fed to the Motan2 decoder in a chunking taken from the input's first bytes:
//! it must never panic, and every frame it returns must re-encode to bytes that decode to the
//! same frame (less the meta entries Go cannot send). Decoded frames also go through the
//! helpers an agent calls on received frames (gunzip, views, `M_e`, simple bodies, v1).
#![no_main]
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use sockmesh::protocol::motan2::{
    CodecError, DecodeLimits, Frame, FrameError, Meta, Motan2Codec, simple, v1,
};
use tokio_util::codec::Decoder;

const LIMITS: DecodeLimits = DecodeLimits {
    max_meta: 1 << 16,
    max_body: 1 << 16,
    max_meta_entries: 256,
};

fn check(f: &Frame) {
    let wire = f.encode_to_bytes();
    assert_eq!(wire.len(), f.encoded_len());
    let again = Motan2Codec::new(LIMITS)
        .decode(&mut BytesMut::from(&wire[..]))
        .expect("a decoded frame re-encodes to a valid frame")
        .expect("complete");
    let sendable: Meta = f
        .meta
        .iter()
        .filter(|(k, v)| Meta::is_encodable(k, v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(again.header, f.header);
    assert_eq!(again.meta, sendable);
    assert_eq!(again.body, f.body);

    if let Some(r) = f.as_request() {
        let _ = (
            r.service(),
            r.logical_request_id(),
            r.timeout(),
            r.is_framework_service(),
        );
    }
    if let Some(r) = f.as_response() {
        let _ = (r.exception(), r.process_time());
    }
    let mut g = f.clone();
    if g.gunzip(LIMITS.max_body).is_ok() {
        assert!(!g.header.is_gzip());
        assert!(g.body.len() <= LIMITS.max_body);
    }
    let _ = simple::decode_all(&g.body);
}

fuzz_target!(|data: &[u8]| {
    // First byte: how many chunk sizes follow (1..=8); they cycle over the rest of the input.
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = (n as usize % 8) + 1;
    if rest.len() < n {
        return;
    }
    let (sizes, mut input) = rest.split_at(n);
    let mut codec = Motan2Codec::new(LIMITS);
    let mut buf = BytesMut::new();
    for &s in sizes.iter().cycle() {
        if input.is_empty() {
            break;
        }
        let (now, later) = input.split_at((s as usize + 1).min(input.len()));
        input = later;
        buf.extend_from_slice(now);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(f)) => check(&f),
                Ok(None) => break,
                Err(CodecError::Frame(FrameError::MotanV1)) => {
                    // What a caller does with a v1 frame: split it off, answer heartbeats.
                    match v1::frame_len(&buf, LIMITS.max_body) {
                        Ok(Some(len)) if buf.len() >= len => {
                            let frame: Bytes = buf.split_to(len).freeze();
                            if let Some(resp) = v1::answer_heartbeat(&frame) {
                                assert!(v1::decode_header(&resp).is_ok());
                            }
                        }
                        Ok(_) => break,
                        Err(_) => return,
                    }
                }
                Err(_) => return,
            }
        }
    }
});
