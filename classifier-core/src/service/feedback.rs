//! Feedback: people who label images send corrections back, for retraining.
//!
//! A correction names the right class by id or by name and is checked against the labels of
//! the model that classified the job. Entries are stored in the backend (one per job) and
//! exported as JSON Lines by admins.

use std::fmt;

use chrono::Utc;
use serde::{Deserialize, Serialize};

use super::Service;
use crate::backend::FeedbackEntry;
use crate::error::{Error, Result};
use crate::job::{JobId, JobStatus};
use crate::model::Labels;

/// How a client names the correct class: an ImageNet class id, or a class name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LabelRef {
    /// A class id (`285`).
    Id(usize),
    /// A class name (`"Egyptian cat"`), or an id written as a string (`"285"`).
    Name(String),
}

impl fmt::Display for LabelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LabelRef::Id(id) => write!(f, "{id}"),
            LabelRef::Name(name) => write!(f, "{name:?}"),
        }
    }
}

impl LabelRef {
    /// Resolve against `labels` to `(class_id, class_name)`. Names are matched exactly, then
    /// case-insensitively; a name shared by several classes must be given by id.
    ///
    /// ```
    /// use classifier_core::model::Labels;
    /// use classifier_core::service::LabelRef;
    /// let labels = Labels::parse("cat\ndog\ncrane\ncrane\n", "l.txt".as_ref()).unwrap();
    /// assert_eq!(LabelRef::Id(1).resolve(&labels).unwrap(), (1, "dog".to_string()));
    /// assert_eq!(LabelRef::Name("Dog".into()).resolve(&labels).unwrap().0, 1);
    /// assert_eq!(LabelRef::Name("0".into()).resolve(&labels).unwrap().1, "cat");
    /// assert!(LabelRef::Name("crane".into()).resolve(&labels).is_err()); // ambiguous
    /// assert!(LabelRef::Id(4).resolve(&labels).is_err());
    /// ```
    pub fn resolve(&self, labels: &Labels) -> Result<(usize, String)> {
        let by_id = |id: usize| {
            labels
                .name(id)
                .map(|name| (id, name.to_string()))
                .ok_or_else(|| {
                    Error::InvalidRequest(format!(
                        "correct_label {id} is not a class id of this model (0..{})",
                        labels.len()
                    ))
                })
        };
        let name = match self {
            LabelRef::Id(id) => return by_id(*id),
            LabelRef::Name(name) => name.trim(),
        };
        if name.is_empty() {
            return Err(Error::InvalidRequest("correct_label is empty".into()));
        }
        if let Ok(id) = name.parse::<usize>() {
            return by_id(id);
        }
        let mut ids = labels.ids_of(name);
        if ids.is_empty() {
            ids = (0..labels.len())
                .filter(|&i| labels.name(i).is_some_and(|n| n.eq_ignore_ascii_case(name)))
                .collect();
        }
        match ids.as_slice() {
            [id] => by_id(*id),
            [] => Err(Error::InvalidRequest(format!(
                "correct_label {name:?} is not a class name of this model"
            ))),
            many => Err(Error::InvalidRequest(format!(
                "correct_label {name:?} names several classes ({many:?}); send the class id"
            ))),
        }
    }
}

impl Service {
    /// Record that job `job_id`'s correct class is `correct_label`; returns how many jobs
    /// have feedback now.
    ///
    /// The job must exist and be visible to `may_see` (else `JOB_NOT_FOUND`), be completed,
    /// and the label must exist in the job's model (else `VALIDATION_ERROR`). Feedback on
    /// the same job again replaces the earlier entry.
    ///
    /// ```no_run
    /// # async fn demo(service: classifier_core::service::Service, id: classifier_core::job::JobId) -> classifier_core::Result<()> {
    /// use classifier_core::service::LabelRef;
    /// let count = service
    ///     .add_feedback(id, &LabelRef::Name("tabby".into()), None, |_| true)
    ///     .await?;
    /// println!("{count} jobs have feedback");
    /// # Ok(()) }
    /// ```
    pub async fn add_feedback(
        &self,
        job_id: JobId,
        correct_label: &LabelRef,
        owner: Option<String>,
        may_see: impl Fn(Option<&str>) -> bool,
    ) -> Result<u64> {
        let record = self.status(job_id).await?;
        if !may_see(record.owner.as_deref()) {
            return Err(Error::JobNotFound(job_id.to_string()));
        }
        if record.status != JobStatus::Completed {
            return Err(Error::InvalidRequest(format!(
                "job {job_id} is {}; feedback is only taken for completed jobs",
                record.status
            )));
        }
        let result = self
            .inner
            .backend
            .get_result(job_id)
            .await?
            .ok_or_else(|| Error::JobNotFound(job_id.to_string()))?;
        let labels = self
            .inner
            .registry
            .get(Some(&result.model_version))
            .await
            .map_err(|e| match e {
                Error::UnknownModelVersion { .. } => Error::InvalidRequest(format!(
                    "model version {} of job {job_id} is no longer available",
                    result.model_version
                )),
                other => other,
            })?
            .labels()
            .clone();
        let (correct_class_id, correct_class_name) = correct_label.resolve(&labels)?;
        let top = result.predictions.first().ok_or_else(|| {
            Error::CorruptData(format!("job {job_id} has a result without predictions"))
        })?;
        let entry = FeedbackEntry {
            job_id,
            predicted_class_id: top.class_id,
            predicted_class_name: top.class_name.clone(),
            predicted_confidence: top.confidence,
            correct_class_id,
            correct_class_name,
            model_version: result.model_version.clone(),
            image_sha256: record.image_sha256.clone(),
            owner,
            created_at: Utc::now(),
        };
        let count = self.inner.backend.add_feedback(&entry).await?;
        tracing::info!(job = %job_id, correct = entry.correct_class_id, predicted = entry.predicted_class_id, "feedback stored");
        Ok(count)
    }

    /// How many jobs have feedback.
    pub async fn feedback_count(&self) -> Result<u64> {
        self.inner.backend.feedback_count().await
    }

    /// Every feedback entry, oldest first, as JSON Lines (one object per line: job id,
    /// predicted and correct class, model version, image sha256, timestamp), read from the
    /// backend in pages of `page` entries.
    pub async fn export_feedback_jsonl(&self, page: usize) -> Result<String> {
        let page = page.max(1);
        let mut out = String::new();
        let mut offset = 0;
        loop {
            let entries = self.inner.backend.feedback_entries(offset, page).await?;
            for e in &entries {
                let line = serde_json::json!({
                    "job_id": e.job_id,
                    "predicted": {"class_id": e.predicted_class_id, "class_name": e.predicted_class_name, "confidence": e.predicted_confidence},
                    "correct": {"class_id": e.correct_class_id, "class_name": e.correct_class_name},
                    "model_version": e.model_version,
                    "image_sha256": e.image_sha256,
                    "timestamp": e.created_at,
                });
                out.push_str(&line.to_string());
                out.push('\n');
            }
            if entries.len() < page {
                return Ok(out);
            }
            offset += entries.len();
        }
    }
}
