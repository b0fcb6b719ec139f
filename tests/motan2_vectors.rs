//! The shared Motan2 vectors (copied into tests/data/motan2): every frame and value decodes to
//! the documented value (the `# decoded:` line, a Python literal) and re-encodes byte-exact;
//! plus property tests of random frames and value trees.
use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use sockmesh::protocol::motan2::frame::motan1_heartbeat_response;
use sockmesh::protocol::motan2::simple::{self, Value};
use sockmesh::protocol::motan2::{CodecError, Frame, FrameError, Header, Meta, Motan2Codec};
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
        let hex: String = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<String>()
            .split_whitespace()
            .collect();
        let bytes = (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect::<Vec<u8>>();
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
            f.header.serialization.to_string(),
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
        assert_eq!(f.to_bytes(), v.bytes, "{}: re-encoding differs", v.name);
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
            let e = f.exception().unwrap();
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

#[test]
fn motan_v1_vectors_are_recognised_and_heartbeat_answered() {
    let vs = vectors("frame_1");
    let req = vs.iter().find(|v| v.name.starts_with("frame_14")).unwrap();
    let resp = vs.iter().find(|v| v.name.starts_with("frame_15")).unwrap();
    let mut buf = BytesMut::from(&req.bytes[..]);
    assert!(matches!(
        Motan2Codec::default().decode(&mut buf),
        Err(CodecError::Frame(FrameError::MotanV1))
    ));
    assert_eq!(motan1_heartbeat_response(&req.bytes).unwrap(), resp.bytes);
    assert!(motan1_heartbeat_response(&resp.bytes[..10]).is_none());
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
        any::<u8>(),
        0u8..8,
        0u8..32,
        any::<u64>(),
        proptest::collection::btree_map(key, val, 0..8),
        arb_bytes(512),
    )
        .prop_map(|(flags, status, ser, id, meta, body)| {
            let mut m = Meta::new();
            for (k, v) in meta {
                m.insert(Bytes::from(k), Bytes::from(v));
            }
            let mut header = Header::request(id, ser);
            header.flags = flags;
            header.set_status(status);
            Frame {
                header,
                meta: m,
                body,
            }
        })
}

proptest! {
    #[test]
    fn random_values_round_trip(v in arb_value()) {
        let b = v.to_bytes();
        let (d, used) = Value::decode(&b).unwrap();
        prop_assert_eq!(used, b.len());
        prop_assert_eq!(d, v);
    }

    #[test]
    fn random_frames_round_trip_in_any_chunking(f in arb_frame(), chunk in 1usize..64) {
        let bytes = f.to_bytes();
        let mut codec = Motan2Codec::default();
        let mut buf = BytesMut::new();
        let mut got = None;
        for c in bytes.chunks(chunk) {
            prop_assert!(got.is_none());
            buf.extend_from_slice(c);
            got = codec.decode(&mut buf).unwrap();
        }
        prop_assert_eq!(got.unwrap(), f);
    }

    #[test]
    fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut buf = BytesMut::from(&data[..]);
        let _ = Motan2Codec::default().decode(&mut buf);
        let _ = simple::decode_all(&Bytes::from(data));
    }
}
