//! The job state machine: the one place that decides which changes are legal.
//!
//! ```text
//! Pending --Start--> Processing --Complete--> Completed
//!    |                 |   ^  \--Fail------> Failed
//!    |                 |   |
//!    |                 +---+ Start again (a redelivery after a lost lease), Advance
//!    +--Cancel--> Cancelled <--Cancel--+
//! ```
//!
//! Invariants (property-tested in `tests/state_machine.rs`): terminal states are final,
//! progress never decreases, stages never go back, `revision` grows by one per change.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::types::{JobRecord, JobStatus, Stage};
use crate::error::{Error, Result};

/// Something that happens to a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum JobEvent {
    /// A worker took the job (first delivery or a redelivery).
    Start,
    /// The worker reached `stage` with `progress` percent done (clamped to never decrease).
    Advance {
        /// The stage reached (must not be before the current one, nor `Completed`).
        stage: Stage,
        /// Percent done, 0..=99 (100 only comes with `Complete`).
        progress: u8,
    },
    /// The result is stored.
    Complete,
    /// The job cannot produce a result.
    Fail {
        /// Why, for the client.
        message: String,
    },
    /// The owner cancelled it.
    Cancel,
}

impl JobEvent {
    /// A short name for error messages.
    pub fn name(&self) -> &'static str {
        match self {
            JobEvent::Start => "start",
            JobEvent::Advance { .. } => "advance",
            JobEvent::Complete => "complete",
            JobEvent::Fail { .. } => "fail",
            JobEvent::Cancel => "cancel",
        }
    }
}

fn illegal(record: &JobRecord, event: &JobEvent, why: &str) -> Error {
    Error::IllegalTransition {
        job_id: record.id.to_string(),
        from: record.status,
        event: event.name(),
        reason: why.to_string(),
    }
}

impl JobRecord {
    /// Apply `event` at time `now`, or explain why it is illegal (the record is then
    /// unchanged). On success `revision` is incremented and `updated_at` set.
    ///
    /// ```
    /// use classifier_core::job::{JobEvent, JobStatus, Stage};
    /// # let mut job = classifier_core::job::tests_support::pending_job();
    /// let now = chrono::Utc::now();
    /// job.apply(&JobEvent::Start, now).unwrap();
    /// job.apply(&JobEvent::Advance { stage: Stage::Inference, progress: 50 }, now).unwrap();
    /// job.apply(&JobEvent::Complete, now).unwrap();
    /// assert_eq!((job.status, job.progress), (JobStatus::Completed, 100));
    /// assert!(job.apply(&JobEvent::Cancel, now).is_err()); // terminal states are final
    /// ```
    pub fn apply(&mut self, event: &JobEvent, now: DateTime<Utc>) -> Result<()> {
        if self.status.is_terminal() {
            return Err(illegal(self, event, "the job has already finished"));
        }
        match event {
            JobEvent::Start => {
                // Pending -> Processing, or a redelivery of a job whose lease expired.
                self.status = JobStatus::Processing;
                self.attempts = self.attempts.saturating_add(1);
                self.started_at.get_or_insert(now);
            }
            JobEvent::Advance { stage, progress } => {
                if self.status != JobStatus::Processing {
                    return Err(illegal(self, event, "only a processing job advances"));
                }
                if *stage == Stage::Completed || *progress >= 100 {
                    return Err(illegal(self, event, "only `complete` reaches 100%"));
                }
                if *stage < self.stage {
                    return Err(illegal(self, event, "stages never go back"));
                }
                self.stage = *stage;
                self.progress = self.progress.max(*progress);
            }
            JobEvent::Complete => {
                if self.status != JobStatus::Processing {
                    return Err(illegal(self, event, "only a processing job completes"));
                }
                self.status = JobStatus::Completed;
                self.stage = Stage::Completed;
                self.progress = 100;
                self.finished_at = Some(now);
            }
            JobEvent::Fail { message } => {
                if self.status != JobStatus::Processing {
                    return Err(illegal(self, event, "only a processing job fails"));
                }
                self.status = JobStatus::Failed;
                self.error_message = Some(message.clone());
                self.finished_at = Some(now);
            }
            JobEvent::Cancel => {
                self.status = JobStatus::Cancelled;
                self.error_message = Some("cancelled by the client".into());
                self.finished_at = Some(now);
            }
        }
        self.updated_at = now;
        self.revision += 1;
        Ok(())
    }
}
