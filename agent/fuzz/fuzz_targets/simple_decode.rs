//! Arbitrary bytes into the simple deserializer: never panics; whatever decodes re-encodes to
//! bytes that decode to the same values.
#![no_main]
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sockmesh::protocol::motan2::simple;

fuzz_target!(|data: &[u8]| {
    if let Ok(values) = simple::decode_all(&Bytes::copy_from_slice(data)) {
        let again = simple::decode_all(&simple::encode_args(&values)).expect("re-encoded values decode");
        // NaN != NaN: compare the encodings instead of the values.
        assert_eq!(simple::encode_args(&again), simple::encode_args(&values));
    }
});
