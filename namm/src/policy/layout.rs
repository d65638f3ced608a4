//! Parameter layout of the NAMM scoring network (spec §3): where each weight of θ lives.
//! Sizes derive from the feature dimension, BAM's hidden size and its bias flag, so the
//! 2026-parameter base configuration is [`BamLayout::BASE`] rather than a second code path.

use super::features::FEATURE_DIM;

/// Shape of the BAM network; every matrix in θ is input-major (`W[i][o]` at `i·out + o`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BamLayout {
    /// Query/key/value width of BAM's single attention head.
    pub hidden: usize,
    /// Whether the qkv and output projections carry biases.
    pub bias: bool,
}

/// Offsets of every block of θ, inclusive-exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BamOffsets {
    pub w_qkv: usize,
    pub b_qkv: Option<usize>,
    pub w_o: usize,
    pub b_o: Option<usize>,
    pub w_s: usize,
    pub b_s: usize,
    pub total: usize,
}

impl BamLayout {
    /// The evolved i1/i2/i3 configuration: hidden 32 with biases, 4172 parameters.
    pub const I1: BamLayout = BamLayout {
        hidden: 32,
        bias: true,
    };
    /// `base_bam.yaml` as is: hidden 16 without biases, 2026 parameters.
    pub const BASE: BamLayout = BamLayout {
        hidden: 16,
        bias: false,
    };

    /// Width of the output projection: residual and multiplicative halves.
    pub const fn out_dim(&self) -> usize {
        2 * FEATURE_DIM
    }

    pub const fn offsets(&self) -> BamOffsets {
        let qkv = 3 * self.hidden;
        let w_qkv = 0;
        let mut at = FEATURE_DIM * qkv;
        let b_qkv = if self.bias {
            let o = at;
            at += qkv;
            Some(o)
        } else {
            None
        };
        let w_o = at;
        at += self.hidden * self.out_dim();
        let b_o = if self.bias {
            let o = at;
            at += self.out_dim();
            Some(o)
        } else {
            None
        };
        let w_s = at;
        at += FEATURE_DIM;
        let b_s = at;
        at += 1;
        BamOffsets {
            w_qkv,
            b_qkv,
            w_o,
            b_o,
            w_s,
            b_s,
            total: at,
        }
    }

    pub const fn param_count(&self) -> usize {
        self.offsets().total
    }

    /// The layout whose parameter count is `count`, among the known ones.
    pub fn for_param_count(count: usize) -> Option<BamLayout> {
        [BamLayout::I1, BamLayout::BASE]
            .into_iter()
            .find(|l| l.param_count() == count)
    }
}

/// Parameters of the i1 layout, the default of every run.
pub const PARAM_COUNT: usize = BamLayout::I1.param_count();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_layouts_have_the_spec_sizes() {
        assert_eq!(BamLayout::I1.param_count(), 4172);
        assert_eq!(BamLayout::BASE.param_count(), 2026);
        let o = BamLayout::I1.offsets();
        assert_eq!(
            (o.b_qkv, o.w_o, o.b_o, o.w_s, o.b_s),
            (Some(2400), 2496, Some(4096), 4146, 4171)
        );
        assert_eq!(BamLayout::for_param_count(2026), Some(BamLayout::BASE));
        assert_eq!(BamLayout::for_param_count(17), None);
    }
}
