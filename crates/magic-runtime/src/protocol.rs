//! The runtime side of the worker protocol (`docs/protocol.md`).
//!
//! Owns: framing (4-byte big-endian length + one JSON object) and the frame types. Must never:
//! allocate a frame larger than [`MAX_FRAME`] because a peer said so, or panic on a bad frame.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame either side may send.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// A frame the runtime sends.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToWorker<'a> {
    /// Start the execution.
    Execute {
        /// Request ID.
        request_id: &'a str,
        /// Controller name.
        controller: &'a str,
        /// Controller version.
        version: &'a str,
        /// Validated input.
        input: &'a serde_json::Value,
        /// Milliseconds until the execution is killed.
        timeout_ms: u64,
        /// Private temp dir, when `fs:temp` is declared.
        temp_dir: Option<&'a str>,
    },
    /// The answer to a `call`.
    Reply {
        /// The call's id.
        id: u64,
        /// Whether it succeeded.
        ok: bool,
        /// The value, when it did.
        #[serde(skip_serializing_if = "Option::is_none")]
        value: Option<serde_json::Value>,
        /// The error, when it did not.
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<WireError>,
    },
}

/// An error as it crosses the socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireError {
    /// Public error code (`E2004`).
    pub code: String,
    /// Message.
    pub message: String,
    /// Structured details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
    /// Python exception type name, for `result` errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exception: Option<String>,
    /// Python traceback, for `result` errors (logged, never returned to HTTP callers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceback: Option<String>,
}

/// A frame the worker sends.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromWorker {
    /// A capability call.
    Call {
        /// Call id, unique within the execution.
        id: u64,
        /// Capability (`db`, `http`, …).
        capability: String,
        /// Operation.
        op: String,
        /// Arguments.
        #[serde(default)]
        args: serde_json::Value,
    },
    /// A log line from the controller.
    Log {
        /// `debug`, `info`, `warning`, `error`.
        #[serde(default)]
        level: String,
        /// The message.
        #[serde(default)]
        message: String,
        /// Extra fields.
        #[serde(default)]
        fields: serde_json::Map<String, serde_json::Value>,
    },
    /// A custom metric sample.
    Metric {
        /// `counter`, `gauge`, `histogram`.
        kind: String,
        /// Metric name.
        name: String,
        /// Sample value.
        #[serde(default)]
        value: f64,
        /// Labels.
        #[serde(default)]
        labels: std::collections::BTreeMap<String, String>,
    },
    /// The execution's outcome.
    Result {
        /// Whether `execute` returned.
        ok: bool,
        /// Its return value.
        #[serde(default)]
        output: serde_json::Value,
        /// The error, when it raised.
        #[serde(default)]
        error: Option<WireError>,
    },
}

/// Framing failures.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the socket.
    #[error("worker closed the connection")]
    Closed,
    /// A frame length above [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    /// Not a JSON object of a known type.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// Socket error.
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
}

fn is_hangup(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe
    )
}

/// Read one frame.
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> Result<FromWorker, FrameError> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if is_hangup(&e) => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut buf = vec![0u8; len];
    reader.read_exact(&mut buf).await.map_err(|e| {
        if is_hangup(&e) {
            FrameError::Closed
        } else {
            FrameError::Io(e)
        }
    })?;
    serde_json::from_slice(&buf).map_err(|e| FrameError::Malformed(e.to_string()))
}

/// Write one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frame: &ToWorker<'_>,
) -> Result<(), FrameError> {
    let body = serde_json::to_vec(frame).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(body.len()));
    }
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(&body);
    writer.write_all(&buf).await?;
    writer.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn frames_from(bytes: Vec<u8>) -> Result<FromWorker, FrameError> {
        let mut reader = std::io::Cursor::new(bytes);
        read_frame(&mut reader).await
    }

    fn framed(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    #[tokio::test]
    async fn reads_each_frame_type() {
        let call = br#"{"type":"call","id":3,"capability":"db","op":"query","args":{"table":"t"}}"#;
        assert!(matches!(
            frames_from(framed(call)).await,
            Ok(FromWorker::Call { id: 3, .. })
        ));
        let result = br#"{"type":"result","ok":true,"output":{"a":1}}"#;
        assert!(matches!(
            frames_from(framed(result)).await,
            Ok(FromWorker::Result { ok: true, .. })
        ));
        let log = br#"{"type":"log","level":"info","message":"m"}"#;
        assert!(matches!(
            frames_from(framed(log)).await,
            Ok(FromWorker::Log { .. })
        ));
    }

    #[tokio::test]
    async fn rejects_bad_frames() {
        assert!(matches!(frames_from(vec![]).await, Err(FrameError::Closed)));
        assert!(matches!(
            frames_from(vec![0, 0]).await,
            Err(FrameError::Closed)
        ));
        let huge = ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
        assert!(matches!(
            frames_from(huge).await,
            Err(FrameError::TooLarge(_))
        ));
        let truncated = vec![0, 0, 0, 10, b'{'];
        assert!(matches!(
            frames_from(truncated).await,
            Err(FrameError::Closed)
        ));
        for body in [
            &b"not json"[..],
            br#"[1,2]"#,
            br#"{"type":"nope"}"#,
            br#"{"id":1}"#,
        ] {
            assert!(
                matches!(
                    frames_from(framed(body)).await,
                    Err(FrameError::Malformed(_))
                ),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[tokio::test]
    async fn writes_length_prefixed_json() {
        let mut out = Vec::new();
        let frame = ToWorker::Reply {
            id: 1,
            ok: true,
            value: Some(serde_json::json!(5)),
            error: None,
        };
        write_frame(&mut out, &frame).await.unwrap();
        let len = u32::from_be_bytes([out[0], out[1], out[2], out[3]]) as usize;
        assert_eq!(len, out.len() - 4);
        let v: serde_json::Value = serde_json::from_slice(&out[4..]).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"reply","id":1,"ok":true,"value":5})
        );
    }
}
