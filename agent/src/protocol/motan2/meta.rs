//! The meta block of a frame (spec 1.3): `k\nv\nk\nv`, decoded and encoded by motan-go's rules.
use bytes::{BufMut, Bytes, BytesMut};

use super::error::FrameError;

/// Well-known meta keys (spec 1.11).
pub mod keys {
    /// Service path (interface name): the routing key.
    pub const SERVICE: &str = "M_p";
    pub const METHOD: &str = "M_m";
    /// Method descriptor (parameter type list).
    pub const METHOD_DESC: &str = "M_md";
    pub const GROUP: &str = "M_g";
    pub const VERSION: &str = "M_v";
    pub const MODULE: &str = "M_mdu";
    /// Caller's application name.
    pub const SOURCE: &str = "M_s";
    /// Protocol the caller wants (`motan2`, `motan`, `cedrus`).
    pub const PROXY_PROTOCOL: &str = "M_pp";
    /// Caller's original request id, signed decimal (added by the first agent, spec 1.9).
    pub const REQUEST_ID: &str = "M_rid";
    /// Per-request timeout, decimal milliseconds.
    pub const TIMEOUT: &str = "M_tmo";
    /// Any non-empty value marks a framework-internal call.
    pub const FRAMEWORK_SERVICE: &str = "M_fws";
    pub const AUTH: &str = "M_a";
    /// Exception JSON of a status-1 response.
    pub const EXCEPTION: &str = "M_e";
    /// Process time of a response, decimal milliseconds.
    pub const PROCESS_TIME: &str = "M_pt";
    /// Caller IP as seen by the receiving server, overwritten at each hop.
    pub const HOST: &str = "host";
}

/// Spare entries in a decoded meta: an agent adds a few keys to what it relays (`M_rid`,
/// `host`, `x-forwarded-for`, `M_pt`); room for them saves a reallocation per hop.
const RELAY_ROOM: usize = 4;

/// Up to this many entries, duplicate keys are found by a linear scan; above it, by a hash set,
/// so a hostile block of thousands of keys still decodes in linear time.
const LINEAR_DEDUP_MAX: usize = 32;

/// The meta map: byte-string keys and values (nothing validates UTF-8 on the wire), one entry per
/// key (last one wins, as in every upstream decoder), in the order first seen. A small vector:
/// frames carry about ten keys, where a linear scan beats hashing. Decoded keys and values are
/// `Bytes` slices of the frame, not copies. Equality is map equality: order does not matter.
#[derive(Clone, Debug)]
pub struct Meta {
    /// Keys are unique: every way in (decode, insert, collect) keeps them so.
    entries: Vec<(Bytes, Bytes)>,
    /// No key is empty and no key or value holds a newline: true of every decoded entry, so
    /// encoding skips looking inside them; an insert that breaks it clears it.
    plain: bool,
    /// Every value is UTF-8: [`Meta::get`] needs no check. True of a decoded block that is UTF-8
    /// as a whole (a newline never falls inside a multi-byte character, so each value is too);
    /// an insert of a value that is not clears it.
    text: bool,
    /// The decoded block, while its first `raw_entries` entries are exactly what it holds and
    /// none of them changed: encoding copies it whole and adds only the entries after them.
    /// Empty when not (a block with duplicate keys, an empty key or value, or an entry since
    /// overwritten or removed).
    raw: Bytes,
    raw_entries: usize,
}

impl Default for Meta {
    fn default() -> Meta {
        Meta::with_capacity(0)
    }
}

impl PartialEq for Meta {
    fn eq(&self, other: &Meta) -> bool {
        self.len() == other.len()
            && self
                .entries
                .iter()
                .all(|(k, v)| other.position(k).is_some_and(|i| other.entries[i].1 == v))
    }
}

impl Eq for Meta {}

impl Meta {
    pub fn new() -> Meta {
        Meta::default()
    }

    pub fn with_capacity(n: usize) -> Meta {
        Meta {
            entries: Vec::with_capacity(n),
            plain: true,
            text: true,
            raw: Bytes::new(),
            raw_entries: 0,
        }
    }

    fn position(&self, key: &[u8]) -> Option<usize> {
        self.entries.iter().position(|(k, _)| k.as_ref() == key)
    }

    pub fn get_bytes(&self, key: &str) -> Option<&Bytes> {
        self.position(key.as_bytes()).map(|i| &self.entries[i].1)
    }

    /// The value as UTF-8 text (None when absent or not UTF-8).
    pub fn get(&self, key: &str) -> Option<&str> {
        let v = self.get_bytes(key)?;
        if self.text {
            // SAFETY: `text` holds only while every value is UTF-8 (see the field).
            return Some(unsafe { std::str::from_utf8_unchecked(v) });
        }
        std::str::from_utf8(v).ok()
    }

    /// The value as UTF-8 text sharing the frame's buffer (a reference count, no copy); None
    /// when absent or not UTF-8.
    pub fn get_shared(&self, key: &str) -> Option<bytestring::ByteString> {
        self.get_bytes(key)
            .and_then(|v| bytestring::ByteString::try_from(v.clone()).ok())
    }

    /// The value when present and not empty (Go's `LoadOrEmpty(k) != ""`).
    pub fn get_non_empty(&self, key: &str) -> Option<&str> {
        self.get(key).filter(|v| !v.is_empty())
    }

    pub fn contains(&self, key: &str) -> bool {
        self.position(key.as_bytes()).is_some()
    }

    /// Entry `i` changes: the raw block no longer says what the entries hold if it covers it.
    fn touch(&mut self, i: usize) {
        if i < self.raw_entries {
            self.raw = Bytes::new();
            self.raw_entries = 0;
        }
    }

    /// Keep `plain` and `text` true only while every entry added is plain and text.
    fn note(&mut self, key: &[u8], value: &[u8]) {
        self.plain = self.plain && Meta::is_plain(key, value);
        self.text = self.text && (value.is_ascii() || std::str::from_utf8(value).is_ok());
    }

    /// Set a key; an existing entry keeps its place and gets the new value.
    pub fn insert(&mut self, key: impl Into<Bytes>, value: impl Into<Bytes>) {
        let key = key.into();
        let value = value.into();
        self.note(&key, &value);
        match self.position(&key) {
            Some(i) => {
                self.touch(i);
                self.entries[i].1 = value;
            }
            None => self.entries.push((key, value)),
        }
    }

    /// Set a key only when it is absent (Go's `LoadOrStore`); true when it was inserted.
    pub fn insert_if_absent(&mut self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> bool {
        let key = key.into();
        if self.position(&key).is_some() {
            return false;
        }
        let value = value.into();
        self.note(&key, &value);
        self.entries.push((key, value));
        true
    }

    pub fn remove(&mut self, key: &str) -> Option<Bytes> {
        let i = self.position(key.as_bytes())?;
        self.touch(i);
        Some(self.entries.remove(i).1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Bytes, &Bytes)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Go's encoder drops entries with an empty key or value, or with a newline in either
    /// (spec 1.3); we encode the same way so every peer reads what we send.
    pub fn is_encodable(key: &[u8], value: &[u8]) -> bool {
        !value.is_empty() && Meta::is_plain(key, value)
    }

    /// No empty key and no newline in key or value: true of every decoded entry; encodable
    /// once the value is not empty either.
    fn is_plain(key: &[u8], value: &[u8]) -> bool {
        // `contains` (a word at a time) rather than memchr: keys and values are short, where
        // memchr's set-up costs more than the search.
        !key.is_empty() && !key.contains(&b'\n') && !value.contains(&b'\n')
    }

    fn encodable(&self) -> impl Iterator<Item = &(Bytes, Bytes)> {
        self.encodable_from(0)
    }

    /// [`Meta::encodable`] from entry `from` on.
    fn encodable_from(&self, from: usize) -> impl Iterator<Item = &(Bytes, Bytes)> {
        let plain = self.plain;
        self.entries[from..].iter().filter(move |(k, v)| {
            if plain {
                !v.is_empty()
            } else {
                Meta::is_encodable(k, v)
            }
        })
    }

    /// Bytes of the encoded block (entries Go cannot send are not counted).
    pub fn encoded_len(&self) -> usize {
        let (n, count) = self.encodable().fold((0usize, 0usize), |(n, c), (k, v)| {
            (n + k.len() + v.len() + 1, c + 1)
        });
        // Entries are joined by a newline: one fewer than the entries.
        n + count.saturating_sub(1)
    }

    /// An upper bound of [`Meta::encoded_len`] without looking inside keys and values; exact
    /// when every entry can be sent (so an encoded frame fills its buffer exactly).
    pub fn max_encoded_len(&self) -> usize {
        let n: usize = self.entries.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
        n.saturating_sub(1)
    }

    /// Append the block (without its length field).
    pub fn encode_into(&self, dst: &mut BytesMut) {
        let mut first = true;
        let mut rest = self.encodable_from(0);
        if !self.raw.is_empty() {
            dst.put_slice(&self.raw);
            first = false;
            rest = self.encodable_from(self.raw_entries);
        }
        for (k, v) in rest {
            if !first {
                dst.put_u8(b'\n');
            }
            first = false;
            dst.put_slice(k);
            dst.put_u8(b'\n');
            dst.put_slice(v);
        }
    }

    /// Decode like motan-go: split on `\n` (the end of the block ends the last segment), segments
    /// alternate key and value. An empty segment where a key is expected is skipped, so later
    /// pairs shift as they do in Go; a key without a value is an error; empty values are kept;
    /// duplicates: last wins. At most `max_entries` entries (counting duplicates).
    pub fn decode(block: Bytes, max_entries: usize) -> Result<Meta, FrameError> {
        if block.is_empty() {
            return Ok(Meta::default());
        }
        // About one entry per 16 bytes (no counting pass): a block of short entries grows the
        // vector once or twice.
        let mut entries = Vec::with_capacity((block.len() / 16 + 1).min(max_entries) + RELAY_ROOM);
        let text = std::str::from_utf8(&block).is_ok();
        let mut key: Option<Bytes> = None;
        let mut start = 0;
        // The block is its own encoding unless a segment is empty or a key repeats.
        let mut exact = true;
        for end in memchr::memchr_iter(b'\n', &block).chain(std::iter::once(block.len())) {
            let seg = (start < end).then(|| block.slice(start..end));
            exact &= seg.is_some();
            start = end + 1;
            match (key.take(), seg) {
                (None, None) => {}
                (None, Some(k)) => key = Some(k),
                (Some(k), v) => {
                    if entries.len() >= max_entries {
                        return Err(FrameError::TooManyMetaEntries(max_entries));
                    }
                    entries.push((k, v.unwrap_or_default()));
                }
            }
        }
        if key.is_some() {
            return Err(FrameError::BadMeta(
                "a key without a value (odd number of segments)",
            ));
        }
        exact &= !dedup_last_wins(&mut entries);
        let raw_entries = if exact { entries.len() } else { 0 };
        Ok(Meta {
            entries,
            plain: true,
            text,
            raw: if exact { block } else { Bytes::new() },
            raw_entries,
        })
    }
}

/// Keep one entry per key: the first position, the last value. True when a key repeated.
fn dedup_last_wins(entries: &mut Vec<(Bytes, Bytes)>) -> bool {
    let before = entries.len();
    if entries.len() <= LINEAR_DEDUP_MAX {
        let mut i = 1;
        while i < entries.len() {
            match entries[..i].iter().position(|(k, _)| *k == entries[i].0) {
                Some(first) => {
                    let (_, v) = entries.remove(i);
                    entries[first].1 = v;
                }
                None => i += 1,
            }
        }
        return entries.len() != before;
    }
    let mut first_at: std::collections::HashMap<Bytes, usize> =
        std::collections::HashMap::with_capacity(entries.len());
    let mut out: Vec<(Bytes, Bytes)> = Vec::with_capacity(entries.len());
    for (k, v) in entries.drain(..) {
        match first_at.get(&k) {
            Some(&i) => out[i].1 = v,
            None => {
                first_at.insert(k.clone(), out.len());
                out.push((k, v));
            }
        }
    }
    *entries = out;
    entries.len() != before
}

impl<K: Into<Bytes>, V: Into<Bytes>> FromIterator<(K, V)> for Meta {
    /// Later duplicates overwrite earlier values, as on the wire.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Meta {
        let mut m = Meta::new();
        for (k, v) in iter {
            m.insert(k, v);
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(s: &'static [u8]) -> Result<Meta, FrameError> {
        Meta::decode(Bytes::from_static(s), 100)
    }

    /// Encoding a decoded block copies it whole while it still says what the entries hold, and
    /// always gives what encoding the same entries afresh gives.
    #[test]
    fn a_decoded_block_is_reused_only_while_it_is_exact() {
        fn encoded(m: &Meta) -> Vec<u8> {
            let mut b = BytesMut::new();
            m.encode_into(&mut b);
            assert_eq!(b.len(), m.encoded_len());
            b.to_vec()
        }
        // The same entries, built by inserts: no block to reuse.
        fn fresh(m: &Meta) -> Vec<u8> {
            encoded(&m.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<Meta>())
        }
        type Change = fn(&mut Meta);
        let changes: [(&str, Change); 6] = [
            ("none", |_| {}),
            ("append", |m| m.insert("M_rid", "42")),
            ("append empty", |m| m.insert("e", "")),
            ("overwrite first", |m| m.insert("a", "z")),
            ("remove first", |m| {
                m.remove("a");
            }),
            ("append, then remove it", |m| {
                m.insert("n", "1");
                m.remove("n");
            }),
        ];
        let blocks: [&[u8]; 5] = [
            b"a\nx\nb\ny",
            b"a\nx\nb\n",
            b"a\nx\na\ny",
            b"\na\nx",
            b"a\nx\n\nb\ny",
        ];
        for block in blocks {
            for (what, change) in changes {
                let mut m = Meta::decode(Bytes::from_static(block), 100).unwrap();
                let reused = !m.raw.is_empty();
                change(&mut m);
                assert_eq!(
                    encoded(&m),
                    fresh(&m),
                    "{:?}, {what}",
                    String::from_utf8_lossy(block)
                );
                if what == "none" {
                    // Only an exact block is reused.
                    assert_eq!(
                        reused,
                        block == b"a\nx\nb\ny",
                        "{:?}",
                        String::from_utf8_lossy(block)
                    );
                }
            }
        }
        let mut m = Meta::decode(Bytes::from_static(b"a\nx\nb\ny"), 100).unwrap();
        m.insert("c", "w");
        assert_eq!(encoded(&m), b"a\nx\nb\ny\nc\nw");
        m.insert("b", "v");
        assert_eq!(encoded(&m), b"a\nx\nb\nv\nc\nw");
        assert!(m.raw.is_empty());
    }

    #[test]
    fn get_gives_text_only_for_utf8_values_however_they_came_in() {
        // Decoded: a block with one value that is not UTF-8 checks every value.
        let m = Meta::decode(Bytes::from_static(b"a\n\xff\xfe\nb\nh\xc3\xa9"), 100).unwrap();
        assert_eq!((m.get("a"), m.get("b")), (None, Some("h\u{e9}")));
        assert_eq!(m.get_bytes("a").map(|v| &v[..]), Some(&b"\xff\xfe"[..]));
        // A UTF-8 block (multi-byte characters included) stays text until an insert breaks it.
        let mut m = Meta::decode(Bytes::from_static(b"a\nx\nb\nh\xc3\xa9"), 100).unwrap();
        assert_eq!((m.get("a"), m.get("b")), (Some("x"), Some("h\u{e9}")));
        m.insert("c", Bytes::from_static("\u{e9}t\u{e9}".as_bytes()));
        assert_eq!(m.get("c"), Some("\u{e9}t\u{e9}"));
        m.insert("d", Bytes::from_static(b"\xc3"));
        assert_eq!((m.get("d"), m.get("a")), (None, Some("x")));
        // Overwriting the bad value does not make the map text again, but get stays right.
        m.insert("d", "fine");
        assert_eq!(m.get("d"), Some("fine"));
    }

    #[test]
    fn decoding_follows_the_motan_go_table() {
        let m = decode(b"a\n\nb\nc").unwrap();
        assert_eq!((m.get("a"), m.get("b")), (Some(""), Some("c")));
        let m = decode(b"a\nx\nb\n").unwrap();
        assert_eq!((m.get("a"), m.get("b")), (Some("x"), Some("")));
        // An empty segment where a key belongs is skipped: the pairs shift.
        let m = decode(b"\nv\nk").unwrap();
        assert_eq!((m.get("v"), m.len()), (Some("k"), 1));
        assert!(matches!(decode(b"a\nw\nk\nv\n\nx"), Err(FrameError::BadMeta(_))));
        assert!(matches!(decode(b"a\nb\nc"), Err(FrameError::BadMeta(_))));
        assert!(matches!(decode(b"lonely"), Err(FrameError::BadMeta(_))));
        assert!(decode(b"\n").unwrap().is_empty());
        assert!(decode(b"").unwrap().is_empty());
    }

    #[test]
    fn duplicates_last_wins_one_entry_each() {
        let m = decode(b"k\n1\nx\ny\nk\n2").unwrap();
        assert_eq!((m.get("k"), m.len()), (Some("2"), 2));
        assert_eq!(m.iter().next().unwrap().0.as_ref(), b"k");
        // Above the linear-scan size the hash path gives the same answer.
        let mut block = Vec::new();
        for i in 0..100 {
            block.extend_from_slice(format!("k{}\n{i}\n", i % 40).as_bytes());
        }
        block.pop();
        let m = Meta::decode(Bytes::from(block), 1000).unwrap();
        assert_eq!((m.len(), m.get("k0"), m.get("k39")), (40, Some("80"), Some("79")));
    }

    #[test]
    fn equality_ignores_order() {
        let a: Meta = [("x", "1"), ("y", "2")].into_iter().collect();
        let b: Meta = [("y", "2"), ("x", "1")].into_iter().collect();
        let c: Meta = [("y", "2"), ("x", "3")].into_iter().collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, Meta::new());
    }

    #[test]
    fn entry_limit_counts_before_dedup() {
        assert_eq!(
            Meta::decode(Bytes::from_static(b"a\n1\na\n2\na\n3"), 2),
            Err(FrameError::TooManyMetaEntries(2))
        );
    }

    #[test]
    fn encoding_drops_what_go_cannot_send() {
        let mut m: Meta = [("ok", "1"), ("empty", ""), ("nl", "a\nb"), ("", "v"), ("z", "2")]
            .into_iter()
            .collect();
        m.insert("ok", "3");
        let mut b = BytesMut::new();
        m.encode_into(&mut b);
        assert_eq!(&b[..], b"ok\n3\nz\n2");
        assert_eq!(m.encoded_len(), b.len());
        assert!(m.max_encoded_len() >= b.len());
        let clean: Meta = [("a", "1"), ("bb", "22")].into_iter().collect();
        assert_eq!(clean.max_encoded_len(), clean.encoded_len());
        assert_eq!(Meta::new().encoded_len(), 0);
        assert!(m.insert_if_absent("new", "x") && !m.insert_if_absent("new", "y"));
        assert_eq!(m.remove("new").unwrap(), "x");
        assert_eq!(m.get_non_empty("empty"), None);
        // A decoded block is known clean; what is added to it later is still checked.
        let mut d = decode(b"a\n1\nb\n").unwrap();
        d.insert("nl", "x\ny");
        assert!(d.insert_if_absent("c", "3") && d.insert_if_absent("k\n", "v"));
        let mut b = BytesMut::new();
        d.encode_into(&mut b);
        assert_eq!((&b[..], d.encoded_len()), (&b"a\n1\nc\n3"[..], 7));
    }
}
