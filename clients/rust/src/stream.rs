//! Streamed answers (`accept: text/event-stream`): the mesh stream's events and a bounded
//! parser of its SSE framing.
//!
//! Every event of a mesh stream is one `data: <json>` SSE event holding one [`StreamEvent`]:
//! `{"chunk": body}` pieces, then `{"done": body_or_null}` or `{"error": message}`.

use crate::error::{ErrorCode, MeshError};
use serde::Deserialize;

/// Largest SSE line buffered, in bytes (the node bounds its events too).
pub const STREAM_LINE_BYTES_MAX: usize = 1024 * 1024;
/// Most events read from one stream (the node sends at most 4096).
pub const STREAM_EVENTS_MAX: usize = 8192;

/// One event of a mesh stream.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamEvent {
    /// A piece of the answer (a mesh body: `{"text": …}` for text).
    Chunk(serde_json::Value),
    /// The answer is complete; carries a last piece not sent as a chunk, if any. An agent
    /// that does not stream gives exactly one `Done` with its whole answer.
    Done(Option<serde_json::Value>),
    /// The agent failed after the stream began; nothing follows.
    Error(String),
}

/// The SSE framing of a mesh stream, fed bytes as they arrive: complete lines are parsed,
/// `data:` lines gathered, and a blank line ends an event. Pure (no I/O).
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    data: Vec<String>,
    events: usize,
}

impl SseParser {
    /// Feeds `bytes`; returns the events they complete, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<StreamEvent>, MeshError> {
        let mut out = Vec::new();
        for &b in bytes {
            if b != b'\n' {
                if self.line.len() == STREAM_LINE_BYTES_MAX {
                    return Err(bad(format!(
                        "a stream line exceeds {STREAM_LINE_BYTES_MAX} bytes"
                    )));
                }
                self.line.push(b);
                continue;
            }
            let line = std::mem::take(&mut self.line);
            if let Some(event) = self.line_done(&line)? {
                out.push(event);
            }
        }
        Ok(out)
    }

    fn line_done(&mut self, line: &[u8]) -> Result<Option<StreamEvent>, MeshError> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let text = std::str::from_utf8(line).map_err(|_| bad("a stream line is not UTF-8"))?;
        if let Some(d) = text.strip_prefix("data:") {
            self.data.push(d.strip_prefix(' ').unwrap_or(d).to_string());
            return Ok(None);
        }
        if !text.is_empty() || self.data.is_empty() {
            // Comments (`: keep-alive`), other fields, and blank lines between events.
            return Ok(None);
        }
        let data = std::mem::take(&mut self.data).join("\n");
        self.events += 1;
        if self.events > STREAM_EVENTS_MAX {
            return Err(bad(format!("more than {STREAM_EVENTS_MAX} stream events")));
        }
        serde_json::from_str(&data).map(Some).map_err(|e| {
            bad(format!(
                "stream event {data:.128?} is not a mesh event: {e}"
            ))
        })
    }
}

fn bad(message: impl Into<String>) -> MeshError {
    MeshError::new(ErrorCode::BadResponse, message)
}

/// A streamed answer being read: call [`EventStream::next`] until it returns None.
#[derive(Debug)]
pub struct EventStream {
    resp: Option<reqwest::Response>,
    parser: SseParser,
    ready: std::collections::VecDeque<StreamEvent>,
    ended: bool,
}

impl EventStream {
    pub(crate) fn sse(resp: reqwest::Response) -> Self {
        EventStream {
            resp: Some(resp),
            parser: SseParser::default(),
            ready: Default::default(),
            ended: false,
        }
    }

    pub(crate) fn single(event: StreamEvent) -> Self {
        EventStream {
            resp: None,
            parser: SseParser::default(),
            ready: [event].into(),
            ended: false,
        }
    }

    /// The next event; None after the last (`done` or `error`) or when the node closed the
    /// stream. A failure while reading is one `Err`, then None.
    pub async fn next(&mut self) -> Option<Result<StreamEvent, MeshError>> {
        loop {
            if self.ended {
                return None;
            }
            if let Some(e) = self.ready.pop_front() {
                if !matches!(e, StreamEvent::Chunk(_)) {
                    self.end();
                }
                return Some(Ok(e));
            }
            let Some(resp) = self.resp.as_mut() else {
                self.end();
                return None;
            };
            let got = match resp.chunk().await {
                Ok(Some(bytes)) => self.parser.push(&bytes),
                Ok(None) => {
                    self.end();
                    return None;
                }
                Err(e) => Err(MeshError::new(
                    ErrorCode::Unreachable,
                    format!("reading the stream: {e}"),
                )),
            };
            match got {
                Ok(events) => self.ready.extend(events),
                Err(e) => {
                    self.end();
                    return Some(Err(e));
                }
            }
        }
    }

    fn end(&mut self) {
        self.ended = true;
        self.resp = None;
        self.ready.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_across_arbitrary_splits() {
        let wire = ": keep-alive\r\n\r\ndata: {\"chunk\":{\"text\":\"Bon\"}}\r\n\r\n\
                    data: {\"chunk\":\ndata: {\"text\":\"jour\"}}\n\ndata: {\"done\":null}\n\n";
        let want = vec![
            StreamEvent::Chunk(json!({"text": "Bon"})),
            StreamEvent::Chunk(json!({"text": "jour"})),
            StreamEvent::Done(None),
        ];
        for split in [1, 2, 3, 7, wire.len()] {
            let mut p = SseParser::default();
            let mut got = Vec::new();
            for part in wire.as_bytes().chunks(split) {
                got.extend(p.push(part).unwrap());
            }
            assert_eq!(got, want, "split {split}");
        }
        let mut p = SseParser::default();
        assert_eq!(
            p.push(b"data: {\"error\":\"task failed\"}\n\n").unwrap(),
            vec![StreamEvent::Error("task failed".into())]
        );
    }

    #[test]
    fn bad_streams_are_bad_responses() {
        let mut p = SseParser::default();
        let e = p.push(b"data: {\"what\":1}\n\n").unwrap_err();
        assert_eq!(e.code, ErrorCode::BadResponse);
        let mut p = SseParser::default();
        let e = p.push(&vec![b'x'; STREAM_LINE_BYTES_MAX + 1]).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadResponse);
    }
}
