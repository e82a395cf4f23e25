//! Answers on their way out. A worker's answer is held in this process until the client
//! has taken it, and a client that never reads would keep it for as long as its
//! connection lives: the answers being sent share a byte budget. A request reserves the
//! most its answer may be before a worker starts (no room: refused, 503, nothing done);
//! the answer keeps its own size of it until its last byte went out (or its connection
//! ended). The body goes out in slices of the one buffer, so nothing is copied and hyper
//! asks for the next slice only once it wrote the last.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The budget is counted in KiB.
const UNIT: usize = 1024;
/// One slice of an answer handed to hyper at a time.
const SLICE: usize = 64 << 10;

/// The bytes of answers being sent at once.
#[derive(Clone)]
pub struct Budget(Arc<Semaphore>);

impl Budget {
    pub fn new(bytes: usize) -> Self {
        Budget(Arc::new(Semaphore::new(bytes.div_ceil(UNIT).max(1))))
    }

    /// Room for an answer of at most `bytes`, if the budget has it now.
    pub fn reserve(&self, bytes: usize) -> Option<Reserved> {
        let units = u32::try_from(units(bytes)).ok()?;
        self.0
            .clone()
            .try_acquire_many_owned(units)
            .ok()
            .map(Reserved)
    }

    /// Bytes free in the budget.
    #[cfg(test)]
    fn free(&self) -> usize {
        self.0.available_permits() * UNIT
    }
}

fn units(bytes: usize) -> usize {
    bytes.div_ceil(UNIT).max(1)
}

/// Room in the budget for an answer not yet there.
pub struct Reserved(OwnedSemaphorePermit);

impl Reserved {
    /// `body` as a response body holding its size of the budget until it is sent; the
    /// rest of the room is given back now.
    pub fn hold(mut self, body: Bytes) -> Held {
        let spare = self.0.num_permits().saturating_sub(units(body.len()));
        drop(self.0.split(spare));
        Held {
            body,
            _permit: self.0,
        }
    }
}

/// An answer being sent, with its share of the budget.
pub struct Held {
    body: Bytes,
    _permit: OwnedSemaphorePermit,
}

impl hyper::body::Body for Held {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.body.is_empty() {
            return Poll::Ready(None);
        }
        let n = self.body.len().min(SLICE);
        Poll::Ready(Some(Ok(Frame::data(self.body.split_to(n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.body.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::body::Body as _;

    #[test]
    fn answers_share_the_budget_until_their_last_slice_is_taken() {
        let budget = Budget::new(200 << 10);
        let room = budget.reserve(180 << 10).unwrap();
        assert_eq!(budget.free(), 20 << 10);
        assert!(
            budget.reserve(60 << 10).is_none(),
            "no room: refused before any work"
        );
        let first = room.hold(Bytes::from(vec![1u8; 150 << 10]));
        assert_eq!(budget.free(), 50 << 10, "the answer keeps its own size");
        assert!(budget.reserve(60 << 10).is_none());
        let mut first = Box::pin(first);
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut sent = 0;
        while let Poll::Ready(Some(Ok(frame))) = first.as_mut().poll_frame(&mut cx) {
            sent += frame.into_data().unwrap().len();
        }
        assert_eq!(sent, 150 << 10);
        assert_eq!(budget.free(), 50 << 10, "held until the body is dropped");
        drop(first);
        assert_eq!(budget.free(), 200 << 10);
        assert!(budget.reserve(60 << 10).is_some());
    }
}
