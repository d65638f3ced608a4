//! The built-in English word list of the synthetic tasks.

use std::sync::LazyLock;

static WORDS: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    include_str!("words.txt")
        .lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect()
});

/// Distinct lowercase English words, sorted.
pub(crate) fn words() -> &'static [&'static str] {
    &WORDS
}
