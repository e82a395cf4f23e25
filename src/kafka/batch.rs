//! Messages the poll thread polled, copied into one buffer for the driver. The driver's
//! used batches give their buffers back for the next ones: a fresh buffer faults its pages
//! in at every batch.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use rdkafka::message::{BorrowedMessage, Headers, Message};

use super::CONTROL_HEADER;

/// Polled messages, copied into one buffer.
#[derive(Default)]
pub(super) struct Batch {
    data: Vec<u8>,
    messages: Vec<Polled>,
    /// Where this batch's buffers go once it is used.
    spare: Arc<Spare>,
}

/// One polled message: where its control header and payload are in the batch's buffer.
pub(super) struct Polled {
    pub partition: i32,
    pub offset: i64,
    control: Option<Range<usize>>,
    payload: Range<usize>,
}

/// Buffers of used batches, for the next ones.
#[derive(Default)]
struct Spare(Mutex<Vec<(Vec<u8>, Vec<Polled>)>>);

/// Used batches' buffers kept for the next ones: the batches on their way (the channel to
/// the driver holds a few) and one being applied.
const SPARE: usize = 8;
/// A buffer larger than this (a batch of unusually large messages) is not kept.
const SPARE_BYTES: usize = 4 << 20;

impl Spare {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Vec<u8>, Vec<Polled>)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Batch {
    pub fn push(&mut self, m: &BorrowedMessage<'_>) {
        let control = m.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == CONTROL_HEADER)
                .and_then(|h| h.value)
        });
        let payload = m.payload().unwrap_or_default();
        self.push_parts(m.partition(), m.offset(), control, payload);
    }

    /// A message's parts copied in (what [`Batch::push`] does with a polled one; tests,
    /// which have no client, call it directly).
    pub fn push_parts(
        &mut self,
        partition: i32,
        offset: i64,
        control: Option<&[u8]>,
        payload: &[u8],
    ) {
        let control = control.map(|c| self.copy(c));
        let payload = self.copy(payload);
        self.messages.push(Polled {
            partition,
            offset,
            control,
            payload,
        });
    }

    fn copy(&mut self, bytes: &[u8]) -> Range<usize> {
        let start = self.data.len();
        self.data.extend_from_slice(bytes);
        start..self.data.len()
    }

    /// The messages so far, leaving an empty batch: with a used batch's buffers when one
    /// was given back, or new ones of this batch's capacity (a batch's buffer grows to its
    /// size once, not at every batch).
    pub fn take(&mut self) -> Batch {
        let spare = self.spare.lock().pop();
        let (data, messages) = spare.unwrap_or_else(|| {
            (
                Vec::with_capacity(self.data.capacity()),
                Vec::with_capacity(self.messages.capacity()),
            )
        });
        let empty = Batch {
            data,
            messages,
            spare: self.spare.clone(),
        };
        std::mem::replace(self, empty)
    }

    pub fn clear(&mut self) {
        self.data.clear();
        self.messages.clear();
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    pub fn messages(&self) -> &[Polled] {
        &self.messages
    }

    pub fn control(&self, m: &Polled) -> Option<&[u8]> {
        m.control.clone().map(|r| &self.data[r])
    }

    pub fn payload(&self, m: &Polled) -> &[u8] {
        &self.data[m.payload.clone()]
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        if self.data.capacity() == 0 || self.data.capacity() > SPARE_BYTES {
            return;
        }
        self.clear();
        let buffers = (
            std::mem::take(&mut self.data),
            std::mem::take(&mut self.messages),
        );
        let mut spare = self.spare.lock();
        if spare.len() < SPARE {
            spare.push(buffers);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_used_batch_gives_its_buffers_to_the_next_one() {
        let mut polling = Batch::default();
        polling.push_parts(0, 7, None, b"payload");
        let sent = polling.take();
        assert!(polling.is_empty());
        assert_eq!(sent.payload(&sent.messages()[0]), b"payload");
        let buffer = sent.data.as_ptr();
        drop(sent);
        // The next batch taken is filled in the used one's buffer, emptied.
        polling.push_parts(0, 8, Some(b"control"), b"");
        let next = polling.take();
        assert_eq!(polling.data.as_ptr(), buffer);
        assert!(polling.is_empty() && polling.data.is_empty());
        assert_eq!(next.control(&next.messages()[0]), Some(&b"control"[..]));
        drop(next);
        assert_eq!(polling.spare.lock().len(), 1);
    }
}
