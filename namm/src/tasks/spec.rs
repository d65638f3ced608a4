//! Task specs: `NAME[:KEY=VALUE[,KEY=VALUE…]]`.
//!
//! | task | parameters (default) |
//! |---|---|
//! | `passkey` | `len` (1024), `depth` (`random`, or 0..=1), `seed` |
//! | `niah-multikey` | `len` (1024), `keys` (4: the asked needle + 3 distractors), `depth` (of the asked needle), `seed` |
//! | `kv-retrieval` | `len` (1024) or `pairs` (a fixed number of pairs instead), `depth` (of the asked pair), `seed` |
//! | `variable-tracking` | `len` (1024), `chains` (1), `hops` (4), `seed` |
//! | `common-words` | `len` (1024), `top` (10), `freq` / `ufreq` (6/1 below len 4096, else 30/3, as RULER), `seed` |
//! | `longbench` | `path` (required), `task` (a LongBench dataset name), `budget` (tokens), `chat` (`true`/`false`) |
//!
//! `len` is the length in model tokens of the whole templated prompt including the answer
//! prefix. `depth` places the needle: 0 at the start of the filler, 1 at its end. `seed`, when
//! given, replaces the seed the caller passes (`--seed`). For `longbench`, `task` selects the
//! records of that dataset in a mixed file and fixes the prompt template and metric (records
//! without a `dataset` field need it); `budget` middle-truncates prompts longer than that many
//! tokens as LongBench does; `chat` overrides LongBench's choice of which datasets get the chat
//! template. Values cannot contain `,`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use super::longbench::LONGBENCH_DATASETS;
use super::TaskError;

/// The task names [`TaskSpec`] accepts.
pub const TASK_NAMES: [&str; 6] = [
    "passkey",
    "niah-multikey",
    "kv-retrieval",
    "variable-tracking",
    "common-words",
    "longbench",
];

const DEFAULT_LEN: usize = 1024;
/// Longer prompts are certainly a typo (the default model's context is 8192).
const MAX_LEN: usize = 1 << 20;

/// A parsed task spec; `Display` writes it back in canonical form (every parameter explicit).
#[derive(Debug, Clone, PartialEq)]
pub enum TaskSpec {
    Passkey(PasskeySpec),
    NiahMultikey(NiahSpec),
    KvRetrieval(KvRetrievalSpec),
    VariableTracking(VariableTrackingSpec),
    CommonWords(CommonWordsSpec),
    LongBench(LongBenchSpec),
}

/// Where the needle goes: a fixed relative depth, or drawn uniformly per sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Depth {
    Random,
    Fixed(f64),
}

#[derive(Debug, Clone, PartialEq)]
pub struct PasskeySpec {
    pub len: usize,
    pub depth: Depth,
    pub seed: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NiahSpec {
    pub len: usize,
    /// Needles in the haystack, each with its own key; one of them is asked for.
    pub keys: usize,
    pub depth: Depth,
    pub seed: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct KvRetrievalSpec {
    pub size: KvSize,
    pub depth: Depth,
    pub seed: Option<u64>,
}

/// How big the JSON object of a kv-retrieval prompt is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KvSize {
    /// As many pairs as fit in this many tokens.
    Len(usize),
    /// Exactly this many pairs.
    Pairs(usize),
}

#[derive(Debug, Clone, PartialEq)]
pub struct VariableTrackingSpec {
    pub len: usize,
    pub chains: usize,
    pub hops: usize,
    pub seed: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CommonWordsSpec {
    pub len: usize,
    /// Number of common words (the answer).
    pub top: usize,
    /// Occurrences of each common word.
    pub freq: usize,
    /// Occurrences of each uncommon word.
    pub ufreq: usize,
    pub seed: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LongBenchSpec {
    pub path: PathBuf,
    pub task: Option<String>,
    pub budget: Option<usize>,
    pub chat: Option<bool>,
}

impl TaskSpec {
    /// The task name as written in specs.
    pub fn name(&self) -> &'static str {
        match self {
            TaskSpec::Passkey(_) => "passkey",
            TaskSpec::NiahMultikey(_) => "niah-multikey",
            TaskSpec::KvRetrieval(_) => "kv-retrieval",
            TaskSpec::VariableTracking(_) => "variable-tracking",
            TaskSpec::CommonWords(_) => "common-words",
            TaskSpec::LongBench(_) => "longbench",
        }
    }

    /// The prompt length in tokens the spec asks for, where it says: synthetic tasks' `len`
    /// and LongBench's `budget` (a fixed pair count or an untruncated file is only measured
    /// once prompts are built).
    pub fn prompt_len(&self) -> Option<usize> {
        match self {
            TaskSpec::Passkey(s) => Some(s.len),
            TaskSpec::NiahMultikey(s) => Some(s.len),
            TaskSpec::KvRetrieval(s) => match s.size {
                KvSize::Len(len) => Some(len),
                KvSize::Pairs(_) => None,
            },
            TaskSpec::VariableTracking(s) => Some(s.len),
            TaskSpec::CommonWords(s) => Some(s.len),
            TaskSpec::LongBench(s) => s.budget,
        }
    }

    /// The `seed=` of the spec, which replaces the caller's seed.
    pub fn seed_override(&self) -> Option<u64> {
        match self {
            TaskSpec::Passkey(s) => s.seed,
            TaskSpec::NiahMultikey(s) => s.seed,
            TaskSpec::KvRetrieval(s) => s.seed,
            TaskSpec::VariableTracking(s) => s.seed,
            TaskSpec::CommonWords(s) => s.seed,
            TaskSpec::LongBench(_) => None,
        }
    }
}

impl FromStr for TaskSpec {
    type Err = TaskError;

    fn from_str(text: &str) -> Result<Self, TaskError> {
        let text = text.trim();
        let (name, body) = text.split_once(':').unwrap_or((text, ""));
        let name = name.trim();
        let spec = match name {
            "passkey" => {
                let p = Params::parse("passkey", &["len", "depth", "seed"], body)?;
                TaskSpec::Passkey(PasskeySpec {
                    len: p.len()?,
                    depth: p.depth()?,
                    seed: p.seed()?,
                })
            }
            "niah-multikey" => {
                let p = Params::parse("niah-multikey", &["len", "keys", "depth", "seed"], body)?;
                TaskSpec::NiahMultikey(NiahSpec {
                    len: p.len()?,
                    keys: p.count("keys", 4, 1, 1000)?,
                    depth: p.depth()?,
                    seed: p.seed()?,
                })
            }
            "kv-retrieval" => {
                let p = Params::parse("kv-retrieval", &["len", "pairs", "depth", "seed"], body)?;
                let size = match (p.get("len"), p.get("pairs")) {
                    (Some(_), Some(_)) => {
                        return Err(TaskError::Invalid {
                            task: "kv-retrieval".into(),
                            reason: "give `len` (fill to a token length) or `pairs` (a fixed \
                                     number of pairs), not both"
                                .into(),
                        })
                    }
                    (None, Some(_)) => KvSize::Pairs(p.count("pairs", 0, 1, 1_000_000)?),
                    _ => KvSize::Len(p.len()?),
                };
                TaskSpec::KvRetrieval(KvRetrievalSpec {
                    size,
                    depth: p.depth()?,
                    seed: p.seed()?,
                })
            }
            "variable-tracking" => {
                let p = Params::parse(
                    "variable-tracking",
                    &["len", "chains", "hops", "seed"],
                    body,
                )?;
                TaskSpec::VariableTracking(VariableTrackingSpec {
                    len: p.len()?,
                    chains: p.count("chains", 1, 1, 100)?,
                    hops: p.count("hops", 4, 1, 100)?,
                    seed: p.seed()?,
                })
            }
            "common-words" => {
                let p = Params::parse(
                    "common-words",
                    &["len", "top", "freq", "ufreq", "seed"],
                    body,
                )?;
                let len = p.len()?;
                let (freq, ufreq) = if len < 4096 { (6, 1) } else { (30, 3) };
                let spec = CommonWordsSpec {
                    len,
                    top: p.count("top", 10, 1, 1000)?,
                    freq: p.count("freq", freq, 2, 10_000)?,
                    ufreq: p.count("ufreq", ufreq, 1, 10_000)?,
                    seed: p.seed()?,
                };
                if spec.ufreq >= spec.freq {
                    return Err(TaskError::BadValue {
                        task: "common-words".into(),
                        key: "ufreq".into(),
                        value: spec.ufreq.to_string(),
                        reason: format!(
                            "uncommon words must occur less often than common ones (freq={})",
                            spec.freq
                        ),
                    });
                }
                TaskSpec::CommonWords(spec)
            }
            "longbench" => {
                let p = Params::parse("longbench", &["path", "task", "budget", "chat"], body)?;
                let path = p.get("path").ok_or_else(|| TaskError::MissingKey {
                    task: "longbench".into(),
                    key: "path".into(),
                })?;
                let task = match p.get("task") {
                    Some(task) if !LONGBENCH_DATASETS.contains(&task) => {
                        return Err(p.bad(
                            "task",
                            task,
                            format!(
                                "not a LongBench English dataset; valid: {}",
                                LONGBENCH_DATASETS.join(", ")
                            ),
                        ))
                    }
                    task => task.map(str::to_string),
                };
                let budget = match p.get("budget") {
                    Some(_) => Some(p.count("budget", 0, 2, usize::MAX)?),
                    None => None,
                };
                let chat = match p.get("chat") {
                    None => None,
                    Some("true") => Some(true),
                    Some("false") => Some(false),
                    Some(other) => {
                        return Err(p.bad("chat", other, "expected true or false".into()))
                    }
                };
                TaskSpec::LongBench(LongBenchSpec {
                    path: PathBuf::from(path),
                    task,
                    budget,
                    chat,
                })
            }
            _ => {
                return Err(TaskError::UnknownTask {
                    name: name.to_string(),
                    valid: TASK_NAMES.join(", "),
                })
            }
        };
        Ok(spec)
    }
}

impl fmt::Display for Depth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Depth::Random => write!(f, "random"),
            Depth::Fixed(depth) => write!(f, "{depth}"),
        }
    }
}

impl fmt::Display for TaskSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seed = |seed: Option<u64>| seed.map(|s| format!(",seed={s}")).unwrap_or_default();
        match self {
            TaskSpec::Passkey(s) => {
                write!(f, "passkey:len={},depth={}{}", s.len, s.depth, seed(s.seed))
            }
            TaskSpec::NiahMultikey(s) => write!(
                f,
                "niah-multikey:len={},keys={},depth={}{}",
                s.len,
                s.keys,
                s.depth,
                seed(s.seed)
            ),
            TaskSpec::KvRetrieval(s) => {
                let size = match s.size {
                    KvSize::Len(len) => format!("len={len}"),
                    KvSize::Pairs(pairs) => format!("pairs={pairs}"),
                };
                write!(f, "kv-retrieval:{size},depth={}{}", s.depth, seed(s.seed))
            }
            TaskSpec::VariableTracking(s) => write!(
                f,
                "variable-tracking:len={},chains={},hops={}{}",
                s.len,
                s.chains,
                s.hops,
                seed(s.seed)
            ),
            TaskSpec::CommonWords(s) => write!(
                f,
                "common-words:len={},top={},freq={},ufreq={}{}",
                s.len,
                s.top,
                s.freq,
                s.ufreq,
                seed(s.seed)
            ),
            TaskSpec::LongBench(s) => {
                write!(f, "longbench:path={}", s.path.display())?;
                if let Some(task) = &s.task {
                    write!(f, ",task={task}")?;
                }
                if let Some(budget) = s.budget {
                    write!(f, ",budget={budget}")?;
                }
                if let Some(chat) = s.chat {
                    write!(f, ",chat={chat}")?;
                }
                Ok(())
            }
        }
    }
}

/// The `key=value` list of one spec, checked against the task's valid keys.
struct Params<'a> {
    task: &'static str,
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> Params<'a> {
    fn parse(task: &'static str, valid: &[&str], body: &'a str) -> Result<Self, TaskError> {
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        for item in body
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
        {
            let Some((key, value)) = item.split_once('=') else {
                return Err(TaskError::BadValue {
                    task: task.into(),
                    key: item.into(),
                    value: String::new(),
                    reason: "expected KEY=VALUE".into(),
                });
            };
            let (key, value) = (key.trim(), value.trim());
            if !valid.contains(&key) {
                return Err(TaskError::UnknownKey {
                    task: task.into(),
                    key: key.into(),
                    valid: valid.join(", "),
                });
            }
            if pairs.iter().any(|(k, _)| *k == key) {
                return Err(TaskError::BadValue {
                    task: task.into(),
                    key: key.into(),
                    value: value.into(),
                    reason: "given more than once".into(),
                });
            }
            pairs.push((key, value));
        }
        Ok(Params { task, pairs })
    }

    fn get(&self, key: &str) -> Option<&'a str> {
        self.pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    fn bad(&self, key: &str, value: &str, reason: String) -> TaskError {
        TaskError::BadValue {
            task: self.task.into(),
            key: key.into(),
            value: value.into(),
            reason,
        }
    }

    /// An integer in `min..=max`, `default` when absent.
    fn count(&self, key: &str, default: usize, min: usize, max: usize) -> Result<usize, TaskError> {
        let Some(value) = self.get(key) else {
            return Ok(default);
        };
        let n: usize = value
            .parse()
            .map_err(|_| self.bad(key, value, "expected a whole number".into()))?;
        if n < min || n > max {
            let range = if max == usize::MAX {
                format!("at least {min}")
            } else {
                format!("between {min} and {max}")
            };
            return Err(self.bad(key, value, format!("must be {range}")));
        }
        Ok(n)
    }

    fn len(&self) -> Result<usize, TaskError> {
        self.count("len", DEFAULT_LEN, 16, MAX_LEN)
    }

    fn depth(&self) -> Result<Depth, TaskError> {
        match self.get("depth") {
            None | Some("random") => Ok(Depth::Random),
            Some(value) => match value.parse::<f64>() {
                Ok(depth) if (0.0..=1.0).contains(&depth) => Ok(Depth::Fixed(depth)),
                _ => Err(self.bad(
                    "depth",
                    value,
                    "expected `random` or a number from 0 (start) to 1 (end)".into(),
                )),
            },
        }
    }

    fn seed(&self) -> Result<Option<u64>, TaskError> {
        self.get("seed")
            .map(|value| {
                value
                    .parse()
                    .map_err(|_| self.bad("seed", value, "expected a whole number".into()))
            })
            .transpose()
    }
}
