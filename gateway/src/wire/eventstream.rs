//! AWS event-stream framing (`application/vnd.amazon.eventstream`), as Bedrock streams use it.
//!
//! Frames are decoded by the AWS SDK's own codec, `aws-smithy-eventstream`, which checks the
//! prelude and message CRCs. [`EventStreamDecoder`] feeds it the response body as it arrives:
//! each HTTP chunk is pushed as a `Bytes` handle (no copy) into a segmented buffer, because
//! frames do not line up with chunks. The chunks the client receives are the same handles,
//! untouched; decoding only observes them.

use aws_smithy_eventstream::frame::{write_message_to, DecodedFrame, MessageFrameDecoder};
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use bytes::{Buf, Bytes};
use bytes_utils::SegmentedBuf;

pub use aws_smithy_eventstream::error::Error as FrameError;

/// Incremental decoder: push chunks, pull whole messages.
#[derive(Debug, Default)]
pub struct EventStreamDecoder {
    buffer: SegmentedBuf<Bytes>,
    frames: MessageFrameDecoder,
}

impl EventStreamDecoder {
    /// A decoder with an empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a body chunk (a cheap handle clone, never a copy).
    pub fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.buffer.push(chunk);
        }
    }

    /// The next complete message, `Ok(None)` when more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Message>, FrameError> {
        match self.frames.decode_frame(&mut self.buffer)? {
            DecodedFrame::Complete(message) => Ok(Some(message)),
            DecodedFrame::Incomplete => Ok(None),
        }
    }

    /// Bytes received but not yet decoded (a partial frame at the end of the stream).
    pub fn pending(&self) -> usize {
        self.buffer.remaining()
    }
}

/// The value of a string header such as `:event-type`, if present.
pub fn header_str<'a>(message: &'a Message, name: &str) -> Option<&'a str> {
    message
        .headers()
        .iter()
        .find(|h| h.name().as_str() == name)
        .and_then(|h| h.value().as_string().ok())
        .map(|s| s.as_str())
}

/// Encodes one message with string headers (used by tests and, later, by translation).
pub fn encode_message(headers: &[(&str, &str)], payload: Bytes) -> Bytes {
    let message = Message::new_from_parts(
        headers
            .iter()
            .map(|(n, v)| Header::new(n.to_string(), HeaderValue::String(v.to_string().into())))
            .collect(),
        payload,
    );
    let mut out = Vec::with_capacity(message.payload().len() + 128);
    write_message_to(&message, &mut out).expect("a message with string headers always encodes");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(payload: &str) -> Bytes {
        encode_message(
            &[
                (":event-type", "chunk"),
                (":content-type", "application/json"),
                (":message-type", "event"),
            ],
            Bytes::from(payload.to_string()),
        )
    }

    #[test]
    fn round_trips_messages_split_at_every_offset() {
        let a = event(r#"{"bytes":"eyJ0eXBlIjoicGluZyJ9"}"#);
        let b = event(r#"{"bytes":"e30="}"#);
        let stream = [a.clone(), b.clone()].concat();
        for cut in 0..stream.len() {
            let mut d = EventStreamDecoder::new();
            let mut got = Vec::new();
            for part in [&stream[..cut], &stream[cut..]] {
                d.push(Bytes::copy_from_slice(part));
                while let Some(m) = d.next_message().unwrap() {
                    got.push(m);
                }
            }
            assert_eq!(got.len(), 2, "cut at {cut}");
            assert_eq!(header_str(&got[0], ":event-type"), Some("chunk"));
            assert_eq!(got[1].payload().as_ref(), br#"{"bytes":"e30="}"#);
            assert_eq!(d.pending(), 0);
        }
    }

    #[test]
    fn one_byte_chunks_decode() {
        let a = event(r#"{"bytes":"e30="}"#);
        let mut d = EventStreamDecoder::new();
        let mut n = 0;
        for i in 0..a.len() {
            d.push(a.slice(i..i + 1));
            while d.next_message().unwrap().is_some() {
                n += 1;
            }
        }
        assert_eq!(n, 1);
    }

    #[test]
    fn corrupted_message_crc_is_an_error() {
        let mut a = event(r#"{"bytes":"e30="}"#).to_vec();
        let last = a.len() - 1;
        a[last] ^= 0xff;
        let mut d = EventStreamDecoder::new();
        d.push(Bytes::from(a));
        assert!(d.next_message().is_err());
    }

    #[test]
    fn corrupted_prelude_crc_is_an_error() {
        let mut a = event(r#"{"bytes":"e30="}"#).to_vec();
        a[9] ^= 0x01; // inside the prelude CRC
        let mut d = EventStreamDecoder::new();
        d.push(Bytes::from(a));
        assert!(d.next_message().is_err());
    }

    #[test]
    fn corrupted_payload_is_an_error() {
        let mut a = event(r#"{"bytes":"e30="}"#).to_vec();
        let mid = a.len() - 8;
        a[mid] ^= 0x20;
        let mut d = EventStreamDecoder::new();
        d.push(Bytes::from(a));
        assert!(d.next_message().is_err());
    }
}
