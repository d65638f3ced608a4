//! Models that need no download: `random:SHAPE[:seed=N]` synthesises, in memory, a GGUF of a
//! known shape with seeded random weights (quantised to Q4_1 like the default model, so the
//! same kernels run) and a byte-level vocabulary. Its answers are noise; its speed, memory and
//! CPU/GPU agreement are those of the real model of that shape.

use std::fmt;
use std::io::Cursor;
use std::str::FromStr;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

/// Prefix of a model source that names a synthesised model instead of a file.
pub const RANDOM_PREFIX: &str = "random:";

/// Standard deviation of every synthesised matrix entry (the usual llama initialisation).
const INIT_STD: f32 = 0.02;

/// The shapes a random model can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RandomShape {
    /// SmolLM2-135M: 30 layers, hidden 576, 9 query and 3 KV heads, vocabulary 49152.
    Smollm2_135m,
    /// 2 layers, hidden 64, 4 query and 2 KV heads, vocabulary 512: for tests.
    Tiny,
}

struct Dims {
    layers: usize,
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    intermediate: usize,
    vocab: usize,
    context: usize,
    rope_base: f32,
}

impl RandomShape {
    const ALL: [(&'static str, RandomShape); 2] = [
        ("smollm2-135m", RandomShape::Smollm2_135m),
        ("tiny", RandomShape::Tiny),
    ];

    fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, s)| *s == self)
            .map_or("", |(n, _)| n)
    }

    fn dims(self) -> Dims {
        match self {
            RandomShape::Smollm2_135m => Dims {
                layers: 30,
                hidden: 576,
                heads: 9,
                kv_heads: 3,
                intermediate: 1536,
                vocab: 49152,
                context: 8192,
                rope_base: 100_000.0,
            },
            RandomShape::Tiny => Dims {
                layers: 2,
                hidden: 64,
                heads: 4,
                kv_heads: 2,
                intermediate: 128,
                vocab: 512,
                context: 8192,
                rope_base: 10_000.0,
            },
        }
    }
}

/// A synthesised model: its shape and the seed of its weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RandomModel {
    pub shape: RandomShape,
    pub seed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("model {spec:?}: {reason}")]
pub struct RandomModelError {
    pub spec: String,
    pub reason: String,
}

impl FromStr for RandomModel {
    type Err = RandomModelError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let bad = |reason: String| RandomModelError {
            spec: spec.to_string(),
            reason,
        };
        let rest = spec
            .strip_prefix(RANDOM_PREFIX)
            .ok_or_else(|| bad(format!("expected {RANDOM_PREFIX}SHAPE[:seed=N]")))?;
        let mut parts = rest.split(':');
        let name = parts.next().unwrap_or_default();
        let shapes = || {
            RandomShape::ALL
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let shape = RandomShape::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| *s)
            .ok_or_else(|| bad(format!("unknown shape {name:?}; known: {}", shapes())))?;
        let mut seed = 0;
        for part in parts {
            let value = part
                .strip_prefix("seed=")
                .ok_or_else(|| bad(format!("unknown option {part:?}; expected seed=N")))?;
            seed = value
                .parse()
                .map_err(|_| bad(format!("seed {value:?} is not a non-negative integer")))?;
        }
        Ok(Self { shape, seed })
    }
}

impl fmt::Display for RandomModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{RANDOM_PREFIX}{}:seed={}", self.shape.name(), self.seed)
    }
}

impl RandomModel {
    /// The model as the bytes of a GGUF file: the same seed always gives the same bytes, so
    /// their sha256 names the model as a file's would.
    pub fn gguf_bytes(&self) -> candle_core::Result<Vec<u8>> {
        let d = self.shape.dims();
        let head_dim = d.hidden / d.heads;
        let kv = d.kv_heads * head_dim;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.seed);
        let normal = Normal::new(0.0, INIT_STD).map_err(candle_core::Error::wrap)?;
        let mut matrix = |rows: usize, cols: usize| -> candle_core::Result<QTensor> {
            let data: Vec<f32> = (0..rows * cols).map(|_| normal.sample(&mut rng)).collect();
            QTensor::quantize(
                &Tensor::from_vec(data, (rows, cols), &Device::Cpu)?,
                GgmlDType::Q4_1,
            )
        };
        let ones = |n: usize| -> candle_core::Result<QTensor> {
            QTensor::quantize(
                &Tensor::ones(n, candle_core::DType::F32, &Device::Cpu)?,
                GgmlDType::F32,
            )
        };
        let mut tensors = vec![("token_embd.weight".to_string(), matrix(d.vocab, d.hidden)?)];
        for i in 0..d.layers {
            let b = |name: &str| format!("blk.{i}.{name}.weight");
            tensors.push((b("attn_norm"), ones(d.hidden)?));
            tensors.push((b("attn_q"), matrix(d.hidden, d.hidden)?));
            tensors.push((b("attn_k"), matrix(kv, d.hidden)?));
            tensors.push((b("attn_v"), matrix(kv, d.hidden)?));
            tensors.push((b("attn_output"), matrix(d.hidden, d.hidden)?));
            tensors.push((b("ffn_norm"), ones(d.hidden)?));
            tensors.push((b("ffn_gate"), matrix(d.intermediate, d.hidden)?));
            tensors.push((b("ffn_up"), matrix(d.intermediate, d.hidden)?));
            tensors.push((b("ffn_down"), matrix(d.hidden, d.intermediate)?));
        }
        tensors.push(("output_norm.weight".to_string(), ones(d.hidden)?));

        let (tokens, types) = vocabulary(d.vocab);
        let u32v = |n: usize| gguf_file::Value::U32(n as u32);
        let metadata = vec![
            ("general.architecture", gguf_file::Value::String("llama".into())),
            ("general.name", gguf_file::Value::String(self.to_string())),
            ("llama.block_count", u32v(d.layers)),
            ("llama.context_length", u32v(d.context)),
            ("llama.embedding_length", u32v(d.hidden)),
            ("llama.feed_forward_length", u32v(d.intermediate)),
            ("llama.attention.head_count", u32v(d.heads)),
            ("llama.attention.head_count_kv", u32v(d.kv_heads)),
            ("llama.rope.dimension_count", u32v(head_dim)),
            ("llama.rope.freq_base", gguf_file::Value::F32(d.rope_base)),
            ("llama.attention.layer_norm_rms_epsilon", gguf_file::Value::F32(1e-5)),
            ("tokenizer.ggml.model", gguf_file::Value::String("gpt2".into())),
            ("tokenizer.ggml.pre", gguf_file::Value::String("gpt2".into())),
            (
                "tokenizer.ggml.tokens",
                gguf_file::Value::Array(tokens.into_iter().map(gguf_file::Value::String).collect()),
            ),
            (
                "tokenizer.ggml.token_type",
                gguf_file::Value::Array(types.into_iter().map(gguf_file::Value::I32).collect()),
            ),
            ("tokenizer.ggml.merges", gguf_file::Value::Array(Vec::new())),
            ("tokenizer.ggml.bos_token_id", u32v(1)),
            ("tokenizer.ggml.eos_token_id", u32v(0)),
            ("tokenizer.ggml.add_bos_token", gguf_file::Value::Bool(false)),
            (
                "tokenizer.chat_template",
                gguf_file::Value::String(
                    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                        .into(),
                ),
            ),
        ];
        let metadata: Vec<(&str, &gguf_file::Value)> =
            metadata.iter().map(|(k, v)| (*k, v)).collect();
        let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let mut out = Cursor::new(Vec::new());
        gguf_file::write(&mut out, &metadata, &tensors)?;
        Ok(out.into_inner())
    }
}

/// Control tokens `<|endoftext|>`, `<|im_start|>`, `<|im_end|>`, then the 256 bytes as GPT-2's
/// byte-level symbols (no merges: text encodes byte by byte), then unused fillers up to `vocab`.
fn vocabulary(vocab: usize) -> (Vec<String>, Vec<i32>) {
    const CONTROL: i32 = 3;
    const NORMAL: i32 = 1;
    const UNUSED: i32 = 5;
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .map(String::from)
        .to_vec();
    let mut types = vec![CONTROL; tokens.len()];
    tokens.extend(byte_symbols());
    types.resize(tokens.len(), NORMAL);
    let used = tokens.len();
    tokens.extend((used..vocab).map(|i| format!("<|unused_{i}|>")));
    types.resize(tokens.len(), UNUSED);
    (tokens, types)
}

/// GPT-2's `bytes_to_unicode`: printable bytes stand for themselves, the others for the code
/// points 256, 257, … in byte order. Indexed by byte value.
fn byte_symbols() -> Vec<String> {
    let printable = |b: u32| {
        (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
    };
    let mut next = 256;
    (0..256u32)
        .map(|b| {
            let c = if printable(b) {
                b
            } else {
                next += 1;
                next - 1
            };
            char::from_u32(c).map(String::from).unwrap_or_default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print() {
        let m: RandomModel = "random:tiny".parse().unwrap();
        assert_eq!(
            m,
            RandomModel {
                shape: RandomShape::Tiny,
                seed: 0
            }
        );
        assert_eq!(m.to_string(), "random:tiny:seed=0");
        let m: RandomModel = "random:smollm2-135m:seed=7".parse().unwrap();
        assert_eq!(m.shape, RandomShape::Smollm2_135m);
        assert_eq!(m.seed, 7);
        for bad in [
            "random:",
            "random:huge",
            "random:tiny:seed=-1",
            "random:tiny:depth=2",
            "tiny",
        ] {
            let e = bad.parse::<RandomModel>().unwrap_err();
            assert_eq!(e.spec, bad, "{e}");
        }
    }

    #[test]
    fn byte_symbols_are_gpt2s() {
        let s = byte_symbols();
        assert_eq!(s.len(), 256);
        assert_eq!(s[b'a' as usize], "a");
        assert_eq!(s[b' ' as usize], "Ġ");
        assert_eq!(s[b'\n' as usize], "Ċ");
        let distinct: std::collections::HashSet<_> = s.iter().collect();
        assert_eq!(distinct.len(), 256);
    }

    #[test]
    fn the_same_seed_gives_the_same_bytes() {
        let a = RandomModel {
            shape: RandomShape::Tiny,
            seed: 3,
        };
        let b = RandomModel {
            shape: RandomShape::Tiny,
            seed: 4,
        };
        assert_eq!(a.gguf_bytes().unwrap(), a.gguf_bytes().unwrap());
        assert_ne!(a.gguf_bytes().unwrap(), b.gguf_bytes().unwrap());
    }
}
