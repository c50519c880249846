//! The HTTP client of the OTLP HTTP/protobuf exporter: hyper, the stack tonic (the gRPC
//! exporter) and the agent path already use, instead of a blocking reqwest client with a
//! runtime of its own. The exporter's batch thread awaits a task on the node's runtime.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use opentelemetry_http::{HttpClient, HttpError};
use std::time::Duration;

/// Largest collector answer read, in bytes (an OTLP answer is a few bytes).
pub const OTLP_RESPONSE_BYTES_MAX: usize = 64 * 1024;
/// Longest one export may take, body included.
pub const OTLP_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// An OTLP HTTP client running its requests on the node's tokio runtime.
#[derive(Debug, Clone)]
pub struct OtlpHttp {
    client: Client<HttpConnector, Full<Bytes>>,
    runtime: tokio::runtime::Handle,
}

impl OtlpHttp {
    /// A client on `runtime` (the exporter's own thread has no runtime).
    pub fn new(runtime: tokio::runtime::Handle) -> Self {
        OtlpHttp {
            client: Client::builder(TokioExecutor::new()).build_http(),
            runtime,
        }
    }
}

#[async_trait::async_trait]
impl HttpClient for OtlpHttp {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let task = self.runtime.spawn(async move {
            let send = async {
                let resp = client.request(request.map(Full::new)).await?;
                let (head, body) = resp.into_parts();
                let body = Limited::new(body, OTLP_RESPONSE_BYTES_MAX)
                    .collect()
                    .await?
                    .to_bytes();
                Ok::<_, HttpError>(Response::from_parts(head, body))
            };
            match tokio::time::timeout(OTLP_EXPORT_TIMEOUT, send).await {
                Ok(r) => r,
                Err(_) => Err("OTLP export timed out".into()),
            }
        });
        task.await?
    }
}
