use thiserror::Error;

/// Everything the strategy rejects. Config and state errors name the offending field and
/// its value so that a bad run spec or a corrupted record can be located.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum CmaesError {
    #[error("invalid CMA-ES config: {field} = {value} ({reason})")]
    Config {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("invalid CMA-ES state: {field} = {value} ({reason})")]
    State {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("tell at generation {generation} without a population from ask")]
    TellWithoutAsk { generation: u64 },
    #[error("fitness has {got} values but the population has {expected} members")]
    FitnessLength { got: usize, expected: usize },
}
