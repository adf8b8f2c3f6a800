//! Admission control: which node keys may use this relay.
//!
//! ## HTTP contract (`--verify-clients URL`)
//!
//! For each non-mesh client, after its ClientInfo opened, the relay sends
//!
//! ```text
//! POST URL
//! Content-Type: application/json
//!
//! {"NodePublic":"nodekey:<64 hex>","Source":"<client IP>"}
//! ```
//!
//! (Tailscale's `tailcfg.DERPAdmitClientRequest`, as `derper
//! --verify-client-url` sends it) and admits the client only on HTTP 200 with
//! a JSON body `{"Allow":true}` (body read up to 4 KiB; unknown fields
//! ignored). A rejected client's connection is closed without an error frame.
//! The call has a 5 s timeout; when the URL cannot be reached or answers
//! anything else the client is rejected, unless fail-open is configured.
//! Only `http://` URLs are supported.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use weft_key::NodePublic;

/// Errors while asking an admission service.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The URL is not `http://host[:port]/path`.
    #[error("unsupported verify URL {0:?}")]
    Url(String),
    /// Network or HTTP failure.
    #[error("verify request failed: {0}")]
    Http(String),
    /// No answer within 5 s.
    #[error("verify request timed out")]
    Timeout,
}

/// Boxed future returned by [`ClientVerifier::verify`].
pub type VerifyFuture<'a> = Pin<Box<dyn Future<Output = Result<bool, VerifyError>> + Send + 'a>>;

/// Decides whether a node key may connect. Embedders (the coordination
/// server) can implement this directly against their database.
pub trait ClientVerifier: Send + Sync + 'static {
    /// True to admit `key` connecting from `source`.
    fn verify(&self, key: NodePublic, source: IpAddr) -> VerifyFuture<'_>;
}

/// Request body of the admission call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdmitRequest {
    /// Node key, `nodekey:` text form.
    #[serde(rename = "NodePublic")]
    pub node_public: NodePublic,
    /// Client IP address.
    #[serde(rename = "Source")]
    pub source: IpAddr,
}

/// Response body of the admission call.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AdmitResponse {
    /// True to admit.
    #[serde(rename = "Allow", default)]
    pub allow: bool,
}

/// Asks an HTTP admission service (see the module docs).
#[derive(Debug, Clone)]
pub struct UrlVerifier {
    host: String,
    authority: String,
    path: String,
    fail_open: bool,
}

impl UrlVerifier {
    /// A verifier posting to `url`; `fail_open` admits clients when the service is unreachable.
    pub fn new(url: &str, fail_open: bool) -> Result<Self, VerifyError> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| VerifyError::Url(url.to_owned()))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(VerifyError::Url(url.to_owned()));
        }
        let host = if authority.contains(':') && !authority.ends_with(']') {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        Ok(Self {
            host,
            authority: authority.to_owned(),
            path: path.to_owned(),
            fail_open,
        })
    }

    async fn ask(&self, key: NodePublic, source: IpAddr) -> Result<bool, VerifyError> {
        let http = |e: &dyn std::fmt::Display| VerifyError::Http(e.to_string());
        let tcp = tokio::net::TcpStream::connect(&self.host)
            .await
            .map_err(|e| http(&e))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| http(&e))?;
        tokio::spawn(conn);
        let body = serde_json::to_vec(&AdmitRequest {
            node_public: key,
            source,
        })
        .map_err(|e| http(&e))?;
        let req = hyper::Request::post(&self.path)
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| http(&e))?;
        let resp = send.send_request(req).await.map_err(|e| http(&e))?;
        if resp.status() != hyper::StatusCode::OK {
            return Err(VerifyError::Http(format!("status {}", resp.status())));
        }
        let body = Limited::new(resp.into_body(), 4096)
            .collect()
            .await
            .map_err(|e| VerifyError::Http(e.to_string()))?
            .to_bytes();
        let r: AdmitResponse = serde_json::from_slice(&body).map_err(|e| http(&e))?;
        Ok(r.allow)
    }
}

impl ClientVerifier for UrlVerifier {
    fn verify(&self, key: NodePublic, source: IpAddr) -> VerifyFuture<'_> {
        Box::pin(async move {
            let res = tokio::time::timeout(Duration::from_secs(5), self.ask(key, source))
                .await
                .unwrap_or(Err(VerifyError::Timeout));
            match res {
                Ok(allow) => Ok(allow),
                Err(e) if self.fail_open => {
                    tracing::warn!(error = %e, "admission service unreachable, admitting (fail-open)");
                    Ok(true)
                }
                Err(e) => Err(e),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admit_request_uses_tailscale_json_names() {
        let r = AdmitRequest {
            node_public: NodePublic::from_bytes([1; 32]),
            source: "10.0.0.1".parse().unwrap(),
        };
        let j = serde_json::to_string(&r).unwrap();
        assert_eq!(
            j,
            format!(
                r#"{{"NodePublic":"nodekey:{}","Source":"10.0.0.1"}}"#,
                "01".repeat(32)
            )
        );
    }

    #[test]
    fn url_parsing_defaults_port_80_and_rejects_https() {
        let v = UrlVerifier::new("http://ctl.example/derp/verify", false).unwrap();
        assert_eq!(v.host, "ctl.example:80");
        assert_eq!(v.path, "/derp/verify");
        assert!(UrlVerifier::new("https://x/", false).is_err());
    }
}
