//! Jobs: the record a backend stores, its vocabulary, and the state machine that governs it.
//!
//! - [`types`]: ids, statuses, stages, priorities, the record and the result;
//! - [`state`]: [`JobEvent`] and [`JobRecord::apply`], the only place transitions are decided.

pub mod state;
pub mod types;

pub use state::JobEvent;
pub use types::{JobId, JobRecord, JobResult, JobStatus, Priority, Stage, SubmitOptions};

/// Helpers for examples and tests: ready-made records.
#[doc(hidden)]
pub mod tests_support {
    use super::*;
    use crate::image::{ImageFormat, ImageMetadata};

    /// A pending job with a small PNG's metadata.
    pub fn pending_job() -> JobRecord {
        JobRecord::new(
            JobId::new(),
            &SubmitOptions::default(),
            "test-model".into(),
            ImageMetadata {
                format: ImageFormat::Png,
                width: 64,
                height: 48,
                file_size: 1234,
            },
            "0".repeat(64),
            chrono::Utc::now(),
        )
    }
}
