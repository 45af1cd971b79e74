//! A small JSON writer for the `--json` output of commands.
//!
//! Build a [`Json`] value and print it with `to_string()`: the output is one line of valid JSON
//! (RFC 8259) whatever the strings hold, because every string goes through [`write_str`].

use std::fmt::{self, Write};

/// A JSON value, built by a command and printed once.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A signed integer, printed exactly.
    Int(i64),
    /// An unsigned integer, printed exactly (sizes and offsets may exceed `i64`).
    UInt(u64),
    /// A string, escaped on output.
    Str(String),
    /// An array.
    Array(Vec<Json>),
    /// An object whose members keep the order they were added in.
    Object(Vec<(String, Json)>),
}

impl Json {
    /// A string value.
    pub fn str(s: impl Into<String>) -> Json {
        Json::Str(s.into())
    }

    /// A string, or `null` when absent.
    pub fn opt_str(s: Option<impl Into<String>>) -> Json {
        s.map_or(Json::Null, |s| Json::Str(s.into()))
    }

    /// An array of strings.
    pub fn strs<S: AsRef<str>>(items: &[S]) -> Json {
        Json::Array(items.iter().map(|s| Json::str(s.as_ref())).collect())
    }

    /// An empty object, to fill with [`Json::with`].
    pub fn object() -> Json {
        Json::Object(Vec::new())
    }

    /// Adds a member to an object (builder style); does nothing to other values.
    #[must_use]
    pub fn with(mut self, key: &str, value: Json) -> Json {
        if let Json::Object(members) = &mut self {
            members.push((key.to_owned(), value));
        }
        self
    }
}

impl fmt::Display for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Json::Null => f.write_str("null"),
            Json::Bool(b) => write!(f, "{b}"),
            Json::Int(i) => write!(f, "{i}"),
            Json::UInt(u) => write!(f, "{u}"),
            Json::Str(s) => write_str(f, s),
            Json::Array(items) => {
                f.write_char('[')?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_char(',')?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_char(']')
            }
            Json::Object(members) => {
                f.write_char('{')?;
                for (i, (key, value)) in members.iter().enumerate() {
                    if i > 0 {
                        f.write_char(',')?;
                    }
                    write_str(f, key)?;
                    write!(f, ":{value}")?;
                }
                f.write_char('}')
            }
        }
    }
}

/// Writes `s` as a quoted JSON string.
///
/// Quotes, backslashes and every control character are escaped; U+2028 and U+2029 are escaped too
/// so the output is also safe to paste into JavaScript. Other characters are written as UTF-8.
pub fn write_str(out: &mut impl Write, s: &str) -> fmt::Result {
    out.write_char('"')?;
    for c in s.chars() {
        match c {
            '"' => out.write_str("\\\"")?,
            '\\' => out.write_str("\\\\")?,
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            '\t' => out.write_str("\\t")?,
            '\u{8}' => out.write_str("\\b")?,
            '\u{c}' => out.write_str("\\f")?,
            c if (c as u32) < 0x20 || c == '\u{7f}' || c == '\u{2028}' || c == '\u{2029}' => {
                write!(out, "\\u{:04x}", c as u32)?
            }
            c => out.write_char(c)?,
        }
    }
    out.write_char('"')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quoted(s: &str) -> String {
        let mut out = String::new();
        write_str(&mut out, s).unwrap();
        out
    }

    #[test]
    fn strings_escape_quotes_backslashes_and_controls() {
        assert_eq!(quoted("plain"), r#""plain""#);
        assert_eq!(quoted(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(quoted("l1\nl2\r\t"), r#""l1\nl2\r\t""#);
        assert_eq!(quoted("\u{0}\u{1f}\u{7f}"), r#""\u0000\u001f\u007f""#);
        assert_eq!(quoted("\u{8}\u{c}"), r#""\b\f""#);
        assert_eq!(quoted("\u{2028}"), r#""\u2028""#);
        assert_eq!(quoted("héllo ✓ 🎉"), "\"héllo ✓ 🎉\"");
        assert_eq!(quoted("/"), r#""/""#);
    }

    #[test]
    fn values_nest_in_order() {
        let v = Json::object()
            .with("name", Json::str("x\"y"))
            .with("size", Json::UInt(u64::MAX))
            .with("date", Json::Int(-5))
            .with("private", Json::Bool(false))
            .with("comment", Json::opt_str(None::<String>))
            .with(
                "tiers",
                Json::Array(vec![Json::strs(&["a", "b"]), Json::Array(vec![])]),
            )
            .with("empty", Json::object());
        assert_eq!(
            v.to_string(),
            r#"{"name":"x\"y","size":18446744073709551615,"date":-5,"private":false,"comment":null,"tiers":[["a","b"],[]],"empty":{}}"#
        );
    }

    #[test]
    fn with_ignores_non_objects() {
        assert_eq!(Json::Null.with("k", Json::Bool(true)), Json::Null);
    }
}
