//! The inference pool: dedicated OS threads (never the async reactor, never tokio's blocking
//! pool, which submissions use for decoding) that take batches from a [`BatchQueue`],
//! normalize the crops straight into the batch tensor and run one tract call per batch.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::batcher::{Announcement, BatchPolicy, BatchQueue, Next};
use super::eta::ServiceTimeEstimator;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::model::AssistTeam;
use crate::Classifier;

/// Queue priority of synchronous predictions: above every job priority (urgent is 3).
pub(crate) const PREDICT_PRIORITY: u8 = 4;

/// One image for the pool.
pub(crate) struct InferRequest {
    classifier: Classifier,
    crop: Bytes,
    reply: oneshot::Sender<Result<Inferred>>,
}

/// The pool's answer for one image.
#[derive(Debug)]
pub(crate) struct Inferred {
    /// This image's raw logits.
    pub logits: Vec<f32>,
    /// Time to normalize this image into the tensor.
    pub normalize: Duration,
    /// The tract call's time divided by the batch size.
    pub inference: Duration,
}

pub(crate) type Queue = BatchQueue<InferRequest>;

/// The inference threads' queue. Closing it (on shutdown or drop) ends the threads once
/// they have drained it.
pub(crate) struct InferencePool {
    queue: Arc<Queue>,
    /// Threads running a batch of their own right now.
    busy: Arc<AtomicUsize>,
    threads: usize,
}

impl InferencePool {
    /// Start `threads` inference threads at `priority`. With `assist`, a thread with nothing
    /// to run helps another one's batch (see [`AssistTeam`]): at low load one image's
    /// inference uses several cores.
    pub fn start(
        threads: usize,
        policy: BatchPolicy,
        priority: InferencePriority,
        assist: bool,
        metrics: Arc<Metrics>,
        eta: Arc<ServiceTimeEstimator>,
    ) -> Result<InferencePool> {
        let queue = Arc::new(Queue::new());
        let team = Arc::new(AssistTeam::new());
        let assist = assist && threads > 1;
        let threads = threads.max(1);
        let busy = Arc::new(AtomicUsize::new(0));
        for i in 0..threads {
            let (q, m, e, team) = (queue.clone(), metrics.clone(), eta.clone(), team.clone());
            let b = busy.clone();
            std::thread::Builder::new()
                .name(format!("inference-{i}"))
                .spawn(move || {
                    if priority != InferencePriority::Nice(0) {
                        lower_priority(priority);
                    }
                    if assist {
                        run_assisting(&q, &policy, &team, &b, &m, &e);
                    } else {
                        while let Some(batch) = q.next_batch(&policy) {
                            let _busy = Busy::enter(&b);
                            run_batch(batch, &m, &e);
                        }
                    }
                    tracing::debug!("inference thread {i} stopped");
                })
                .map_err(|e| Error::Inference(format!("cannot start inference thread: {e}")))?;
        }
        Ok(InferencePool {
            queue,
            busy,
            threads,
        })
    }

    /// True if at least one inference thread is not running a batch of its own: a core the
    /// caller may use without taking it from inference.
    pub fn has_idle_thread(&self) -> bool {
        self.busy.load(Ordering::Relaxed) < self.threads
    }

    /// Promise that an image is coming (lets short batches wait for it).
    pub fn announce(&self) -> Announcement<InferRequest> {
        self.queue.announce()
    }

    /// Normalize and classify one prepared crop at `priority` (jobs: their rank; predictions:
    /// [`PREDICT_PRIORITY`]).
    pub async fn infer(
        &self,
        classifier: Classifier,
        crop: Bytes,
        priority: u8,
        announcement: Option<Announcement<InferRequest>>,
    ) -> Result<Inferred> {
        let (reply, answer) = oneshot::channel();
        let key = classifier.version().to_string();
        let limit = classifier.engine().max_native_batch();
        let request = InferRequest {
            classifier,
            crop,
            reply,
        };
        let pushed = match announcement {
            Some(a) => a.push(request, &key, priority, limit),
            None => self.queue.push(request, &key, priority, limit),
        };
        if pushed.is_err() {
            return Err(Error::ShuttingDown);
        }
        answer.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Stop the threads once the queue is drained (idempotent).
    pub fn close(&self) {
        self.queue.close();
    }
}

impl Drop for InferencePool {
    fn drop(&mut self) {
        self.queue.close();
    }
}

/// How the inference threads are scheduled against the rest of the machine (Linux; elsewhere
/// they run at the default priority).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InferencePriority {
    /// A niceness from 0 (like every other thread) to 19: when every core is busy, the
    /// other threads get proportionally more of them.
    Nice(i32),
    /// `SCHED_IDLE`: inference runs only on cycles no normal thread wants, so accepting,
    /// decoding and answering requests are never delayed by it. Inference still gets every
    /// core the rest of the process leaves idle.
    Idle,
}

/// Apply `priority` to the calling thread (Linux: `setpriority` / `sched_setscheduler` on the
/// thread id change this thread only). A failure is logged: the thread keeps running at the
/// default.
#[cfg(target_os = "linux")]
fn lower_priority(priority: InferencePriority) {
    // SAFETY: `gettid` has no preconditions; `setpriority` only reads its integer arguments,
    // and `sched_setscheduler` reads the `sched_param` it is given, which lives on this stack.
    let result = unsafe {
        let tid = libc::gettid();
        match priority {
            InferencePriority::Nice(nice) => {
                libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice)
            }
            InferencePriority::Idle => {
                let param = libc::sched_param { sched_priority: 0 };
                libc::sched_setscheduler(tid, libc::SCHED_IDLE, &param)
            }
        }
    };
    if result != 0 {
        tracing::warn!(?priority, error = %std::io::Error::last_os_error(), "inference thread priority unchanged");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority(priority: InferencePriority) {
    tracing::debug!(
        ?priority,
        "inference thread priority is only supported on Linux"
    );
}

/// The loop of an inference thread of an assisting pool: run batches as the team's leader,
/// and while there is none, help whoever leads until work arrives.
fn run_assisting(
    queue: &Queue,
    policy: &BatchPolicy,
    team: &Arc<AssistTeam>,
    busy: &AtomicUsize,
    metrics: &Metrics,
    eta: &ServiceTimeEstimator,
) {
    while let Some(next) = queue.next_batch_or_help(policy, || team.needs_help()) {
        match next {
            Next::Batch(batch) => team.lead(|| {
                let _busy = Busy::enter(busy);
                // Idle threads block in the queue: wake them to help with this batch.
                queue.wake_consumers();
                run_batch(batch, metrics, eta)
            }),
            Next::Help => team.help(|| queue.has_work()),
        }
    }
}

/// Counts a thread as busy while it lives.
struct Busy<'a>(&'a AtomicUsize);

impl<'a> Busy<'a> {
    fn enter(busy: &'a AtomicUsize) -> Self {
        busy.fetch_add(1, Ordering::Relaxed);
        Busy(busy)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn run_batch(batch: Vec<InferRequest>, metrics: &Metrics, eta: &ServiceTimeEstimator) {
    let Some(first) = batch.first() else { return };
    let classifier = first.classifier.clone();
    let pre = classifier.preprocessor();
    let per_image = pre.spec().tensor_len();
    let started = Instant::now();
    let mut tensor = vec![0f32; batch.len() * per_image];
    let mut accepted = Vec::with_capacity(batch.len());
    for request in batch {
        let slot = accepted.len() * per_image;
        match pre.normalize_into(&request.crop, &mut tensor[slot..slot + per_image]) {
            Ok(()) => accepted.push(request),
            Err(e) => {
                let _ = request.reply.send(Err(e));
            }
        }
    }
    let n = accepted.len();
    if n == 0 {
        return;
    }
    tensor.truncate(n * per_image);
    let normalize = started.elapsed() / n as u32;
    let inference_started = Instant::now();
    let logits = catch_unwind(AssertUnwindSafe(|| classifier.engine().run(tensor, n)))
        .unwrap_or_else(|_| Err(Error::Inference("the model panicked".into())));
    let took = inference_started.elapsed();
    let inference = took / n as u32;
    metrics.observe_inference(took.as_secs_f64(), n);
    match logits {
        Ok(logits) => {
            eta.observe(normalize + inference);
            let classes = classifier.engine().num_classes();
            for (request, row) in accepted.into_iter().zip(logits.chunks_exact(classes)) {
                let _ = request.reply.send(Ok(Inferred {
                    logits: row.to_vec(),
                    normalize,
                    inference,
                }));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, batch = n, "inference failed");
            let reason = e.to_string();
            for request in accepted {
                let _ = request.reply.send(Err(Error::Inference(reason.clone())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_has_an_idle_thread_until_every_thread_runs_a_batch() {
        let pool = InferencePool::start(
            2,
            BatchPolicy::default(),
            InferencePriority::Nice(0),
            true,
            Arc::new(Metrics::new()),
            Arc::new(ServiceTimeEstimator::new(Duration::from_millis(5))),
        )
        .expect("pool");
        assert!(pool.has_idle_thread());
        let first = Busy::enter(&pool.busy);
        assert!(pool.has_idle_thread());
        let second = Busy::enter(&pool.busy);
        assert!(!pool.has_idle_thread());
        drop(first);
        assert!(pool.has_idle_thread());
        drop(second);
        assert_eq!(pool.busy.load(Ordering::Relaxed), 0);
        pool.close();
    }
}
