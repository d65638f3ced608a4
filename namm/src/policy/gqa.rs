//! Grouped-query attention reduction (spec §2.3): the policy sees, per KV head, the mean of
//! the attention of the query heads that share it.

use super::error::PolicyError;
use super::real::Real;

/// `attn` is `[groups·H][rows][cols]` (query heads in HF `repeat_kv` order: KV head h owns
/// query heads h·groups … h·groups+groups−1); returns `[H][rows][cols]`.
pub fn gqa_mean<T: Real>(
    attn: &[T],
    query_heads: usize,
    groups: usize,
) -> Result<Vec<T>, PolicyError> {
    if groups == 0 || query_heads == 0 || query_heads % groups != 0 {
        return Err(PolicyError::Input {
            field: "kv_groups",
            reason: format!("{query_heads} query heads cannot form groups of {groups}"),
        });
    }
    if attn.len() % query_heads != 0 {
        return Err(PolicyError::Input {
            field: "attn",
            reason: format!(
                "{} values do not split into {query_heads} heads",
                attn.len()
            ),
        });
    }
    let per_head = attn.len() / query_heads;
    let inv = T::from_f64(1.0 / groups as f64);
    let mut out = vec![T::ZERO; per_head * query_heads / groups];
    for (h, dst) in out.chunks_exact_mut(per_head).enumerate() {
        for g in 0..groups {
            let src = &attn[(h * groups + g) * per_head..(h * groups + g + 1) * per_head];
            for (d, &s) in dst.iter_mut().zip(src) {
                *d += s;
            }
        }
        dst.iter_mut().for_each(|d| *d *= inv);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_consecutive_query_heads() {
        let attn = [1.0f64, 2.0, 3.0, 4.0, 10.0, 20.0, 30.0, 40.0];
        assert_eq!(gqa_mean(&attn, 4, 2).unwrap(), vec![2.0, 3.0, 20.0, 30.0]);
        assert_eq!(gqa_mean(&attn, 4, 1).unwrap(), attn.to_vec());
        assert!(gqa_mean(&attn, 4, 3).is_err());
    }
}
