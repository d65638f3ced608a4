use std::str::FromStr;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Module, Tensor};

/// How the matrices of the transformer blocks and the output head are held in memory.
/// Norm weights and the token embedding table are always f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// As stored in the GGUF file (Q4_1 for the default model): smallest, and the path that
    /// matches candle's `quantized_llama`; slow on CPU for types without a SIMD kernel.
    #[default]
    Gguf,
    /// Dequantised to f32 (4 bytes per weight): gemm, fastest for multi-token chunks.
    F32,
    /// Re-quantised to Q8_0 (8.5 bits per weight): fast single-token decoding.
    Q8_0,
    /// Both: f32 for chunks of more than one token (prefill), Q8_0 for single-token decode
    /// steps. Holds both copies (~5× the memory of Q8_0) to get the faster path for each.
    F32Q8_0,
}

impl WeightFormat {
    pub const ALL: [WeightFormat; 4] = [Self::Gguf, Self::F32, Self::Q8_0, Self::F32Q8_0];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gguf => "gguf",
            Self::F32 => "f32",
            Self::Q8_0 => "q8_0",
            Self::F32Q8_0 => "f32+q8_0",
        }
    }
}

impl std::fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for WeightFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| {
                format!("unknown weight format {s:?} (expected gguf, f32, q8_0 or f32+q8_0)")
            })
    }
}

/// `y = x · Wᵀ` without bias, with one matrix for multi-row inputs and one for single rows
/// (the same one unless the format is [`WeightFormat::F32Q8_0`]).
#[derive(Debug, Clone)]
pub struct Linear {
    many: QMatMul,
    one: QMatMul,
    bytes: usize,
}

impl Linear {
    /// `dequantized`: `w` already dequantised (the tied embedding table), to share its
    /// storage instead of holding a second f32 copy.
    pub(crate) fn new(
        w: Arc<QTensor>,
        format: WeightFormat,
        dequantized: Option<&Tensor>,
    ) -> candle_core::Result<Self> {
        let dev = w.device();
        let deq = || -> candle_core::Result<Tensor> {
            match dequantized {
                Some(t) => Ok(t.clone()),
                None => w.dequantize(&dev),
            }
        };
        let f32 = || -> candle_core::Result<QMatMul> { Ok(QMatMul::Tensor(deq()?)) };
        let q8 = || -> candle_core::Result<QMatMul> {
            if w.dtype() == GgmlDType::Q8_0 {
                return QMatMul::from_arc(w.clone());
            }
            let q = QTensor::quantize(&deq()?, GgmlDType::Q8_0)?;
            QMatMul::from_qtensor(q)
        };
        let (many, one) = match format {
            WeightFormat::Gguf => {
                let m = QMatMul::from_arc(w.clone())?;
                (m.clone(), m)
            }
            WeightFormat::F32 => {
                let m = f32()?;
                (m.clone(), m)
            }
            WeightFormat::Q8_0 => {
                let m = q8()?;
                (m.clone(), m)
            }
            WeightFormat::F32Q8_0 => (f32()?, q8()?),
        };
        let size = |m: &QMatMul| match m {
            QMatMul::QTensor(q) => q.storage_size_in_bytes(),
            QMatMul::Tensor(_) | QMatMul::TensorF16(_) if dequantized.is_some() => 0,
            QMatMul::Tensor(t) | QMatMul::TensorF16(t) => {
                t.elem_count() * t.dtype().size_in_bytes()
            }
        };
        let bytes = match format {
            WeightFormat::F32Q8_0 => size(&many) + size(&one),
            _ => size(&many),
        };
        Ok(Self { many, one, bytes })
    }

    /// `x`: `[rows, in]` → `[rows, out]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if x.dim(0)? == 1 {
            self.one.forward(x)
        } else {
            self.many.forward(x)
        }
    }

    /// Bytes of weight storage this layer owns (both copies for [`WeightFormat::F32Q8_0`];
    /// an f32 copy shared with the embedding table is not counted).
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}
