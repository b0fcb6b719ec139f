//! The "simple" serialization (number 6, spec section 2): a `Value` tree, both directions,
//! zigzag varints, several arguments concatenated in one body. Decoding checks every declared
//! length against the bytes present and limits nesting, so it never panics or over-allocates.
use bytes::{BufMut, Bytes, BytesMut};

use super::error::SimpleError;

pub const TAG_NULL: u8 = 0;
pub const TAG_STRING: u8 = 1;
pub const TAG_STRING_MAP: u8 = 2;
pub const TAG_BYTES: u8 = 3;
pub const TAG_STRING_ARRAY: u8 = 4;
pub const TAG_BOOL: u8 = 5;
pub const TAG_BYTE: u8 = 6;
pub const TAG_I16: u8 = 7;
pub const TAG_I32: u8 = 8;
pub const TAG_I64: u8 = 9;
pub const TAG_F32: u8 = 10;
pub const TAG_F64: u8 = 11;
pub const TAG_MAP: u8 = 20;
pub const TAG_ARRAY: u8 = 21;

/// How deep containers may nest when decoding.
pub const MAX_DEPTH: usize = 64;

/// A simple-serialized value. Strings are kept as bytes: Go and PHP send byte strings that need
/// not be UTF-8; use [`Value::as_str`] or [`Value::into_string`] where text is needed. Strings,
/// byte arrays and map entries decoded from a body are slices of it (no copies).
///
/// Empty containers decode as empty collections (Go decodes them as nil); the encoding is the
/// same either way.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    String(Bytes),
    StringMap(Vec<(Bytes, Bytes)>),
    Bytes(Bytes),
    StringArray(Vec<Bytes>),
    Bool(bool),
    Byte(u8),
    I16(i16),
    I32(i32),
    I64(i64),
    F32(f32),
    F64(f64),
    /// Generic map; entries in wire order.
    Map(Vec<(Value, Value)>),
    Array(Vec<Value>),
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::String(Bytes::copy_from_slice(s.as_bytes()))
    }
}
impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::String(Bytes::from(s))
    }
}
impl From<&[u8]> for Value {
    /// A byte array (tag 3).
    fn from(v: &[u8]) -> Value {
        Value::Bytes(Bytes::copy_from_slice(v))
    }
}
impl From<Vec<u8>> for Value {
    /// A byte array (tag 3).
    fn from(v: Vec<u8>) -> Value {
        Value::Bytes(Bytes::from(v))
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Bool(v)
    }
}
impl From<u8> for Value {
    fn from(v: u8) -> Value {
        Value::Byte(v)
    }
}
impl From<i16> for Value {
    fn from(v: i16) -> Value {
        Value::I16(v)
    }
}
impl From<i32> for Value {
    fn from(v: i32) -> Value {
        Value::I32(v)
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::I64(v)
    }
}
impl From<f32> for Value {
    fn from(v: f32) -> Value {
        Value::F32(v)
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::F64(v)
    }
}
impl From<Vec<String>> for Value {
    /// A string array (tag 4).
    fn from(v: Vec<String>) -> Value {
        Value::StringArray(v.into_iter().map(Bytes::from).collect())
    }
}
impl From<Vec<(String, String)>> for Value {
    /// A string map (tag 2), entries in this order.
    fn from(v: Vec<(String, String)>) -> Value {
        Value::StringMap(
            v.into_iter()
                .map(|(k, v)| (Bytes::from(k), Bytes::from(v)))
                .collect(),
        )
    }
}
impl From<Vec<Value>> for Value {
    /// A generic array (tag 21).
    fn from(v: Vec<Value>) -> Value {
        Value::Array(v)
    }
}
impl From<Vec<(Value, Value)>> for Value {
    /// A generic map (tag 20).
    fn from(v: Vec<(Value, Value)>) -> Value {
        Value::Map(v)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
    /// Integers of any width: PHP sends every integer as int64, Go/Java use the declared width.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::Byte(b) => Some(b as i64),
            Value::I16(v) => Some(v as i64),
            Value::I32(v) => Some(v as i64),
            Value::I64(v) => Some(v),
            _ => None,
        }
    }
    /// Floats of either width, or any integer.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
    /// The bytes of a string or byte array (HTTP providers return text as either, spec 4.12).
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match self {
            Value::String(b) | Value::Bytes(b) => Some(b),
            _ => None,
        }
    }
    /// Text of a string or byte array, if it is UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        self.to_utf8().ok()
    }
    /// Like [`Value::as_str`] but says why not.
    pub fn to_utf8(&self) -> Result<&str, SimpleError> {
        let b = self.as_bytes().ok_or(SimpleError::InvalidUtf8)?;
        std::str::from_utf8(b).map_err(|_| SimpleError::InvalidUtf8)
    }
    /// A string or byte array as an owned `String`, only if it is UTF-8 (nothing is replaced).
    pub fn into_string(self) -> Result<String, SimpleError> {
        match self {
            Value::String(b) | Value::Bytes(b) => {
                String::from_utf8(Vec::from(b)).map_err(|_| SimpleError::InvalidUtf8)
            }
            _ => Err(SimpleError::InvalidUtf8),
        }
    }
    /// Items of a generic array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(v) => Some(v),
            _ => None,
        }
    }
    /// Entries of a generic map.
    pub fn as_map(&self) -> Option<&[(Value, Value)]> {
        match self {
            Value::Map(v) => Some(v),
            _ => None,
        }
    }
    /// Value of `key` in a string map or a generic map with string keys (last entry wins).
    pub fn get(&self, key: &str) -> Option<Value> {
        match self {
            Value::StringMap(e) => e
                .iter()
                .rev()
                .find(|(k, _)| k.as_ref() == key.as_bytes())
                .map(|(_, v)| Value::String(v.clone())),
            Value::Map(e) => e
                .iter()
                .rev()
                .find(|(k, _)| matches!(k, Value::String(s) if s.as_ref() == key.as_bytes()))
                .map(|(_, v)| v.clone()),
            _ => None,
        }
    }

    /// Bytes [`Value::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        match self {
            Value::Null => 1,
            Value::Bool(_) | Value::Byte(_) => 2,
            Value::I16(_) => 3,
            Value::F32(_) => 5,
            Value::F64(_) => 9,
            Value::I32(v) => 1 + varint_len(zigzag32(*v) as u64),
            Value::I64(v) => 1 + varint_len(zigzag64(*v)),
            Value::String(b) | Value::Bytes(b) => 5 + b.len(),
            Value::StringMap(e) => 5 + e.iter().map(|(k, v)| 8 + k.len() + v.len()).sum::<usize>(),
            Value::StringArray(items) => 5 + items.iter().map(|s| 4 + s.len()).sum::<usize>(),
            Value::Map(e) => {
                5 + e
                    .iter()
                    .map(|(k, v)| k.encoded_len() + v.encoded_len())
                    .sum::<usize>()
            }
            Value::Array(items) => 5 + items.iter().map(Value::encoded_len).sum::<usize>(),
        }
    }

    /// Append the encoding to `dst`.
    ///
    /// # Panics
    /// If a string or container is 4 GiB or more (lengths are u32 on the wire).
    pub fn encode(&self, dst: &mut BytesMut) {
        match self {
            Value::Null => dst.put_u8(TAG_NULL),
            Value::String(s) => put_blob(dst, TAG_STRING, s),
            Value::Bytes(b) => put_blob(dst, TAG_BYTES, b),
            Value::StringMap(entries) => container(dst, TAG_STRING_MAP, |d| {
                for (k, v) in entries {
                    put_len_bytes(d, k);
                    put_len_bytes(d, v);
                }
            }),
            Value::StringArray(items) => container(dst, TAG_STRING_ARRAY, |d| {
                for s in items {
                    put_len_bytes(d, s);
                }
            }),
            Value::Bool(b) => {
                dst.put_u8(TAG_BOOL);
                dst.put_u8(*b as u8);
            }
            Value::Byte(b) => {
                dst.put_u8(TAG_BYTE);
                dst.put_u8(*b);
            }
            Value::I16(v) => {
                dst.put_u8(TAG_I16);
                dst.put_i16(*v);
            }
            Value::I32(v) => {
                dst.put_u8(TAG_I32);
                put_varint(dst, zigzag32(*v) as u64);
            }
            Value::I64(v) => {
                dst.put_u8(TAG_I64);
                put_varint(dst, zigzag64(*v));
            }
            Value::F32(v) => {
                dst.put_u8(TAG_F32);
                dst.put_f32(*v);
            }
            Value::F64(v) => {
                dst.put_u8(TAG_F64);
                dst.put_f64(*v);
            }
            Value::Map(entries) => container(dst, TAG_MAP, |d| {
                for (k, v) in entries {
                    k.encode(d);
                    v.encode(d);
                }
            }),
            Value::Array(items) => container(dst, TAG_ARRAY, |d| {
                for v in items {
                    v.encode(d);
                }
            }),
        }
    }

    /// The encoding in one exactly sized buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(self.encoded_len());
        self.encode(&mut b);
        b.freeze()
    }

    /// Decode one value from the start of `src`; returns it and the bytes it used.
    pub fn decode(src: &Bytes) -> Result<(Value, usize), SimpleError> {
        let mut r = Reader::new(src, usize::MAX);
        let v = r.value(0)?;
        Ok((v, r.pos))
    }
}

/// What decoding one body may build: values (every nested value, map entry and array item
/// counts one) and the encoded size of one top-level value. Values are slices of the body, so
/// the count, not the bytes, is what a hostile body could multiply: 10 MiB of zero bytes is
/// ten million nulls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValueLimits {
    pub max_values: usize,
    pub max_value_bytes: usize,
}

impl Default for ValueLimits {
    /// The `sockmesh.limits` defaults (`decoded_values`, `decoded_value_bytes`).
    fn default() -> ValueLimits {
        ValueLimits {
            max_values: 65536,
            max_value_bytes: 10 << 20,
        }
    }
}

/// Encode call arguments: the plain concatenation of each value (spec 2.3).
pub fn encode_args(args: &[Value]) -> Bytes {
    let mut b = BytesMut::with_capacity(args.iter().map(Value::encoded_len).sum());
    for a in args {
        a.encode(&mut b);
    }
    b.freeze()
}

/// Decode every value in a body (Go's untyped multi-decode: values until the bytes run out). An
/// empty body is no arguments. For bodies from peers use [`decode_first`], which is bounded.
pub fn decode_all(body: &Bytes) -> Result<Vec<Value>, SimpleError> {
    let mut r = Reader::new(body, usize::MAX);
    let mut out = Vec::new();
    while r.pos < body.len() {
        out.push(r.value(0)?);
    }
    Ok(out)
}

/// Decode at most the first `n` values of a body within `limits`; the `bool` says whether
/// bytes follow them (more arguments than the caller takes, never decoded).
pub fn decode_first(body: &Bytes, n: usize, limits: ValueLimits) -> Result<(Vec<Value>, bool), SimpleError> {
    let mut r = Reader::new(body, limits.max_values);
    let mut out = Vec::new();
    while out.len() < n && r.pos < body.len() {
        let start = r.pos;
        out.push(r.value(0)?);
        if r.pos - start > limits.max_value_bytes {
            return Err(SimpleError::ValueTooLarge(r.pos - start, limits.max_value_bytes));
        }
    }
    Ok((out, r.pos < body.len()))
}

/// Decode the body's `n`th (0-based) value, skipping the ones before it without building them,
/// and building at most `max_values` values for it; None when the body has fewer. The values
/// after it are never looked at.
pub fn decode_nth(body: &Bytes, n: usize, max_values: usize) -> Result<Option<Value>, SimpleError> {
    let mut r = Reader::new(body, max_values);
    for _ in 0..n {
        if r.pos >= body.len() {
            return Ok(None);
        }
        r.skip()?;
    }
    if r.pos >= body.len() {
        return Ok(None);
    }
    r.value(0).map(Some)
}

pub fn zigzag32(n: i32) -> u32 {
    ((n << 1) ^ (n >> 31)) as u32
}
pub fn zigzag64(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}
fn unzigzag64(z: u64) -> i64 {
    ((z >> 1) as i64) ^ -((z & 1) as i64)
}

fn varint_len(v: u64) -> usize {
    // 7 bits per byte; zero takes one byte.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(dst: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        dst.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    dst.put_u8(v as u8);
}

fn wire_len(n: usize) -> u32 {
    u32::try_from(n).expect("simple values are under 4 GiB")
}

fn put_len_bytes(dst: &mut BytesMut, b: &[u8]) {
    dst.put_u32(wire_len(b.len()));
    dst.put_slice(b);
}

fn put_blob(dst: &mut BytesMut, tag: u8, b: &[u8]) {
    dst.put_u8(tag);
    put_len_bytes(dst, b);
}

/// Tag, a u32 byte length back-patched after the items are written.
fn container(dst: &mut BytesMut, tag: u8, items: impl FnOnce(&mut BytesMut)) {
    dst.put_u8(tag);
    let at = dst.len();
    dst.put_u32(0);
    items(dst);
    let len = wire_len(dst.len() - at - 4);
    dst[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
    /// Values that may still be built.
    values_left: usize,
    max_values: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a Bytes, max_values: usize) -> Reader<'a> {
        Reader {
            buf,
            pos: 0,
            values_left: max_values,
            max_values,
        }
    }
    /// One more value built.
    fn count(&mut self) -> Result<(), SimpleError> {
        self.values_left = self
            .values_left
            .checked_sub(1)
            .ok_or(SimpleError::TooManyValues(self.max_values))?;
        Ok(())
    }
    /// Step over one value without building it (containers by their declared size).
    fn skip(&mut self) -> Result<(), SimpleError> {
        match self.u8()? {
            TAG_NULL => {}
            TAG_STRING | TAG_BYTES => {
                let n = self.u32()?;
                self.slice(n)?;
            }
            TAG_BOOL | TAG_BYTE => {
                self.u8()?;
            }
            TAG_I16 => {
                self.array::<2>()?;
            }
            TAG_I32 | TAG_I64 => {
                self.varint()?;
            }
            TAG_F32 => {
                self.array::<4>()?;
            }
            TAG_F64 => {
                self.array::<8>()?;
            }
            TAG_STRING_MAP | TAG_STRING_ARRAY | TAG_MAP | TAG_ARRAY => self.pos = self.container_end()?,
            other => return Err(SimpleError::UnknownTag(other)),
        }
        Ok(())
    }
    fn need(&self, n: usize) -> Result<(), SimpleError> {
        let left = self.buf.len() - self.pos;
        if left < n {
            Err(SimpleError::Truncated(n - left))
        } else {
            Ok(())
        }
    }
    fn u8(&mut self) -> Result<u8, SimpleError> {
        self.need(1)?;
        self.pos += 1;
        Ok(self.buf[self.pos - 1])
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], SimpleError> {
        self.need(N)?;
        let a = self.buf[self.pos..self.pos + N].try_into().unwrap();
        self.pos += N;
        Ok(a)
    }
    fn u32(&mut self) -> Result<usize, SimpleError> {
        Ok(u32::from_be_bytes(self.array()?) as usize)
    }
    fn slice(&mut self, n: usize) -> Result<Bytes, SimpleError> {
        self.need(n)?;
        let s = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(s)
    }
    fn len_bytes(&mut self) -> Result<Bytes, SimpleError> {
        let n = self.u32()?;
        self.slice(n)
    }
    fn varint(&mut self) -> Result<u64, SimpleError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.u8()?;
            v |= ((b & 0x7f) as u64) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(SimpleError::Overflow)
    }
    /// The end offset of a container whose byte length comes next.
    fn container_end(&mut self) -> Result<usize, SimpleError> {
        let n = self.u32()?;
        self.need(n)?;
        Ok(self.pos + n)
    }
    fn value(&mut self, depth: usize) -> Result<Value, SimpleError> {
        self.count()?;
        let tag = self.u8()?;
        Ok(match tag {
            TAG_NULL => Value::Null,
            TAG_STRING => Value::String(self.len_bytes()?),
            TAG_BYTES => Value::Bytes(self.len_bytes()?),
            TAG_BOOL => Value::Bool(self.u8()? == 1),
            TAG_BYTE => Value::Byte(self.u8()?),
            TAG_I16 => Value::I16(i16::from_be_bytes(self.array()?)),
            // int32 truncates the varint to 32 bits before unzigzagging, as Go does.
            TAG_I32 => {
                let z = self.varint()? as u32;
                Value::I32(((z >> 1) as i32) ^ -((z & 1) as i32))
            }
            TAG_I64 => Value::I64(unzigzag64(self.varint()?)),
            TAG_F32 => Value::F32(f32::from_be_bytes(self.array()?)),
            TAG_F64 => Value::F64(f64::from_be_bytes(self.array()?)),
            TAG_STRING_MAP => {
                let end = self.container_end()?;
                let mut entries = Vec::new();
                while self.pos < end {
                    self.count()?;
                    let k = self.len_bytes()?;
                    let v = self.len_bytes()?;
                    entries.push((k, v));
                }
                self.check_end(end)?;
                Value::StringMap(entries)
            }
            TAG_STRING_ARRAY => {
                let end = self.container_end()?;
                let mut items = Vec::new();
                while self.pos < end {
                    self.count()?;
                    items.push(self.len_bytes()?);
                }
                self.check_end(end)?;
                Value::StringArray(items)
            }
            TAG_MAP | TAG_ARRAY => {
                if depth >= MAX_DEPTH {
                    return Err(SimpleError::TooDeep(MAX_DEPTH));
                }
                let end = self.container_end()?;
                if tag == TAG_MAP {
                    let mut entries = Vec::new();
                    while self.pos < end {
                        let k = self.value(depth + 1)?;
                        let v = self.value(depth + 1)?;
                        entries.push((k, v));
                    }
                    self.check_end(end)?;
                    Value::Map(entries)
                } else {
                    let mut items = Vec::new();
                    while self.pos < end {
                        items.push(self.value(depth + 1)?);
                    }
                    self.check_end(end)?;
                    Value::Array(items)
                }
            }
            other => return Err(SimpleError::UnknownTag(other)),
        })
    }
    fn check_end(&self, end: usize) -> Result<(), SimpleError> {
        if self.pos != end {
            Err(SimpleError::WrongSize)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(v: &Value) -> Value {
        let b = v.to_bytes();
        let (d, used) = Value::decode(&b).unwrap();
        assert_eq!(used, b.len());
        d
    }

    #[test]
    fn zigzag_examples_from_the_spec() {
        for (n, hex) in [
            (0i64, "00"),
            (-1, "01"),
            (1, "02"),
            (-2, "03"),
            (63, "7e"),
            (-64, "7f"),
            (64, "8001"),
            (-129, "8102"),
        ] {
            let b = Value::I64(n).to_bytes();
            let got: String = b[1..].iter().map(|x| format!("{x:02x}")).collect();
            assert_eq!(got, hex, "{n}");
        }
        assert_eq!(&Value::I32(300).to_bytes()[1..], &[0xd8, 0x04]);
        assert_eq!(
            &Value::I64(i64::MIN).to_bytes()[1..],
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
        );
        assert_eq!(rt(&Value::I64(i64::MIN)), Value::I64(i64::MIN));
        assert_eq!(rt(&Value::I32(i32::MIN)), Value::I32(i32::MIN));
    }

    #[test]
    fn errors_are_typed() {
        let b = |v: &[u8]| Bytes::copy_from_slice(v);
        assert_eq!(
            Value::decode(&b(&[1, 0, 0, 0, 9, b'a'])).unwrap_err(),
            SimpleError::Truncated(8)
        );
        assert_eq!(Value::decode(&b(&[13])).unwrap_err(), SimpleError::UnknownTag(13));
        assert_eq!(
            Value::decode(&b(&[
                9, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 1
            ]))
            .unwrap_err(),
            SimpleError::Overflow
        );
        // An array claiming 2 bytes whose item needs 5: overruns its declared size.
        assert_eq!(
            Value::decode(&b(&[21, 0, 0, 0, 2, 1, 0, 0, 0, 0])).unwrap_err(),
            SimpleError::WrongSize
        );
        // A huge declared length is refused without allocating.
        assert!(matches!(
            Value::decode(&b(&[3, 0xff, 0xff, 0xff, 0xff])).unwrap_err(),
            SimpleError::Truncated(_)
        ));
        let mut nested = Value::Null;
        for _ in 0..(MAX_DEPTH + 1) {
            nested = Value::Array(vec![nested]);
        }
        assert_eq!(
            Value::decode(&nested.to_bytes()).unwrap_err(),
            SimpleError::TooDeep(MAX_DEPTH)
        );
        assert_eq!(
            Value::Bytes(Bytes::from_static(b"\xff")).to_utf8().unwrap_err(),
            SimpleError::InvalidUtf8
        );
    }

    #[test]
    fn lengths_and_edge_encodings() {
        for v in [0u64, 1, 127, 128, 16383, 16384, u32::MAX as u64, u64::MAX] {
            let mut b = BytesMut::new();
            put_varint(&mut b, v);
            assert_eq!(varint_len(v), b.len(), "{v}");
        }
        // Only exactly 01 is true.
        let b = Bytes::from_static(&[5, 2]);
        assert_eq!(Value::decode(&b).unwrap().0, Value::Bool(false));
        // An int32 varint is cut to 32 bits before unzigzagging (Go): 2^32 + 2 reads as 1.
        let b = Bytes::from_static(&[8, 0x82, 0x80, 0x80, 0x80, 0x10]);
        assert_eq!(Value::decode(&b).unwrap().0, Value::I32(1));
        // Empty containers are empty collections, encoded as tag + 00000000.
        for (v, tag) in [
            (Value::StringMap(vec![]), TAG_STRING_MAP),
            (Value::StringArray(vec![]), TAG_STRING_ARRAY),
            (Value::Map(vec![]), TAG_MAP),
            (Value::Array(vec![]), TAG_ARRAY),
        ] {
            assert_eq!(&v.to_bytes()[..], &[tag, 0, 0, 0, 0]);
            assert_eq!(rt(&v), v);
        }
    }

    #[test]
    fn conversions_and_accessors() {
        assert_eq!(Value::from(Some(3i16)), Value::I16(3));
        assert_eq!(Value::from(None::<i64>), Value::Null);
        assert!(Value::from(None::<bool>).is_null());
        assert_eq!(Value::from(2u8).as_i64(), Some(2));
        assert_eq!(Value::from(1.5f32).as_f64(), Some(1.5));
        assert_eq!(Value::from(true).as_bool(), Some(true));
        assert_eq!(Value::from(&b"ab"[..]).as_str(), Some("ab"));
        assert_eq!(Value::from(vec![b'x']).into_string().unwrap(), "x");
        assert_eq!(Value::I64(1).into_string(), Err(SimpleError::InvalidUtf8));
        assert_eq!(
            Value::Bytes(Bytes::from_static(b"\xc3")).into_string(),
            Err(SimpleError::InvalidUtf8)
        );
        let sm = Value::from(vec![("k".to_string(), "1".to_string()), ("k".into(), "2".into())]);
        assert_eq!(sm.get("k"), Some(Value::from("2")));
        let m = Value::from(vec![
            (Value::from("a"), Value::I64(1)),
            (Value::I64(2), Value::Null),
        ]);
        assert_eq!((m.get("a"), m.get("b")), (Some(Value::I64(1)), None));
        assert_eq!(m.as_map().unwrap().len(), 2);
        let a = Value::from(vec![Value::Null, Value::from(vec!["s".to_string()])]);
        assert_eq!(
            a.as_array().unwrap()[1],
            Value::StringArray(vec![Bytes::from_static(b"s")])
        );
        assert_eq!(rt(&a), a);
    }

    #[test]
    fn decoded_strings_share_the_body() {
        let body = encode_args(&[Value::from("hello"), Value::from(vec![1u8, 2])]);
        let vals = decode_all(&body).unwrap();
        let inside = |b: &Bytes| body.as_ptr_range().contains(&b.as_ptr());
        assert!(inside(vals[0].as_bytes().unwrap()) && inside(vals[1].as_bytes().unwrap()));
    }

    #[test]
    fn php_and_go_integers_read_alike() {
        assert_eq!(Value::I64(42).as_i64(), Value::I32(42).as_i64());
        assert_eq!(Value::Byte(7).as_i64(), Some(7));
        assert_eq!(Value::from("x").as_str(), Some("x"));
        let args = encode_args(&[Value::from("world"), Value::I64(42)]);
        assert_eq!(
            decode_all(&args).unwrap(),
            vec![Value::from("world"), Value::I64(42)]
        );
        assert!(decode_all(&Bytes::new()).unwrap().is_empty());
    }

    #[test]
    fn decode_nth_reads_no_further_than_the_wanted_value() {
        let mut body = BytesMut::new();
        body.extend_from_slice(&encode_args(&[Value::from("a"), Value::from("key")]));
        body.extend_from_slice(&[0xFF, 0xFF, 0xFF]); // not a value: never read
        let body = body.freeze();
        assert!(decode_all(&body).is_err());
        assert_eq!(decode_nth(&body, 1, 1).unwrap().unwrap().as_str(), Some("key"));
        assert_eq!(decode_nth(&encode_args(&[Value::from("a")]), 3, 1).unwrap(), None);
        // The values before the wanted one are stepped over, not built.
        let big = Value::Array(vec![Value::Null; 100_000]);
        let body = encode_args(&[big, Value::I64(7)]);
        assert_eq!(decode_nth(&body, 1, 1).unwrap(), Some(Value::I64(7)));
        assert_eq!(decode_nth(&body, 0, 10), Err(SimpleError::TooManyValues(10)));
    }

    #[test]
    fn decode_first_is_bounded_by_count_and_size() {
        let limits = ValueLimits {
            max_values: 1000,
            max_value_bytes: 100,
        };
        // 10 MiB of zero bytes: ten million nulls; two are decoded and the rest never looked at.
        let zeros = Bytes::from(vec![0u8; 10 << 20]);
        assert_eq!(
            decode_first(&zeros, 2, limits).unwrap(),
            (vec![Value::Null, Value::Null], true)
        );
        // One argument holding a million values stops at the cap.
        let mut many = BytesMut::new();
        container(&mut many, TAG_ARRAY, |b| b.put_bytes(0, 1_000_000));
        assert_eq!(
            decode_first(&many.freeze(), 1, limits),
            Err(SimpleError::TooManyValues(1000))
        );
        let mut map = BytesMut::new();
        container(&mut map, TAG_STRING_MAP, |b| {
            for _ in 0..2000 {
                b.put_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
            }
        });
        assert_eq!(
            decode_first(&map.freeze(), 1, limits),
            Err(SimpleError::TooManyValues(1000))
        );
        let long = encode_args(&[Value::from("x".repeat(200))]);
        assert_eq!(
            decode_first(&long, 1, limits),
            Err(SimpleError::ValueTooLarge(205, 100))
        );
        let two = encode_args(&[Value::from("a"), Value::from("b")]);
        assert!(!decode_first(&two, 2, limits).unwrap().1);
        assert_eq!(decode_first(&Bytes::new(), 1, limits).unwrap(), (vec![], false));
    }
}
