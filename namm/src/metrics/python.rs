//! The few Python string semantics the ported metrics depend on.

/// Python's `str.isspace()`: Unicode White_Space plus the ASCII information separators
/// U+001C..U+001F, which Python also treats as whitespace (Rust does not).
pub(crate) fn is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `s.split()` without arguments: runs of whitespace separate, no empty pieces.
pub(crate) fn split_whitespace(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_space).filter(|piece| !piece.is_empty())
}

/// Python's `string.punctuation`.
pub(crate) fn is_ascii_punctuation(c: char) -> bool {
    c.is_ascii_punctuation()
}
