use std::fmt;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use candle_core::quantized::gguf_file;

use super::error::{ModelError, Result};
use super::random::{RandomModel, RANDOM_PREFIX};

/// Where a model comes from: a GGUF file, or `random:SHAPE[:seed=N]`, synthesised in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    File(PathBuf),
    Random(RandomModel),
}

impl FromStr for ModelSource {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        if s.starts_with(RANDOM_PREFIX) {
            let m = s.parse::<RandomModel>().map_err(|e| ModelError::BadGguf {
                path: PathBuf::from(s),
                reason: e.reason,
            })?;
            Ok(Self::Random(m))
        } else {
            Ok(Self::File(PathBuf::from(s)))
        }
    }
}

impl fmt::Display for ModelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(p) => write!(f, "{}", p.display()),
            Self::Random(m) => write!(f, "{m}"),
        }
    }
}

impl From<&Path> for ModelSource {
    fn from(p: &Path) -> Self {
        Self::File(p.to_path_buf())
    }
}

/// The model `--model` defaults to, relative to the working directory or the repository.
pub const DEFAULT_MODEL_PATH: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

impl ModelSource {
    /// A `--model` argument: `random:…` names a synthesised model, anything else a file; the
    /// default path is also tried from the repository, so the tools work from any directory
    /// of a checkout.
    pub fn from_arg(arg: &Path) -> Result<Self> {
        match arg.to_str() {
            Some(s) if s.starts_with(RANDOM_PREFIX) => s.parse(),
            _ => Ok(Self::File(resolve_default(arg))),
        }
    }

    /// How errors name the model: the file's path, or the random spec.
    pub fn label(&self) -> PathBuf {
        match self {
            Self::File(p) => p.clone(),
            Self::Random(m) => PathBuf::from(m.to_string()),
        }
    }

    /// The GGUF header and a reader positioned anywhere in the file's bytes.
    pub fn open(&self) -> Result<(gguf_file::Content, Box<dyn ReadSeek>)> {
        match self {
            Self::File(path) => {
                let file = std::fs::File::open(path).map_err(|source| ModelError::Open {
                    path: path.clone(),
                    source,
                })?;
                let mut reader = std::io::BufReader::new(file);
                let content = read_content(path, &mut reader)?;
                Ok((content, Box::new(reader)))
            }
            Self::Random(m) => {
                let (content, reader) = open_random(m)?;
                Ok((content, Box::new(reader)))
            }
        }
    }

    /// sha256 of the GGUF bytes (a random model's are a function of its spec): what runs name
    /// their model by.
    pub fn sha256(&self) -> Result<String> {
        match self {
            Self::File(path) => {
                crate::digest::file_sha256(path).map_err(|source| ModelError::Open {
                    path: path.clone(),
                    source,
                })
            }
            Self::Random(m) => Ok(crate::digest::bytes_sha256(&m.gguf_bytes()?)),
        }
    }
}

pub trait ReadSeek: std::io::Read + std::io::Seek {}
impl<T: std::io::Read + std::io::Seek> ReadSeek for T {}

fn open_random(m: &RandomModel) -> Result<(gguf_file::Content, Cursor<Vec<u8>>)> {
    let mut reader = Cursor::new(m.gguf_bytes()?);
    let content = read_content(&PathBuf::from(m.to_string()), &mut reader)?;
    Ok((content, reader))
}

fn read_content<R: std::io::Read + std::io::Seek>(
    path: &Path,
    reader: &mut R,
) -> Result<gguf_file::Content> {
    gguf_file::Content::read(reader).map_err(|e| ModelError::BadGguf {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn resolve_default(path: &Path) -> PathBuf {
    if path.exists() || path != Path::new(DEFAULT_MODEL_PATH) {
        return path.to_path_buf();
    }
    let in_repo = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).join(DEFAULT_MODEL_PATH);
    if in_repo.exists() {
        in_repo
    } else {
        path.to_path_buf()
    }
}
