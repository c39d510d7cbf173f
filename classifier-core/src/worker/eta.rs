//! Estimated completion: an EWMA of the measured per-job service time.
//!
//! `estimate = (ready jobs ahead / workers + 1) * ewma`. The EWMA is seeded with a measured
//! warm-up inference when the service starts and then follows every inference batch
//! (time per job, normalization included).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Weight of the newest observation.
const ALPHA: f64 = 0.2;

/// A lock-free EWMA of per-job service time.
///
/// ```
/// use std::time::Duration;
/// use classifier_core::worker::ServiceTimeEstimator;
/// let eta = ServiceTimeEstimator::new(Duration::from_millis(10));
/// // 8 jobs ahead, 2 workers: (8 / 2 + 1) * 10 ms
/// assert_eq!(eta.estimate(8, 2), Duration::from_millis(50));
/// eta.observe(Duration::from_millis(20));
/// assert_eq!(eta.current(), Duration::from_millis(12));
/// ```
#[derive(Debug)]
pub struct ServiceTimeEstimator {
    /// Seconds, as `f64` bits.
    seconds: AtomicU64,
}

impl ServiceTimeEstimator {
    /// Start from `seed` (a measured warm-up inference).
    pub fn new(seed: Duration) -> Self {
        ServiceTimeEstimator {
            seconds: AtomicU64::new(seed.as_secs_f64().to_bits()),
        }
    }

    /// Fold in one measured per-job service time.
    pub fn observe(&self, sample: Duration) {
        let x = sample.as_secs_f64();
        let _ = self
            .seconds
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                let old = f64::from_bits(bits);
                Some((old + ALPHA * (x - old)).to_bits())
            });
    }

    /// Replace the estimate (used once a real warm-up measurement exists).
    pub fn reset(&self, seed: Duration) {
        self.seconds
            .store(seed.as_secs_f64().to_bits(), Ordering::Relaxed);
    }

    /// The current per-job estimate.
    pub fn current(&self) -> Duration {
        let s = f64::from_bits(self.seconds.load(Ordering::Relaxed));
        Duration::try_from_secs_f64(s).unwrap_or(Duration::ZERO)
    }

    /// Time until a job with `ahead` ready jobs before it completes on `workers` workers.
    pub fn estimate(&self, ahead: usize, workers: usize) -> Duration {
        let factor = ahead as f64 / workers.max(1) as f64 + 1.0;
        let s = f64::from_bits(self.seconds.load(Ordering::Relaxed)) * factor;
        Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converges_to_the_measured_time() {
        let eta = ServiceTimeEstimator::new(Duration::from_millis(100));
        for _ in 0..100 {
            eta.observe(Duration::from_millis(8));
        }
        let ms = eta.current().as_secs_f64() * 1000.0;
        assert!((ms - 8.0).abs() < 0.01, "{ms}");
        assert_eq!(eta.estimate(0, 0), eta.current());
    }
}
