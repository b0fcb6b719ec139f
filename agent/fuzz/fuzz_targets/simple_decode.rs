//! Arbitrary bytes into the simple deserializer: never panics; whatever decodes re-encodes to
//! bytes of the predicted length that decode to the same values.
#![no_main]
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sockmesh::protocol::motan2::{Value, simple};

fuzz_target!(|data: &[u8]| {
    let body = Bytes::copy_from_slice(data);
    let _ = Value::decode(&body);
    if let Ok(values) = simple::decode_all(&body) {
        let wire = simple::encode_args(&values);
        assert_eq!(wire.len(), values.iter().map(Value::encoded_len).sum::<usize>());
        let again = simple::decode_all(&wire).expect("re-encoded values decode");
        // NaN != NaN: compare the encodings instead of the values.
        assert_eq!(simple::encode_args(&again), wire);
        for v in &values {
            let _ = (v.as_i64(), v.as_f64(), v.as_str(), v.get("k"));
        }
    }
});
