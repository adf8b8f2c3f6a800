//! The CBOR subset Tailnet Lock needs.
//!
//! Encoding is "CTAP2 canonical": shortest-form heads, definite lengths, no tags, no floats, map
//! entries ordered by the bytes of their encoded keys. The encoder is only ever driven by our own
//! fixed structures (see `types.rs`), which write integer-keyed maps in ascending key order.
//!
//! Decoding mirrors the options Tailscale's decoder runs with: duplicate map keys, indefinite
//! lengths and tags are rejected, nesting is capped at 16 levels of arrays/maps, arrays at 4096
//! elements, maps at 1024 pairs, and trailing bytes after the item are an error. Like Tailscale's
//! decoder it does *not* insist on shortest-form integers or sorted maps; callers that want that
//! (e.g. for stored bytes) compare the input with its re-encoding.

use thiserror::Error;

/// Nesting limit for arrays and maps (the outermost item is level 1).
pub const MAX_NESTED_LEVELS: usize = 16;
/// Maximum number of elements in one array.
pub const MAX_ARRAY_ELEMENTS: u64 = 4096;
/// Maximum number of key/value pairs in one map.
pub const MAX_MAP_PAIRS: u64 = 1024;

/// Why a CBOR input was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CborError {
    /// The input ended inside an item.
    #[error("cbor: unexpected end of input")]
    UnexpectedEof,
    /// Bytes follow the top-level item.
    #[error("cbor: {0} bytes of extraneous data")]
    Extraneous(usize),
    /// The input is empty.
    #[error("cbor: empty input")]
    Empty,
    /// An indefinite-length string, array or map.
    #[error("cbor: indefinite-length items are not allowed")]
    IndefiniteLength,
    /// A tag (major type 6).
    #[error("cbor: tags are not allowed")]
    Tag,
    /// More than [`MAX_NESTED_LEVELS`] nested arrays/maps.
    #[error("cbor: exceeded max nested level {MAX_NESTED_LEVELS}")]
    TooDeep,
    /// An array longer than [`MAX_ARRAY_ELEMENTS`].
    #[error("cbor: exceeded max number of elements {MAX_ARRAY_ELEMENTS} for an array")]
    TooManyElements,
    /// A map with more than [`MAX_MAP_PAIRS`] pairs.
    #[error("cbor: exceeded max number of pairs {MAX_MAP_PAIRS} for a map")]
    TooManyPairs,
    /// A malformed head (reserved additional information, stray break, bad simple value).
    #[error("cbor: malformed item: {0}")]
    Syntax(&'static str),
    /// The same key twice in one map.
    #[error("cbor: duplicate map key")]
    DuplicateKey,
    /// A value of the wrong CBOR type for its field.
    #[error("cbor: wrong type for {0}")]
    Type(&'static str),
    /// An integer that does not fit its field.
    #[error("cbor: integer overflows {0}")]
    Overflow(&'static str),
    /// A text string that is not UTF-8.
    #[error("cbor: invalid UTF-8 in text string")]
    Utf8,
    /// Valid CBOR that is not in canonical form (only from the `*_canonical` decoders).
    #[error("cbor: input is not canonically encoded")]
    NotCanonical,
}

// ---------------------------------------------------------------------------------------------
// Encoder

/// Appends canonical CBOR items to a buffer.
#[derive(Default)]
pub(crate) struct Enc {
    pub(crate) buf: Vec<u8>,
}

impl Enc {
    pub(crate) fn new() -> Self {
        Self {
            buf: Vec::with_capacity(128),
        }
    }

    fn head(&mut self, major: u8, v: u64) {
        let m = major << 5;
        if v < 24 {
            self.buf.push(m | v as u8);
        } else if v <= 0xff {
            self.buf.push(m | 24);
            self.buf.push(v as u8);
        } else if v <= 0xffff {
            self.buf.push(m | 25);
            self.buf.extend_from_slice(&(v as u16).to_be_bytes());
        } else if v <= 0xffff_ffff {
            self.buf.push(m | 26);
            self.buf.extend_from_slice(&(v as u32).to_be_bytes());
        } else {
            self.buf.push(m | 27);
            self.buf.extend_from_slice(&v.to_be_bytes());
        }
    }

    pub(crate) fn uint(&mut self, v: u64) {
        self.head(0, v);
    }

    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.head(2, b.len() as u64);
        self.buf.extend_from_slice(b);
    }

    /// A Go `[]byte` without omitempty: nil is `null`, anything else a byte string.
    pub(crate) fn opt_bytes(&mut self, b: Option<&[u8]>) {
        match b {
            Some(b) => self.bytes(b),
            None => self.null(),
        }
    }

    pub(crate) fn text(&mut self, s: &str) {
        self.head(3, s.len() as u64);
        self.buf.extend_from_slice(s.as_bytes());
    }

    pub(crate) fn array(&mut self, n: usize) {
        self.head(4, n as u64);
    }

    pub(crate) fn map(&mut self, n: usize) {
        self.head(5, n as u64);
    }

    pub(crate) fn null(&mut self) {
        self.buf.push(0xf6);
    }

    /// A Go `map[string]string`: entries sorted by the bytes of their encoded keys.
    pub(crate) fn text_map<'a>(&mut self, m: impl IntoIterator<Item = (&'a String, &'a String)>) {
        let mut entries: Vec<(Vec<u8>, &str)> = m
            .into_iter()
            .map(|(k, v)| {
                let mut e = Enc::new();
                e.text(k);
                (e.buf, v.as_str())
            })
            .collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        self.map(entries.len());
        for (k, v) in entries {
            self.buf.extend_from_slice(&k);
            self.text(v);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Decoder

/// A decoded CBOR item. Text is kept as bytes: UTF-8 is only checked where a field is read as
/// text (Tailscale's decoder skips unknown fields without looking inside them).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Uint(u64),
    /// Major type 1; the stored value `n` means `-1 - n`.
    Nint(u64),
    Bytes(Vec<u8>),
    Text(Vec<u8>),
    Array(Vec<Value>),
    Map(Vec<(Value, Value)>),
    Bool(bool),
    Null,
    Undefined,
    /// Another simple value.
    Simple(u8),
    /// A float of any width, as its raw bits (never valid in a TKA field).
    Float(u64),
}

impl Value {
    /// `null` and `undefined` leave a Go field at its zero value.
    pub(crate) fn is_nil(&self) -> bool {
        matches!(self, Value::Null | Value::Undefined)
    }
}

struct Dec<'a> {
    data: &'a [u8],
    off: usize,
}

/// Decodes exactly one CBOR item from `data` under the TKA decoder limits.
pub(crate) fn decode(data: &[u8]) -> Result<Value, CborError> {
    if data.is_empty() {
        return Err(CborError::Empty);
    }
    let mut d = Dec { data, off: 0 };
    let v = d.item(0)?;
    if d.off != data.len() {
        return Err(CborError::Extraneous(data.len() - d.off));
    }
    Ok(v)
}

impl Dec<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], CborError> {
        if self.data.len() - self.off < n {
            return Err(CborError::UnexpectedEof);
        }
        let s = &self.data[self.off..self.off + n];
        self.off += n;
        Ok(s)
    }

    /// Reads a head: (major type, additional information, argument).
    fn head(&mut self) -> Result<(u8, u8, u64), CborError> {
        let b = self.take(1)?[0];
        let major = b >> 5;
        let ai = b & 0x1f;
        let val = match ai {
            0..=23 => u64::from(ai),
            24 => {
                let v = u64::from(self.take(1)?[0]);
                if major == 7 && v < 32 {
                    return Err(CborError::Syntax("invalid simple value"));
                }
                v
            }
            25 => u64::from(u16::from_be_bytes(
                self.take(2)?.try_into().expect("2 bytes"),
            )),
            26 => u64::from(u32::from_be_bytes(
                self.take(4)?.try_into().expect("4 bytes"),
            )),
            27 => u64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes")),
            28..=30 => return Err(CborError::Syntax("reserved additional information")),
            _ => match major {
                0 | 1 | 6 => return Err(CborError::Syntax("invalid additional information")),
                7 => return Err(CborError::Syntax("unexpected break")),
                _ => return Err(CborError::IndefiniteLength),
            },
        };
        Ok((major, ai, val))
    }

    fn len_of(&self, v: u64) -> Result<usize, CborError> {
        let n = usize::try_from(v).map_err(|_| CborError::UnexpectedEof)?;
        if self.data.len() - self.off < n {
            return Err(CborError::UnexpectedEof);
        }
        Ok(n)
    }

    fn item(&mut self, depth: usize) -> Result<Value, CborError> {
        let (major, ai, val) = self.head()?;
        Ok(match major {
            0 => Value::Uint(val),
            1 => Value::Nint(val),
            2 => {
                let n = self.len_of(val)?;
                Value::Bytes(self.take(n)?.to_vec())
            }
            3 => {
                let n = self.len_of(val)?;
                Value::Text(self.take(n)?.to_vec())
            }
            4 => {
                let depth = depth + 1;
                if depth > MAX_NESTED_LEVELS {
                    return Err(CborError::TooDeep);
                }
                if val > MAX_ARRAY_ELEMENTS {
                    return Err(CborError::TooManyElements);
                }
                // Every element takes at least one byte: never reserve more than what is left.
                let n = val as usize;
                let mut out = Vec::with_capacity(n.min(self.data.len() - self.off));
                for _ in 0..n {
                    out.push(self.item(depth)?);
                }
                Value::Array(out)
            }
            5 => {
                let depth = depth + 1;
                if depth > MAX_NESTED_LEVELS {
                    return Err(CborError::TooDeep);
                }
                if val > MAX_MAP_PAIRS {
                    return Err(CborError::TooManyPairs);
                }
                let n = val as usize;
                let mut out = Vec::with_capacity(n.min((self.data.len() - self.off) / 2));
                for _ in 0..n {
                    let k = self.item(depth)?;
                    let v = self.item(depth)?;
                    out.push((k, v));
                }
                Value::Map(out)
            }
            6 => return Err(CborError::Tag),
            _ => match ai {
                20 => Value::Bool(false),
                21 => Value::Bool(true),
                22 => Value::Null,
                23 => Value::Undefined,
                25..=27 => Value::Float(val),
                _ => Value::Simple(val as u8),
            },
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Typed field readers (Go decoding semantics for the field types TKA uses)

/// The entries of a map decoded into a Go struct or map, with duplicate keys rejected.
pub(crate) fn map_entries(v: Value, what: &'static str) -> Result<Vec<(Value, Value)>, CborError> {
    let Value::Map(entries) = v else {
        return Err(CborError::Type(what));
    };
    for i in 1..entries.len() {
        if entries[..i].iter().any(|(k, _)| *k == entries[i].0) {
            return Err(CborError::DuplicateKey);
        }
    }
    Ok(entries)
}

/// An unsigned integer field (`null`/`undefined` leave the zero value).
pub(crate) fn read_u64(v: Value, what: &'static str) -> Result<Option<u64>, CborError> {
    match v {
        Value::Uint(n) => Ok(Some(n)),
        v if v.is_nil() => Ok(None),
        _ => Err(CborError::Type(what)),
    }
}

/// A `uint8` field.
pub(crate) fn read_u8(v: Value, what: &'static str) -> Result<Option<u8>, CborError> {
    match read_u64(v, what)? {
        Some(n) => u8::try_from(n)
            .map(Some)
            .map_err(|_| CborError::Overflow(what)),
        None => Ok(None),
    }
}

/// A `[]byte` field: `None` for nil.
pub(crate) fn read_bytes(v: Value, what: &'static str) -> Result<Option<Vec<u8>>, CborError> {
    match v {
        Value::Bytes(b) => Ok(Some(b)),
        v if v.is_nil() => Ok(None),
        _ => Err(CborError::Type(what)),
    }
}

/// A `string` value (`null` leaves the empty string, as in Go).
pub(crate) fn read_text(v: Value, what: &'static str) -> Result<String, CborError> {
    match v {
        Value::Text(t) => String::from_utf8(t).map_err(|_| CborError::Utf8),
        v if v.is_nil() => Ok(String::new()),
        _ => Err(CborError::Type(what)),
    }
}

/// An array field: `None` for nil.
pub(crate) fn read_array(v: Value, what: &'static str) -> Result<Option<Vec<Value>>, CborError> {
    match v {
        Value::Array(a) => Ok(Some(a)),
        v if v.is_nil() => Ok(None),
        _ => Err(CborError::Type(what)),
    }
}

/// A `map[string]string` field: `None` for nil.
pub(crate) fn read_text_map(
    v: Value,
    what: &'static str,
) -> Result<Option<std::collections::BTreeMap<String, String>>, CborError> {
    if v.is_nil() {
        return Ok(None);
    }
    let entries = map_entries(v, what)?;
    let mut out = std::collections::BTreeMap::new();
    for (k, v) in entries {
        let Value::Text(k) = k else {
            return Err(CborError::Type(what));
        };
        let k = String::from_utf8(k).map_err(|_| CborError::Utf8)?;
        out.insert(k, read_text(v, what)?);
    }
    Ok(Some(out))
}

/// The small integer key of a struct field, or `None` for keys no field can match.
pub(crate) fn field_key(k: &Value) -> Option<u64> {
    match k {
        Value::Uint(n) => Some(*n),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc_uint(v: u64) -> Vec<u8> {
        let mut e = Enc::new();
        e.uint(v);
        e.buf
    }

    #[test]
    fn integers_use_the_shortest_head() {
        assert_eq!(enc_uint(0), [0x00]);
        assert_eq!(enc_uint(23), [0x17]);
        assert_eq!(enc_uint(24), [0x18, 24]);
        assert_eq!(enc_uint(255), [0x18, 0xff]);
        assert_eq!(enc_uint(256), [0x19, 0x01, 0x00]);
        assert_eq!(enc_uint(65536), [0x1a, 0, 1, 0, 0]);
        assert_eq!(enc_uint(1 << 32), [0x1b, 0, 0, 0, 1, 0, 0, 0, 0]);
    }

    #[test]
    fn text_maps_sort_by_encoded_key() {
        let m: std::collections::BTreeMap<String, String> = [
            ("bb".to_string(), "1".to_string()),
            ("a".to_string(), "2".to_string()),
            ("c".to_string(), "3".to_string()),
        ]
        .into_iter()
        .collect();
        let mut e = Enc::new();
        e.text_map(&m);
        // "a", "c" (length 1) before "bb" (length 2).
        assert_eq!(
            e.buf,
            [0xa3, 0x61, b'a', 0x61, b'2', 0x61, b'c', 0x61, b'3', 0x62, b'b', b'b', 0x61, b'1']
        );
    }

    #[test]
    fn decoder_limits() {
        assert_eq!(decode(&[]), Err(CborError::Empty));
        assert_eq!(decode(&[0x01, 0x02]), Err(CborError::Extraneous(1)));
        assert_eq!(decode(&[0x5f, 0xff]), Err(CborError::IndefiniteLength));
        assert_eq!(decode(&[0x9f, 0xff]), Err(CborError::IndefiniteLength));
        assert_eq!(decode(&[0xbf, 0xff]), Err(CborError::IndefiniteLength));
        assert_eq!(decode(&[0xc1, 0x00]), Err(CborError::Tag));
        assert!(matches!(decode(&[0xff]), Err(CborError::Syntax(_))));
        assert!(matches!(decode(&[0x1c]), Err(CborError::Syntax(_))));
        assert!(matches!(decode(&[0xf8, 0x10]), Err(CborError::Syntax(_))));
        assert_eq!(
            decode(&[0x5a, 0xff, 0xff, 0xff, 0xff]),
            Err(CborError::UnexpectedEof)
        );
        assert_eq!(decode(&[0x99, 0x10, 0x01]), Err(CborError::TooManyElements));
        assert_eq!(decode(&[0xb9, 0x04, 0x01]), Err(CborError::TooManyPairs));
        // 16 nested arrays are fine, 17 are not.
        let mut ok = vec![0x81; 15];
        ok.push(0x80);
        assert!(decode(&ok).is_ok());
        let mut deep = vec![0x81; 16];
        deep.push(0x80);
        assert_eq!(decode(&deep), Err(CborError::TooDeep));
        // Non-shortest integers are accepted (Tailscale's decoder accepts them too).
        assert_eq!(decode(&[0x18, 0x01]), Ok(Value::Uint(1)));
    }

    #[test]
    fn duplicate_keys_are_rejected() {
        // {1: 0, 1: 0} and {1: 0, 0x18 0x01: 0} (the same key, non-shortest).
        for input in [
            &[0xa2, 0x01, 0x00, 0x01, 0x00][..],
            &[0xa2, 0x01, 0x00, 0x18, 0x01, 0x00],
        ] {
            let v = decode(input).unwrap();
            assert_eq!(map_entries(v, "m"), Err(CborError::DuplicateKey));
        }
    }
}
