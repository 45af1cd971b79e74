//! Bencode: a strict decoder that keeps the exact byte span of every list and dictionary, and a
//! canonical encoder.
//!
//! The decoder borrows from its input: byte strings are slices of it, and [`Dict::raw`] /
//! [`List::raw`] give the bytes a value occupied, so the info-hash is computed over the `info`
//! dictionary exactly as it stands in the file. It is strict where strictness protects us
//! (integers are checked for overflow, `i-0e`, leading zeros and trailing bytes are errors, nesting
//! and item counts are bounded) and lenient where real torrents need it (dictionary keys may come
//! unsorted, as libtorrent and Transmission accept).
//!
//! The encoder ([`Owned`]) always writes canonical bencode: dictionary keys sorted as raw bytes.

use std::collections::BTreeMap;
use std::fmt;

/// Limits that bound the work and memory one decode may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Deepest allowed nesting of lists and dictionaries.
    pub max_depth: usize,
    /// Most values (integers, strings, lists, dictionaries) one document may hold.
    pub max_items: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_depth: 100,
            max_items: 4_000_000,
        }
    }
}

/// Why a byte string is not valid bencode.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended inside a value.
    UnexpectedEnd {
        /// Offset where more input was needed.
        pos: usize,
    },
    /// A byte that cannot start or continue a value here.
    UnexpectedByte {
        /// Offset of the byte.
        pos: usize,
        /// The byte found.
        byte: u8,
    },
    /// An integer or string length that does not fit in 64 bits.
    Overflow {
        /// Offset of the number.
        pos: usize,
    },
    /// `i-0e`.
    NegativeZero {
        /// Offset of the integer.
        pos: usize,
    },
    /// A number written with a leading zero, such as `i03e` or `01:a`.
    LeadingZero {
        /// Offset of the number.
        pos: usize,
    },
    /// `ie` or `i-e`: an integer with no digits.
    EmptyInteger {
        /// Offset of the integer.
        pos: usize,
    },
    /// A string length larger than the remaining input.
    StringTooLong {
        /// Offset of the length.
        pos: usize,
        /// The declared length.
        len: u64,
    },
    /// A dictionary key that is not a byte string.
    NonStringKey {
        /// Offset of the key.
        pos: usize,
    },
    /// Nesting deeper than [`Limits::max_depth`].
    TooDeep {
        /// Offset where the limit was crossed.
        pos: usize,
    },
    /// More values than [`Limits::max_items`].
    TooManyItems {
        /// Offset where the limit was crossed.
        pos: usize,
    },
    /// Bytes left over after the top-level value.
    TrailingBytes {
        /// Offset of the first extra byte.
        pos: usize,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DecodeError::UnexpectedEnd { pos } => {
                write!(
                    f,
                    "bencode truncated: input ends at byte {pos} inside a value"
                )
            }
            DecodeError::UnexpectedByte { pos, byte } => {
                write!(f, "bencode: unexpected byte 0x{byte:02x} at byte {pos}")
            }
            DecodeError::Overflow { pos } => {
                write!(f, "bencode: number at byte {pos} does not fit in 64 bits")
            }
            DecodeError::NegativeZero { pos } => write!(f, "bencode: i-0e at byte {pos}"),
            DecodeError::LeadingZero { pos } => {
                write!(f, "bencode: number with a leading zero at byte {pos}")
            }
            DecodeError::EmptyInteger { pos } => {
                write!(f, "bencode: integer without digits at byte {pos}")
            }
            DecodeError::StringTooLong { pos, len } => write!(
                f,
                "bencode: string at byte {pos} declares {len} bytes, more than the input holds"
            ),
            DecodeError::NonStringKey { pos } => {
                write!(f, "bencode: dictionary key at byte {pos} is not a string")
            }
            DecodeError::TooDeep { pos } => {
                write!(f, "bencode: nesting too deep at byte {pos}")
            }
            DecodeError::TooManyItems { pos } => {
                write!(f, "bencode: too many values (limit reached at byte {pos})")
            }
            DecodeError::TrailingBytes { pos } => {
                write!(
                    f,
                    "bencode: unexpected bytes after the value, from byte {pos}"
                )
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// A decoded value borrowing from the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value<'a> {
    /// An integer.
    Int(i64),
    /// A byte string.
    Bytes(&'a [u8]),
    /// A list.
    List(List<'a>),
    /// A dictionary.
    Dict(Dict<'a>),
}

/// A decoded list and the bytes it occupied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct List<'a> {
    items: Vec<Value<'a>>,
    raw: &'a [u8],
}

/// A decoded dictionary, in the order its entries appeared, and the bytes it occupied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dict<'a> {
    entries: Vec<(&'a [u8], Value<'a>)>,
    raw: &'a [u8],
}

impl<'a> Value<'a> {
    /// The integer, if this is one.
    pub fn as_int(&self) -> Option<i64> {
        match *self {
            Value::Int(i) => Some(i),
            _ => None,
        }
    }

    /// The byte string, if this is one.
    pub fn as_bytes(&self) -> Option<&'a [u8]> {
        match *self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The byte string as UTF-8, if this is a string and valid UTF-8.
    pub fn as_str(&self) -> Option<&'a str> {
        self.as_bytes().and_then(|b| std::str::from_utf8(b).ok())
    }

    /// The list, if this is one.
    pub fn as_list(&self) -> Option<&List<'a>> {
        match self {
            Value::List(l) => Some(l),
            _ => None,
        }
    }

    /// The dictionary, if this is one.
    pub fn as_dict(&self) -> Option<&Dict<'a>> {
        match self {
            Value::Dict(d) => Some(d),
            _ => None,
        }
    }

    /// A short name of the kind of value, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Int(_) => "integer",
            Value::Bytes(_) => "string",
            Value::List(_) => "list",
            Value::Dict(_) => "dictionary",
        }
    }

    /// Converts to an owned value (dictionary keys become sorted; a repeated key keeps its first value).
    pub fn to_owned(&self) -> Owned {
        match self {
            Value::Int(i) => Owned::Int(*i),
            Value::Bytes(b) => Owned::Bytes(b.to_vec()),
            Value::List(l) => Owned::List(l.items.iter().map(Value::to_owned).collect()),
            Value::Dict(d) => {
                let mut map = BTreeMap::new();
                for (k, v) in &d.entries {
                    map.entry(k.to_vec()).or_insert_with(|| v.to_owned());
                }
                Owned::Dict(map)
            }
        }
    }
}

impl<'a> List<'a> {
    /// The items in order.
    pub fn items(&self) -> &[Value<'a>] {
        &self.items
    }

    /// The exact bytes this list occupied in the input.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// Iterates over the items.
    pub fn iter(&self) -> std::slice::Iter<'_, Value<'a>> {
        self.items.iter()
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when the list has no items.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

impl<'a> Dict<'a> {
    /// The value of the first entry with this key.
    pub fn get(&self, key: &[u8]) -> Option<&Value<'a>> {
        self.entries.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// The integer under `key`, if present and an integer.
    pub fn get_int(&self, key: &[u8]) -> Option<i64> {
        self.get(key).and_then(Value::as_int)
    }

    /// The byte string under `key`, if present and a string.
    pub fn get_bytes(&self, key: &[u8]) -> Option<&'a [u8]> {
        self.get(key).and_then(Value::as_bytes)
    }

    /// The UTF-8 string under `key`, if present, a string and valid UTF-8.
    pub fn get_str(&self, key: &[u8]) -> Option<&'a str> {
        self.get(key).and_then(Value::as_str)
    }

    /// The list under `key`, if present and a list.
    pub fn get_list(&self, key: &[u8]) -> Option<&List<'a>> {
        self.get(key).and_then(Value::as_list)
    }

    /// The dictionary under `key`, if present and a dictionary.
    pub fn get_dict(&self, key: &[u8]) -> Option<&Dict<'a>> {
        self.get(key).and_then(Value::as_dict)
    }

    /// The exact bytes this dictionary occupied in the input.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// Entries in input order.
    pub fn entries(&self) -> &[(&'a [u8], Value<'a>)] {
        &self.entries
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the dictionary has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Decodes exactly one value that must fill the whole input, with default [`Limits`].
pub fn decode(input: &[u8]) -> Result<Value<'_>, DecodeError> {
    decode_with(input, Limits::default())
}

/// Decodes exactly one value that must fill the whole input.
pub fn decode_with(input: &[u8], limits: Limits) -> Result<Value<'_>, DecodeError> {
    let (value, used) = decode_prefix_with(input, limits)?;
    if used != input.len() {
        return Err(DecodeError::TrailingBytes { pos: used });
    }
    Ok(value)
}

/// Decodes one value from the start of `input` and returns it with the number of bytes it used;
/// bytes after it are left alone (BEP 9 metadata messages carry raw data after a dictionary).
pub fn decode_prefix(input: &[u8]) -> Result<(Value<'_>, usize), DecodeError> {
    decode_prefix_with(input, Limits::default())
}

/// [`decode_prefix`] with explicit limits.
pub fn decode_prefix_with(input: &[u8], limits: Limits) -> Result<(Value<'_>, usize), DecodeError> {
    let mut d = Decoder {
        input,
        pos: 0,
        items: 0,
        limits,
    };
    let v = d.value(0)?;
    Ok((v, d.pos))
}

struct Decoder<'a> {
    input: &'a [u8],
    pos: usize,
    items: usize,
    limits: Limits,
}

impl<'a> Decoder<'a> {
    fn peek(&self) -> Result<u8, DecodeError> {
        self.input
            .get(self.pos)
            .copied()
            .ok_or(DecodeError::UnexpectedEnd { pos: self.pos })
    }

    fn value(&mut self, depth: usize) -> Result<Value<'a>, DecodeError> {
        self.items += 1;
        if self.items > self.limits.max_items {
            return Err(DecodeError::TooManyItems { pos: self.pos });
        }
        let start = self.pos;
        match self.peek()? {
            b'i' => {
                self.pos += 1;
                let i = self.integer(b'e', start)?;
                Ok(Value::Int(i))
            }
            b'0'..=b'9' => Ok(Value::Bytes(self.string()?)),
            b'l' => {
                if depth >= self.limits.max_depth {
                    return Err(DecodeError::TooDeep { pos: start });
                }
                self.pos += 1;
                let mut items = Vec::new();
                while self.peek()? != b'e' {
                    items.push(self.value(depth + 1)?);
                }
                self.pos += 1;
                Ok(Value::List(List {
                    items,
                    raw: &self.input[start..self.pos],
                }))
            }
            b'd' => {
                if depth >= self.limits.max_depth {
                    return Err(DecodeError::TooDeep { pos: start });
                }
                self.pos += 1;
                let mut entries = Vec::new();
                loop {
                    let b = self.peek()?;
                    if b == b'e' {
                        break;
                    }
                    if !b.is_ascii_digit() {
                        return Err(DecodeError::NonStringKey { pos: self.pos });
                    }
                    let key = self.string()?;
                    let value = self.value(depth + 1)?;
                    entries.push((key, value));
                }
                self.pos += 1;
                Ok(Value::Dict(Dict {
                    entries,
                    raw: &self.input[start..self.pos],
                }))
            }
            byte => Err(DecodeError::UnexpectedByte { pos: start, byte }),
        }
    }

    /// Reads a signed decimal integer terminated by `end` (the terminator is consumed); errors
    /// report `start`, where the value began.
    fn integer(&mut self, end: u8, start: usize) -> Result<i64, DecodeError> {
        let negative = self.peek()? == b'-';
        if negative {
            self.pos += 1;
        }
        let digits_start = self.pos;
        // Accumulate as a negative number so that i64::MIN parses.
        let mut acc: i64 = 0;
        loop {
            let b = self.peek()?;
            if b == end {
                break;
            }
            if !b.is_ascii_digit() {
                return Err(DecodeError::UnexpectedByte {
                    pos: self.pos,
                    byte: b,
                });
            }
            acc = acc
                .checked_mul(10)
                .and_then(|a| a.checked_sub(i64::from(b - b'0')))
                .ok_or(DecodeError::Overflow { pos: start })?;
            self.pos += 1;
        }
        let ndigits = self.pos - digits_start;
        if ndigits == 0 {
            return Err(DecodeError::EmptyInteger { pos: start });
        }
        if ndigits > 1 && self.input[digits_start] == b'0' {
            return Err(DecodeError::LeadingZero { pos: start });
        }
        self.pos += 1;
        if negative {
            if acc == 0 {
                return Err(DecodeError::NegativeZero { pos: start });
            }
            Ok(acc)
        } else {
            acc.checked_neg()
                .ok_or(DecodeError::Overflow { pos: start })
        }
    }

    fn string(&mut self) -> Result<&'a [u8], DecodeError> {
        let start = self.pos;
        if self.peek()? == b'-' {
            return Err(DecodeError::UnexpectedByte {
                pos: start,
                byte: b'-',
            });
        }
        let len = self.integer(b':', start)?;
        let len = u64::try_from(len).map_err(|_| DecodeError::Overflow { pos: start })?;
        let remaining = (self.input.len() - self.pos) as u64;
        if len > remaining {
            return Err(DecodeError::StringTooLong { pos: start, len });
        }
        let s = &self.input[self.pos..self.pos + len as usize];
        self.pos += len as usize;
        Ok(s)
    }
}

/// An owned bencode value that encodes canonically (dictionary keys sorted as raw bytes).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Owned {
    /// An integer.
    Int(i64),
    /// A byte string.
    Bytes(Vec<u8>),
    /// A list.
    List(Vec<Owned>),
    /// A dictionary; the map keeps keys sorted.
    Dict(BTreeMap<Vec<u8>, Owned>),
}

impl Owned {
    /// A byte string from anything byte-like.
    pub fn bytes(b: impl AsRef<[u8]>) -> Owned {
        Owned::Bytes(b.as_ref().to_vec())
    }

    /// Appends the canonical encoding to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Owned::Int(i) => encode_int(*i, out),
            Owned::Bytes(b) => encode_bytes(b, out),
            Owned::List(items) => {
                out.push(b'l');
                for item in items {
                    item.encode_into(out);
                }
                out.push(b'e');
            }
            Owned::Dict(map) => {
                out.push(b'd');
                for (k, v) in map {
                    encode_bytes(k, out);
                    v.encode_into(out);
                }
                out.push(b'e');
            }
        }
    }

    /// The canonical encoding as a new vector.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }
}

/// Builds a dictionary from `(key, value)` pairs; later duplicates replace earlier ones.
impl<K: AsRef<[u8]>> FromIterator<(K, Owned)> for Owned {
    fn from_iter<I: IntoIterator<Item = (K, Owned)>>(iter: I) -> Self {
        Owned::Dict(
            iter.into_iter()
                .map(|(k, v)| (k.as_ref().to_vec(), v))
                .collect(),
        )
    }
}

/// Appends `i<n>e`.
pub fn encode_int(i: i64, out: &mut Vec<u8>) {
    out.push(b'i');
    push_decimal(i, out);
    out.push(b'e');
}

/// Appends `<len>:<bytes>`.
pub fn encode_bytes(b: &[u8], out: &mut Vec<u8>) {
    push_decimal(b.len() as i64, out);
    out.push(b':');
    out.extend_from_slice(b);
}

fn push_decimal(i: i64, out: &mut Vec<u8>) {
    let mut buf = [0u8; 20];
    let mut n = i.unsigned_abs();
    let mut pos = buf.len();
    loop {
        pos -= 1;
        buf[pos] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if i < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&buf[pos..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers() {
        assert_eq!(decode(b"i0e").unwrap(), Value::Int(0));
        assert_eq!(decode(b"i-42e").unwrap(), Value::Int(-42));
        assert_eq!(
            decode(b"i9223372036854775807e").unwrap(),
            Value::Int(i64::MAX)
        );
        assert_eq!(
            decode(b"i-9223372036854775808e").unwrap(),
            Value::Int(i64::MIN)
        );
        assert_eq!(
            decode(b"i9223372036854775808e"),
            Err(DecodeError::Overflow { pos: 0 })
        );
        assert_eq!(
            decode(b"i99999999999999999999e"),
            Err(DecodeError::Overflow { pos: 0 })
        );
        assert_eq!(decode(b"i-0e"), Err(DecodeError::NegativeZero { pos: 0 }));
        assert_eq!(decode(b"i03e"), Err(DecodeError::LeadingZero { pos: 0 }));
        assert_eq!(decode(b"i-03e"), Err(DecodeError::LeadingZero { pos: 0 }));
        assert_eq!(decode(b"ie"), Err(DecodeError::EmptyInteger { pos: 0 }));
        assert_eq!(decode(b"i-e"), Err(DecodeError::EmptyInteger { pos: 0 }));
        assert_eq!(
            decode(b"i1x"),
            Err(DecodeError::UnexpectedByte { pos: 2, byte: b'x' })
        );
        assert_eq!(decode(b"i12"), Err(DecodeError::UnexpectedEnd { pos: 3 }));
    }

    #[test]
    fn strings() {
        assert_eq!(decode(b"0:").unwrap(), Value::Bytes(b""));
        assert_eq!(decode(b"4:spam").unwrap(), Value::Bytes(b"spam"));
        assert_eq!(
            decode(b"5:spam"),
            Err(DecodeError::StringTooLong { pos: 0, len: 5 })
        );
        assert_eq!(decode(b"04:spam"), Err(DecodeError::LeadingZero { pos: 0 }));
        assert_eq!(
            decode(b"99999999999999999999:x"),
            Err(DecodeError::Overflow { pos: 0 })
        );
        assert_eq!(
            decode(b"18446744073709551615:x"),
            Err(DecodeError::Overflow { pos: 0 })
        );
        assert_eq!(decode(b"4"), Err(DecodeError::UnexpectedEnd { pos: 1 }));
    }

    #[test]
    fn lists_and_dicts_keep_spans() {
        let input = b"d3:bar4:spam3:fooi42e4:infod6:lengthi1eee";
        let v = decode(input).unwrap();
        let d = v.as_dict().unwrap();
        assert_eq!(d.raw(), &input[..]);
        assert_eq!(d.get_bytes(b"bar"), Some(&b"spam"[..]));
        assert_eq!(d.get_int(b"foo"), Some(42));
        assert_eq!(d.get_dict(b"info").unwrap().raw(), b"d6:lengthi1ee");
        let l = decode(b"l4:spami1eli2eee").unwrap();
        let l = l.as_list().unwrap();
        assert_eq!(l.len(), 3);
        assert_eq!(l.items()[2].as_list().unwrap().raw(), b"li2ee");
    }

    #[test]
    fn unsorted_keys_are_accepted_and_first_duplicate_wins() {
        let v = decode(b"d1:bi1e1:ai2e1:bi3ee").unwrap();
        let d = v.as_dict().unwrap();
        assert_eq!(d.get_int(b"a"), Some(2));
        assert_eq!(d.get_int(b"b"), Some(1));
        assert_eq!(d.len(), 3);
    }

    #[test]
    fn structural_errors() {
        assert_eq!(decode(b""), Err(DecodeError::UnexpectedEnd { pos: 0 }));
        assert_eq!(
            decode(b"i1ei2e"),
            Err(DecodeError::TrailingBytes { pos: 3 })
        );
        assert_eq!(
            decode(b"di1ei2ee"),
            Err(DecodeError::NonStringKey { pos: 1 })
        );
        assert_eq!(decode(b"l"), Err(DecodeError::UnexpectedEnd { pos: 1 }));
        assert_eq!(decode(b"d1:a"), Err(DecodeError::UnexpectedEnd { pos: 4 }));
        assert_eq!(
            decode(b"x"),
            Err(DecodeError::UnexpectedByte { pos: 0, byte: b'x' })
        );
        assert_eq!(
            decode(b"-1:a"),
            Err(DecodeError::UnexpectedByte { pos: 0, byte: b'-' })
        );
    }

    #[test]
    fn depth_limit_stops_deep_nesting_without_overflowing_the_stack() {
        let deep = vec![b'l'; 100_000];
        assert!(matches!(decode(&deep), Err(DecodeError::TooDeep { .. })));
        let mut ok = vec![b'l'; 100];
        ok.extend(std::iter::repeat_n(b'e', 100));
        assert!(decode(&ok).is_ok());
        let mut too_deep = vec![b'l'; 101];
        too_deep.extend(std::iter::repeat_n(b'e', 101));
        assert_eq!(decode(&too_deep), Err(DecodeError::TooDeep { pos: 100 }));
    }

    #[test]
    fn item_limit() {
        let limits = Limits {
            max_depth: 10,
            max_items: 3,
        };
        assert!(decode_with(b"li1ei2ee", limits).is_ok());
        assert_eq!(
            decode_with(b"li1ei2ei3ee", limits),
            Err(DecodeError::TooManyItems { pos: 7 })
        );
    }

    #[test]
    fn prefix_leaves_trailing_data() {
        let (v, used) = decode_prefix(b"d1:ai1eeRAWDATA").unwrap();
        assert_eq!(used, 8);
        assert_eq!(v.as_dict().unwrap().get_int(b"a"), Some(1));
    }

    #[test]
    fn encoder_is_canonical() {
        let v: Owned = [
            ("zeta", Owned::Int(-7)),
            ("alpha", Owned::bytes("x")),
            (
                "list",
                Owned::List(vec![Owned::Int(0), Owned::Int(i64::MIN)]),
            ),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            v.encode(),
            b"d5:alpha1:x4:listli0ei-9223372036854775808ee4:zetai-7ee".to_vec()
        );
        assert_eq!(decode(&v.encode()).unwrap().to_owned(), v);
    }

    #[test]
    fn errors_display_one_line() {
        let e = decode(b"i-0e").unwrap_err().to_string();
        assert_eq!(e, "bencode: i-0e at byte 0");
        assert!(!e.contains('\n'));
    }
}
