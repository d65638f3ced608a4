//! The shared-secret check every namm server applies (the coordinator's gRPC, `namm-serve`'s
//! HTTP): `authorization: Bearer TOKEN`, compared in constant time on SHA-256 digests so that
//! neither the token's length nor its content leaks through timing.

use sha2::{Digest, Sha256};

#[derive(Clone)]
pub struct BearerToken {
    expected: [u8; 32],
}

impl BearerToken {
    pub fn new(token: &str) -> Self {
        Self {
            expected: digest(token.as_bytes()),
        }
    }

    /// Checks an `authorization` header value; the error says what was wrong with it.
    pub fn check(&self, header: Option<&[u8]>) -> Result<(), &'static str> {
        let header = header.ok_or("missing authorization token")?;
        let presented = header
            .strip_prefix(b"Bearer ")
            .ok_or("authorization is not a Bearer token")?;
        if constant_time_eq(&digest(presented), &self.expected) {
            Ok(())
        } else {
            Err("wrong authorization token")
        }
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_passes() {
        let t = BearerToken::new("s3cret");
        assert_eq!(t.check(Some(b"Bearer s3cret")), Ok(()));
        assert!(t.check(Some(b"Bearer s3cre")).is_err());
        assert!(t.check(Some(b"s3cret")).is_err());
        assert!(t.check(None).is_err());
    }
}
