//! Per-head top-k selection shared by NAMM (spec §7) and the baselines. Ties are broken
//! towards the lower (older) index, so every selection is deterministic.

use std::cmp::Ordering;

use super::real::Real;

/// NaN ranks lowest, so a broken score never protects a token.
#[inline]
fn rank_key<T: Real>(s: T) -> T {
    if s.is_nan() {
        T::NEG_INFINITY
    } else {
        s
    }
}

/// The `k` highest-scoring indices of `scores` (ties: lower index first), ascending.
/// The newest token (last index) is always among them when `k ≥ 1`.
pub fn top_k<T: Real>(scores: &[T], k: usize) -> Vec<usize> {
    let n = scores.len();
    let k = k.min(n);
    if k == n {
        return (0..n).collect();
    }
    if k == 0 {
        return Vec::new();
    }
    let key = |j: usize| {
        if j + 1 == n {
            T::INFINITY
        } else {
            rank_key(scores[j])
        }
    };
    let mut idx: Vec<usize> = (0..n).collect();
    let order = |a: &usize, b: &usize| {
        key(*b)
            .partial_cmp(&key(*a))
            .unwrap_or(Ordering::Equal)
            .then(a.cmp(b))
    };
    idx.select_nth_unstable_by(k - 1, order);
    idx.truncate(k);
    idx.sort_unstable();
    idx
}

/// Spec §7: tokens with score ≥ 0 (and the newest) are above threshold; K is the largest
/// above-threshold count over the heads, and every head keeps its K best tokens.
/// `scores` is `[n_heads][n]`.
pub fn binary_select<T: Real>(scores: &[T], n_heads: usize, n: usize) -> Vec<Vec<usize>> {
    capped_select(scores, n_heads, n, None)
}

/// [`binary_select`] with K at most `cap` (a memory budget): every head keeps its `min(K, cap)`
/// best tokens, so below-threshold tokens are the first to go and the kept count never exceeds
/// the budget.
pub fn capped_select<T: Real>(
    scores: &[T],
    n_heads: usize,
    n: usize,
    cap: Option<usize>,
) -> Vec<Vec<usize>> {
    let k = (0..n_heads)
        .map(|h| {
            let row = &scores[h * n..(h + 1) * n];
            let above = row[..n.saturating_sub(1)]
                .iter()
                .filter(|&&s| s >= T::ZERO)
                .count();
            above + usize::from(n > 0)
        })
        .max()
        .unwrap_or(0)
        .min(cap.unwrap_or(usize::MAX));
    (0..n_heads)
        .map(|h| top_k(&scores[h * n..(h + 1) * n], k))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_prefers_high_scores_then_older_tokens_and_forces_the_newest() {
        let s = [0.5f32, 0.9, 0.5, 0.5, -3.0];
        assert_eq!(top_k(&s, 3), vec![0, 1, 4]);
        assert_eq!(top_k(&s, 1), vec![4]);
        assert_eq!(top_k(&s, 9), vec![0, 1, 2, 3, 4]);
        assert_eq!(top_k(&[f32::NAN, -1.0, 0.0], 2), vec![1, 2]);
    }

    #[test]
    fn binary_select_uses_the_largest_count_for_every_head() {
        // head 0: two tokens ≥ 0 plus the newest; head 1: only the newest.
        let s = [
            0.0f64, -1.0, 2.0, -5.0, /* head 1 */ -0.1, -0.2, -0.3, -9.0,
        ];
        let kept = binary_select(&s, 2, 4);
        assert_eq!(kept, vec![vec![0, 2, 3], vec![0, 1, 3]]);
        let zeros = [0.0f32; 6];
        assert_eq!(binary_select(&zeros, 2, 3), vec![vec![0, 1, 2]; 2]);
    }

    #[test]
    fn a_cap_evicts_below_threshold_tokens_first_and_never_keeps_more() {
        // head 0 has four tokens ≥ 0 (the newest included); a cap of 3 keeps its three best.
        let s = [
            0.5f32, -1.0, 2.0, 0.1, 7.0, /* head 1 */ -0.1, -0.2, -0.3, -0.4, -9.0,
        ];
        let kept = capped_select(&s, 2, 5, Some(3));
        assert_eq!(kept, vec![vec![0, 2, 4], vec![0, 1, 4]]);
        // A cap above the threshold's count changes nothing.
        assert_eq!(capped_select(&s, 2, 5, Some(5)), binary_select(&s, 2, 5));
        // Ties at the boundary go to the older token.
        let ties = [0.0f32; 4];
        assert_eq!(capped_select(&ties, 1, 4, Some(2)), vec![vec![0, 3]]);
    }
}
