//! Request bodies kept for replay (retries, mirrors) when small, streamed otherwise.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;

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

/// A request body after preparation.
pub enum Prepared {
    /// Read whole (within the cap): can be sent any number of times.
    Replayable {
        /// The data.
        data: Bytes,
        /// Trailers, if any.
        trailers: Option<HeaderMap>,
    },
    /// Larger than the cap: sent once, never retried or mirrored.
    Streaming(MeshBody),
    /// A streaming body that was already sent.
    Taken,
}

impl Prepared {
    /// A body to send for one attempt, or `None` if a streaming body was already taken.
    pub fn attempt(&mut self) -> Option<MeshBody> {
        match self {
            // An empty body boxes a zero-sized value: no allocation per attempt.
            Self::Replayable {
                data,
                trailers: None,
            } if data.is_empty() => Some(empty()),
            Self::Replayable { data, trailers } => Some(replay(data.clone(), trailers.clone())),
            Self::Streaming(_) => match std::mem::replace(self, Self::Taken) {
                Self::Streaming(b) => Some(b),
                _ => None,
            },
            Self::Taken => None,
        }
    }

    /// Whether the body can be sent again.
    pub fn is_replayable(&self) -> bool {
        matches!(self, Self::Replayable { .. })
    }
}

fn replay(data: Bytes, trailers: Option<HeaderMap>) -> MeshBody {
    let mut frames = VecDeque::new();
    if !data.is_empty() {
        frames.push_back(Frame::data(data));
    }
    if let Some(t) = trailers {
        frames.push_back(Frame::trailers(t));
    }
    Prefixed {
        frames,
        rest: None::<MeshBody>,
    }
    .boxed_unsync()
}

/// Reads up to `cap` bytes: a body that ends within it is kept whole; a longer one is passed
/// on as the frames read so far followed by the rest.
pub async fn prepare<B>(body: B, cap: usize) -> Result<Prepared, BoxError>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    if body.is_end_stream() {
        return Ok(Prepared::Replayable {
            data: Bytes::new(),
            trailers: None,
        });
    }
    if body.size_hint().lower() as usize > cap {
        return Ok(Prepared::Streaming(body.map_err(Into::into).boxed_unsync()));
    }
    let mut body = Box::pin(body);
    let mut frames = VecDeque::new();
    let mut size = 0usize;
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(Into::into)?;
        if let Some(d) = frame.data_ref() {
            size += d.len();
        }
        if frame.is_trailers() {
            trailers = frame.into_trailers().ok();
            break;
        }
        frames.push_back(frame);
        if size > cap {
            return Ok(Prepared::Streaming(
                Prefixed {
                    frames,
                    rest: Some(body.map_err(Into::into)),
                }
                .boxed_unsync(),
            ));
        }
    }
    let mut data = bytes::BytesMut::with_capacity(size);
    for f in frames {
        if let Ok(d) = f.into_data() {
            data.extend_from_slice(&d);
        }
    }
    Ok(Prepared::Replayable {
        data: data.freeze(),
        trailers,
    })
}

/// Frames already read, then the rest of a body.
struct Prefixed<R> {
    frames: VecDeque<Frame<Bytes>>,
    rest: Option<R>,
}

impl<R> Body for Prefixed<R>
where
    R: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(f) = self.frames.pop_front() {
            return Poll::Ready(Some(Ok(f)));
        }
        match self.rest.as_mut() {
            Some(r) => Pin::new(r).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let buffered: u64 = self
            .frames
            .iter()
            .filter_map(|f| f.data_ref())
            .map(|d| d.len() as u64)
            .sum();
        let rest = self
            .rest
            .as_ref()
            .map(|r| r.size_hint())
            .unwrap_or_else(|| SizeHint::with_exact(0));
        // Raise the upper bound first: a lower bound above the upper one panics.
        let mut hint = SizeHint::new();
        if let Some(u) = rest.upper() {
            hint.set_upper(u + buffered);
        }
        hint.set_lower(rest.lower() + buffered);
        hint
    }
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

    async fn read(b: MeshBody) -> Bytes {
        b.collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn small_bodies_replay_with_exact_size_hints() {
        let mut p = prepare(chunks(&["ab", "cd"]), 16).await.unwrap();
        assert!(p.is_replayable());
        for _ in 0..3 {
            let b = p.attempt().unwrap();
            assert_eq!(b.size_hint().exact(), Some(4));
            assert_eq!(read(b).await, "abcd");
        }
    }

    #[tokio::test]
    async fn large_bodies_stream_once_and_lose_nothing() {
        let mut p = prepare(chunks(&["0123", "4567", "89"]), 5).await.unwrap();
        assert!(!p.is_replayable());
        let b = p.attempt().unwrap();
        assert_eq!(b.size_hint().lower(), 8, "the frames read so far");
        assert_eq!(read(b).await, "0123456789");
        assert!(
            p.attempt().is_none(),
            "a streamed body cannot be sent twice"
        );
        // A body that says up front it is too large is not read at all.
        let big = full(vec![0u8; 100]);
        assert!(!prepare(big, 10).await.unwrap().is_replayable());
    }
}
