//! Server side of authentication: every call of both services must carry
//! `authorization: Bearer <token>` with the coordinator's shared token.

use namm_proto::bearer::BearerToken;
use std::sync::Arc;
use tonic::{Request, Status};

/// Checks the bearer token of each call; without a token every call passes.
#[derive(Clone)]
pub struct TokenCheck {
    expected: Option<Arc<BearerToken>>,
}

impl TokenCheck {
    pub fn new(token: Option<&str>) -> TokenCheck {
        TokenCheck {
            expected: token.map(|t| Arc::new(BearerToken::new(t))),
        }
    }

    pub fn enabled(&self) -> bool {
        self.expected.is_some()
    }

    fn check<T>(&self, req: &Request<T>) -> Result<(), &'static str> {
        match &self.expected {
            None => Ok(()),
            Some(expected) => {
                expected.check(req.metadata().get("authorization").map(|h| h.as_bytes()))
            }
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
