//! One job, one delivery: Start -> preprocessing (25) -> inference (50) -> postprocessing (75)
//! -> put_result -> Complete (100), every step a compare-and-set through the state machine.
//!
//! A step refused because the job became terminal meanwhile (cancelled, or finished by
//! another delivery) ends the delivery at that stage boundary: the job is discarded and the
//! lease acked. A redelivery of a job that had already reached a later stage skips the stage
//! changes it has passed (stages never go back).

use std::time::Instant;

use chrono::Utc;

use super::batcher::Announcement;
use super::pool::InferRequest;
use super::WorkerContext;
use crate::backend::{transition, transition_from, Lease};
use crate::error::Error;
use crate::job::{JobEvent, JobRecord, JobResult, JobStatus, Stage};
use crate::postprocess::top_k;
use crate::service::payload::CropPayload;

/// How one delivery ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Completed by this delivery: the stored record and result.
    Completed(Box<(JobRecord, JobResult)>),
    /// Not ours to finish: the job is (or became) in this state; ack and move on.
    Discarded(JobStatus),
    /// A deterministic failure, already recorded as `Failed`: the stored record.
    Failed(Box<JobRecord>),
    /// A transient failure: nack and retry later (dead-letter after `max_attempts`).
    Retry(Error),
}

enum Step {
    Go(Box<JobRecord>),
    Stop(Outcome),
}

/// Apply `event`; a refusal because the job is terminal becomes `Stop(Discarded)`, a refusal
/// because the job is already further along (a redelivery) is skipped.
///
/// `held` is the record this delivery stored last: the next step starts from it instead of
/// re-reading the job (one backend round trip per step, not two), and it is updated here.
async fn step(
    ctx: &WorkerContext,
    lease: &Lease,
    held: &mut Option<JobRecord>,
    event: JobEvent,
) -> Step {
    let applied = match held.take() {
        Some(current) => transition_from(ctx.backend.as_ref(), current, &event).await,
        None => transition(ctx.backend.as_ref(), lease.job_id, &event).await,
    };
    match applied {
        Ok(record) => {
            *held = Some(record.clone());
            Step::Go(Box::new(record))
        }
        Err(Error::JobNotFound(_)) => Step::Stop(Outcome::Discarded(JobStatus::Cancelled)),
        Err(Error::IllegalTransition { .. }) => match ctx.backend.get(lease.job_id).await {
            Ok(Some(record)) if record.status.is_terminal() => {
                Step::Stop(Outcome::Discarded(record.status))
            }
            Ok(Some(record)) => {
                *held = Some(record.clone());
                Step::Go(Box::new(record))
            }
            Ok(None) => Step::Stop(Outcome::Discarded(JobStatus::Cancelled)),
            Err(e) => Step::Stop(Outcome::Retry(e)),
        },
        Err(e) => Step::Stop(Outcome::Retry(e)),
    }
}

/// Record a deterministic failure.
pub(crate) async fn fail(ctx: &WorkerContext, lease: &Lease, message: String) -> Outcome {
    tracing::warn!(job = %lease.job_id, %message, "job failed");
    match step(ctx, lease, &mut None, JobEvent::Fail { message }).await {
        Step::Go(record) => {
            ctx.metrics.job_finished(JobStatus::Failed);
            Outcome::Failed(record)
        }
        Step::Stop(outcome) => outcome,
    }
}

macro_rules! go {
    ($e:expr) => {
        match $e {
            Step::Go(record) => record,
            Step::Stop(outcome) => return outcome,
        }
    };
}

/// Run one delivery of a job to the end (or to the stage boundary where it stops).
pub(crate) async fn process(
    ctx: &WorkerContext,
    lease: &Lease,
    announcement: Announcement<InferRequest>,
) -> Outcome {
    let started = Instant::now();
    let id = lease.job_id;
    let mut held = None;
    let record = go!(step(ctx, lease, &mut held, JobEvent::Start).await);
    go!(step(
        ctx,
        lease,
        &mut held,
        JobEvent::Advance {
            stage: Stage::Preprocessing,
            progress: 25
        }
    )
    .await);
    let payload = match ctx.backend.payload(id).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            return fail(
                ctx,
                lease,
                "the image expired before a worker took the job".into(),
            )
            .await
        }
        Err(e) => return Outcome::Retry(e),
    };
    let crop = match CropPayload::decode(payload) {
        Ok(c) => c,
        Err(e) => return fail(ctx, lease, e.to_string()).await,
    };
    let classifier = match ctx.registry.get(Some(&record.model_version)).await {
        Ok(c) => c,
        Err(e @ Error::UnknownModelVersion { .. }) => return fail(ctx, lease, e.to_string()).await,
        Err(e) => return Outcome::Retry(e),
    };
    let spec = classifier.preprocessor().spec();
    if (crop.width, crop.height) != (spec.input_width, spec.input_height) {
        let message = format!(
            "the prepared image is {}x{}, model {} takes {}x{}",
            crop.width,
            crop.height,
            classifier.version(),
            spec.input_width,
            spec.input_height
        );
        return fail(ctx, lease, message).await;
    }
    go!(step(
        ctx,
        lease,
        &mut held,
        JobEvent::Advance {
            stage: Stage::Inference,
            progress: 50
        }
    )
    .await);
    let inferred = match ctx
        .pool
        .infer(
            classifier.clone(),
            crop.pixels,
            lease.priority.rank(),
            Some(announcement),
        )
        .await
    {
        Ok(i) => i,
        Err(e @ Error::Preprocess(_)) => return fail(ctx, lease, e.to_string()).await,
        Err(e) => return Outcome::Retry(e),
    };
    ctx.metrics
        .observe_preprocess((crop.prepare_time + inferred.normalize).as_secs_f64());
    go!(step(
        ctx,
        lease,
        &mut held,
        JobEvent::Advance {
            stage: Stage::Postprocessing,
            progress: 75
        }
    )
    .await);
    let result = JobResult {
        job_id: id,
        predictions: top_k(&inferred.logits, classifier.labels(), ctx.top_k),
        processing_time: started.elapsed().as_secs_f64(),
        model_version: classifier.version().to_string(),
        image_metadata: record.image,
        created_at: record.created_at,
        completed_at: Utc::now(),
    };
    // The first stored result wins: a redelivered job never gets a second, different one.
    if let Err(e) = ctx.backend.put_result(&result).await {
        return Outcome::Retry(e);
    }
    match step(ctx, lease, &mut held, JobEvent::Complete).await {
        Step::Go(record) if record.status == JobStatus::Completed => {
            Outcome::Completed(Box::new((*record, result)))
        }
        Step::Go(record) => Outcome::Retry(Error::CorruptData(format!(
            "job {id} is {} after completing",
            record.status
        ))),
        Step::Stop(outcome) => outcome,
    }
}
