//! Server side of authentication: every call of both services must carry
//! `authorization: Bearer <token>` with the coordinator's shared token.

use sha2::{Digest, Sha256};
use std::sync::Arc;
use tonic::{Request, Status};

/// Checks the bearer token of each call; without a token every call passes.
#[derive(Clone)]
pub struct TokenCheck {
    /// SHA-256 of the token: comparing fixed-length digests leaks neither the token's length
    /// nor, through timing, how many leading bytes matched.
    expected: Option<Arc<[u8; 32]>>,
}

impl TokenCheck {
    pub fn new(token: Option<&str>) -> TokenCheck {
        TokenCheck {
            expected: token.map(|t| Arc::new(digest(t.as_bytes()))),
        }
    }

    pub fn enabled(&self) -> bool {
        self.expected.is_some()
    }

    fn check<T>(&self, req: &Request<T>) -> Result<(), &'static str> {
        let Some(expected) = &self.expected else {
            return Ok(());
        };
        let header = req
            .metadata()
            .get("authorization")
            .ok_or("missing authorization token")?;
        let presented = header
            .as_bytes()
            .strip_prefix(b"Bearer ")
            .ok_or("authorization is not a Bearer token")?;
        if constant_time_eq(&digest(presented), expected) {
            Ok(())
        } else {
            Err("wrong authorization token")
        }
    }
}

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        match self.check(&req) {
            Ok(()) => Ok(req),
            Err(why) => {
                let peer = req
                    .remote_addr()
                    .map_or_else(|| "unknown".to_string(), |a| a.to_string());
                tracing::warn!(%peer, reason = why, "unauthenticated call refused");
                Err(Status::unauthenticated(why))
            }
        }
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the compiler from turning the fold back into an early-exit compare.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    fn call(check: &mut TokenCheck, header: Option<&str>) -> Result<(), tonic::Code> {
        let mut req = Request::new(());
        if let Some(h) = header {
            req.metadata_mut()
                .insert("authorization", h.parse().unwrap());
        }
        check.call(req).map(|_| ()).map_err(|s| s.code())
    }

    #[test]
    fn only_the_right_bearer_token_passes() {
        let mut check = TokenCheck::new(Some("s3cret"));
        assert_eq!(call(&mut check, Some("Bearer s3cret")), Ok(()));
        for bad in [
            None,
            Some("Bearer s3cre"),
            Some("Bearer s3cret "),
            Some("s3cret"),
            Some("Bearer "),
        ] {
            assert_eq!(
                call(&mut check, bad),
                Err(tonic::Code::Unauthenticated),
                "{bad:?}"
            );
        }
        let mut open = TokenCheck::new(None);
        assert_eq!(call(&mut open, None), Ok(()));
    }
}
