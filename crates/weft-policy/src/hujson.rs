//! A strict HuJSON reader: JSON plus `//` and `/* */` comments and trailing commas in arrays
//! and objects, nothing looser. Every value keeps the position where it starts, so later
//! validation can point at the offending text.

use std::fmt;

/// A 1-based line and column (columns count Unicode scalar values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    /// Line, starting at 1.
    pub line: u32,
    /// Column, starting at 1.
    pub column: u32,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// A parsed value and where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    /// Start of the value in the source text.
    pub pos: Pos,
    /// The value itself.
    pub kind: Kind,
}

/// The JSON value kinds.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// `null`
    Null,
    /// `true` / `false`
    Bool(bool),
    /// A number, kept as written (validated JSON number syntax).
    Number(String),
    /// A string with escapes resolved.
    String(String),
    /// An array.
    Array(Vec<Value>),
    /// An object; members in source order, keys with their positions.
    Object(Vec<(Key, Value)>),
}

/// An object key and where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    /// Position of the opening quote.
    pub pos: Pos,
    /// The key text.
    pub name: String,
}

/// A syntax error with its position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{pos}: {reason}")]
pub struct SyntaxError {
    /// Where the error was found.
    pub pos: Pos,
    /// What is wrong.
    pub reason: String,
}

impl Value {
    /// The value as plain JSON (comments and positions dropped; a number that does not fit
    /// JSON's usual forms becomes `null`).
    pub fn to_json(&self) -> serde_json::Value {
        match &self.kind {
            Kind::Null => serde_json::Value::Null,
            Kind::Bool(b) => serde_json::Value::Bool(*b),
            Kind::Number(n) => serde_json::from_str(n).unwrap_or(serde_json::Value::Null),
            Kind::String(s) => serde_json::Value::String(s.clone()),
            Kind::Array(a) => serde_json::Value::Array(a.iter().map(Value::to_json).collect()),
            Kind::Object(o) => serde_json::Value::Object(
                o.iter()
                    .map(|(k, v)| (k.name.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// A short name of the value's kind, for error messages.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            Kind::Null => "null",
            Kind::Bool(_) => "a boolean",
            Kind::Number(_) => "a number",
            Kind::String(_) => "a string",
            Kind::Array(_) => "an array",
            Kind::Object(_) => "an object",
        }
    }
}

/// Parses one HuJSON document (a single value, surrounded only by whitespace and comments).
pub fn parse(text: &str) -> Result<Value, SyntaxError> {
    let mut p = Parser {
        chars: text.chars().collect(),
        i: 0,
        line: 1,
        col: 1,
        depth: 0,
    };
    p.skip_ws()?;
    let v = p.value()?;
    p.skip_ws()?;
    if p.i < p.chars.len() {
        return Err(p.err("unexpected text after the end of the document"));
    }
    Ok(v)
}

const MAX_DEPTH: u32 = 128;

struct Parser {
    chars: Vec<char>,
    i: usize,
    line: u32,
    col: u32,
    depth: u32,
}

impl Parser {
    fn pos(&self) -> Pos {
        Pos {
            line: self.line,
            column: self.col,
        }
    }

    fn err(&self, reason: impl Into<String>) -> SyntaxError {
        SyntaxError {
            pos: self.pos(),
            reason: reason.into(),
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.i).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.i += 1;
        if c == '\n' {
            self.line += 1;
            self.col = 1;
        } else {
            self.col += 1;
        }
        Some(c)
    }

    fn skip_ws(&mut self) -> Result<(), SyntaxError> {
        loop {
            match self.peek() {
                Some(' ' | '\t' | '\n' | '\r') => {
                    self.bump();
                }
                Some('/') => {
                    let start = self.pos();
                    self.bump();
                    match self.peek() {
                        Some('/') => {
                            while let Some(c) = self.peek() {
                                if c == '\n' {
                                    break;
                                }
                                self.bump();
                            }
                        }
                        Some('*') => {
                            self.bump();
                            loop {
                                match self.bump() {
                                    Some('*') if self.peek() == Some('/') => {
                                        self.bump();
                                        break;
                                    }
                                    Some(_) => {}
                                    None => {
                                        return Err(SyntaxError {
                                            pos: start,
                                            reason: "unterminated block comment".into(),
                                        })
                                    }
                                }
                            }
                        }
                        _ => {
                            return Err(SyntaxError {
                                pos: start,
                                reason: "unexpected '/' (comments start with // or /*)".into(),
                            })
                        }
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    fn value(&mut self) -> Result<Value, SyntaxError> {
        let pos = self.pos();
        let kind = match self.peek() {
            None => return Err(self.err("unexpected end of input, expected a value")),
            Some('{') => self.object()?,
            Some('[') => self.array()?,
            Some('"') => Kind::String(self.string()?),
            Some('t') => self.literal("true", Kind::Bool(true))?,
            Some('f') => self.literal("false", Kind::Bool(false))?,
            Some('n') => self.literal("null", Kind::Null)?,
            Some(c) if c == '-' || c.is_ascii_digit() => self.number()?,
            Some(c) => {
                return Err(self.err(format!("unexpected character {c:?}, expected a value")))
            }
        };
        Ok(Value { pos, kind })
    }

    fn literal(&mut self, word: &str, kind: Kind) -> Result<Kind, SyntaxError> {
        let start = self.pos();
        for w in word.chars() {
            if self.peek() != Some(w) {
                return Err(SyntaxError {
                    pos: start,
                    reason: format!("invalid literal, expected {word}"),
                });
            }
            self.bump();
        }
        if self.peek().is_some_and(|c| c.is_alphanumeric() || c == '_') {
            return Err(SyntaxError {
                pos: start,
                reason: format!("invalid literal, expected {word}"),
            });
        }
        Ok(kind)
    }

    fn number(&mut self) -> Result<Kind, SyntaxError> {
        let start = self.pos();
        let mut s = String::new();
        let bad = |reason: &str| SyntaxError {
            pos: start,
            reason: reason.to_string(),
        };
        if self.peek() == Some('-') {
            s.push('-');
            self.bump();
        }
        match self.peek() {
            Some('0') => {
                s.push('0');
                self.bump();
                if self.peek().is_some_and(|c| c.is_ascii_digit()) {
                    return Err(bad("invalid number: leading zero"));
                }
            }
            Some(c) if c.is_ascii_digit() => {
                while let Some(c) = self.peek().filter(char::is_ascii_digit) {
                    s.push(c);
                    self.bump();
                }
            }
            _ => return Err(bad("invalid number")),
        }
        if self.peek() == Some('.') {
            s.push('.');
            self.bump();
            if !self.peek().is_some_and(|c| c.is_ascii_digit()) {
                return Err(bad("invalid number: digit expected after '.'"));
            }
            while let Some(c) = self.peek().filter(char::is_ascii_digit) {
                s.push(c);
                self.bump();
            }
        }
        if matches!(self.peek(), Some('e' | 'E')) {
            s.push('e');
            self.bump();
            if let Some(c @ ('+' | '-')) = self.peek() {
                s.push(c);
                self.bump();
            }
            if !self.peek().is_some_and(|c| c.is_ascii_digit()) {
                return Err(bad("invalid number: digit expected in exponent"));
            }
            while let Some(c) = self.peek().filter(char::is_ascii_digit) {
                s.push(c);
                self.bump();
            }
        }
        Ok(Kind::Number(s))
    }

    fn string(&mut self) -> Result<String, SyntaxError> {
        let start = self.pos();
        self.bump(); // opening quote
        let mut out = String::new();
        loop {
            let here = self.pos();
            match self.bump() {
                None => {
                    return Err(SyntaxError {
                        pos: start,
                        reason: "unterminated string".into(),
                    })
                }
                Some('"') => return Ok(out),
                Some('\\') => {
                    let c = self.bump().ok_or_else(|| self.err("unterminated escape"))?;
                    match c {
                        '"' => out.push('"'),
                        '\\' => out.push('\\'),
                        '/' => out.push('/'),
                        'b' => out.push('\u{8}'),
                        'f' => out.push('\u{c}'),
                        'n' => out.push('\n'),
                        'r' => out.push('\r'),
                        't' => out.push('\t'),
                        'u' => {
                            let hi = self.hex4()?;
                            let cp = if (0xD800..0xDC00).contains(&hi) {
                                if self.bump() != Some('\\') || self.bump() != Some('u') {
                                    return Err(SyntaxError {
                                        pos: here,
                                        reason: "unpaired surrogate in \\u escape".into(),
                                    });
                                }
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(SyntaxError {
                                        pos: here,
                                        reason: "invalid low surrogate in \\u escape".into(),
                                    });
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            let ch = char::from_u32(cp).ok_or_else(|| SyntaxError {
                                pos: here,
                                reason: "invalid \\u escape".into(),
                            })?;
                            out.push(ch);
                        }
                        other => {
                            return Err(SyntaxError {
                                pos: here,
                                reason: format!("invalid escape \\{other}"),
                            })
                        }
                    }
                }
                Some(c) if (c as u32) < 0x20 => {
                    return Err(SyntaxError {
                        pos: here,
                        reason: "control character in string".into(),
                    })
                }
                Some(c) => out.push(c),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, SyntaxError> {
        let mut v = 0u32;
        for _ in 0..4 {
            let pos = self.pos();
            let d = self
                .bump()
                .and_then(|c| c.to_digit(16))
                .ok_or(SyntaxError {
                    pos,
                    reason: "invalid hex digit in \\u escape".into(),
                })?;
            v = v * 16 + d;
        }
        Ok(v)
    }

    fn enter(&mut self) -> Result<(), SyntaxError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err("nesting too deep"));
        }
        Ok(())
    }

    fn array(&mut self) -> Result<Kind, SyntaxError> {
        self.enter()?;
        self.bump(); // [
        let mut items = Vec::new();
        loop {
            self.skip_ws()?;
            if self.peek() == Some(']') {
                self.bump();
                break;
            }
            items.push(self.value()?);
            self.skip_ws()?;
            match self.peek() {
                Some(',') => {
                    self.bump();
                }
                Some(']') => {
                    self.bump();
                    break;
                }
                None => return Err(self.err("unexpected end of input in array")),
                Some(c) => {
                    return Err(self.err(format!("expected ',' or ']' in array, found {c:?}")))
                }
            }
        }
        self.depth -= 1;
        Ok(Kind::Array(items))
    }

    fn object(&mut self) -> Result<Kind, SyntaxError> {
        self.enter()?;
        self.bump(); // {
        let mut members: Vec<(Key, Value)> = Vec::new();
        loop {
            self.skip_ws()?;
            match self.peek() {
                Some('}') => {
                    self.bump();
                    break;
                }
                Some('"') => {}
                None => return Err(self.err("unexpected end of input in object")),
                Some(c) => {
                    return Err(self.err(format!("expected a quoted key or '}}', found {c:?}")))
                }
            }
            let kpos = self.pos();
            let name = self.string()?;
            if members.iter().any(|(k, _)| k.name == name) {
                return Err(SyntaxError {
                    pos: kpos,
                    reason: format!("duplicate key {name:?}"),
                });
            }
            self.skip_ws()?;
            if self.peek() != Some(':') {
                return Err(self.err("expected ':' after object key"));
            }
            self.bump();
            self.skip_ws()?;
            let v = self.value()?;
            members.push((Key { pos: kpos, name }, v));
            self.skip_ws()?;
            match self.peek() {
                Some(',') => {
                    self.bump();
                }
                Some('}') => {
                    self.bump();
                    break;
                }
                None => return Err(self.err("unexpected end of input in object")),
                Some(c) => {
                    return Err(self.err(format!("expected ',' or '}}' in object, found {c:?}")))
                }
            }
        }
        self.depth -= 1;
        Ok(Kind::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_at(text: &str) -> (u32, u32) {
        let e = parse(text).unwrap_err();
        (e.pos.line, e.pos.column)
    }

    #[test]
    fn comments_and_trailing_commas_are_accepted() {
        let v = parse("// hi\n{ /* c */ \"a\": [1, 2,], \"b\": {\"c\": null,},\n}").unwrap();
        let Kind::Object(m) = v.kind else { panic!() };
        assert_eq!(m.len(), 2);
        assert_eq!(
            m[1].0.pos,
            Pos {
                line: 2,
                column: 25
            }
        );
    }

    #[test]
    fn loose_json5_forms_are_rejected() {
        assert!(parse("{a: 1}").is_err());
        assert!(parse("{'a': 1}").is_err());
        assert!(parse("[0x10]").is_err());
        assert!(parse("[.5]").is_err());
        assert!(parse("[1,,2]").is_err());
        assert!(parse("[,]").is_err());
        assert!(parse("[01]").is_err());
        assert!(parse("[NaN]").is_err());
        assert!(parse("{\"a\":1} x").is_err());
    }

    #[test]
    fn errors_carry_line_and_column() {
        assert_eq!(err_at("{\n  \"a\": [1,\n   2 3]}"), (3, 6));
        assert_eq!(err_at("{\n\"x\": tru }"), (2, 6));
        assert_eq!(err_at("/* never closed"), (1, 1));
        assert_eq!(err_at("{\"a\":1,\"a\":2}"), (1, 8));
    }

    #[test]
    fn string_escapes_are_decoded() {
        let v = parse(r#""a\n\u00e9\ud83d\ude00""#).unwrap();
        assert_eq!(v.kind, Kind::String("a\né😀".into()));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let text = "[".repeat(10_000);
        assert!(parse(&text).is_err());
    }
}
