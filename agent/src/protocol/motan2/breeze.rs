//! The one Breeze shape the agent speaks: a `map[string]string`, as motan-go's MetaService
//! answers `getDynamicMeta` (serialization 8, weibreeze/breeze-go). Encoded as breeze-go's
//! `WriteValue` writes it: packed map `0xdb`, varint size, key and value type `0x3f` (string)
//! once, then each entry as varint length and bytes. Decoding also takes the unpacked map
//! (`0xd9`, every key and value typed, direct strings `0x00..=0x3e` included) and null (`0x99`).
use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};

const STRING: u8 = 0x3f;
const DIRECT_STRING_MAX: u8 = 0x3e;
const NULL: u8 = 0x99;
const MAP: u8 = 0xd9;
const PACKED_MAP: u8 = 0xdb;
/// breeze-go's `MaxElemSize`.
const MAX_ELEMS: u64 = 100_000;

fn put_varint(dst: &mut BytesMut, mut u: u64) {
    while u >= 0x80 {
        dst.put_u8((u as u8 & 0x7f) | 0x80);
        u >>= 7;
    }
    dst.put_u8(u as u8);
}

/// `m` as breeze-go writes a `map[string]string`.
pub fn encode_string_map(m: &BTreeMap<String, String>) -> Bytes {
    let mut b = BytesMut::with_capacity(8 + m.iter().map(|(k, v)| k.len() + v.len() + 4).sum::<usize>());
    b.put_u8(PACKED_MAP);
    put_varint(&mut b, m.len() as u64);
    b.put_u8(STRING);
    b.put_u8(STRING);
    for (k, v) in m {
        for s in [k, v] {
            put_varint(&mut b, s.len() as u64);
            b.put_slice(s.as_bytes());
        }
    }
    b.freeze()
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, String> {
        let (&b, rest) = self.0.split_first().ok_or("breeze: not enough bytes")?;
        self.0 = rest;
        Ok(b)
    }
    fn varint(&mut self) -> Result<u64, String> {
        let mut u = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            u |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(u);
            }
        }
        Err("breeze: varint overflow".into())
    }
    fn bytes(&mut self, n: u64) -> Result<String, String> {
        let n = usize::try_from(n).map_err(|_| "breeze: length overflow")?;
        if n > self.0.len() {
            return Err("breeze: not enough bytes".into());
        }
        let (s, rest) = self.0.split_at(n);
        self.0 = rest;
        String::from_utf8(s.to_vec()).map_err(|_| "breeze: string is not UTF-8".into())
    }
    /// A string whose type byte is `tp`.
    fn string_of(&mut self, tp: u8) -> Result<String, String> {
        match tp {
            0..=DIRECT_STRING_MAX => self.bytes(u64::from(tp)),
            STRING => {
                let n = self.varint()?;
                self.bytes(n)
            }
            t => Err(format!("breeze: type {t:#04x} where a string was expected")),
        }
    }
}

/// A breeze `map[string]string` (a null is the empty map).
pub fn decode_string_map(body: &[u8]) -> Result<BTreeMap<String, String>, String> {
    let mut r = Reader(body);
    let mut out = BTreeMap::new();
    if body.is_empty() {
        return Ok(out);
    }
    let tp = r.byte()?;
    if tp == NULL {
        return Ok(out);
    }
    if tp != MAP && tp != PACKED_MAP {
        return Err(format!("breeze: type {tp:#04x} where a map was expected"));
    }
    let n = r.varint()?;
    if n > MAX_ELEMS {
        return Err(format!("breeze: map of {n} entries is over {MAX_ELEMS}"));
    }
    if n == 0 {
        return Ok(out);
    }
    let packed = (tp == PACKED_MAP)
        .then(|| Ok::<_, String>((r.byte()?, r.byte()?)))
        .transpose()?;
    if let Some((kt, vt)) = packed
        && (kt != STRING || vt != STRING)
    {
        return Err(format!(
            "breeze: map of types {kt:#04x}/{vt:#04x}, not string/string"
        ));
    }
    for _ in 0..n {
        let (k, v) = if packed.is_some() {
            (r.string_of(STRING)?, r.string_of(STRING)?)
        } else {
            let kt = r.byte()?;
            let k = r.string_of(kt)?;
            let vt = r.byte()?;
            (k, r.string_of(vt)?)
        };
        out.insert(k, v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_map_round_trips_in_breeze_go_layout() {
        let m: BTreeMap<String, String> = [
            ("META_WEIGHT".to_string(), "9".to_string()),
            ("a".into(), "x".repeat(200)),
        ]
        .into();
        let b = encode_string_map(&m);
        // 0xdb, 2 entries, string/string, then "META_WEIGHT" (11 bytes) "9" ...
        assert_eq!(&b[..5], &[0xdb, 2, 0x3f, 0x3f, 11]);
        assert_eq!(&b[5..16], b"META_WEIGHT");
        assert_eq!(&b[16..18], &[1, b'9']);
        assert_eq!(decode_string_map(&b).unwrap(), m);
        // An empty map is what an agent with no dynamic meta answers.
        let empty = encode_string_map(&BTreeMap::new());
        assert_eq!(&empty[..], &[0xdb, 0, 0x3f, 0x3f]);
        assert!(decode_string_map(&empty).unwrap().is_empty());
        // Unpacked map with direct strings, and null.
        let unpacked = [0xd9, 1, 1, b'k', 0x3f, 1, b'v'];
        assert_eq!(decode_string_map(&unpacked).unwrap()["k"], "v");
        assert!(decode_string_map(&[0x99]).unwrap().is_empty());
        // Broken input is an error, never a panic.
        for bad in [
            &[0xdb, 5, 0x3f, 0x3f, 9][..],
            &[0xdb, 1, 0x7f, 0x3f],
            &[0x50],
            &[0xdb, 0xff],
        ] {
            assert!(decode_string_map(bad).is_err(), "{bad:?}");
        }
    }
}
