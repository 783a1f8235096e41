//! Server-sent events (`text/event-stream`), as the Anthropic API and Vertex AI stream.
//!
//! [`SseDecoder`] takes body chunks as they arrive and hands back whole events; an event may
//! span chunks and a chunk may hold many events. Only what the Anthropic streams use is kept:
//! the `event:` name and the `data:` lines (joined with `\n`); comments and `id:`/`retry:`
//! are skipped. The format is small enough that a crate would add more than it saves; the
//! rules followed are the WHATWG ones (LF, CR or CRLF line ends, one optional space after
//! the colon, a blank line ends the event).
//!
//! [`encode_event`] writes one event back.

use bytes::{Buf, Bytes, BytesMut};

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` field, when given.
    pub event: Option<String>,
    /// The `data:` lines, joined with `\n`.
    pub data: Vec<u8>,
}

/// Longest event accepted (a single Anthropic event is far smaller).
const MAX_EVENT: usize = 16 * 1024 * 1024;

/// Incremental decoder: push chunks, pull events.
#[derive(Debug, Default)]
pub struct SseDecoder {
    buffer: BytesMut,
    current: SseEvent,
    has_fields: bool,
}

/// Why decoding stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an event is larger than {MAX_EVENT} bytes")]
pub struct SseTooLarge;

impl SseDecoder {
    /// A decoder with an empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a body chunk.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buffer.extend_from_slice(chunk);
    }

    /// The next complete event, `Ok(None)` when more bytes are needed.
    pub fn next_event(&mut self) -> Result<Option<SseEvent>, SseTooLarge> {
        loop {
            let Some(end) = self.buffer.iter().position(|b| *b == b'\n' || *b == b'\r') else {
                if self.buffer.len() + self.current.data.len() > MAX_EVENT {
                    return Err(SseTooLarge);
                }
                return Ok(None);
            };
            // A CR at the very end may be the first half of a CRLF still to come.
            if self.buffer[end] == b'\r' && end + 1 == self.buffer.len() {
                return Ok(None);
            }
            let line = self.buffer.split_to(end);
            let skip = if self.buffer[0] == b'\r' && self.buffer.get(1) == Some(&b'\n') {
                2
            } else {
                1
            };
            self.buffer.advance(skip);
            if line.is_empty() {
                if self.has_fields {
                    self.has_fields = false;
                    return Ok(Some(std::mem::take(&mut self.current)));
                }
                continue;
            }
            self.field(&line)?;
        }
    }

    /// Bytes of an event not yet complete (a cut stream leaves some).
    pub fn pending(&self) -> usize {
        self.buffer.len() + self.current.data.len()
    }

    fn field(&mut self, line: &[u8]) -> Result<(), SseTooLarge> {
        if line[0] == b':' {
            return Ok(());
        }
        let (name, value) = match line.iter().position(|b| *b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match name {
            b"event" => {
                self.current.event = Some(String::from_utf8_lossy(value).into_owned());
                self.has_fields = true;
            }
            b"data" => {
                if self.current.data.len() + value.len() > MAX_EVENT {
                    return Err(SseTooLarge);
                }
                if self.has_fields && !self.current.data.is_empty() {
                    self.current.data.push(b'\n');
                }
                self.current.data.extend_from_slice(value);
                self.has_fields = true;
            }
            _ => {}
        }
        Ok(())
    }
}

/// One event as SSE text: `event: <name>\ndata: <data>\n\n`.
pub fn encode_event(event: &str, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(event.len() + data.len() + 16);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[u8], piece: usize) -> Vec<SseEvent> {
        let mut d = SseDecoder::new();
        let mut out = Vec::new();
        for chunk in input.chunks(piece) {
            d.push(chunk);
            while let Some(e) = d.next_event().unwrap() {
                out.push(e);
            }
        }
        out
    }

    #[test]
    fn events_whatever_the_chunking_and_line_ends() {
        let text = b": comment\r\nevent: message_start\r\ndata: {\"a\":1}\r\n\r\nevent: ping\ndata: {}\n\ndata: x\ndata:y\n\n";
        for piece in [1, 2, 3, 7, 100] {
            let events = all(text, piece);
            assert_eq!(events.len(), 3, "piece {piece}");
            assert_eq!(events[0].event.as_deref(), Some("message_start"));
            assert_eq!(events[0].data, b"{\"a\":1}");
            assert_eq!(events[1].event.as_deref(), Some("ping"));
            assert_eq!(events[2].event, None);
            assert_eq!(events[2].data, b"x\ny");
        }
    }

    #[test]
    fn an_unfinished_event_is_pending() {
        let mut d = SseDecoder::new();
        d.push(b"event: message_delta\ndata: {\"x\"");
        assert_eq!(d.next_event().unwrap(), None);
        assert!(d.pending() > 0);
    }

    #[test]
    fn encoding_round_trips() {
        let e = encode_event("message_stop", b"{\"type\":\"message_stop\"}");
        let events = all(&e, 5);
        assert_eq!(events[0].event.as_deref(), Some("message_stop"));
        assert_eq!(events[0].data, b"{\"type\":\"message_stop\"}");
    }
}
