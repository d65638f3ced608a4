//! Coordinator errors and their gRPC status codes.

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Internal(String),
    /// The database cannot be written now (full disk); the coordinator retries by itself.
    #[error("{0}")]
    Unwritable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<CoordError> for tonic::Status {
    fn from(e: CoordError) -> Self {
        match e {
            CoordError::InvalidArgument(m) => tonic::Status::invalid_argument(m),
            CoordError::NotFound(m) => tonic::Status::not_found(m),
            CoordError::FailedPrecondition(m) => tonic::Status::failed_precondition(m),
            CoordError::Internal(m) => tonic::Status::internal(m),
            CoordError::Unwritable(m) => tonic::Status::resource_exhausted(m),
            CoordError::Store(e) => tonic::Status::internal(e.to_string()),
        }
    }
}
