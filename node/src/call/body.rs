//! Reading a streamed answer whole, bounded in size and time (quorum votes and workflow
//! steps need the whole answer).

use crate::contract::{CallError, ErrorCode};
use futures::StreamExt;
use tokio::time::Instant;

/// Reads a response body to its end, at most `limit` bytes, before `deadline`.
pub async fn collect_body(
    mut body: crate::contract::ResponseBody,
    limit: usize,
    deadline: Instant,
) -> Result<Vec<u8>, CallError> {
    let mut out = Vec::new();
    loop {
        let next = tokio::time::timeout_at(deadline, body.next())
            .await
            .map_err(|_| {
                CallError::new(ErrorCode::DeadlineExceeded, "deadline passed mid-answer")
            })?;
        match next {
            None => return Ok(out),
            Some(Err(e)) => {
                return Err(CallError::new(
                    ErrorCode::AgentUnreachable,
                    format!("answer broke off: {e}"),
                ))
            }
            Some(Ok(chunk)) => {
                if out.len() + chunk.len() > limit {
                    return Err(CallError::new(
                        ErrorCode::AgentError,
                        format!("answer exceeds {limit} bytes"),
                    ));
                }
                out.extend_from_slice(&chunk);
            }
        }
    }
}
