//! Typed errors for malformed input, and the `M_e` exception convention (spec 1.10).
use serde_json::Value as Json;

/// Why bytes on a connection are not a valid Motan2 frame. Every decode error closes the
/// connection (peers expect that, spec 1.13); the variant says why, for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("wrong magic 0x{0:04x} (expected 0xf1f1)")]
    WrongMagic(u16),
    #[error("motan v1 frame (legacy protocol)")]
    MotanV1,
    #[error("unsupported protocol version {0} (only motan2 = 1)")]
    UnsupportedVersion(u8),
    #[error("meta block of {len} bytes exceeds the limit of {max}")]
    MetaTooLarge { len: usize, max: usize },
    #[error("body of {len} bytes exceeds the limit of {max}")]
    BodyTooLarge { len: usize, max: usize },
    #[error("meta block has more than {0} entries")]
    TooManyMetaEntries(usize),
    #[error("bad meta block: {0}")]
    BadMeta(&'static str),
    #[error("gzip body: {0}")]
    Gzip(String),
    #[error("{what} of {len} bytes does not fit a u32 length field")]
    TooLargeToEncode { what: &'static str, len: usize },
    #[error("bad motan v1 frame: {0}")]
    V1Frame(&'static str),
    /// A well-formed v1 request sockmesh cannot serve, and why.
    #[error("{0}")]
    V1Unsupported(String),
}

/// A decoding failure of the simple serialization (spec 2.5).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimpleError {
    #[error("truncated value: {0} more byte(s) needed")]
    Truncated(usize),
    #[error("unknown type tag {0}")]
    UnknownTag(u8),
    #[error("varint longer than 10 bytes")]
    Overflow,
    #[error("container items overrun its declared size")]
    WrongSize,
    #[error("values nested deeper than {0}")]
    TooDeep(usize),
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
    #[error("more than {0} values (sockmesh.limits.decoded_values)")]
    TooManyValues(usize),
    #[error("a value of {0} bytes, over {1} (sockmesh.limits.decoded_value_bytes)")]
    ValueTooLarge(usize, usize),
}

/// Who failed, which decides retries and endpoint health (spec 1.10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum ErrorType {
    /// Framework/codec failure: retried by failover, counts as an endpoint error.
    Framework = 0,
    /// Service/transport failure (no endpoint, timeout, ...): retried, counts as endpoint error.
    Service = 1,
    /// Thrown by business code: returned at once, never retried, resets the error counter.
    Business = 2,
}

impl ErrorType {
    /// Unknown values are framework errors, as in Java motan.
    pub fn from_i64(v: i64) -> ErrorType {
        match v {
            1 => ErrorType::Service,
            2 => ErrorType::Business,
            _ => ErrorType::Framework,
        }
    }
    pub fn is_retryable(self) -> bool {
        self != ErrorType::Business
    }
}

/// The exception carried in meta `M_e` of a status-1 response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exception {
    pub errcode: i64,
    pub errmsg: String,
    pub errtype: ErrorType,
}

impl Exception {
    pub fn new(errcode: i64, errmsg: impl Into<String>, errtype: ErrorType) -> Exception {
        Exception {
            errcode,
            errmsg: errmsg.into(),
            errtype,
        }
    }

    pub fn framework(errcode: i64, errmsg: impl Into<String>) -> Exception {
        Exception::new(errcode, errmsg, ErrorType::Framework)
    }

    pub fn service(errcode: i64, errmsg: impl Into<String>) -> Exception {
        Exception::new(errcode, errmsg, ErrorType::Service)
    }

    pub fn business(errcode: i64, errmsg: impl Into<String>) -> Exception {
        Exception::new(errcode, errmsg, ErrorType::Business)
    }

    /// Status 1 without `M_e`: what Java builds in that case.
    pub fn default_remote() -> Exception {
        Exception::service(500, "default remote exception")
    }

    /// JSON exactly as motan-go's `json.Marshal` writes it: field order errcode, errmsg, errtype;
    /// `<`, `>`, `&`, U+2028 and U+2029 escaped as `\u003c` etc. (Go's HTML-safe escaping; the
    /// other escapes serde_json and Go write alike).
    pub fn to_json(&self) -> String {
        let msg = serde_json::to_string(&self.errmsg).expect("a string always serialises");
        let mut out = String::with_capacity(msg.len() + 48);
        out.push_str("{\"errcode\":");
        out.push_str(&self.errcode.to_string());
        out.push_str(",\"errmsg\":");
        for c in msg.chars() {
            match c {
                '<' => out.push_str("\\u003c"),
                '>' => out.push_str("\\u003e"),
                '&' => out.push_str("\\u0026"),
                '\u{2028}' => out.push_str("\\u2028"),
                '\u{2029}' => out.push_str("\\u2029"),
                c => out.push(c),
            }
        }
        out.push_str(",\"errtype\":");
        out.push_str(&(self.errtype as i64).to_string());
        out.push('}');
        out
    }

    /// Parse `M_e`: any field order, extra fields ignored, missing fields defaulted.
    pub fn parse(json: &[u8]) -> Option<Exception> {
        let v: Json = serde_json::from_slice(json).ok()?;
        let o = v.as_object()?;
        // Java's JSON writers may print numbers as floats.
        let int = |k: &str| {
            let v = o.get(k)?;
            v.as_i64().or_else(|| v.as_f64().map(|f| f as i64))
        };
        Some(Exception {
            errcode: int("errcode").unwrap_or(0),
            errmsg: o.get("errmsg").and_then(Json::as_str).unwrap_or("").to_string(),
            errtype: ErrorType::from_i64(int("errtype").unwrap_or(0)),
        })
    }
}

impl std::fmt::Display for Exception {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (errcode {}, {:?})",
            self.errmsg, self.errcode, self.errtype
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exception_json_matches_go() {
        let e = Exception::service(400, "cluster not found. <b> & more");
        assert_eq!(
            e.to_json(),
            r#"{"errcode":400,"errmsg":"cluster not found. \u003cb\u003e \u0026 more","errtype":1}"#
        );
        assert_eq!(Exception::parse(e.to_json().as_bytes()).unwrap(), e);
        let e = Exception::new(1, "a\"b\\c\n\u{1}\u{2028}é", ErrorType::Framework);
        assert_eq!(
            e.to_json(),
            r#"{"errcode":1,"errmsg":"a\"b\\c\n\u0001\u2028é","errtype":0}"#
        );
        assert_eq!(Exception::parse(e.to_json().as_bytes()).unwrap(), e);
    }

    #[test]
    fn exception_parse_any_order_and_extras() {
        let e = Exception::parse(br#"{"errtype":2,"x":[1],"errmsg":"biz","errcode":503}"#).unwrap();
        assert_eq!(e, Exception::new(503, "biz", ErrorType::Business));
        assert!(!e.errtype.is_retryable());
        assert_eq!(
            Exception::parse(br#"{"errtype":9}"#).unwrap().errtype,
            ErrorType::Framework
        );
        assert!(Exception::parse(b"not json").is_none());
        assert!(Exception::parse(b"[1]").is_none());
        assert_eq!(
            Exception::parse(br#"{"errcode":404.0,"errmsg":null,"errtype":1.0}"#).unwrap(),
            Exception::service(404, "")
        );
        assert!(ErrorType::Service.is_retryable());
    }
}
