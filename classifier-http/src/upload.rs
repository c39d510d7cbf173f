//! Multipart uploads (`multer`), read under explicit limits while streaming.
//!
//! - Not `multipart/form-data` (with a boundary): 415, nothing read.
//! - A declared `Content-Length` above what the request may carry: 413 at once, nothing
//!   read (the response says `Connection: close`).
//! - While streaming: each file is counted as it arrives; a file of exactly
//!   `max_file_size` bytes is accepted, one byte more is 413 (in a batch: that file's error).
//!   The whole body is capped too, and a body that stops flowing for `body_read_timeout`
//!   is 408.
//! - Fields: `file` (single) or `files` (batch), `priority`, `model_version`,
//!   `callback_url`, `metadata`. Unknown fields are ignored; a second `file` or a repeated
//!   option is 422; more than `max_batch_files` files is 422.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{header, Request};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::error::{Error, Result};

/// Which form is expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One `file` field.
    Single,
    /// 1..=`max_files` `files` fields.
    Batch {
        /// Most files accepted.
        max_files: usize,
    },
}

impl Mode {
    fn file_field(self) -> &'static str {
        match self {
            Mode::Single => "file",
            Mode::Batch { .. } => "files",
        }
    }

    fn max_files(self) -> usize {
        match self {
            Mode::Single => 1,
            Mode::Batch { max_files } => max_files,
        }
    }
}

/// Limits of one upload.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest file in bytes (inclusive).
    pub max_file_size: usize,
    /// Longest stall of the body.
    pub body_read_timeout: Duration,
}

/// One file of the form.
#[derive(Debug)]
pub struct UploadedFile {
    /// Position among the files (0-based).
    pub index: usize,
    /// The client's file name, if given.
    pub filename: Option<String>,
    /// The bytes, or why this file was refused (batch only; a single upload fails whole).
    pub data: Result<Bytes>,
}

/// The option fields as sent (validated by the handlers).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OptionFields {
    /// `priority`.
    pub priority: Option<String>,
    /// `model_version`.
    pub model_version: Option<String>,
    /// `callback_url`.
    pub callback_url: Option<String>,
    /// `metadata` (raw JSON text).
    pub metadata: Option<String>,
}

/// A parsed form.
#[derive(Debug, Default)]
pub struct Upload {
    /// The files in order.
    pub files: Vec<UploadedFile>,
    /// The options.
    pub options: OptionFields,
}

/// Multipart framing and small fields allowed on top of the files.
const OVERHEAD: usize = 64 * 1024;
/// Longest option field value read.
const MAX_OPTION_LEN: usize = 4096;
/// Most parts of any kind in one form.
const MAX_PARTS: usize = 64;

const BODY_OK: u8 = 0;
const BODY_TIMEOUT: u8 = 1;
const BODY_TOO_LARGE: u8 = 2;

/// Parse the multipart form of `req` under `limits`.
pub async fn read(req: Request<Incoming>, mode: Mode, limits: Limits) -> Result<Upload> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let boundary = multer::parse_boundary(content_type).map_err(|_| {
        Error::UnsupportedMediaType(format!(
            "expected a multipart/form-data body with a boundary, got content type {:?}",
            crate::router::truncate(content_type, 100)
        ))
    })?;
    let max_body = limits
        .max_file_size
        .saturating_mul(mode.max_files())
        .saturating_add(OVERHEAD.saturating_mul(mode.max_files()));
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body as u64) {
        return Err(too_large_body(max_body));
    }

    let flag = Arc::new(AtomicU8::new(BODY_OK));
    let stream = body_stream(
        req.into_body(),
        limits.body_read_timeout,
        max_body,
        flag.clone(),
    );
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut upload = Upload::default();
    let mut parts = 0usize;
    let file_field = mode.file_field();

    loop {
        let field = multipart
            .next_field()
            .await
            .map_err(|e| multer_error(e, &flag, limits, max_body))?;
        let Some(mut field) = field else { break };
        parts += 1;
        if parts > MAX_PARTS {
            return Err(Error::Validation(format!(
                "the form has more than {MAX_PARTS} parts"
            )));
        }
        let name = field.name().unwrap_or("").to_string();
        if name == file_field {
            let index = upload.files.len();
            if index >= mode.max_files() {
                return Err(Error::Validation(match mode {
                    Mode::Single => "the form has more than one \"file\" field; send one file per request (or use /classify/batch)".to_string(),
                    Mode::Batch { max_files } => format!("a batch holds at most {max_files} files"),
                }));
            }
            let filename = field.file_name().map(|f| crate::router::truncate(f, 255));
            let mut buf = Chunks::default();
            let mut too_large = false;
            while let Some(chunk) = field
                .chunk()
                .await
                .map_err(|e| multer_error(e, &flag, limits, max_body))?
            {
                if too_large {
                    continue; // drain this file (bounded by the body limit) to reach the next
                }
                if buf.len() + chunk.len() > limits.max_file_size {
                    too_large = true;
                    buf = Chunks::default();
                    if mode == Mode::Single {
                        return Err(too_large_file(filename.as_deref(), limits.max_file_size));
                    }
                } else {
                    buf.push(chunk);
                }
            }
            let data = if too_large {
                Err(too_large_file(filename.as_deref(), limits.max_file_size))
            } else {
                Ok(buf.join())
            };
            upload.files.push(UploadedFile {
                index,
                filename,
                data,
            });
            continue;
        }
        let slot = match name.as_str() {
            "priority" => &mut upload.options.priority,
            "model_version" => &mut upload.options.model_version,
            "callback_url" => &mut upload.options.callback_url,
            "metadata" => &mut upload.options.metadata,
            _ => {
                // Unknown field: ignored (its bytes still count against the body limit).
                while field
                    .chunk()
                    .await
                    .map_err(|e| multer_error(e, &flag, limits, max_body))?
                    .is_some()
                {}
                continue;
            }
        };
        if slot.is_some() {
            return Err(Error::Validation(format!(
                "the field {name:?} is given more than once"
            )));
        }
        let mut buf = BytesMut::new();
        while let Some(chunk) = field
            .chunk()
            .await
            .map_err(|e| multer_error(e, &flag, limits, max_body))?
        {
            if buf.len() + chunk.len() > MAX_OPTION_LEN {
                return Err(Error::Validation(format!(
                    "the field {name:?} is longer than {MAX_OPTION_LEN} bytes"
                )));
            }
            buf.extend_from_slice(&chunk);
        }
        let text = String::from_utf8(buf.to_vec())
            .map_err(|_| Error::Validation(format!("the field {name:?} is not UTF-8 text")))?;
        *slot = Some(text);
    }
    if upload.files.is_empty() {
        return Err(Error::Validation(format!(
            "the form has no {file_field:?} field; send the image as a multipart file field named {file_field:?}"
        )));
    }
    Ok(upload)
}

/// A file's bytes as they arrive: the chunks are kept as they come (no copy while the file
/// streams in) and joined once at the end into one buffer of exactly the received size.
/// Appending to a growing buffer instead copied a 240 KB upload about twice over.
#[derive(Debug, Default)]
struct Chunks {
    parts: Vec<Bytes>,
    len: usize,
}

impl Chunks {
    fn push(&mut self, chunk: Bytes) {
        self.len += chunk.len();
        self.parts.push(chunk);
    }

    fn len(&self) -> usize {
        self.len
    }

    /// The file as one contiguous buffer (a lone chunk is returned as it is, without a copy).
    fn join(mut self) -> Bytes {
        if self.parts.len() <= 1 {
            return self.parts.pop().unwrap_or_default();
        }
        let mut joined = BytesMut::with_capacity(self.len);
        for part in &self.parts {
            joined.extend_from_slice(part);
        }
        joined.freeze()
    }
}

fn too_large_file(filename: Option<&str>, limit: usize) -> Error {
    Error::PayloadTooLarge {
        what: match filename {
            Some(f) => format!("the file {f:?}"),
            None => "the file".to_string(),
        },
        limit,
    }
}

fn too_large_body(limit: usize) -> Error {
    Error::PayloadTooLarge {
        what: "the request body".to_string(),
        limit,
    }
}

fn multer_error(e: multer::Error, flag: &AtomicU8, limits: Limits, max_body: usize) -> Error {
    match flag.load(Ordering::Acquire) {
        BODY_TIMEOUT => Error::BodyTimeout(limits.body_read_timeout),
        BODY_TOO_LARGE => too_large_body(max_body),
        _ => match e {
            multer::Error::StreamReadFailed(e) => {
                Error::BadRequest(format!("the request body could not be read: {e}"))
            }
            e => Error::BadRequest(format!("malformed multipart body: {e}")),
        },
    }
}

/// The body as a stream of chunks that fails (and says why in `flag`) when no frame arrives
/// within `timeout` or more than `max` bytes arrive.
fn body_stream(
    body: Incoming,
    timeout: Duration,
    max: usize,
    flag: Arc<AtomicU8>,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    futures_util::stream::unfold(
        (body, 0usize, false),
        move |(mut body, mut received, done)| {
            let flag = flag.clone();
            async move {
                if done {
                    return None;
                }
                loop {
                    let fail = |kind, code, msg: &str| {
                        flag.store(code, Ordering::Release);
                        std::io::Error::new(kind, msg.to_string())
                    };
                    let frame = match tokio::time::timeout(timeout, body.frame()).await {
                        Err(_) => {
                            let e = fail(
                                std::io::ErrorKind::TimedOut,
                                BODY_TIMEOUT,
                                "body read timed out",
                            );
                            return Some((Err(e), (body, received, true)));
                        }
                        Ok(None) => return None,
                        Ok(Some(Err(e))) => {
                            return Some((Err(std::io::Error::other(e)), (body, received, true)))
                        }
                        Ok(Some(Ok(frame))) => frame,
                    };
                    let Ok(data) = frame.into_data() else {
                        continue;
                    }; // trailers
                    received += data.len();
                    if received > max {
                        let e = fail(
                            std::io::ErrorKind::InvalidData,
                            BODY_TOO_LARGE,
                            "body too large",
                        );
                        return Some((Err(e), (body, received, true)));
                    }
                    return Some((Ok(data), (body, received, false)));
                }
            }
        },
    )
}

/// Read a small JSON body (`Content-Type: application/json`) of at most `max` bytes, with
/// the same stall timeout as uploads. Not JSON is 415, too large 413, a stall 408, bad JSON
/// 422.
pub async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
    max: usize,
    timeout: Duration,
) -> Result<T> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(Error::UnsupportedMediaType(format!(
            "expected an application/json body, got content type {:?}",
            crate::router::truncate(content_type, 100)
        )));
    }
    let flag = Arc::new(AtomicU8::new(BODY_OK));
    let mut stream = std::pin::pin!(body_stream(req.into_body(), timeout, max, flag.clone()));
    let mut body = Vec::new();
    while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
        match chunk {
            Ok(bytes) => body.extend_from_slice(&bytes),
            Err(e) => {
                return Err(match flag.load(Ordering::Acquire) {
                    BODY_TIMEOUT => Error::BodyTimeout(timeout),
                    BODY_TOO_LARGE => too_large_body(max),
                    _ => Error::Validation(format!("the request body could not be read: {e}")),
                })
            }
        }
    }
    serde_json::from_slice(&body)
        .map_err(|e| Error::Validation(format!("the body is not the expected JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&'static [u8]]) -> Chunks {
        let mut c = Chunks::default();
        for p in parts {
            c.push(Bytes::from_static(p));
        }
        c
    }

    #[test]
    fn chunks_join_into_the_bytes_in_order() {
        assert_eq!(chunks(&[]).join(), Bytes::new());
        assert_eq!(chunks(&[b"one"]).join(), Bytes::from_static(b"one"));
        let c = chunks(&[b"ab", b"", b"cde", b"f"]);
        assert_eq!(c.len(), 6);
        assert_eq!(c.join(), Bytes::from_static(b"abcdef"));
    }
}
