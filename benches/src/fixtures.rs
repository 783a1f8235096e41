//! The bodies both binaries exchange: a Bedrock `InvokeModel` request, its JSON answer, and the
//! event-stream frames of a streamed answer (the Anthropic events of PROTOCOLS.md §5, each
//! base64-wrapped in a `chunk` event as Bedrock sends them, §2).

use base64::Engine as _;
use serde_json::{json, Value};

use crate::eventstream::encode_message;

/// The model ID loadgen asks for, percent-encoded as boto3 sends it.
pub const MODEL_PATH_SEGMENT: &str = "us.anthropic.claude-sonnet-4-5-20250929-v1%3A0";
/// The model name the answers carry.
pub const MODEL_NAME: &str = "claude-sonnet-4-5-20250929";
/// Input tokens every answer reports.
pub const INPUT_TOKENS: u64 = 512;

const WORDS: &[&str] = &[
    "the",
    "gateway",
    "forwards",
    "each",
    "request",
    "to",
    "an",
    "upstream",
    "and",
    "streams",
    "its",
    "answer",
    "back",
    "without",
    "buffering",
    "while",
    "plugins",
    "observe",
    "usage",
];

/// Deterministic English-looking text of exactly `len` bytes (ASCII, no JSON escapes needed).
pub fn filler_text(len: usize) -> String {
    let mut s = String::with_capacity(len + 16);
    let mut i = 0;
    while s.len() < len {
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(WORDS[i % WORDS.len()]);
        i += 1;
    }
    s.truncate(len);
    s
}

/// A Bedrock Messages request body of about `target_len` bytes (never less than the skeleton).
pub fn request_body(target_len: usize) -> Vec<u8> {
    let build = |text: &str| {
        serde_json::to_vec(&json!({
            "anthropic_version": "bedrock-2023-05-31",
            "max_tokens": 1024,
            "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}],
        }))
        .expect("static JSON")
    };
    let skeleton = build("").len();
    build(&filler_text(target_len.saturating_sub(skeleton)))
}

/// The JSON answer of `InvokeModel`, about `target_len` bytes, and its output token count.
pub fn invoke_answer(target_len: usize) -> (Vec<u8>, u64) {
    let build = |text: &str, output_tokens: u64| {
        serde_json::to_vec(&json!({
            "id": "msg_bdrk_01BenchMockUpstream0000000",
            "type": "message",
            "role": "assistant",
            "model": MODEL_NAME,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": null,
            "usage": {
                "input_tokens": INPUT_TOKENS,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": output_tokens,
            },
        }))
        .expect("static JSON")
    };
    let skeleton = build("", 0).len() + 3;
    let text = filler_text(target_len.saturating_sub(skeleton));
    let output_tokens = (text.len() as u64 / 4).max(1);
    (build(&text, output_tokens), output_tokens)
}

/// The Anthropic streaming events of one answer with `deltas` text deltas of `delta_len` bytes.
/// The last one, `message_stop`, carries Bedrock's `amazon-bedrock-invocationMetrics`.
pub fn stream_events(deltas: usize, delta_len: usize) -> Vec<Value> {
    let output_tokens = (deltas * delta_len / 4).max(1) as u64;
    let mut events = vec![
        json!({"type": "message_start", "message": {
            "id": "msg_bdrk_01BenchMockUpstream0000000", "type": "message", "role": "assistant",
            "model": MODEL_NAME, "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": INPUT_TOKENS, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0, "output_tokens": 1}}}),
        json!({"type": "content_block_start", "index": 0,
               "content_block": {"type": "text", "text": ""}}),
    ];
    let text = filler_text(deltas * delta_len);
    for i in 0..deltas {
        let piece = &text[i * delta_len..(i + 1) * delta_len];
        events.push(json!({"type": "content_block_delta", "index": 0,
                           "delta": {"type": "text_delta", "text": piece}}));
    }
    events.push(json!({"type": "content_block_stop", "index": 0}));
    events.push(json!({"type": "message_delta",
                       "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                       "usage": {"output_tokens": output_tokens}}));
    events.push(
        json!({"type": "message_stop", "amazon-bedrock-invocationMetrics": {
        "inputTokenCount": INPUT_TOKENS, "outputTokenCount": output_tokens,
        "invocationLatency": 412, "firstByteLatency": 87}}),
    );
    events
}

/// Wraps each event in a Bedrock `chunk` frame: payload `{"bytes":"<base64>","p":"<padding>"}`.
pub fn stream_frames(events: &[Value]) -> Vec<Vec<u8>> {
    const PAD: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    events
        .iter()
        .enumerate()
        .map(|(i, event)| {
            let raw = serde_json::to_vec(event).expect("static JSON");
            let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
            // Bedrock pads payloads to hide token lengths; vary it like the real thing.
            let pad = &PAD[..(i * 7) % PAD.len()];
            let payload = serde_json::to_vec(&json!({"bytes": b64, "p": pad})).expect("JSON");
            encode_message(
                &[
                    (":event-type", "chunk"),
                    (":content-type", "application/json"),
                    (":message-type", "event"),
                ],
                &payload,
            )
        })
        .collect()
}

/// Checks a streamed answer: valid frames, `chunk` events whose base64 payloads decode to JSON
/// Anthropic events, the last one `message_stop`. Returns the number of frames.
pub fn check_stream_answer(body: &[u8]) -> Result<usize, String> {
    let messages = crate::eventstream::decode_messages(body)?;
    let mut last_type = String::new();
    for (i, m) in messages.iter().enumerate() {
        if m.header(":message-type") != Some("event") || m.header(":event-type") != Some("chunk") {
            return Err(format!("frame {i}: not a chunk event: {:?}", m.headers));
        }
        let payload: Value =
            serde_json::from_slice(m.payload).map_err(|e| format!("frame {i}: payload: {e}"))?;
        let b64 = payload["bytes"]
            .as_str()
            .ok_or(format!("frame {i}: no \"bytes\""))?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("frame {i}: base64: {e}"))?;
        let event: Value =
            serde_json::from_slice(&raw).map_err(|e| format!("frame {i}: event: {e}"))?;
        last_type = event["type"].as_str().unwrap_or_default().to_string();
    }
    if last_type != "message_stop" {
        return Err(format!("last event is {last_type:?}, not message_stop"));
    }
    Ok(messages.len())
}

/// Checks an `InvokeModel` answer: a JSON Messages object.
pub fn check_invoke_answer(body: &[u8]) -> Result<(), String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("answer is not JSON: {e}"))?;
    if v["type"] != "message" || !v["content"].is_array() {
        return Err(format!(
            "not a Messages answer: {}",
            String::from_utf8_lossy(body)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_have_the_requested_size() {
        let req = request_body(2048);
        assert_eq!(req.len(), 2048);
        let v: Value = serde_json::from_slice(&req).unwrap();
        assert_eq!(v["anthropic_version"], "bedrock-2023-05-31");
        let (answer, _) = invoke_answer(2048);
        assert!((2000..=2100).contains(&answer.len()), "{}", answer.len());
        check_invoke_answer(&answer).unwrap();
    }

    #[test]
    fn stream_frames_decode_with_the_aws_sdk_decoder() {
        use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
        let events = stream_events(20, 40);
        let frames = stream_frames(&events);
        let all: Vec<u8> = frames.concat();
        assert_eq!(check_stream_answer(&all).unwrap(), events.len());

        // Feed it in awkward 7-byte pieces, as a network would, through the SDK's decoder.
        let mut decoder = MessageFrameDecoder::new();
        let mut buf = bytes::BytesMut::new();
        let mut decoded = Vec::new();
        for piece in all.chunks(7) {
            buf.extend_from_slice(piece);
            while let DecodedFrame::Complete(m) = decoder.decode_frame(&mut buf).unwrap() {
                decoded.push(m);
            }
        }
        assert!(buf.is_empty());
        assert_eq!(decoded.len(), events.len());
        for (m, event) in decoded.iter().zip(&events) {
            let headers: Vec<(String, String)> = m
                .headers()
                .iter()
                .map(|h| {
                    (
                        h.name().as_str().into(),
                        h.value().as_string().unwrap().as_str().into(),
                    )
                })
                .collect();
            assert!(headers.contains(&(":event-type".into(), "chunk".into())));
            assert!(headers.contains(&(":message-type".into(), "event".into())));
            let payload: Value = serde_json::from_slice(m.payload()).unwrap();
            let raw = base64::engine::general_purpose::STANDARD
                .decode(payload["bytes"].as_str().unwrap())
                .unwrap();
            assert_eq!(&serde_json::from_slice::<Value>(&raw).unwrap(), event);
        }
        let last = events.last().unwrap();
        assert_eq!(
            last["amazon-bedrock-invocationMetrics"]["inputTokenCount"],
            INPUT_TOKENS
        );
    }
}
