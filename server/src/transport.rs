//! Status codes of failures that happen before any handler runs, in the
//! codes the contract promises (the proto and the README's error table): tonic's decoder answers a message
//! over the 4 MiB limit with OUT_OF_RANGE and undecodable protobuf with
//! INTERNAL; the caller's mistake is RESOURCE_EXHAUSTED and INVALID_ARGUMENT.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::codegen::Service;
use tonic::codegen::http;
use tower_layer::Layer;

/// What a [`Hooked`] service does around each gRPC call: look at the
/// request before the inner service sees it, then at the response it gives.
/// The layers on the gRPC server (decoder codes here, the call series in
/// [`crate::metrics`]) are hooks; one tower service runs them all.
pub trait Hook: Clone + Send + 'static {
    /// What `before` hands to `after`.
    type Before: Send + 'static;
    /// Runs before the call, on the request.
    fn before<B>(&self, req: &http::Request<B>) -> Self::Before;
    /// Runs on the response, before it goes to the caller.
    fn after<ResBody>(before: Self::Before, resp: &mut http::Response<ResBody>);
}

/// The layer that runs `H` around every call.
#[derive(Debug, Clone, Copy, Default)]
pub struct HookLayer<H>(pub H);

impl<S, H: Clone> Layer<S> for HookLayer<H> {
    type Service = Hooked<S, H>;

    fn layer(&self, inner: S) -> Self::Service {
        Hooked {
            inner,
            hook: self.0.clone(),
        }
    }
}

/// See [`HookLayer`].
#[derive(Debug, Clone)]
pub struct Hooked<S, H> {
    /// The wrapped service.
    inner: S,
    /// What runs around it.
    hook: H,
}

impl<S, H, B, ResBody> Service<http::Request<B>> for Hooked<S, H>
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    H: Hook,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let before = self.hook.before(&req);
        // The clone is not the instance `poll_ready` readied; swap them.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let call = inner.call(req);
        Box::pin(async move {
            let mut resp = call.await?;
            H::after(before, &mut resp);
            Ok(resp)
        })
    }
}

/// The hook that rewrites decoder failures' codes.
#[derive(Debug, Clone, Copy, Default)]
pub struct DecodeErrorCodes;

impl Hook for DecodeErrorCodes {
    type Before = ();

    fn before<B>(&self, _req: &http::Request<B>) {}

    fn after<ResBody>((): (), resp: &mut http::Response<ResBody>) {
        // Decoder failures end the call before any message: their status
        // travels in the headers (a trailers-only response).
        let headers = resp.headers();
        let code = headers.get("grpc-status").and_then(|s| {
            rewritten(
                s.as_bytes(),
                headers
                    .get("grpc-message")
                    .map(|m| m.as_bytes())
                    .unwrap_or_default(),
            )
        });
        if let Some(code) = code {
            resp.headers_mut()
                .insert("grpc-status", http::HeaderValue::from_static(code));
        }
    }
}

/// The code a decoder failure should carry, if `status`/`message` is one.
fn rewritten(status: &[u8], message: &[u8]) -> Option<&'static str> {
    // grpc-message is percent-encoded: spaces arrive as %20.
    let message = String::from_utf8_lossy(message).replace("%20", " ");
    match status {
        b"11" if message.contains("message length too large") => Some("8"),
        b"13" if message.starts_with("failed to decode Protobuf message") => Some("3"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_decoder_failures_are_rewritten() {
        assert_eq!(
            rewritten(
                b"11",
                b"Error, decoded message length too large: found 5 bytes"
            ),
            Some("8")
        );
        assert_eq!(
            rewritten(
                b"13",
                b"failed%20to%20decode%20Protobuf%20message: buffer underflow"
            ),
            Some("3")
        );
        assert_eq!(rewritten(b"13", b"internal error"), None);
        assert_eq!(rewritten(b"11", b"page out of range"), None);
        assert_eq!(rewritten(b"0", b""), None);
    }
}
