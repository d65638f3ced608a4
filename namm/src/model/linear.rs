use std::str::FromStr;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Module, Tensor};

use super::int8::{Int8Matrix, Int8Rows};
use super::q4::Q4Matrix;
use super::q8::{Q8Matrix, Q8Vector};

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
    /// Re-quantised to 8 bits (blocks of 32 with one scale): candle's Q8_0 kernel for
    /// multi-token chunks and, on CPU, this crate's matrix × vector kernel (f32 scales) for
    /// single-token decode steps; both copies are held (~2× 8.5 bits per weight).
    Q8_0,
    /// f32 for chunks of more than one token (prefill), the 8-bit matrix × vector kernel for
    /// single-token decode steps, ~5 bytes per weight.
    F32Q8_0,
    /// f32 for chunks of more than one token (prefill); for single-token decode steps this
    /// crate's matrix × vector kernels on the GGUF's own blocks (Q4_1 and Q8_0 as stored,
    /// other types re-quantised to Q8_0): the fastest on CPU, ~4.6 bytes per weight.
    F32Gguf,
    /// On CPU, the GGUF's own blocks (Q4_1 and Q8_0, one byte per weight; other types as
    /// [`WeightFormat::F32Gguf`] holds them) in 8-bit integer products against activations
    /// quantised per block of 32 (AVX-512 VNNI where the CPU has it), for chunks and decode
    /// steps alike: ~1.3 bytes per weight.
    Int8Gguf,
}

/// The format the binaries load by default: the fastest on a CPU (see `README.md`,
/// Benchmarks), with the memory of the file's own blocks.
pub const DEFAULT_FORMAT: &str = "int8+gguf";

impl WeightFormat {
    pub const ALL: [WeightFormat; 6] = [
        Self::Gguf,
        Self::F32,
        Self::Q8_0,
        Self::F32Q8_0,
        Self::F32Gguf,
        Self::Int8Gguf,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gguf => "gguf",
            Self::F32 => "f32",
            Self::Q8_0 => "q8_0",
            Self::F32Q8_0 => "f32+q8_0",
            Self::F32Gguf => "f32+gguf",
            Self::Int8Gguf => "int8+gguf",
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
                format!(
                    "unknown weight format {s:?} (expected gguf, f32, q8_0, f32+q8_0, f32+gguf or int8+gguf)"
                )
            })
    }
}

/// `y = x · Wᵀ` without bias, with one matrix for multi-row inputs and one for single rows:
/// the same one, except that the Q8_0 formats use this crate's 8-bit matrix × vector kernel
/// on CPU for single rows (decode steps).
#[derive(Debug, Clone)]
pub struct Linear {
    many: Many,
    one: Single,
    bytes: usize,
}

#[derive(Debug, Clone)]
enum Many {
    Candle(QMatMul),
    Int8(Int8Matrix),
}

#[derive(Debug, Clone)]
enum Single {
    Same,
    Q8(Q8Matrix),
    Q4(Q4Matrix),
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
        let q8_rows = || -> candle_core::Result<Single> {
            if !dev.is_cpu() {
                return Ok(Single::Same);
            }
            let t = deq()?;
            let (rows, cols) = t.dims2()?;
            let data = t.flatten_all()?.to_vec1::<f32>()?;
            Ok(Q8Matrix::quantize(&data, rows, cols).map_or(Single::Same, Single::Q8))
        };
        let stored_rows = || -> candle_core::Result<Single> {
            if !dev.is_cpu() {
                return Ok(Single::Same);
            }
            let (rows, cols) = w.shape().dims2()?;
            match w.dtype() {
                GgmlDType::Q4_1 => Ok(Q4Matrix::from_q4_1_bytes(&w.data()?, rows, cols)
                    .map_or(Single::Same, Single::Q4)),
                GgmlDType::Q8_0 => Ok(Q8Matrix::from_q8_0_bytes(&w.data()?, rows, cols)
                    .map_or(Single::Same, Single::Q8)),
                _ => q8_rows(),
            }
        };
        let q8 = || -> candle_core::Result<QMatMul> {
            if w.dtype() == GgmlDType::Q8_0 {
                return QMatMul::from_arc(w.clone());
            }
            let q = QTensor::quantize(&deq()?, GgmlDType::Q8_0)?;
            QMatMul::from_qtensor(q)
        };
        let int8 = || -> candle_core::Result<Many> {
            let (rows, cols) = w.shape().dims2()?;
            let packed = match w.dtype() {
                _ if !dev.is_cpu() => None,
                GgmlDType::Q4_1 => Int8Matrix::from_q4_1_bytes(&w.data()?, rows, cols),
                GgmlDType::Q8_0 => Int8Matrix::from_q8_0_bytes(&w.data()?, rows, cols),
                _ => None,
            };
            Ok(match packed {
                Some(m) => Many::Int8(m),
                None => Many::Candle(f32()?),
            })
        };
        let candle = |m: candle_core::Result<QMatMul>| m.map(Many::Candle);
        let (many, one) = match format {
            WeightFormat::Gguf => (candle(QMatMul::from_arc(w.clone()))?, Single::Same),
            WeightFormat::F32 => (candle(f32())?, Single::Same),
            WeightFormat::Q8_0 => (candle(q8())?, q8_rows()?),
            WeightFormat::F32Q8_0 => (candle(f32())?, q8_rows()?),
            WeightFormat::F32Gguf => (candle(f32())?, stored_rows()?),
            WeightFormat::Int8Gguf => match int8()? {
                // Decode steps run the same kernel: a row's numbers do not depend on the others.
                m @ Many::Int8(_) => (m, Single::Same),
                m => (m, stored_rows()?),
            },
        };
        let bytes = match &many {
            Many::Int8(m) => m.bytes(),
            Many::Candle(QMatMul::QTensor(q)) => q.storage_size_in_bytes(),
            Many::Candle(QMatMul::Tensor(_) | QMatMul::TensorF16(_)) if dequantized.is_some() => 0,
            Many::Candle(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => {
                t.elem_count() * t.dtype().size_in_bytes()
            }
        } + match &one {
            Single::Same => 0,
            Single::Q8(m) => m.bytes(),
            Single::Q4(m) => m.bytes(),
        };
        Ok(Self { many, one, bytes })
    }

    /// `x`: `[rows, in]` → `[rows, out]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if x.dim(0)? == 1 {
            self.forward_each(x)
        } else {
            self.forward_many(x)
        }
    }

    fn forward_many(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match &self.many {
            Many::Candle(m) => m.forward(x),
            Many::Int8(m) => {
                let (rows, cols) = x.dims2()?;
                let data = x.flatten_all()?.to_vec1::<f32>()?;
                let y = m.matmul(&Int8Rows::quantize(&data, cols));
                Tensor::from_vec(y, (rows, m.rows()), x.device())
            }
        }
    }

    /// `x`: `[rows, in]` → `[rows, out]`, every row computed as [`Linear::forward`] computes a
    /// single row (a decode step): a batch of decode steps gets the same numbers as one step
    /// at a time, the weights read once for all of them.
    pub fn forward_each(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (rows, cols) = x.dims2()?;
        let quantized = || -> candle_core::Result<Vec<Q8Vector>> {
            let data = x.flatten_all()?.to_vec1::<f32>()?;
            Ok(data.chunks_exact(cols).map(Q8Vector::quantize).collect())
        };
        // The kernels write [out][rows]: weight-row major.
        let (out, y) = match &self.one {
            Single::Same => return self.forward_many(x),
            Single::Q8(m) => {
                let mut y = vec![0f32; m.rows() * rows];
                m.gemv_many(&quantized()?, &mut y);
                (m.rows(), y)
            }
            Single::Q4(m) => {
                let mut y = vec![0f32; m.rows() * rows];
                m.gemv_many(&quantized()?, &mut y);
                (m.rows(), y)
            }
        };
        let t = Tensor::from_vec(y, (out, rows), x.device())?;
        if rows == 1 {
            t.reshape((1, out))
        } else {
            t.t()?.contiguous()
        }
    }

    /// Bytes of weight storage this layer owns (both copies for [`WeightFormat::F32Q8_0`];
    /// an f32 copy shared with the embedding table is not counted).
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}
