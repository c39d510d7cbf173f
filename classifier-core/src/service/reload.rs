//! Cluster-wide model reloads: a reload on one process is announced through the backend
//! ([`Backend::bump_model_generation`]), and every process sharing that backend follows it by
//! re-reading its own model manifest.
//!
//! Each process polls the generation ([`Backend::model_generation`]: one small read) every
//! `ServiceBuilder::model_reload_poll`. Polling, not a subscription: nothing to reconnect
//! after a backend outage, and a process that was down when the announcement was made still
//! sees a generation above its own when it looks next.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::backend::Backend;
use crate::error::Result;
use crate::metrics::Metrics;
use crate::model::{ModelRegistry, ReloadReport};

/// `classifier_events_total` names of reloads: made here, followed, refused here.
const RELOADED: &str = "model_reload";
const FOLLOWED: &str = "model_reload_followed";
const REFUSED: &str = "model_reload_refused";

/// The generation this process has caught up with. Held (a lock) across each reload, so a
/// reload made here and the announcement of it are never taken for another process's.
#[derive(Debug)]
pub(crate) struct ReloadFollower {
    seen: tokio::sync::Mutex<u64>,
}

impl ReloadFollower {
    /// Start from the backend's current generation (the models were just loaded, so there
    /// is nothing to catch up with). A backend that does not answer counts as generation 0.
    pub(crate) async fn starting_at_current(backend: &dyn Backend) -> ReloadFollower {
        let seen = backend.model_generation().await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the model-reload generation; starting from 0");
            0
        });
        ReloadFollower {
            seen: tokio::sync::Mutex::new(seen),
        }
    }

    /// Reload here, then announce it to every other process. A failed reload announces
    /// nothing; a failed announcement is logged and the local report still returned.
    pub(crate) async fn reload_and_announce(
        &self,
        registry: &ModelRegistry,
        backend: &dyn Backend,
        metrics: &Metrics,
    ) -> Result<ReloadReport> {
        let mut seen = self.seen.lock().await;
        let report = registry
            .reload()
            .await
            .inspect_err(|_| metrics.event(REFUSED))?;
        metrics.event(RELOADED);
        match backend.bump_model_generation().await {
            Ok(generation) => {
                *seen = generation.max(*seen);
                tracing::info!(
                    generation,
                    "model reload announced to every process sharing the backend"
                );
            }
            Err(e) => tracing::warn!(
                error = %e,
                "models reloaded here, but the reload could not be announced to other processes"
            ),
        }
        Ok(report)
    }

    /// If another process announced a reload since the last look, reload here. Returns the
    /// report of the reload it made, if any.
    pub(crate) async fn follow(
        &self,
        registry: &ModelRegistry,
        backend: &dyn Backend,
        metrics: &Metrics,
    ) -> Option<Result<ReloadReport>> {
        let mut seen = self.seen.lock().await;
        let generation = match backend.model_generation().await {
            Ok(generation) => generation,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the model-reload generation");
                return None;
            }
        };
        if *seen >= generation {
            return None;
        }
        *seen = generation;
        let outcome = registry.reload().await;
        metrics.event(if outcome.is_ok() { FOLLOWED } else { REFUSED });
        match &outcome {
            Ok(report) => tracing::info!(
                generation,
                default = %report.default,
                added = ?report.added,
                removed = ?report.removed,
                changed = ?report.changed,
                "models reloaded: another process announced a reload"
            ),
            Err(e) => tracing::error!(
                generation,
                error = %e,
                "another process announced a model reload, but the manifest here does not load; \
                 the models stay as they were"
            ),
        }
        Some(outcome)
    }
}

/// Poll every `every` until the service is dropped or stops (held weakly, so the watcher
/// never keeps a dropped service alive).
pub(crate) fn spawn_watcher(service: Weak<super::Inner>, every: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is immediate; the models were just loaded
        loop {
            tick.tick().await;
            let Some(inner): Option<Arc<super::Inner>> = service.upgrade() else {
                return;
            };
            if inner.stopping.load(Ordering::Acquire) {
                return;
            }
            inner
                .reloads
                .follow(&inner.registry, inner.backend.as_ref(), &inner.metrics)
                .await;
        }
    });
}
