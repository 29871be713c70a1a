//! PostgreSQL's lexical rules, as far as the query checks need them: where
//! its string constants, quoted identifiers and comments begin and end.
//!
//! The checks read SQL with sqlparser, whose tokenizer is not PostgreSQL's.
//! Where the two disagree on what is a string or a comment, a name the
//! checks take for text can be code to PostgreSQL (or the reverse), and the
//! checks see a different query from the one that runs. So the SQL is
//! scanned here by PostgreSQL's rules (src/backend/parser/scan.l) and every
//! opaque span sqlparser found must be exactly one found here; SQL read
//! differently is refused. What this scanner cannot read faithfully is
//! refused outright: Unicode escapes (`U&"…"`, `U&'…'`, `UESCAPE`), whose
//! decoding would turn `U&"pg\005fread\005ffile"` into `pg_read_file`.

use sqlparser::tokenizer::{Location, Token, TokenWithSpan, Whitespace};

/// What an opaque span is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A string constant of any form: `'…'`, `E'…'`, `B'…'`, `X'…'`,
    /// `N'…'`, `$tag$…$tag$`.
    String,
    /// `"…"`.
    QuotedIdentifier,
    /// `-- …` (to the end of the line, not including it).
    LineComment,
    /// `/* … */`, nested.
    BlockComment,
}

/// A span of the SQL PostgreSQL reads as one opaque token, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub kind: Kind,
    pub start: usize,
    pub end: usize,
}

fn ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn ident_cont(b: u8) -> bool {
    ident_start(b) || b.is_ascii_digit() || b == b'$'
}

/// `dolq_cont`: a dollar-quote tag has no `$` inside.
fn dollar_tag_cont(b: u8) -> bool {
    ident_start(b) || b.is_ascii_digit()
}

const OPERATOR_CHARS: &[u8] = b"+-*/<>=~!@#%^&|`?";

/// The opaque spans of `sql` as PostgreSQL reads it (with
/// `standard_conforming_strings` on, as every query runs), or why the SQL
/// is refused: Unicode escapes, or a string, name or comment left open.
pub fn scan(sql: &str) -> Result<Vec<Span>, String> {
    let s = sql.as_bytes();
    let mut spans = Vec::new();
    let mut i = 0;
    let unterminated =
        |what: &str, at: usize| format!("the SQL does not parse: {what} starting at byte {at} is not closed");
    while i < s.len() {
        let b = s[i];
        let next = s.get(i + 1).copied();
        match b {
            b'-' if next == Some(b'-') => {
                let end = s[i..].iter().position(|&c| c == b'\n' || c == b'\r').map_or(s.len(), |p| i + p);
                spans.push(Span { kind: Kind::LineComment, start: i, end });
                i = end;
            }
            b'/' if next == Some(b'*') => {
                let start = i;
                let mut depth = 0usize;
                loop {
                    match (s.get(i), s.get(i + 1)) {
                        (Some(b'/'), Some(b'*')) => {
                            depth += 1;
                            i += 2;
                        }
                        (Some(b'*'), Some(b'/')) => {
                            depth -= 1;
                            i += 2;
                            if depth == 0 {
                                break;
                            }
                        }
                        (Some(_), _) => i += 1,
                        (None, _) => return Err(unterminated("a /* comment", start)),
                    }
                }
                spans.push(Span { kind: Kind::BlockComment, start, end: i });
            }
            b'\'' => {
                let end = quoted(s, i + 1, b'\'', false).ok_or_else(|| unterminated("a string", i))?;
                spans.push(Span { kind: Kind::String, start: i, end });
                i = end;
            }
            b'"' => {
                let end = quoted(s, i + 1, b'"', false).ok_or_else(|| unterminated("a quoted name", i))?;
                spans.push(Span { kind: Kind::QuotedIdentifier, start: i, end });
                i = end;
            }
            b'$' => match next {
                Some(d) if d.is_ascii_digit() => {
                    // A parameter, $1.
                    i += 1;
                    while s.get(i).is_some_and(u8::is_ascii_digit) {
                        i += 1;
                    }
                }
                Some(c) if c == b'$' || ident_start(c) => {
                    let mut tag_end = i + 1;
                    while s.get(tag_end).copied().is_some_and(dollar_tag_cont) {
                        tag_end += 1;
                    }
                    if s.get(tag_end) != Some(&b'$') {
                        // Not a dollar quote ($abc without a closing $):
                        // PostgreSQL refuses it; so does sqlparser, or the
                        // comparison below.
                        i += 1;
                        continue;
                    }
                    let tag = &s[i..=tag_end];
                    let body = tag_end + 1;
                    let close = s[body..]
                        .windows(tag.len())
                        .position(|w| w == tag)
                        .ok_or_else(|| unterminated("a dollar-quoted string", i))?;
                    let end = body + close + tag.len();
                    spans.push(Span { kind: Kind::String, start: i, end });
                    i = end;
                }
                _ => i += 1,
            },
            b'0'..=b'9' => i = number(s, i),
            b'.' if next.is_some_and(|c| c.is_ascii_digit()) => i = number(s, i),
            _ if ident_start(b) => {
                let quote = next == Some(b'\'');
                if (b == b'u' || b == b'U') && next == Some(b'&') && matches!(s.get(i + 2), Some(b'\'' | b'"')) {
                    return Err(unicode_escapes(i));
                }
                if quote && matches!(b, b'e' | b'E') {
                    let end = quoted(s, i + 2, b'\'', true).ok_or_else(|| unterminated("an E'' string", i))?;
                    spans.push(Span { kind: Kind::String, start: i, end });
                    i = end;
                } else if quote && matches!(b, b'b' | b'B' | b'x' | b'X' | b'n' | b'N') {
                    let end = quoted(s, i + 2, b'\'', false).ok_or_else(|| unterminated("a string", i))?;
                    spans.push(Span { kind: Kind::String, start: i, end });
                    i = end;
                } else {
                    let start = i;
                    while s.get(i).copied().is_some_and(ident_cont) {
                        i += 1;
                    }
                    if s[start..i].eq_ignore_ascii_case(b"uescape") {
                        return Err(unicode_escapes(start));
                    }
                }
            }
            _ if OPERATOR_CHARS.contains(&b) => {
                // An operator ends where a comment starts inside it.
                i += 1;
                while let Some(&c) = s.get(i) {
                    let comment =
                        (c == b'-' && s.get(i + 1) == Some(&b'-')) || (c == b'/' && s.get(i + 1) == Some(&b'*'));
                    if !OPERATOR_CHARS.contains(&c) || comment {
                        break;
                    }
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    Ok(spans)
}

fn unicode_escapes(at: usize) -> String {
    format!(
        "Unicode escapes (U&\"…\", U&'…', UESCAPE, at byte {at}) are not accepted in queries: write the \
         name or the text with its characters as they are"
    )
}

/// The end (exclusive) of a quoted token whose body starts at `i`: a doubled
/// quote is one quote; with `backslash`, a backslash escapes the next byte.
fn quoted(s: &[u8], mut i: usize, quote: u8, backslash: bool) -> Option<usize> {
    loop {
        match s.get(i)? {
            b'\\' if backslash => i += 2,
            &c if c == quote => {
                if s.get(i + 1) == Some(&quote) {
                    i += 2;
                } else {
                    return Some(i + 1);
                }
            }
            _ => i += 1,
        }
    }
}

/// The end of a number: digits, a fraction, an exponent only when digits
/// follow it (`1e'x'` is 1 and an E'' string, as PostgreSQL 15 reads it).
fn number(s: &[u8], mut i: usize) -> usize {
    while s.get(i).is_some_and(|c| c.is_ascii_digit() || *c == b'_') {
        i += 1;
    }
    if s.get(i) == Some(&b'.') && s.get(i + 1) != Some(&b'.') {
        i += 1;
        while s.get(i).is_some_and(|c| c.is_ascii_digit() || *c == b'_') {
            i += 1;
        }
    }
    if matches!(s.get(i), Some(b'e' | b'E')) {
        let digits = if matches!(s.get(i + 1), Some(b'+' | b'-')) { i + 2 } else { i + 1 };
        if s.get(digits).is_some_and(u8::is_ascii_digit) {
            i = digits;
            while s.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
        }
    }
    i
}

/// Byte offsets of sqlparser's locations (line and column from 1, counted
/// in characters), all found in one pass.
pub struct Offsets {
    /// Per line, the byte offset of each column, and one past the last.
    lines: Vec<Vec<usize>>,
}

impl Offsets {
    pub fn new(text: &str) -> Offsets {
        let mut lines = vec![Vec::new()];
        for (offset, c) in text.char_indices() {
            lines.last_mut().unwrap().push(offset);
            if c == '\n' {
                lines.push(Vec::new());
            }
        }
        lines.last_mut().unwrap().push(text.len());
        Offsets { lines }
    }

    pub fn at(&self, at: Location) -> Option<usize> {
        let line = self.lines.get((at.line as usize).checked_sub(1)?)?;
        let column = (at.column as usize).checked_sub(1)?;
        line.get(column).copied().or_else(|| (column == line.len()).then(|| line.last().copied()).flatten())
    }
}

/// What sqlparser's token is, if it is opaque.
fn opaque(token: &Token) -> Option<Kind> {
    Some(match token {
        Token::Word(word) if word.quote_style.is_some() => Kind::QuotedIdentifier,
        Token::Word(_)
        | Token::Number(..)
        | Token::Char(_)
        | Token::Placeholder(_)
        | Token::EOF
        | Token::Whitespace(Whitespace::Space | Whitespace::Newline | Whitespace::Tab) => return None,
        Token::Whitespace(Whitespace::SingleLineComment { .. }) => Kind::LineComment,
        Token::Whitespace(Whitespace::MultiLineComment(_)) => Kind::BlockComment,
        Token::SingleQuotedString(_)
        | Token::DoubleQuotedString(_)
        | Token::DollarQuotedString(_)
        | Token::SingleQuotedByteStringLiteral(_)
        | Token::DoubleQuotedByteStringLiteral(_)
        | Token::NationalStringLiteral(_)
        | Token::EscapedStringLiteral(_)
        | Token::UnicodeStringLiteral(_)
        | Token::HexStringLiteral(_)
        | Token::TripleSingleQuotedString(_)
        | Token::TripleDoubleQuotedString(_)
        | Token::TripleSingleQuotedByteStringLiteral(_)
        | Token::TripleDoubleQuotedByteStringLiteral(_)
        | Token::SingleQuotedRawStringLiteral(_)
        | Token::DoubleQuotedRawStringLiteral(_)
        | Token::TripleSingleQuotedRawStringLiteral(_)
        | Token::TripleDoubleQuotedRawStringLiteral(_)
        | Token::QuoteDelimitedStringLiteral(_)
        | Token::NationalQuoteDelimitedStringLiteral(_) => Kind::String,
        // Operators and punctuation.
        _ => return None,
    })
}

/// Checks that sqlparser's `tokens` of `sql` hold exactly the opaque spans
/// PostgreSQL reads (`spans`, from [`scan`]).
pub fn agree(sql: &str, spans: &[Span], tokens: &[TokenWithSpan]) -> Result<(), String> {
    let offsets = Offsets::new(sql);
    let mut ours = spans.iter();
    let differs = |at: usize| {
        format!(
            "the SQL's strings, quoted names or comments cannot be read here as PostgreSQL reads them \
             (near byte {at}); write them plainly ('…' strings, \"…\" names, -- or /* */ comments)"
        )
    };
    for token in tokens {
        let Some(kind) = opaque(&token.token) else { continue };
        let start = offsets.at(token.span.start).ok_or_else(|| differs(0))?;
        let end = offsets.at(token.span.end).ok_or_else(|| differs(start))?;
        let Some(span) = ours.next() else { return Err(differs(start)) };
        // sqlparser's line comment takes its newline too.
        let same_end = span.end == end
            || (kind == Kind::LineComment && end == span.end + 1 && sql.as_bytes().get(span.end) == Some(&b'\n'));
        if span.kind != kind || span.start != start || !same_end {
            return Err(differs(span.start.min(start)));
        }
    }
    match ours.next() {
        Some(span) => Err(differs(span.start)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text of each opaque span, with its kind.
    fn spans(sql: &str) -> Vec<(Kind, &str)> {
        scan(sql).unwrap().iter().map(|s| (s.kind, &sql[s.start..s.end])).collect()
    }

    #[test]
    fn spans_are_found_by_postgresqls_rules() {
        use Kind::*;
        assert_eq!(
            spans("SELECT 'a''b', E'c\\'d', e'\\\\'"),
            [(String, "'a''b'"), (String, "E'c\\'d'"), (String, "e'\\\\'")]
        );
        assert_eq!(spans("SELECT '\\' , x"), [(String, "'\\'")]);
        assert_eq!(spans("SELECT $$a'b$$, $t$ $$ $t$, $1"), [(String, "$$a'b$$"), (String, "$t$ $$ $t$")]);
        // `$` continues a name: no dollar quote starts inside one.
        assert_eq!(spans("SELECT a$$b, x$y$"), []);
        assert_eq!(spans("SELECT \"a\"\"b\" FROM t"), [(QuotedIdentifier, "\"a\"\"b\"")]);
        assert_eq!(
            spans("SELECT 1 /* a /* b */ c */ -- d\r\n"),
            [(BlockComment, "/* a /* b */ c */"), (LineComment, "-- d")]
        );
        // A comment inside an operator ends it; `1e'x'` is 1 and an E'' string.
        assert_eq!(
            spans("SELECT 1 +--c\n1, 1e'x', b'01', X'ff', N'n'"),
            [(LineComment, "--c"), (String, "e'x'"), (String, "b'01'"), (String, "X'ff'"), (String, "N'n'")]
        );
        // Names that end in e, b, x, n, u are names: no string prefix.
        assert_eq!(spans("SELECT type'x', nu&'y'"), [(String, "'x'"), (String, "'y'")]);
    }

    #[test]
    fn unicode_escapes_and_open_tokens_are_refused() {
        for sql in ["SELECT U&\"a\"", "SELECT u&'a'", "SELECT 'a' UESCAPE '!'", "SELECT x FROM t WHERE uescape = 1"] {
            assert!(scan(sql).unwrap_err().contains("Unicode escapes"), "{sql}");
        }
        for sql in ["SELECT 'a", "SELECT E'a\\'", "SELECT \"a", "SELECT $q$ a", "SELECT /* /* */"] {
            assert!(scan(sql).unwrap_err().contains("is not closed"), "{sql}");
        }
    }
}
