//! The wire captures under tests/data (`motan1/`, `motan2/`): `.hex` files whose `#` lines are
//! comments and whose other lines are hex digits (white space anywhere). One reader for the
//! agent's unit tests (a dev-dependency of the agent: no cycle, this crate does not depend on
//! it) and the integration tests.
use std::path::{Path, PathBuf};

/// tests/data of this checkout.
pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data")
}

/// The bytes a `.hex` text spells. Panics (naming `what`) on an odd digit count or a non-hex
/// character: a broken vector is a broken test.
pub fn hex_bytes(what: &str, text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .flat_map(|l| l.bytes().filter(|b| !b.is_ascii_whitespace()))
        .collect();
    assert!(digits.len().is_multiple_of(2), "{what}: odd number of hex digits");
    digits
        .chunks(2)
        .map(|pair| {
            let pair = std::str::from_utf8(pair).unwrap_or("??");
            u8::from_str_radix(pair, 16).unwrap_or_else(|_| panic!("{what}: {pair:?} is not hex"))
        })
        .collect()
}

/// The text of tests/data/`rel` (`motan1/request_hello.hex`).
pub fn text(rel: &str) -> String {
    let path = data_dir().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The bytes of a motan v1 capture, tests/data/motan1/`name`.hex (upstream's Java frames).
pub fn motan1(name: &str) -> Vec<u8> {
    let rel = format!("motan1/{name}.hex");
    hex_bytes(&rel, &text(&rel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_and_white_space_are_skipped() {
        assert_eq!(
            hex_bytes("t", "# f1 f1\nf1 F1\n  00\t0a\n#x\n"),
            [0xf1, 0xf1, 0, 10]
        );
        assert!(motan1("request_hello").starts_with(&[0xf1, 0xf1]));
    }
}
