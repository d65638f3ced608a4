//! Python's `difflib.SequenceMatcher.ratio()` and fuzzywuzzy's `fuzz.ratio`, which LongBench's
//! `code_sim_score` calls.
//!
//! fuzzywuzzy uses python-Levenshtein's `StringMatcher` when that package is installed and
//! difflib otherwise; LongBench's requirements list only `fuzzywuzzy`, so the difflib path is
//! the one a plain LongBench install runs, and the one mirrored here (the two can differ by a
//! point or two on long strings). Sequences are compared by Unicode code point, as Python's
//! `str` does.

use std::collections::HashMap;

/// `difflib.SequenceMatcher(None, a, b).ratio()`: 2·M / (len(a) + len(b)), M the total size of
/// the matching blocks, 1.0 when both are empty. Includes difflib's "autojunk" heuristic
/// (for len(b) ≥ 200, characters of `b` occurring more than len(b)/100 + 1 times are not used
/// to start a match), which changes results on long strings.
pub fn sequence_matcher_ratio(a: &str, b: &str) -> f64 {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let length = a.len() + b.len();
    if length == 0 {
        return 1.0;
    }
    let matches = Matcher::new(&a, &b).matching_characters();
    2.0 * matches as f64 / length as f64
}

/// fuzzywuzzy `fuzz.ratio(s1, s2)` on the difflib path: 100 for equal strings (even empty ones),
/// 0 if either is empty, else `int(round(100 * ratio))` with Python's round-half-to-even.
pub fn fuzz_ratio(s1: &str, s2: &str) -> u32 {
    if s1 == s2 {
        return 100;
    }
    if s1.is_empty() || s2.is_empty() {
        return 0;
    }
    (100.0 * sequence_matcher_ratio(s1, s2)).round_ties_even() as u32
}

struct Matcher<'a> {
    a: &'a [char],
    b: &'a [char],
    b2j: HashMap<char, Vec<usize>>,
}

impl<'a> Matcher<'a> {
    fn new(a: &'a [char], b: &'a [char]) -> Self {
        let mut b2j: HashMap<char, Vec<usize>> = HashMap::new();
        for (j, &c) in b.iter().enumerate() {
            b2j.entry(c).or_default().push(j);
        }
        if b.len() >= 200 {
            let ntest = b.len() / 100 + 1;
            b2j.retain(|_, positions| positions.len() <= ntest);
        }
        Matcher { a, b, b2j }
    }

    /// Sum of the sizes of `get_matching_blocks()`; the order in which difflib visits the
    /// sub-ranges does not change the sum, so a plain stack does.
    fn matching_characters(&self) -> usize {
        let mut total = 0;
        let mut queue = vec![(0, self.a.len(), 0, self.b.len())];
        while let Some((alo, ahi, blo, bhi)) = queue.pop() {
            let (i, j, k) = self.find_longest_match(alo, ahi, blo, bhi);
            if k > 0 {
                total += k;
                if alo < i && blo < j {
                    queue.push((alo, i, blo, j));
                }
                if i + k < ahi && j + k < bhi {
                    queue.push((i + k, ahi, j + k, bhi));
                }
            }
        }
        total
    }

    /// `SequenceMatcher.find_longest_match` without a junk function: the earliest longest
    /// block among non-popular characters, then extended over equal (popular) neighbours.
    fn find_longest_match(
        &self,
        alo: usize,
        ahi: usize,
        blo: usize,
        bhi: usize,
    ) -> (usize, usize, usize) {
        let (a, b) = (self.a, self.b);
        let (mut besti, mut bestj, mut bestsize) = (alo, blo, 0);
        let mut j2len: HashMap<usize, usize> = HashMap::new();
        for (i, c) in a.iter().enumerate().take(ahi).skip(alo) {
            let mut new_j2len = HashMap::new();
            if let Some(positions) = self.b2j.get(c) {
                for &j in positions {
                    if j < blo {
                        continue;
                    }
                    if j >= bhi {
                        break;
                    }
                    let k = j.checked_sub(1).and_then(|p| j2len.get(&p)).unwrap_or(&0) + 1;
                    new_j2len.insert(j, k);
                    if k > bestsize {
                        besti = i + 1 - k;
                        bestj = j + 1 - k;
                        bestsize = k;
                    }
                }
            }
            j2len = new_j2len;
        }
        while besti > alo && bestj > blo && a[besti - 1] == b[bestj - 1] {
            besti -= 1;
            bestj -= 1;
            bestsize += 1;
        }
        while besti + bestsize < ahi
            && bestj + bestsize < bhi
            && a[besti + bestsize] == b[bestj + bestsize]
        {
            bestsize += 1;
        }
        (besti, bestj, bestsize)
    }
}
