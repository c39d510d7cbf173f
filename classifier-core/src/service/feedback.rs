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
///
/// In JSON, an id is a whole number (`285`; `285.0` too, which JSON Schema counts as an
/// integer) and a name is a string. Anything else (a negative or fractional number, `null`,
/// an array) is refused with a message that says what is expected.
///
/// ```
/// use classifier_core::service::LabelRef;
/// let id: LabelRef = serde_json::from_str("285.0").unwrap();
/// assert_eq!(id, LabelRef::Id(285));
/// assert!(serde_json::from_str::<LabelRef>("-1").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum LabelRef {
    /// A class id (`285`).
    Id(usize),
    /// A class name (`"Egyptian cat"`), or an id written as a string (`"285"`).
    Name(String),
}

impl<'de> Deserialize<'de> for LabelRef {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        deserializer.deserialize_any(LabelRefVisitor)
    }
}

/// Reads a [`LabelRef`] from a number or a string.
struct LabelRefVisitor;

impl serde::de::Visitor<'_> for LabelRefVisitor {
    type Value = LabelRef;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a class id (a whole number, 0 or more) or a class name (a string)")
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<LabelRef, E> {
        usize::try_from(v)
            .map(LabelRef::Id)
            .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<LabelRef, E> {
        u64::try_from(v)
            .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
            .and_then(|v| self.visit_u64(v))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> std::result::Result<LabelRef, E> {
        // 2^53: above it not every whole number is representable, so the id would be a guess.
        const EXACT: f64 = 9_007_199_254_740_992.0;
        if v.fract() == 0.0 && (0.0..=EXACT).contains(&v) {
            self.visit_u64(v as u64)
        } else {
            Err(E::invalid_value(serde::de::Unexpected::Float(v), &self))
        }
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<LabelRef, E> {
        Ok(LabelRef::Name(v.to_string()))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> std::result::Result<LabelRef, E> {
        Ok(LabelRef::Name(v))
    }
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

#[cfg(test)]
mod tests {
    use super::LabelRef;

    fn parse(json: &str) -> Result<LabelRef, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn a_whole_number_is_an_id_whether_written_as_an_integer_or_a_float() {
        assert_eq!(parse("285"), Ok(LabelRef::Id(285)));
        assert_eq!(parse("0"), Ok(LabelRef::Id(0)));
        // JSON Schema's "integer" includes 285.0, and so does the OpenAPI document.
        assert_eq!(parse("285.0"), Ok(LabelRef::Id(285)));
        assert_eq!(parse("2.85e2"), Ok(LabelRef::Id(285)));
    }

    #[test]
    fn a_string_is_a_name() {
        assert_eq!(
            parse("\"Egyptian cat\""),
            Ok(LabelRef::Name("Egyptian cat".into()))
        );
        assert_eq!(parse("\"285\""), Ok(LabelRef::Name("285".into())));
    }

    #[test]
    fn negative_fractional_huge_and_other_values_are_refused_saying_what_is_expected() {
        for bad in ["-1", "1.5", "-0.5", "1e300", "null", "true", "[1]", "{}"] {
            let err = parse(bad).expect_err(bad);
            assert!(
                err.contains("a class id (a whole number, 0 or more) or a class name"),
                "{bad}: {err}"
            );
        }
    }
}
