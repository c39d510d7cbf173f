//! What happens after a job reaches a terminal state: its webhook event goes to the backend's
//! durable outbox (the HTTP layer's dispatcher delivers it).

use crate::backend::{Backend, WebhookDelivery};
use crate::job::{JobId, JobRecord, JobResult};

/// Queue the webhook of a job that just finished, if it asked for one. Enqueuing is
/// idempotent (the event id is derived from the job and the event), so calling this again
/// for the same job is harmless. Failures are logged, not returned: the job's outcome is
/// already stored and must not be undone by a notification problem.
pub(crate) async fn after_terminal(
    backend: &dyn Backend,
    record: &JobRecord,
    result: Option<&JobResult>,
) {
    let Some(delivery) = WebhookDelivery::for_terminal(record, result) else {
        return;
    };
    match backend.enqueue_webhook(&delivery).await {
        Ok(true) => tracing::debug!(job = %record.id, event = %delivery.event_id, "webhook queued"),
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(job = %record.id, error = %e, "webhook could not be queued")
        }
    }
}

/// Like [`after_terminal`], reading the record and result first (for redeliveries).
pub(crate) async fn after_terminal_by_id(backend: &dyn Backend, id: JobId) {
    let record = match backend.get(id).await {
        Ok(Some(record)) if record.callback_url.is_some() => record,
        _ => return,
    };
    let result = backend.get_result(id).await.ok().flatten();
    after_terminal(backend, &record, result.as_ref()).await;
}
