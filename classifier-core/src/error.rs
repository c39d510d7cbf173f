//! The one error type of `classifier-core`.
//!
//! Every failure a caller can cause with bad input is a typed variant with a readable message;
//! [`Error::code`] gives the stable API code (`INVALID_IMAGE`, `PAYLOAD_TOO_LARGE`, ...) that
//! adapters such as the HTTP crate map to status codes.

use std::path::PathBuf;

/// Result alias used throughout `classifier-core`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in validation, preprocessing, model loading and inference.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The upload had no bytes at all.
    #[error("the image is empty (0 bytes)")]
    EmptyImage,

    /// The upload is larger than the configured maximum file size.
    #[error("the image is {size} bytes, more than the limit of {limit} bytes")]
    FileTooLarge {
        /// Bytes received.
        size: usize,
        /// Configured limit in bytes.
        limit: usize,
    },

    /// The bytes are not one of the accepted image formats (sniffed from magic bytes).
    #[error("unsupported image format: {detected}; accepted formats are {accepted}")]
    UnsupportedFormat {
        /// What the bytes look like (e.g. `GIF`, `SVG`, `text`, `unknown binary data`).
        detected: String,
        /// The accepted formats, comma-separated.
        accepted: String,
    },

    /// The image is smaller than the configured minimum dimensions.
    #[error("the image is {width}x{height}, smaller than the minimum of {min_width}x{min_height}")]
    ImageTooSmall {
        /// Width from the header.
        width: u32,
        /// Height from the header.
        height: u32,
        /// Configured minimum width.
        min_width: u32,
        /// Configured minimum height.
        min_height: u32,
    },

    /// The image is larger than the configured maximum dimensions.
    #[error("the image is {width}x{height}, larger than the maximum of {max_width}x{max_height}")]
    ImageTooLarge {
        /// Width from the header.
        width: u32,
        /// Height from the header.
        height: u32,
        /// Configured maximum width.
        max_width: u32,
        /// Configured maximum height.
        max_height: u32,
    },

    /// The data claims to be an image of an accepted format but cannot be decoded.
    #[error("corrupt or truncated {format} image: {reason}")]
    CorruptImage {
        /// The sniffed format.
        format: &'static str,
        /// What the decoder reported.
        reason: String,
    },

    /// The decoder would need more memory than the configured allocation limit.
    #[error("decoding this image needs more memory than the limit of {limit} bytes")]
    DecodeLimitExceeded {
        /// The configured decoder allocation limit in bytes.
        limit: u64,
    },

    /// A model version that the manifest does not know.
    #[error("unknown model version {requested:?}; available versions: {}", available.join(", "))]
    UnknownModelVersion {
        /// The version asked for.
        requested: String,
        /// The versions the manifest lists.
        available: Vec<String>,
    },

    /// The manifest could not be read or is inconsistent.
    #[error("invalid model manifest: {0}")]
    Manifest(String),

    /// A file named in the manifest was not found in any search directory.
    #[error("model file {file:?} not found; searched: {}", display_paths(searched))]
    ModelFileNotFound {
        /// The file name from the manifest.
        file: String,
        /// Every directory that was searched, in order.
        searched: Vec<PathBuf>,
    },

    /// A model or labels file did not have the sha256 the manifest promises.
    #[error("checksum mismatch for {path:?}: expected sha256 {expected}, found {actual}")]
    ChecksumMismatch {
        /// The file that was checked.
        path: PathBuf,
        /// The sha256 from the manifest.
        expected: String,
        /// The sha256 of the file on disk.
        actual: String,
    },

    /// The labels file is not usable with this model.
    #[error("invalid labels file {path:?}: {reason}")]
    Labels {
        /// The labels file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// Resizing or laying out the tensor failed (an internal error, not the client's).
    #[error("preprocessing failed: {0}")]
    Preprocess(String),

    /// tract could not load or optimize the model.
    #[error("cannot load model {version:?}: {reason}")]
    ModelLoad {
        /// The model version.
        version: String,
        /// tract's error chain.
        reason: String,
    },

    /// tract failed while running the model.
    #[error("inference failed: {0}")]
    Inference(String),

    /// The queue holds its maximum number of waiting jobs: try again later.
    #[error("the queue is full ({depth} jobs waiting, limit {limit}); retry later")]
    QueueFull {
        /// Jobs waiting now.
        depth: usize,
        /// The configured maximum.
        limit: usize,
    },

    /// No job with this id (or it expired, or belongs to someone else).
    #[error("job {0} not found")]
    JobNotFound(String),

    /// The state machine refused a change (e.g. cancelling a finished job).
    #[error("job {job_id} is {from}: cannot {event} ({reason})")]
    IllegalTransition {
        /// The job.
        job_id: String,
        /// Its status when the event arrived.
        from: crate::job::JobStatus,
        /// The refused event's name.
        event: &'static str,
        /// Why it is illegal.
        reason: String,
    },

    /// The job exists but has no result (yet): it is pending, processing, failed or
    /// cancelled.
    #[error("job {job_id} is {status}, not completed{}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    JobNotCompleted {
        /// The job.
        job_id: String,
        /// Its status.
        status: crate::job::JobStatus,
        /// Its error message, if it failed.
        message: Option<String>,
    },

    /// The backend (e.g. Redis) cannot be reached or failed; the operation may be retried.
    #[error("backend unavailable: {0}")]
    BackendUnavailable(String),

    /// Stored data could not be read back (a bug or a foreign writer).
    #[error("corrupt stored data: {0}")]
    CorruptData(String),

    /// A request field is well-formed but not acceptable (e.g. an unknown feedback label,
    /// feedback on a job that is not completed).
    #[error("{0}")]
    InvalidRequest(String),

    /// The service is shutting down and takes no new work.
    #[error("the service is shutting down")]
    ShuttingDown,

    /// An I/O error while reading model files.
    #[error("I/O error on {path:?}: {source}")]
    Io {
        /// The file being read.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl Error {
    /// The stable API error code for this error, as used in JSON error bodies.
    ///
    /// ```
    /// use classifier_core::Error;
    /// assert_eq!(Error::EmptyImage.code(), "INVALID_IMAGE");
    /// assert_eq!(Error::FileTooLarge { size: 2, limit: 1 }.code(), "PAYLOAD_TOO_LARGE");
    /// ```
    pub fn code(&self) -> &'static str {
        match self {
            Error::FileTooLarge { .. } => "PAYLOAD_TOO_LARGE",
            e if e.is_invalid_image() => "INVALID_IMAGE",
            Error::UnknownModelVersion { .. } | Error::InvalidRequest(_) => "VALIDATION_ERROR",
            Error::QueueFull { .. } | Error::BackendUnavailable(_) | Error::ShuttingDown => {
                "SERVICE_UNAVAILABLE"
            }
            Error::JobNotFound(_) => "JOB_NOT_FOUND",
            Error::IllegalTransition { .. } => "CONFLICT",
            Error::JobNotCompleted { status, .. } => match status {
                crate::job::JobStatus::Failed => "JOB_FAILED",
                crate::job::JobStatus::Cancelled => "JOB_CANCELLED",
                _ => "JOB_NOT_COMPLETED",
            },
            _ => "INTERNAL_ERROR",
        }
    }

    /// True for errors caused by the image bytes themselves (the client's fault).
    pub fn is_invalid_image(&self) -> bool {
        matches!(
            self,
            Error::EmptyImage
                | Error::FileTooLarge { .. }
                | Error::UnsupportedFormat { .. }
                | Error::ImageTooSmall { .. }
                | Error::ImageTooLarge { .. }
                | Error::CorruptImage { .. }
                | Error::DecodeLimitExceeded { .. }
        )
    }
}
