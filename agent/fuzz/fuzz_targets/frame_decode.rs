//! Arbitrary bytes, fed to the Motan2 decoder in a chunking chosen by the first byte: it must
//! never panic, and every frame it returns must re-encode and decode to itself.
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sockmesh::protocol::motan2::{DecodeLimits, Motan2Codec};
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, rest)) = data.split_first() else {
        return;
    };
    let chunk = (chunk as usize % 64) + 1;
    let limits = DecodeLimits {
        max_meta: 1 << 16,
        max_body: 1 << 16,
        max_meta_entries: 256,
    };
    let mut codec = Motan2Codec::new(limits);
    let mut buf = BytesMut::new();
    for c in rest.chunks(chunk) {
        buf.extend_from_slice(c);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(f)) => {
                    let again = Motan2Codec::new(limits).decode(&mut BytesMut::from(&f.to_bytes()[..]));
                    let again = again
                        .expect("a decoded frame re-encodes to a valid frame")
                        .expect("complete");
                    // Meta entries Go cannot send (empty values) are dropped on encode.
                    assert_eq!(again.header, f.header);
                    assert_eq!(again.body, f.body);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
