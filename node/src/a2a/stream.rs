//! Streamed answers across the mesh, pure and testable (no I/O).
//!
//! A caller asks for a stream with `accept: text/event-stream` (on `POST /v1/call`, or the
//! mesh's A2A endpoint does it for `SendStreamingMessage` / `message/stream`). The node of an
//! A2A agent that streams then forwards each of the agent's SSE events as soon as it arrives,
//! re-encoded as a **mesh stream**: `text/event-stream` whose every event is
//! `data: <json>` with one [`StreamEvent`]:
//!
//! ```text
//! data: {"chunk":{"text":"Bon"}}          a piece of the answer (mesh body form)
//! data: {"chunk":{"text":"jour"}}
//! data: {"done":null}                     complete (or {"done":<body>}: a last piece)
//! data: {"error":"A2A task failed: …"}    failed after the stream began
//! ```
//!
//! The call protocol already carries response bodies as chunks ([`crate::net::call_proto`]), so
//! these events cross the QUIC hop as they come. The mesh's A2A endpoint turns them back into
//! A2A streaming events for its client ([`StreamReply`]): a `task` (working), one
//! `artifactUpdate` per chunk, and a final `statusUpdate` (completed or failed).
//!
//! Bounds: one SSE event is at most [`SSE_EVENT_BYTES_MAX`] bytes (checked while buffering,
//! before parsing) and one stream carries at most [`STREAM_EVENTS_MAX`] events.

use crate::a2a::{self, Answer, Version};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Media type of a streamed answer (and of the accept header asking for one).
pub const STREAM_CONTENT_TYPE: &str = "text/event-stream";
/// Largest SSE event buffered while parsing a stream, in bytes.
pub const SSE_EVENT_BYTES_MAX: usize = a2a::RPC_BYTES_MAX;
/// Most events forwarded in one streamed answer; past it the stream ends with an error.
pub const STREAM_EVENTS_MAX: usize = 4096;

/// True if an `accept` header value asks for a streamed answer.
pub fn wants_stream(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',')
            .any(|m| m.trim().starts_with(STREAM_CONTENT_TYPE))
    })
}

/// One event of a mesh stream (the JSON of an SSE `data:` line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamEvent {
    /// A piece of the answer, as a mesh body.
    Chunk(Value),
    /// The answer is complete; carries a last piece not sent as a chunk, if any.
    Done(Option<Value>),
    /// The agent failed after the stream began; nothing follows.
    Error(String),
}

impl StreamEvent {
    /// The event as one SSE frame.
    pub fn to_sse(&self) -> String {
        let data = serde_json::to_string(self).unwrap_or_else(|_| "{\"error\":\"encode\"}".into());
        format!("data: {data}\n\n")
    }

    /// True if nothing follows this event.
    pub fn is_last(&self) -> bool {
        !matches!(self, StreamEvent::Chunk(_))
    }
}

/// Why an SSE stream cannot be read on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// One event grew past [`SSE_EVENT_BYTES_MAX`] (hostile or broken peer); the buffer is
    /// dropped.
    #[error("SSE event larger than {SSE_EVENT_BYTES_MAX} bytes")]
    EventTooLarge,
}

/// Splits a `text/event-stream` byte stream into the `data` of each event, chunk by chunk.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
}

impl SseParser {
    /// Feeds bytes; returns the data of every event completed by them (events without data
    /// lines, such as comments and keep-alives, are skipped).
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<String>, SseError> {
        // CRs only ever end lines (JSON escapes its own), so dropping them normalises CRLF.
        self.buf
            .extend(chunk.iter().copied().filter(|&b| b != b'\r'));
        let mut out = Vec::new();
        // Complete events end with a blank line; split on bytes so a UTF-8 character cut
        // between chunks stays whole in the remainder.
        while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = self.buf.drain(..end + 2).collect();
            let event = String::from_utf8_lossy(&event);
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|l| l.strip_prefix(' ').unwrap_or(l))
                .collect();
            if !data.is_empty() {
                out.push(data.join("\n"));
            }
        }
        if self.buf.len() > SSE_EVENT_BYTES_MAX {
            self.buf = Vec::new();
            return Err(SseError::EventTooLarge);
        }
        Ok(out)
    }
}

/// Turns an A2A agent's streaming events into mesh stream events, one at a time.
#[derive(Debug, Default)]
pub struct Forwarding {
    events: usize,
    chunks: usize,
    ended: bool,
}

impl Forwarding {
    /// Interprets one SSE `data` (a JSON-RPC response) from the agent. Returns the mesh
    /// event to send, if any; after a returned event with [`StreamEvent::is_last`], stop.
    pub fn step(&mut self, data: &str) -> Option<StreamEvent> {
        if self.ended {
            return None;
        }
        self.events += 1;
        if self.events > STREAM_EVENTS_MAX {
            return self.end(StreamEvent::Error(format!(
                "A2A stream longer than {STREAM_EVENTS_MAX} events"
            )));
        }
        let v: Value = match serde_json::from_str(data) {
            Ok(v) => v,
            Err(e) => return self.end(StreamEvent::Error(format!("A2A event is not JSON: {e}"))),
        };
        if let Some(e) = v.get("error") {
            return self.end(StreamEvent::Error(format!("A2A error: {e}")));
        }
        let result = &v["result"];
        let mut own = Vec::new();
        // A task is a snapshot (its artifacts repeat what updates already carried); artifact
        // updates and messages are new content.
        let snapshot = kind_is(result, "task");
        match a2a::interpret(result, &mut own) {
            Answer::Pending if own.is_empty() || (snapshot && self.chunks > 0) => None,
            Answer::Pending => {
                self.chunks += 1;
                Some(StreamEvent::Chunk(a2a::parts_to_body(&own)))
            }
            Answer::Failed(m) => self.end(StreamEvent::Error(m)),
            Answer::Done(body) => {
                // After streamed chunks only a final message adds content; a completed
                // status or task snapshot does not (the collected path also prefers the
                // artifacts to the status message).
                let last = (self.chunks == 0 || kind_is(result, "message")).then_some(body);
                self.end(StreamEvent::Done(last))
            }
        }
    }

    /// The agent's stream ended (`None`: it ended properly after a last event).
    pub fn finish(&mut self) -> Option<StreamEvent> {
        if self.ended {
            return None;
        }
        let ev = if self.chunks > 0 {
            StreamEvent::Done(None)
        } else {
            StreamEvent::Error("A2A stream ended before a final result".into())
        };
        self.end(ev)
    }

    /// The agent's stream failed (broke, timed out, sent an oversize event).
    pub fn fail(&mut self, why: String) -> Option<StreamEvent> {
        if self.ended {
            return None;
        }
        self.end(StreamEvent::Error(why))
    }

    fn end(&mut self, ev: StreamEvent) -> Option<StreamEvent> {
        self.ended = true;
        Some(ev)
    }
}

/// True if a JSON-RPC result is of `kind` (v1.0 wraps by type, v0.3 tags with `kind`).
fn kind_is(result: &Value, kind: &str) -> bool {
    result.get(kind).is_some() || result["kind"] == kind
}

/// Builds the A2A streaming events the mesh's endpoint sends its client for a mesh stream:
/// a `task` first, an artifact update per piece, a final status update.
#[derive(Debug)]
pub struct StreamReply {
    version: Version,
    task_id: String,
    context_id: String,
    artifact_id: String,
    pieces: usize,
}

impl StreamReply {
    /// A reply in the client's protocol `version`, in its context (or a new one).
    pub fn new(version: Version, context_id: Option<String>) -> Self {
        StreamReply {
            version,
            task_id: a2a::new_id(),
            context_id: context_id.unwrap_or_else(a2a::new_id),
            artifact_id: a2a::new_id(),
            pieces: 0,
        }
    }

    /// The first result: the task, working.
    pub fn start(&self) -> Value {
        let task = json!({
            "id": self.task_id,
            "contextId": self.context_id,
            "status": { "state": self.state("working") },
        });
        match self.version {
            Version::V1 => json!({ "task": task }),
            Version::V03 => tagged("task", task),
        }
    }

    /// The results for one mesh stream event (the last ones end with a final status).
    pub fn on_event(&mut self, ev: StreamEvent) -> Vec<Value> {
        match ev {
            StreamEvent::Chunk(body) => vec![self.piece(&body, false)],
            StreamEvent::Done(Some(body)) => {
                vec![self.piece(&body, true), self.status("completed", None)]
            }
            StreamEvent::Done(None) => vec![self.status("completed", None)],
            StreamEvent::Error(m) => vec![self.status("failed", Some(&m))],
        }
    }

    /// The mesh stream broke or ended without a final event.
    pub fn broken(&self, why: &str) -> Value {
        self.status("failed", Some(why))
    }

    fn piece(&mut self, body: &Value, last: bool) -> Value {
        let append = self.pieces > 0;
        self.pieces += 1;
        let ev = json!({
            "taskId": self.task_id,
            "contextId": self.context_id,
            "artifact": {
                "artifactId": self.artifact_id,
                "parts": a2a::body_to_parts(body, self.version),
            },
            "append": append,
            "lastChunk": last,
        });
        match self.version {
            Version::V1 => json!({ "artifactUpdate": ev }),
            Version::V03 => tagged("artifact-update", ev),
        }
    }

    fn status(&self, state: &str, why: Option<&str>) -> Value {
        let mut status = json!({ "state": self.state(state) });
        if let Some(w) = why {
            let parts = a2a::body_to_parts(&json!({ "text": w }), self.version);
            status["message"] = a2a::message(parts, true, Some(&self.context_id), self.version);
        }
        let mut ev = json!({
            "taskId": self.task_id,
            "contextId": self.context_id,
            "status": status,
        });
        match self.version {
            Version::V1 => json!({ "statusUpdate": ev }),
            Version::V03 => {
                // v0.3 marks the last event; v1.0 dropped the field (the stream's end says it).
                ev["final"] = true.into();
                tagged("status-update", ev)
            }
        }
    }

    fn state(&self, s: &str) -> String {
        match self.version {
            Version::V1 => format!("TASK_STATE_{}", s.to_ascii_uppercase()),
            Version::V03 => s.to_string(),
        }
    }
}

fn tagged(kind: &str, mut v: Value) -> Value {
    v["kind"] = kind.into();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rpc(result: Value) -> String {
        json!({ "jsonrpc": "2.0", "id": 1, "result": result }).to_string()
    }

    fn artifact_v1(text: &str) -> String {
        rpc(
            json!({ "artifactUpdate": { "taskId": "t", "artifact": { "parts": [{ "text": text }] } } }),
        )
    }

    #[test]
    fn artifact_updates_forward_one_chunk_each_then_done() {
        let mut f = Forwarding::default();
        let task =
            rpc(json!({ "task": { "id": "t", "status": { "state": "TASK_STATE_WORKING" } } }));
        assert_eq!(f.step(&task), None, "a working task carries nothing yet");
        assert_eq!(
            f.step(&artifact_v1("Bon")),
            Some(StreamEvent::Chunk(json!({ "text": "Bon" })))
        );
        assert_eq!(
            f.step(&artifact_v1("jour")),
            Some(StreamEvent::Chunk(json!({ "text": "jour" })))
        );
        let done =
            rpc(json!({ "statusUpdate": { "status": { "state": "TASK_STATE_COMPLETED" } } }));
        assert_eq!(f.step(&done), Some(StreamEvent::Done(None)));
        assert_eq!(f.step(&artifact_v1("late")), None, "nothing after the end");
        assert_eq!(f.finish(), None);
    }

    #[test]
    fn a_task_snapshot_after_chunks_adds_nothing() {
        let mut f = Forwarding::default();
        assert!(matches!(
            f.step(&artifact_v1("a")),
            Some(StreamEvent::Chunk(_))
        ));
        let snap = |state: &str| {
            rpc(json!({ "task": { "status": { "state": state },
                "artifacts": [{ "parts": [{ "text": "a" }] }] } }))
        };
        assert_eq!(
            f.step(&snap("TASK_STATE_WORKING")),
            None,
            "no repeat of chunk a"
        );
        assert_eq!(
            f.step(&snap("TASK_STATE_COMPLETED")),
            Some(StreamEvent::Done(None))
        );
        // Without chunks before it, the completed snapshot is the whole answer.
        let mut f = Forwarding::default();
        assert_eq!(
            f.step(&snap("TASK_STATE_COMPLETED")),
            Some(StreamEvent::Done(Some(json!({ "text": "a" }))))
        );
    }

    #[test]
    fn a_final_message_is_the_last_piece() {
        let mut f = Forwarding::default();
        let m = rpc(json!({ "message": { "parts": [{ "text": "hi" }] } }));
        assert_eq!(
            f.step(&m),
            Some(StreamEvent::Done(Some(json!({ "text": "hi" }))))
        );
    }

    #[test]
    fn failures_and_early_ends_are_errors() {
        let mut f = Forwarding::default();
        let failed = rpc(json!({ "kind": "status-update", "status": { "state": "failed" } }));
        assert!(matches!(f.step(&failed), Some(StreamEvent::Error(_))));
        let mut f = Forwarding::default();
        assert!(matches!(f.finish(), Some(StreamEvent::Error(_))));
        let mut f = Forwarding::default();
        assert!(matches!(f.step("{nope"), Some(StreamEvent::Error(_))));
        let mut f = Forwarding::default();
        let err = json!({ "jsonrpc": "2.0", "id": 1, "error": { "code": -1 } }).to_string();
        assert!(matches!(f.step(&err), Some(StreamEvent::Error(_))));
    }

    #[test]
    fn event_count_is_bounded() {
        let mut f = Forwarding::default();
        for _ in 0..STREAM_EVENTS_MAX {
            assert!(matches!(
                f.step(&artifact_v1("x")),
                Some(StreamEvent::Chunk(_))
            ));
        }
        assert!(matches!(
            f.step(&artifact_v1("x")),
            Some(StreamEvent::Error(_))
        ));
    }

    #[test]
    fn sse_parser_handles_split_crlf_and_comments() {
        let mut p = SseParser::default();
        assert_eq!(
            p.push(b": keep-alive\r\n\r\ndata: {\"a\"").unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(p.push(b":1}\r\n\r\ndata: x\n").unwrap(), vec!["{\"a\":1}"]);
        assert_eq!(p.push(b"data: y\n\n").unwrap(), vec!["x\ny"]);
    }

    #[test]
    fn sse_parser_refuses_an_oversize_event() {
        let mut p = SseParser::default();
        let big = vec![b'a'; SSE_EVENT_BYTES_MAX + 1];
        assert_eq!(p.push(&big), Err(SseError::EventTooLarge));
    }

    #[test]
    fn reply_builds_task_pieces_and_final_status_per_version() {
        let mut r = StreamReply::new(Version::V1, Some("ctx".into()));
        assert_eq!(r.start()["task"]["status"]["state"], "TASK_STATE_WORKING");
        let a = r.on_event(StreamEvent::Chunk(json!({ "text": "a" })));
        assert_eq!(a[0]["artifactUpdate"]["append"], false);
        assert_eq!(a[0]["artifactUpdate"]["artifact"]["parts"][0]["text"], "a");
        let b = r.on_event(StreamEvent::Done(Some(json!({ "text": "b" }))));
        assert_eq!(b[0]["artifactUpdate"]["append"], true);
        assert_eq!(b[0]["artifactUpdate"]["lastChunk"], true);
        assert_eq!(
            b[1]["statusUpdate"]["status"]["state"],
            "TASK_STATE_COMPLETED"
        );
        assert!(b[1]["statusUpdate"].get("final").is_none());
        let mut r = StreamReply::new(Version::V03, None);
        assert_eq!(r.start()["kind"], "task");
        let e = r.on_event(StreamEvent::Error("boom".into()));
        assert_eq!(e[0]["kind"], "status-update");
        assert_eq!(e[0]["status"]["state"], "failed");
        assert_eq!(e[0]["final"], true);
        assert_eq!(e[0]["status"]["message"]["parts"][0]["text"], "boom");
    }

    #[test]
    fn accept_header_asks_for_a_stream() {
        assert!(wants_stream(Some("text/event-stream")));
        assert!(wants_stream(Some(
            "application/json, text/event-stream;q=0.9"
        )));
        assert!(!wants_stream(Some("application/json")));
        assert!(!wants_stream(None));
    }

    proptest! {
        /// However the bytes are cut, the parser yields the same events, and never panics.
        #[test]
        fn sse_parser_is_chunking_independent(
            datas in proptest::collection::vec("[a-z{}\":0-9 ]{0,40}", 0..8),
            cuts in proptest::collection::vec(0usize..400, 0..8),
        ) {
            let text: String = datas.iter().map(|d| format!("data: {d}\r\n\r\n")).collect();
            let bytes = text.as_bytes();
            let mut whole = SseParser::default();
            let want = whole.push(bytes).unwrap();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort_unstable();
            let mut p = SseParser::default();
            let (mut got, mut at) = (Vec::new(), 0);
            for c in cuts.into_iter().chain([bytes.len()]) {
                got.extend(p.push(&bytes[at..c]).unwrap());
                at = c;
            }
            prop_assert_eq!(got, want);
        }

        /// Arbitrary agent events never panic the forwarder, and it ends at most once.
        #[test]
        fn forwarding_never_panics(events in proptest::collection::vec(".{0,80}", 0..16)) {
            let mut f = Forwarding::default();
            let mut lasts = 0;
            for e in &events {
                if f.step(e).is_some_and(|ev| ev.is_last()) {
                    lasts += 1;
                }
            }
            if f.finish().is_some() {
                lasts += 1;
            }
            prop_assert_eq!(lasts, 1);
        }
    }
}
