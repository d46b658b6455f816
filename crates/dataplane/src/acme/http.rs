//! The ACME client's HTTP through our reqwest and rustls (aws-lc-rs): the
//! system roots plus an optional CA file (a private ACME server's, such as
//! Pebble's).

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::BodyExt as _;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};
use tokio_rustls::rustls::ClientConfig;

/// An [`HttpClient`] for instant-acme over reqwest.
pub struct Http(reqwest::Client);

impl Http {
    /// A client trusting the system roots and `extra_ca` (PEM) if given.
    pub fn new(extra_ca: Option<&Path>) -> anyhow::Result<Http> {
        crate::tls::install_provider();
        let roots = crate::tls::roots(extra_ca)?;
        let tls = ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_root_certificates(Arc::new(roots))
            .with_no_client_auth();
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .build()
            .context("ACME HTTP client")?;
        Ok(Http(client))
    }
}

fn other(e: impl std::error::Error + Send + Sync + 'static) -> instant_acme::Error {
    instant_acme::Error::Other(Box::new(e))
}

impl HttpClient for Http {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let client = self.0.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let body = match body.collect().await {
                Ok(b) => b.to_bytes(),
                Err(never) => match never {},
            };
            let req = reqwest::Request::try_from(http::Request::from_parts(parts, body))
                .map_err(other)?;
            let rsp = client.execute(req).await.map_err(other)?;
            Ok(BytesResponse::from(http::Response::<reqwest::Body>::from(
                rsp,
            )))
        })
    }
}
