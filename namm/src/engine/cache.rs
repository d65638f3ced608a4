use candle_core::{DType, Device, IndexOp, Tensor};

/// The KV cache of one layer: every KV head holds its own N tokens (same N for all heads),
/// in chronological order, keys after RoPE at their absolute positions.
///
/// Storage is preallocated `[H, capacity, D]` and filled in place, so a decode step writes
/// one row per head instead of copying the cache.
#[derive(Debug)]
pub(crate) struct LayerCache {
    k: Tensor,
    v: Tensor,
    len: usize,
    /// `[H][N]` absolute positions.
    positions: Vec<Vec<u32>>,
    max_capacity: usize,
}

/// First allocation: one policy period plus a chunk covers every sequence a policy prunes
/// at T = 512 without growing.
const INITIAL_CAPACITY: usize = 1024;

impl LayerCache {
    pub(crate) fn new(
        heads: usize,
        head_dim: usize,
        max_capacity: usize,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let cap = INITIAL_CAPACITY.min(max_capacity);
        Ok(Self {
            k: Tensor::zeros((heads, cap, head_dim), DType::F32, device)?,
            v: Tensor::zeros((heads, cap, head_dim), DType::F32, device)?,
            len: 0,
            positions: vec![Vec::with_capacity(cap); heads],
            max_capacity,
        })
    }

    /// Tokens per head, N.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn capacity(&self) -> usize {
        self.k.dim(1).unwrap_or(0)
    }

    pub(crate) fn positions(&self) -> &[Vec<u32>] {
        &self.positions
    }

    /// Appends `k, v: [H, c, D]` for the tokens at positions `pos0..pos0 + c`.
    pub(crate) fn append(
        &mut self,
        k: &Tensor,
        v: &Tensor,
        pos0: usize,
    ) -> candle_core::Result<()> {
        let c = k.dim(1)?;
        if self.len + c > self.capacity() {
            self.grow(self.len + c)?;
        }
        self.k.slice_set(k, 1, self.len)?;
        self.v.slice_set(v, 1, self.len)?;
        for p in &mut self.positions {
            p.extend((pos0..pos0 + c).map(|x| x as u32));
        }
        self.len += c;
        Ok(())
    }

    fn grow(&mut self, needed: usize) -> candle_core::Result<()> {
        let cap = (self.capacity() * 2)
            .max(needed)
            .min(self.max_capacity.max(needed));
        let (h, _, d) = self.k.dims3()?;
        let resize = |t: &Tensor| -> candle_core::Result<Tensor> {
            let fresh = Tensor::zeros((h, cap, d), DType::F32, t.device())?;
            fresh.slice_set(&t.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
            Ok(fresh)
        };
        self.k = resize(&self.k)?;
        self.v = resize(&self.v)?;
        Ok(())
    }

    /// `[H, N, D]` view of the cached keys (no copy).
    pub(crate) fn keys(&self) -> candle_core::Result<Tensor> {
        self.k.narrow(1, 0, self.len)
    }

    /// `[H, N, D]` view of the cached values (no copy).
    pub(crate) fn values(&self) -> candle_core::Result<Tensor> {
        self.v.narrow(1, 0, self.len)
    }

    /// `[H][N]` L2 norms of the cached keys.
    pub(crate) fn key_norms(&self) -> candle_core::Result<Vec<f32>> {
        self.keys()?.sqr()?.sum(2)?.sqrt()?.flatten_all()?.to_vec1()
    }

    /// Keeps, for head h, the tokens `kept[h]` (ascending indices into `0..N`, the same count
    /// for every head), compacting them to the front of the storage in place.
    pub(crate) fn gather(&mut self, kept: &[Vec<usize>]) -> candle_core::Result<()> {
        let count = kept.first().map_or(0, Vec::len);
        let device = self.k.device().clone();
        let mut ks = Vec::with_capacity(kept.len());
        let mut vs = Vec::with_capacity(kept.len());
        for (h, idx) in kept.iter().enumerate() {
            let ids: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
            let ids = Tensor::new(ids.as_slice(), &device)?;
            ks.push(self.k.i(h)?.narrow(0, 0, self.len)?.index_select(&ids, 0)?);
            vs.push(self.v.i(h)?.narrow(0, 0, self.len)?.index_select(&ids, 0)?);
            self.positions[h] = idx.iter().map(|&i| self.positions[h][i]).collect();
        }
        if count > 0 {
            self.k.slice_set(&Tensor::stack(&ks, 0)?, 1, 0)?;
            self.v.slice_set(&Tensor::stack(&vs, 0)?, 1, 0)?;
        }
        self.len = count;
        Ok(())
    }

    /// Bytes of the live K and V entries (f32), not of the allocation.
    pub(crate) fn live_bytes(&self) -> usize {
        let (h, _, d) = self.k.dims3().unwrap_or((0, 0, 0));
        2 * h * self.len * d * 4
    }

    /// A copy that shares no storage: appends to one never show in the other.
    pub(crate) fn deep_clone(&self) -> candle_core::Result<Self> {
        Ok(Self {
            k: self.k.copy()?,
            v: self.v.copy()?,
            len: self.len,
            positions: self.positions.clone(),
            max_capacity: self.max_capacity,
        })
    }
}
