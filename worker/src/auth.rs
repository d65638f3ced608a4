//! Client side of the cluster's authentication, shared by the worker and the CLI: the shared
//! token (sent as `authorization: Bearer <token>` on every call) and the optional TLS trust
//! root. The coordinator reads its token with the same [`resolve_token`].

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status};

/// How a client reaches the coordinator: securely, and without waiting forever on a peer
/// that accepts connections but never answers.
#[derive(Debug, Clone, Default)]
pub struct ClientAuth {
    /// Shared secret; None sends no `authorization` header.
    pub token: Option<String>,
    /// PEM file of the CA (or self-signed certificate) that signed the coordinator's TLS
    /// certificate; Some switches the connection to TLS.
    pub tls_ca: Option<PathBuf>,
    pub timeouts: Timeouts,
}

/// Limits on every call to the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// To open the TCP (and TLS) connection.
    pub connect: Duration,
    /// From sending a request to its answer's headers (a stream's later messages are not
    /// bounded: `namm watch` follows a run for as long as it lasts).
    pub request: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            request: Duration::from_secs(30),
        }
    }
}

/// `SECS` of a timeout flag: a positive number of seconds, at most a day.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs <= 86_400.0 => Ok(Duration::from_secs_f64(secs)),
        _ => Err(format!(
            "{s:?} is not a timeout: give seconds, more than 0 and at most 86400"
        )),
    }
}

/// The token from `--token` (or env `NAMM_TOKEN`, which clap folds into the same flag) or
/// from `--token-file` (first line, surrounding whitespace trimmed). Giving both is an error,
/// and so is an empty token, which would otherwise look like "no authentication".
pub fn resolve_token(flag: Option<String>, file: Option<&Path>) -> anyhow::Result<Option<String>> {
    let token = match (flag, file) {
        (Some(_), Some(f)) => bail!(
            "--token (or NAMM_TOKEN) and --token-file {} are both given; use one",
            f.display()
        ),
        (Some(t), None) => Some(t.trim().to_string()),
        (None, Some(f)) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("--token-file {}: cannot read it", f.display()))?;
            Some(text.lines().next().unwrap_or("").trim().to_string())
        }
        (None, None) => None,
    };
    if let Some(t) = &token {
        if t.is_empty() {
            bail!("the token is empty (check --token, NAMM_TOKEN or --token-file)");
        }
        if MetadataValue::try_from(format!("Bearer {t}")).is_err() {
            bail!("the token has characters not allowed in a gRPC header (use printable ASCII)");
        }
    }
    Ok(token)
}

/// Adds the bearer token to every outgoing call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A channel that authenticates every call.
pub type AuthChannel = InterceptedService<Channel, Bearer>;

impl ClientAuth {
    /// The endpoint for `addr` (HOST:PORT or a URL), with TLS when a CA is configured.
    pub fn endpoint(&self, addr: &str) -> anyhow::Result<Endpoint> {
        let scheme = if self.tls_ca.is_some() {
            "https"
        } else {
            "http"
        };
        let url = if addr.contains("://") {
            addr.to_string()
        } else {
            format!("{scheme}://{addr}")
        };
        let mut endpoint = Endpoint::from_shared(url.clone())
            .with_context(|| format!("coordinator address {addr:?} is not valid"))?
            .connect_timeout(self.timeouts.connect)
            .timeout(self.timeouts.request)
            .tcp_nodelay(true);
        if let Some(ca) = &self.tls_ca {
            let pem = std::fs::read(ca)
                .with_context(|| format!("--tls-ca {}: cannot read it", ca.display()))?;
            endpoint = endpoint
                .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
                .with_context(|| format!("--tls-ca {}: not a usable TLS setup", ca.display()))?;
        }
        Ok(endpoint)
    }

    pub fn interceptor(&self) -> Bearer {
        Bearer(self.token.as_ref().map(|t| {
            MetadataValue::try_from(format!("Bearer {t}"))
                .expect("resolve_token only accepts header-safe tokens")
        }))
    }

    /// Wraps a channel so every call carries the token.
    pub fn wrap(&self, channel: Channel) -> AuthChannel {
        InterceptedService::new(channel, self.interceptor())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_come_from_one_source_and_are_never_empty() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "  s3cret \nsecond line\n").unwrap();
        assert_eq!(
            resolve_token(None, Some(&file)).unwrap().as_deref(),
            Some("s3cret")
        );
        assert_eq!(
            resolve_token(Some(" t ".into()), None).unwrap().as_deref(),
            Some("t")
        );
        assert_eq!(resolve_token(None, None).unwrap(), None);
        let both = resolve_token(Some("t".into()), Some(&file)).unwrap_err();
        assert!(both.to_string().contains("both"), "{both}");
        std::fs::write(&file, "\n").unwrap();
        assert!(resolve_token(None, Some(&file))
            .unwrap_err()
            .to_string()
            .contains("empty"));
        let missing = resolve_token(None, Some(&dir.path().join("nope"))).unwrap_err();
        assert!(format!("{missing:#}").contains("nope"), "{missing:#}");
        assert!(resolve_token(Some("bad\u{7}token".into()), None).is_err());
    }
}
