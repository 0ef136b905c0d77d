//! The body of a held check-in: the check-in's answer at once, then whatever the long-poll
//! that follows it yields (see `steward_proto::CHECKIN_HELD_CONTENT_TYPE`).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Bytes;
use hyper::body::{Body, Frame, SizeHint};

/// A response body of two parts: `first`, ready now, and the bytes `rest` resolves to (none:
/// the body ends after `first`). `rest` is polled only once `first` is out, so it runs while
/// the connection carries the response, and is dropped with it.
pub(crate) struct HeldBody {
    first: Option<Bytes>,
    rest: Option<Pin<Box<dyn Future<Output = Option<Bytes>> + Send>>>,
}

impl HeldBody {
    pub(crate) fn new(
        first: Bytes,
        rest: impl Future<Output = Option<Bytes>> + Send + 'static,
    ) -> Self {
        Self {
            first: Some(first),
            rest: Some(Box::pin(rest)),
        }
    }
}

impl Body for HeldBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        let Some(rest) = self.rest.as_mut() else {
            return Poll::Ready(None);
        };
        match rest.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(done) => {
                self.rest = None;
                Poll::Ready(done.map(|b| Ok(Frame::data(b))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        // Unknown until the long-poll ends: sent chunked (HTTP/1.1) or as it comes (HTTP/2).
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn the_first_part_is_out_before_the_rest_resolves() {
        let (tx, rx) = tokio::sync::oneshot::channel::<Bytes>();
        let mut body = HeldBody::new(Bytes::from_static(b"first\n"), async move { rx.await.ok() });
        let f = body
            .frame()
            .await
            .and_then(|f| f.ok())
            .and_then(|f| f.into_data().ok());
        assert_eq!(f.as_deref(), Some(&b"first\n"[..]));
        assert!(!body.is_end_stream());
        tx.send(Bytes::from_static(b"rest\n")).ok();
        let f = body
            .frame()
            .await
            .and_then(|f| f.ok())
            .and_then(|f| f.into_data().ok());
        assert_eq!(f.as_deref(), Some(&b"rest\n"[..]));
        assert!(body.frame().await.is_none());
        assert!(body.is_end_stream());
    }

    #[tokio::test]
    async fn a_rest_of_nothing_ends_the_body_after_the_first_part() {
        let body = HeldBody::new(Bytes::from_static(b"only\n"), async { None });
        let all = body.collect().await.map(|c| c.to_bytes());
        assert_eq!(all.ok().as_deref(), Some(&b"only\n"[..]));
    }
}
