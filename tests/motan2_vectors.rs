//! The shared Motan2 vectors (copied into tests/data/motan2): every frame and value decodes to
//! the documented value (the `# decoded:` line, a Python literal) and re-encodes byte-exact;
//! plus property tests of random frames and value trees.
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use sockmesh::protocol::motan2::frame::serialization;
use sockmesh::protocol::motan2::simple::{self, Value};
use sockmesh::protocol::motan2::{
    CodecError, Exception, Frame, FrameError, Header, Meta, Motan2Codec, codec, v1,
};
use tokio_util::codec::Decoder;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/motan2");

struct Vector {
    name: String,
    decoded: String,
    bytes: Bytes,
}

fn vectors(prefix: &str) -> Vec<Vector> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(DIR).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with(prefix) || !name.ends_with(".hex") {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap();
        let decoded = text
            .lines()
            .find_map(|l| l.strip_prefix("# decoded: "))
            .unwrap()
            .to_string();
        let bytes = sockmesh_testkit::vectors::hex_bytes(&name, &text);
        out.push(Vector {
            name,
            decoded,
            bytes: Bytes::from(bytes),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    assert!(!out.is_empty(), "no {prefix}* vectors in {DIR}");
    out
}

/// A Python literal as printed by the vector generator.
#[derive(Debug, Clone, PartialEq)]
enum Py {
    None,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(Vec<u8>),
    Bytes(Vec<u8>),
    List(Vec<Py>),
    Dict(Vec<(Py, Py)>),
}

struct PyParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl PyParser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i] == b' ' {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> bool {
        self.ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn string(&mut self) -> Vec<u8> {
        let q = self.s[self.i];
        self.i += 1;
        let mut out = Vec::new();
        while self.s[self.i] != q {
            if self.s[self.i] == b'\\' {
                self.i += 1;
                match self.s[self.i] {
                    b'x' => {
                        let h = std::str::from_utf8(&self.s[self.i + 1..self.i + 3]).unwrap();
                        out.push(u8::from_str_radix(h, 16).unwrap());
                        self.i += 2;
                    }
                    b'n' => out.push(b'\n'),
                    c => out.push(c),
                }
            } else {
                out.push(self.s[self.i]);
            }
            self.i += 1;
        }
        self.i += 1;
        out
    }
    fn seq(&mut self, close: u8) -> Vec<Py> {
        let mut v = Vec::new();
        while !self.eat(close) {
            v.push(self.value());
            self.eat(b',');
        }
        v
    }
    fn value(&mut self) -> Py {
        self.ws();
        let rest = &self.s[self.i..];
        for (word, v) in [
            (&b"None"[..], Py::None),
            (b"True", Py::Bool(true)),
            (b"False", Py::Bool(false)),
        ] {
            if rest.starts_with(word) {
                self.i += word.len();
                return v;
            }
        }
        match rest[0] {
            b'\'' | b'"' => Py::Str(self.string()),
            b'b' => {
                self.i += 1;
                Py::Bytes(self.string())
            }
            b'[' => {
                self.i += 1;
                Py::List(self.seq(b']'))
            }
            b'(' => {
                self.i += 1;
                Py::List(self.seq(b')'))
            }
            b'{' => {
                self.i += 1;
                let mut d = Vec::new();
                while !self.eat(b'}') {
                    let k = self.value();
                    assert!(self.eat(b':'));
                    let v = self.value();
                    d.push((k, v));
                    self.eat(b',');
                }
                Py::Dict(d)
            }
            _ => {
                let start = self.i;
                while self.i < self.s.len() && b"-+.0123456789e".contains(&self.s[self.i]) {
                    self.i += 1;
                }
                let t = std::str::from_utf8(&self.s[start..self.i]).unwrap();
                if t.contains('.') {
                    Py::Float(t.parse().unwrap())
                } else {
                    Py::Int(t.parse().unwrap())
                }
            }
        }
    }
}

fn py(s: &str) -> Py {
    PyParser {
        s: s.as_bytes(),
        i: 0,
    }
    .value()
}

/// Does a decoded value equal the documented one? Maps compare as sets (wire order is arbitrary).
fn same(v: &Value, p: &Py) -> bool {
    let str_eq = |b: &Bytes, p: &Py| matches!(p, Py::Str(s) if s[..] == b[..]);
    let dict_eq = |pairs: Vec<(Py, Py)>, d: &Vec<(Py, Py)>| {
        pairs.len() == d.len() && pairs.iter().all(|x| d.contains(x))
    };
    match (v, p) {
        (Value::Null, Py::None) => true,
        (Value::Bool(a), Py::Bool(b)) => a == b,
        (Value::String(s), p) => str_eq(s, p),
        (Value::Bytes(b), Py::Bytes(c)) => b[..] == c[..],
        (Value::F32(a), Py::Float(b)) => (*a as f64) == *b,
        (Value::F64(a), Py::Float(b)) => a == b,
        (v, Py::Int(i)) => v.as_i64().map(i128::from) == Some(*i),
        (Value::StringArray(items), Py::List(l)) => {
            items.len() == l.len() && items.iter().zip(l).all(|(a, b)| str_eq(a, b))
        }
        (Value::Array(items), Py::List(l)) => {
            items.len() == l.len() && items.iter().zip(l).all(|(a, b)| same(a, b))
        }
        (Value::StringMap(e), Py::Dict(d)) => dict_eq(
            e.iter()
                .map(|(k, v)| (Py::Str(k.to_vec()), Py::Str(v.to_vec())))
                .collect(),
            d,
        ),
        (Value::Map(e), Py::Dict(d)) => {
            e.len() == d.len()
                && e.iter()
                    .all(|(k, v)| d.iter().any(|(pk, pv)| same(k, pk) && same(v, pv)))
        }
        _ => false,
    }
}

fn field<'a>(line: &'a str, name: &str) -> &'a str {
    let start = line.find(&format!("{name}=")).unwrap() + name.len() + 1;
    let rest = &line[start..];
    rest.split(' ').next().unwrap()
}

#[test]
fn every_simple_vector_decodes_and_reencodes_exactly() {
    let vs = vectors("simple_");
    assert_eq!(vs.len(), 21);
    for v in vs {
        let values = simple::decode_all(&v.bytes).unwrap_or_else(|e| panic!("{}: {e}", v.name));
        let want = py(&v.decoded);
        if v.name.contains("multi_args") {
            let Py::List(items) = &want else { panic!() };
            assert_eq!(values.len(), items.len(), "{}", v.name);
            assert!(
                values.iter().zip(items).all(|(a, b)| same(a, b)),
                "{}: {values:?} vs {want:?}",
                v.name
            );
        } else {
            assert_eq!(values.len(), 1, "{}", v.name);
            assert!(same(&values[0], &want), "{}: {:?} vs {want:?}", v.name, values[0]);
        }
        assert_eq!(
            simple::encode_args(&values),
            v.bytes,
            "{}: re-encoding differs",
            v.name
        );
    }
}

#[test]
fn every_motan2_frame_vector_decodes_and_reencodes_exactly() {
    let mut n = 0;
    for v in vectors("frame_") {
        if v.decoded.starts_with("motan v1") {
            continue;
        }
        n += 1;
        let mut buf = BytesMut::from(&v.bytes[..]);
        let mut f = Motan2Codec::default()
            .decode(&mut buf)
            .unwrap()
            .unwrap_or_else(|| panic!("{}: incomplete", v.name));
        assert!(buf.is_empty(), "{}: bytes left", v.name);
        let d = &v.decoded;
        assert_eq!(
            format!("0x{:02x}", f.header.flags),
            field(d, "flags"),
            "{}",
            v.name
        );
        assert_eq!(f.header.version().to_string(), field(d, "version"), "{}", v.name);
        assert_eq!(f.header.status().to_string(), field(d, "status"), "{}", v.name);
        assert_eq!(
            f.header.serialization().to_string(),
            field(d, "serialization"),
            "{}",
            v.name
        );
        assert_eq!(f.header.request_id.to_string(), field(d, "rid"), "{}", v.name);
        let meta_src = &d[d.find("meta=").unwrap() + 5..d.find(" body_values=").unwrap()];
        let Py::List(pairs) = py(meta_src) else { panic!() };
        assert_eq!(pairs.len(), f.meta.len(), "{}", v.name);
        for p in pairs {
            let Py::List(kv) = p else { panic!() };
            let (Py::Str(k), Py::Str(val)) = (&kv[0], &kv[1]) else {
                panic!()
            };
            assert_eq!(
                f.meta
                    .get_bytes(std::str::from_utf8(k).unwrap())
                    .map(|b| b.to_vec()),
                Some(val.clone()),
                "{}",
                v.name
            );
        }
        // Re-encoding the decoded frame gives the same bytes (meta order kept, body untouched).
        assert_eq!(f.encode_to_bytes(), v.bytes, "{}: re-encoding differs", v.name);
        // The body holds the documented values (after gunzip for the gzip vector).
        f.gunzip(1 << 20).unwrap();
        let Py::List(want) = py(&d[d.find("body_values=").unwrap() + 12..]) else {
            panic!()
        };
        let got = simple::decode_all(&f.body).unwrap();
        assert_eq!(got.len(), want.len(), "{}", v.name);
        assert!(
            got.iter().zip(&want).all(|(a, b)| same(a, b)),
            "{}: {got:?}",
            v.name
        );
        if f.is_exception() {
            let e = f.as_response().unwrap().exception().unwrap();
            assert!(
                f.meta
                    .get("M_e")
                    .unwrap()
                    .contains(&format!("\"errcode\":{}", e.errcode)),
                "{}",
                v.name
            );
            assert_eq!(
                e.to_json(),
                f.meta.get("M_e").unwrap(),
                "{}: M_e not in Go's format",
                v.name
            );
        }
    }
    assert_eq!(n, 13);
}

fn vector(prefix: &str) -> Bytes {
    vectors(prefix).remove(0).bytes
}

#[test]
fn motan_v1_vectors_are_recognised_and_heartbeat_answered() {
    let req = vector("frame_14");
    let resp = vector("frame_15");
    for v in [&req, &resp] {
        let mut buf = BytesMut::from(&v[..]);
        assert!(matches!(
            Motan2Codec::default().decode(&mut buf),
            Err(CodecError::Frame(FrameError::MotanV1))
        ));
        assert_eq!(buf.len(), v.len(), "the v1 bytes stay for the caller");
        assert_eq!(codec::sniff(v), Ok(Some(codec::WireVersion::Motan1)));
        assert_eq!(v1::frame_len(v, 1 << 20), Ok(Some(v.len())));
        assert_eq!(v1::decode_header(v).unwrap().request_id, 1);
    }
    assert!(v1::is_heartbeat_request(&req) && !v1::is_heartbeat_request(&resp));
    assert_eq!(v1::answer_heartbeat(&req).unwrap(), resp);
    assert_eq!(v1::heartbeat_request(1), req);
    assert!(v1::answer_heartbeat(&resp).is_none());
}

/// The builders produce the vectors' bytes exactly.
#[test]
fn builders_reproduce_the_vectors() {
    assert_eq!(Frame::heartbeat_request(1).encode_to_bytes(), vector("frame_01"));
    assert_eq!(Frame::heartbeat_response(1).encode_to_bytes(), vector("frame_02"));

    let mut hello = Frame::request(
        1,
        "com.weibo.HelloService",
        "hello",
        simple::encode_args(&["world".into()]),
    );
    hello.meta.insert("M_g", "g");
    hello.meta.insert("M_pp", "motan2");
    assert_eq!(hello.encode_to_bytes(), vector("frame_05"));

    let mut fwd = hello.clone();
    fwd.header
        .set_flag(sockmesh::protocol::motan2::frame::FLAG_PROXY, true);
    fwd.header.request_id = 0x0000_0001_0000_0001;
    for (k, v) in [("M_rid", "1"), ("host", "127.0.0.1"), ("M_s", "client-app")] {
        fwd.meta.insert(k, v);
    }
    assert_eq!(fwd.encode_to_bytes(), vector("frame_07"));

    let mut ok = Frame::response_to(&hello, Value::from("hello world").to_bytes());
    ok.set_process_time_if_absent(Duration::from_millis(2));
    assert_eq!(ok.encode_to_bytes(), vector("frame_08"));

    let msg = "cluster not found. cluster: cluster not found. service: com.weibo.HelloService";
    let mut e = Frame::agent_exception(1, &Exception::service(400, msg));
    e.set_process_time_if_absent(Duration::ZERO);
    assert_eq!(e.encode_to_bytes(), vector("frame_10"));

    let msg = "provider not exist serviceKey=g_com.weibo.HelloService";
    let mut e = Frame::agent_exception(1, &Exception::service(404, msg));
    e.set_process_time_if_absent(Duration::from_millis(1));
    assert_eq!(e.encode_to_bytes(), vector("frame_11"));

    let biz = Exception::business(500, "name must not be empty");
    let mut e = Frame::exception_response(1, &biz, serialization::SIMPLE, false);
    e.set_process_time_if_absent(Duration::from_millis(3));
    assert_eq!(e.encode_to_bytes(), vector("frame_12"));
    assert!(
        !e.as_response()
            .unwrap()
            .exception()
            .unwrap()
            .errtype
            .is_retryable()
    );

    // Gzip: our compressed bytes differ from the vector's, the content does not.
    let mut z = hello.clone();
    assert!(z.gzip_if_larger(1));
    assert_eq!(z.header.flags, 0x08);
    let mut vz = Motan2Codec::default()
        .decode(&mut BytesMut::from(&vector("frame_13")[..]))
        .unwrap()
        .unwrap();
    assert_eq!(vz.header, z.header);
    vz.gunzip(1 << 20).unwrap();
    z.gunzip(1 << 20).unwrap();
    assert_eq!(vz, hello);
    assert_eq!(z, hello);
}

fn arb_bytes(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        arb_bytes(16).prop_map(Value::String),
        arb_bytes(16).prop_map(Value::Bytes),
        any::<bool>().prop_map(Value::Bool),
        any::<u8>().prop_map(Value::Byte),
        any::<i16>().prop_map(Value::I16),
        any::<i32>().prop_map(Value::I32),
        any::<i64>().prop_map(Value::I64),
        (-1e6f32..1e6).prop_map(Value::F32),
        (-1e12f64..1e12).prop_map(Value::F64),
        proptest::collection::vec((arb_bytes(8), arb_bytes(8)), 0..4).prop_map(Value::StringMap),
        proptest::collection::vec(arb_bytes(8), 0..4).prop_map(Value::StringArray),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::vec((inner.clone(), inner), 0..4).prop_map(Value::Map),
        ]
    })
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    let key = "[A-Za-z_][A-Za-z0-9_]{0,11}";
    let val = "[ -~]{1,24}";
    (
        any::<[u8; 4]>(),
        any::<u64>(),
        proptest::collection::btree_map(key, val, 0..8),
        arb_bytes(512),
    )
        .prop_map(|([flags, status, ser, vs], id, meta, body)| {
            let mut header = Header::request(id, 0);
            header.flags = flags;
            header.serialization_byte = ser;
            // Any version bits but motan2's would not decode as motan2.
            header.version_status = (1 << 3) | (vs & 0x07);
            header.set_status(status);
            Frame {
                header,
                meta: meta.into_iter().collect(),
                body,
            }
        })
}

/// Meta as anyone could put it together: empty keys and values, newlines, duplicates.
fn arb_messy_meta() -> impl Strategy<Value = Vec<(Bytes, Bytes)>> {
    let part = prop_oneof!["", "[a-c]{1,2}", "[a-c\n]{1,3}"].prop_map(Bytes::from);
    proptest::collection::vec((part.clone(), part), 0..12)
}

proptest! {
    #[test]
    fn random_values_round_trip(v in arb_value()) {
        let b = v.to_bytes();
        prop_assert_eq!(b.len(), v.encoded_len());
        let (d, used) = Value::decode(&b).unwrap();
        prop_assert_eq!(used, b.len());
        prop_assert_eq!(d, v);
    }

    #[test]
    fn random_argument_lists_round_trip(args in proptest::collection::vec(arb_value(), 0..5)) {
        let body = simple::encode_args(&args);
        prop_assert_eq!(simple::decode_all(&body).unwrap(), args);
    }

    #[test]
    fn random_frames_round_trip_in_any_chunking(
        frames in proptest::collection::vec(arb_frame(), 1..4),
        chunks in proptest::collection::vec(1usize..80, 1..16),
    ) {
        let mut wire = BytesMut::new();
        for f in &frames {
            f.encode(&mut wire);
        }
        let mut codec = Motan2Codec::default();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut rest = &wire[..];
        // Chunk sizes cycle through the drawn list: the read sizes of a real socket.
        for n in chunks.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (now, later) = rest.split_at((*n).min(rest.len()));
            buf.extend_from_slice(now);
            rest = later;
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(got, frames);
    }

    #[test]
    fn messy_meta_is_sent_like_go_and_read_back(entries in arb_messy_meta()) {
        let mut f = Frame::request(1, "s", "m", Bytes::new());
        f.meta = Meta::new();
        for (k, v) in &entries {
            f.meta.insert(k.clone(), v.clone());
        }
        let back = Motan2Codec::default()
            .decode(&mut BytesMut::from(&f.encode_to_bytes()[..]))
            .unwrap()
            .unwrap();
        let sendable: Meta = f
            .meta
            .iter()
            .filter(|(k, v)| Meta::is_encodable(k, v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        prop_assert_eq!(back.meta, sendable);
    }

    #[test]
    fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut buf = BytesMut::from(&data[..]);
        let _ = Motan2Codec::default().decode(&mut buf);
        let _ = simple::decode_all(&Bytes::from(data));
    }

    /// A valid frame with corrupted bytes: an error or a frame, never a panic.
    #[test]
    fn corrupted_frames_never_panic(f in arb_frame(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4)) {
        let mut wire = f.encode_to_bytes().to_vec();
        for (at, x) in flips {
            let n = wire.len();
            wire[at % n] ^= x;
        }
        let mut buf = BytesMut::from(&wire[..]);
        if let Ok(Some(g)) = Motan2Codec::default().decode(&mut buf) {
            let _ = simple::decode_all(&g.body);
        }
    }
}
