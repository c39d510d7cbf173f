//! The error type of `classifier-queue`.
//!
//! Backends report their own failures with [`Error`]; at the trait boundary (the
//! [`classifier_core::backend`] traits) they become [`classifier_core::Error`] through the
//! `From` impl below: an unreachable store becomes `BackendUnavailable` (retryable, HTTP
//! 503), everything else `CorruptData` (a bug or a foreign writer, HTTP 500).

use classifier_core::job::{JobId, JobRecord, JobResult};

/// Result alias used in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong inside a backend of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `create` or `create_finished` was given an id that is already stored or queued.
    #[error("job {0} already exists")]
    DuplicateJob(JobId),

    /// `create` was given a record that is not a new job (revision 0, pending), or
    /// `create_finished` one that is not terminal or a result of another job.
    #[error("job {job_id} cannot be created: {reason}")]
    InvalidRecord {
        /// The job.
        job_id: JobId,
        /// What is wrong with the record.
        reason: String,
    },

    /// The store cannot be reached or refused the operation; the caller may retry.
    #[error("backend unavailable: {0}")]
    Unavailable(String),

    /// Stored data could not be read back.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
}

impl From<Error> for classifier_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Unavailable(m) => classifier_core::Error::BackendUnavailable(m),
            Error::Corrupt(m) => classifier_core::Error::CorruptData(m),
            other => classifier_core::Error::CorruptData(other.to_string()),
        }
    }
}

/// Check the arguments of `ResultCache::create_finished`: the record must be terminal and
/// the result must be this job's.
pub(crate) fn check_finished(record: &JobRecord, result: &JobResult) -> Result<()> {
    let reason = if !record.status.is_terminal() {
        format!("a finished job must be terminal, not {}", record.status)
    } else if result.job_id != record.id {
        format!("the result belongs to job {}", result.job_id)
    } else {
        return Ok(());
    };
    Err(Error::InvalidRecord {
        job_id: record.id,
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_at_the_trait_boundary() {
        let e: classifier_core::Error = Error::Unavailable("down".into()).into();
        assert_eq!(e.code(), "SERVICE_UNAVAILABLE");
        let e: classifier_core::Error = Error::DuplicateJob(JobId::new()).into();
        assert!(matches!(e, classifier_core::Error::CorruptData(_)));
    }
}
