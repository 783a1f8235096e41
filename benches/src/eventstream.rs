//! The AWS event-stream framing that Bedrock's `InvokeModelWithResponseStream` answers in.
//!
//! A message is `total_len u32 BE | headers_len u32 BE | prelude_crc u32 BE | headers | payload |
//! message_crc u32 BE`, where the prelude CRC covers the first 8 bytes and the message CRC
//! everything before it (CRC-32, IEEE). The mock only ever writes string headers (type 7); the
//! reader here understands every header type so that it can check what a gateway sends back.

/// The header value type tag of a string (`len u16 BE | bytes`).
const STRING: u8 = 7;
const PRELUDE_LEN: usize = 12;
const CRC_LEN: usize = 4;

/// Encodes one message with string headers.
///
/// # Panics
/// If a header name is longer than 255 bytes or a value longer than 65535 bytes.
pub fn encode_message(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let headers_len: usize = headers
        .iter()
        .map(|(name, value)| 1 + name.len() + 1 + 2 + value.len())
        .sum();
    let total_len = PRELUDE_LEN + headers_len + payload.len() + CRC_LEN;
    let mut out = Vec::with_capacity(total_len);
    out.extend_from_slice(
        &u32::try_from(total_len)
            .expect("message too long")
            .to_be_bytes(),
    );
    out.extend_from_slice(
        &u32::try_from(headers_len)
            .expect("headers too long")
            .to_be_bytes(),
    );
    out.extend_from_slice(&crc32fast::hash(&out).to_be_bytes());
    for (name, value) in headers {
        out.push(u8::try_from(name.len()).expect("header name too long"));
        out.extend_from_slice(name.as_bytes());
        out.push(STRING);
        out.extend_from_slice(
            &u16::try_from(value.len())
                .expect("header value too long")
                .to_be_bytes(),
        );
        out.extend_from_slice(value.as_bytes());
    }
    out.extend_from_slice(payload);
    out.extend_from_slice(&crc32fast::hash(&out).to_be_bytes());
    debug_assert_eq!(out.len(), total_len);
    out
}

/// One message read back by [`decode_messages`], borrowing from the buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Message<'a> {
    /// Every header in order; the value is `Some` for string headers only.
    pub headers: Vec<(&'a str, Option<&'a str>)>,
    /// The payload bytes.
    pub payload: &'a [u8],
}

impl<'a> Message<'a> {
    /// The value of a string header.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| *v)
    }
}

/// Reads every message of a complete stream, checking lengths and both CRCs.
pub fn decode_messages(mut buf: &[u8]) -> Result<Vec<Message<'_>>, String> {
    let mut messages = Vec::new();
    while !buf.is_empty() {
        let at = messages.len();
        if buf.len() < PRELUDE_LEN {
            return Err(format!(
                "message {at}: {} trailing bytes, no prelude",
                buf.len()
            ));
        }
        let total = be32(&buf[0..4]) as usize;
        let headers_len = be32(&buf[4..8]) as usize;
        if be32(&buf[8..12]) != crc32fast::hash(&buf[..8]) {
            return Err(format!("message {at}: bad prelude CRC"));
        }
        if total < PRELUDE_LEN + headers_len + CRC_LEN || total > buf.len() {
            return Err(format!(
                "message {at}: length {total} does not fit ({} left)",
                buf.len()
            ));
        }
        let (frame, rest) = buf.split_at(total);
        if be32(&frame[total - CRC_LEN..]) != crc32fast::hash(&frame[..total - CRC_LEN]) {
            return Err(format!("message {at}: bad message CRC"));
        }
        let headers = decode_headers(&frame[PRELUDE_LEN..PRELUDE_LEN + headers_len])
            .map_err(|e| format!("message {at}: {e}"))?;
        messages.push(Message {
            headers,
            payload: &frame[PRELUDE_LEN + headers_len..total - CRC_LEN],
        });
        buf = rest;
    }
    Ok(messages)
}

type Headers<'a> = Vec<(&'a str, Option<&'a str>)>;

fn decode_headers(mut h: &[u8]) -> Result<Headers<'_>, String> {
    let mut out = Vec::new();
    while !h.is_empty() {
        let name_len = h[0] as usize;
        let name = h.get(1..1 + name_len).ok_or("truncated header name")?;
        let name = std::str::from_utf8(name).map_err(|_| "header name is not UTF-8")?;
        let ty = *h.get(1 + name_len).ok_or("truncated header type")?;
        h = &h[2 + name_len..];
        let (value, used) = match ty {
            0 | 1 => (None, 0),
            2 => (None, 1),
            3 => (None, 2),
            4 => (None, 4),
            5 | 8 => (None, 8),
            9 => (None, 16),
            6 | STRING => {
                let len = h
                    .get(..2)
                    .map(be16)
                    .ok_or("truncated header value length")? as usize;
                let raw = h.get(2..2 + len).ok_or("truncated header value")?;
                let value = if ty == STRING {
                    Some(std::str::from_utf8(raw).map_err(|_| "string header is not UTF-8")?)
                } else {
                    None
                };
                (value, 2 + len)
            }
            other => return Err(format!("unknown header type {other}")),
        };
        if h.len() < used {
            return Err(format!("truncated value of header {name}"));
        }
        out.push((name, value));
        h = &h[used..];
    }
    Ok(out)
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_detects_corruption() {
        let one = encode_message(
            &[(":event-type", "chunk"), (":message-type", "event")],
            b"{}",
        );
        let mut two = one.clone();
        two.extend_from_slice(&encode_message(&[], b"x"));
        let msgs = decode_messages(&two).unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0].header(":event-type"), Some("chunk"));
        assert_eq!(msgs[0].payload, b"{}");
        assert_eq!(msgs[1].payload, b"x");

        let mut bad = one.clone();
        bad[PRELUDE_LEN + 3] ^= 1;
        assert!(decode_messages(&bad).unwrap_err().contains("message CRC"));
        assert!(decode_messages(&one[..one.len() - 1]).is_err());
    }

    /// The framing agrees with the AWS SDK's own decoder, which is what the gateway uses.
    #[test]
    fn aws_smithy_decoder_accepts_our_frames() {
        use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
        let frame = encode_message(&[(":content-type", "application/json")], b"{\"a\":1}");
        let mut buf = bytes::Bytes::from(frame);
        match MessageFrameDecoder::new().decode_frame(&mut buf).unwrap() {
            DecodedFrame::Complete(m) => {
                assert_eq!(m.payload().as_ref(), b"{\"a\":1}");
                let h = &m.headers()[0];
                assert_eq!(h.name().as_str(), ":content-type");
                assert_eq!(h.value().as_string().unwrap().as_str(), "application/json");
            }
            DecodedFrame::Incomplete => panic!("a whole frame decodes"),
        }
    }
}
