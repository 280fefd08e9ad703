//! Bodies crossing the stack: request bodies streamed upstream with a bounded copy kept for
//! retries and mirrors, and response bodies discarded with a cap.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use mesh_core::telemetry::GrpcMessages;

/// The error type of bodies crossing the stack.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of responses from the stack (upstream responses and synthesized ones alike).
pub type MeshBody = UnsyncBoxBody<Bytes, BoxError>;

/// A body with nothing in it.
pub fn empty() -> MeshBody {
    http_body_util::Empty::new()
        .map_err(|e: std::convert::Infallible| match e {})
        .boxed_unsync()
}

/// A body with these bytes.
pub fn full(b: impl Into<Bytes>) -> MeshBody {
    http_body_util::Full::new(b.into())
        .map_err(|e: std::convert::Infallible| match e {})
        .boxed_unsync()
}

/// What one body carried, counted as it is read for telemetry: bytes, and gRPC messages
/// when the reader parses the framing. Shared between the reader and whoever reports.
#[derive(Debug, Default)]
pub struct BodyCount {
    bytes: AtomicU64,
    messages: AtomicU64,
}

impl BodyCount {
    /// Data bytes read.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// gRPC messages begun (0 when the framing was not parsed).
    pub fn messages(&self) -> u64 {
        self.messages.load(Ordering::Relaxed)
    }

    /// Counts one data frame; `messages` is the reader's framing state, for gRPC.
    fn add(&self, data: &[u8], messages: Option<&mut GrpcMessages>) {
        self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        if let Some(m) = messages {
            let before = m.count();
            m.feed(data);
            self.messages
                .fetch_add(m.count().saturating_sub(before), Ordering::Relaxed);
        }
    }
}

pin_project_lite::pin_project! {
    /// A body that counts what is read from it into a [`BodyCount`] (a server's inbound
    /// request bodies, which the application reads).
    pub struct CountedBody<B> {
        #[pin]
        inner: B,
        counter: Option<(Arc<BodyCount>, Option<GrpcMessages>)>,
    }
}

impl<B> CountedBody<B> {
    /// `inner`, counted into `counter` (gRPC messages too when `grpc`); `None` counts nothing.
    pub fn new(inner: B, counter: Option<Arc<BodyCount>>, grpc: bool) -> Self {
        Self {
            inner,
            counter: counter.map(|c| (c, grpc.then(GrpcMessages::new))),
        }
    }

    /// The body this wraps.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: Body<Data = Bytes>> Body for CountedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        if let (Some((c, messages)), Some(Ok(f))) = (this.counter.as_mut(), &frame)
            && let Some(data) = f.data_ref()
        {
            c.add(data, messages.as_mut());
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body shared by the attempts and mirrors of one request: it goes upstream as it
/// arrives (a streaming call is never held back), while a copy of what was read is kept, up to
/// a cap, so that a retry can send it again.
///
/// Each attempt reads the kept frames, then pulls from the caller's body where the last
/// attempt stopped. A retry is possible as long as nothing read was dropped
/// ([`RequestBody::is_replayable`]): a body that has not been read at all (the connect failed)
/// always is, one larger than the cap never is, as with Envoy's retry buffer. Mirrors follow
/// the attempts: they never pull (a slow attempt does not make the copy grow), and fail once
/// the copy stops.
pub struct RequestBody {
    /// `None`: the body is empty (no allocation per request).
    source: Option<Arc<Mutex<Source>>>,
}

/// The caller's body and what has been read from it.
struct Source {
    body: Option<MeshBody>,
    /// Every frame read so far, while `!overflowed` (then empty).
    frames: Vec<Frame<Bytes>>,
    /// Frames read from `body`.
    pulled: usize,
    kept_bytes: usize,
    cap: usize,
    overflowed: bool,
    ended: bool,
    failed: Option<String>,
    /// The attempt whose reader may pull; older attempts' readers are cut off.
    attempt: u64,
    /// Live attempt readers, and whether the `RequestBody` is.
    pullers: usize,
    owner: bool,
    /// Mirrors waiting for a frame.
    followers: Vec<std::task::Waker>,
    /// Where what is read from the caller's body is counted, for telemetry, and the gRPC
    /// framing read so far (for a gRPC call).
    counter: Option<(Arc<BodyCount>, Option<GrpcMessages>)>,
}

impl Source {
    /// Nothing read so far was dropped, and the caller's body has not failed.
    fn replayable(&self) -> bool {
        !self.overflowed && self.failed.is_none()
    }

    fn wake_followers(&mut self) {
        for w in self.followers.drain(..) {
            w.wake();
        }
    }

    /// Nobody will read the rest: mirrors stop waiting.
    fn maybe_abandoned(&mut self) {
        if self.pullers == 0 && !self.owner && !self.ended {
            self.failed
                .get_or_insert_with(|| "the request body was not read to its end".into());
            self.body = None;
            self.wake_followers();
        }
    }
}

impl RequestBody {
    /// Takes the caller's body, keeping up to `cap` bytes of it for replay.
    pub fn new<B>(body: B, cap: usize) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        if body.is_end_stream() {
            return Self { source: None };
        }
        Self {
            source: Some(Arc::new(Mutex::new(Source {
                body: Some(body.map_err(Into::into).boxed_unsync()),
                frames: Vec::new(),
                pulled: 0,
                kept_bytes: 0,
                cap,
                overflowed: false,
                ended: false,
                failed: None,
                attempt: 0,
                pullers: 0,
                owner: true,
                followers: Vec::new(),
                counter: None,
            }))),
        }
    }

    /// The body for the next attempt, or `None` when it can no longer be sent whole. The
    /// previous attempt's body stops being read.
    pub fn attempt(&self) -> Option<MeshBody> {
        let Some(src) = &self.source else {
            return Some(empty());
        };
        let attempt = {
            let mut s = lock(src);
            if s.attempt > 0 && !s.replayable() {
                return None;
            }
            s.attempt += 1;
            s.pullers += 1;
            s.attempt
        };
        Some(
            Reader {
                src: src.clone(),
                next: 0,
                attempt: Some(attempt),
            }
            .boxed_unsync(),
        )
    }

    /// A copy for a mirror, which follows the attempts; `None` when the copy already stopped.
    pub fn mirror(&self) -> Option<MeshBody> {
        let Some(src) = &self.source else {
            return Some(empty());
        };
        if lock(src).overflowed {
            return None;
        }
        Some(
            Reader {
                src: src.clone(),
                next: 0,
                attempt: None,
            }
            .boxed_unsync(),
        )
    }

    /// The caller's body failed with this error.
    pub fn error(&self) -> Option<String> {
        self.source.as_ref().and_then(|s| lock(s).failed.clone())
    }

    /// Counts what is read from the caller's body into `counter`, its gRPC messages too when
    /// `grpc` (an empty body reads nothing).
    pub fn count_into(&self, counter: &Arc<BodyCount>, grpc: bool) {
        if let Some(src) = &self.source {
            lock(src).counter = Some((counter.clone(), grpc.then(GrpcMessages::new)));
        }
    }

    /// Whether another attempt can send the body whole: nothing read so far was dropped.
    pub fn is_replayable(&self) -> bool {
        self.source.as_ref().is_none_or(|s| lock(s).replayable())
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        if let Some(src) = &self.source {
            let mut s = lock(src);
            s.owner = false;
            s.maybe_abandoned();
        }
    }
}

fn lock(src: &Mutex<Source>) -> std::sync::MutexGuard<'_, Source> {
    src.lock().unwrap_or_else(|e| e.into_inner())
}

/// One attempt's or mirror's view of a [`RequestBody`].
struct Reader {
    src: Arc<Mutex<Source>>,
    /// Frames this reader has returned.
    next: usize,
    /// `None` for a mirror.
    attempt: Option<u64>,
}

fn copy(f: &Frame<Bytes>) -> Option<Frame<Bytes>> {
    if let Some(d) = f.data_ref() {
        Some(Frame::data(d.clone()))
    } else {
        f.trailers_ref().map(|t| Frame::trailers(t.clone()))
    }
}

impl Body for Reader {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut s = lock(&this.src);
        if let Some(a) = this.attempt
            && a != s.attempt
        {
            return Poll::Ready(Some(Err("the request body went to a retry".into())));
        }
        if this.next < s.pulled {
            let Some(f) = s.frames.get(this.next).and_then(copy) else {
                return Poll::Ready(Some(Err(
                    "the request body was larger than the copy the stack keeps".into(),
                )));
            };
            this.next += 1;
            return Poll::Ready(Some(Ok(f)));
        }
        if s.ended {
            return Poll::Ready(None);
        }
        if let Some(e) = &s.failed {
            return Poll::Ready(Some(Err(e.clone().into())));
        }
        if this.attempt.is_none() {
            if s.overflowed {
                return Poll::Ready(Some(Err(
                    "the request body was larger than the copy the stack keeps".into(),
                )));
            }
            s.followers.push(cx.waker().clone());
            return Poll::Pending;
        }
        let Some(body) = s.body.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(body).poll_frame(cx);
        match polled {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                s.ended = true;
                s.body = None;
                s.wake_followers();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                s.failed = Some(e.to_string());
                s.body = None;
                s.wake_followers();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                s.pulled += 1;
                this.next += 1;
                let len = frame.data_ref().map_or(0, Bytes::len);
                if let (Some((c, messages)), Some(data)) = (&mut s.counter, frame.data_ref()) {
                    c.add(data, messages.as_mut());
                }
                if !s.overflowed {
                    match s.kept_bytes.checked_add(len).filter(|&n| n <= s.cap) {
                        Some(n) => {
                            s.kept_bytes = n;
                            if let Some(c) = copy(&frame) {
                                s.frames.push(c);
                            }
                        }
                        None => {
                            s.overflowed = true;
                            s.frames = Vec::new();
                        }
                    }
                }
                s.wake_followers();
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let s = lock(&self.src);
        s.ended && self.next >= s.pulled
    }

    fn size_hint(&self) -> SizeHint {
        let s = lock(&self.src);
        let kept: u64 = s
            .frames
            .get(self.next..)
            .unwrap_or_default()
            .iter()
            .filter_map(|f| f.data_ref())
            .map(|d| d.len() as u64)
            .sum();
        let rest = s
            .body
            .as_ref()
            .map(|b| b.size_hint())
            .unwrap_or_else(|| SizeHint::with_exact(0));
        // Raise the upper bound first: a lower bound above the upper one panics.
        let mut hint = SizeHint::new();
        if let Some(u) = rest.upper() {
            hint.set_upper(u.saturating_add(kept));
        }
        hint.set_lower(rest.lower().saturating_add(kept));
        hint
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        if self.attempt.is_some() {
            let mut s = lock(&self.src);
            s.pullers -= 1;
            s.maybe_abandoned();
        }
    }
}

/// How much of a response the stack reads and drops itself (a failed attempt's before a retry,
/// a shadow's) so that its connection can be reused; a longer one is dropped unread.
pub(crate) const DISCARD_LIMIT: usize = 64 * 1024;

/// Reads and drops `body` up to `cap` bytes, so that its connection can be reused; false when
/// it was longer (it is then dropped unread, and its connection closed) or failed.
pub async fn discard(body: MeshBody, cap: usize) -> bool {
    let mut body = std::pin::pin!(body);
    let mut read = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { return false };
        read = read.saturating_add(frame.data_ref().map_or(0, Bytes::len));
        if read > cap {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&'static str]) -> MeshBody {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from(*p))))
            .collect();
        http_body_util::StreamBody::new(tokio_stream::iter(frames)).boxed_unsync()
    }

    async fn read(b: MeshBody) -> Result<Bytes, BoxError> {
        Ok(b.collect().await?.to_bytes())
    }

    #[tokio::test]
    async fn small_bodies_are_resent_whole_with_their_size() {
        let b = RequestBody::new(chunks(&["ab", "cd"]), 16);
        let first = b.attempt().unwrap();
        assert_eq!(read(first).await.unwrap(), "abcd");
        assert!(b.is_replayable());
        for _ in 0..3 {
            let again = b.attempt().unwrap();
            assert_eq!(again.size_hint().exact(), Some(4));
            assert_eq!(read(again).await.unwrap(), "abcd");
        }
        let f = RequestBody::new(full("xyz"), 16).attempt().unwrap();
        assert_eq!(
            f.size_hint().exact(),
            Some(3),
            "a known length stays known upstream"
        );
    }

    #[tokio::test]
    async fn a_retry_after_a_partial_read_replays_then_continues() {
        let b = RequestBody::new(chunks(&["01", "23", "45"]), 16);
        let mut first = b.attempt().unwrap();
        let f = first.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "01");
        // The retry takes over; the first attempt's body is cut off.
        let second = b.attempt().unwrap();
        assert!(first.frame().await.unwrap().is_err());
        assert_eq!(read(second).await.unwrap(), "012345");
    }

    #[tokio::test]
    async fn large_bodies_stream_once_and_lose_nothing() {
        let b = RequestBody::new(chunks(&["0123", "4567", "89"]), 5);
        assert!(
            b.is_replayable(),
            "nothing read yet: a failed connect may retry"
        );
        let mirror = b.mirror().unwrap();
        assert_eq!(read(b.attempt().unwrap()).await.unwrap(), "0123456789");
        assert!(!b.is_replayable());
        assert!(
            b.attempt().is_none(),
            "a body past the cap cannot be sent twice"
        );
        assert!(
            read(mirror).await.is_err(),
            "the mirror's copy stopped at the cap"
        );
    }

    #[tokio::test]
    async fn a_mirror_follows_the_attempt_and_never_pulls() {
        let b = RequestBody::new(chunks(&["ab", "cd"]), 16);
        let mirror = tokio::spawn(read(b.mirror().unwrap()));
        tokio::task::yield_now().await;
        assert!(!mirror.is_finished(), "waits for the attempt to read");
        assert_eq!(read(b.attempt().unwrap()).await.unwrap(), "abcd");
        assert_eq!(mirror.await.unwrap().unwrap(), "abcd");
        // A body nobody reads to its end does not leave a mirror waiting forever.
        let b = RequestBody::new(chunks(&["ab"]), 16);
        let mirror = b.mirror().unwrap();
        drop(b.attempt());
        drop(b);
        assert!(read(mirror).await.is_err());
    }

    #[tokio::test]
    async fn empty_bodies_cost_nothing_and_discard_is_capped() {
        let b = RequestBody::new(empty(), 16);
        assert!(b.source.is_none());
        assert!(b.attempt().unwrap().is_end_stream());
        assert!(discard(chunks(&["0123", "45"]), 6).await);
        assert!(!discard(chunks(&["0123", "456"]), 6).await);
    }
}
