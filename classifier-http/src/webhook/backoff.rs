//! Retry timing: exponential backoff with full jitter, and `Retry-After`.

use std::time::{Duration, SystemTime};

use rand::Rng;

/// Exponential backoff with full jitter: after the `n`-th failed attempt (1-based) the next
/// one waits a uniformly random time in `[0, min(max, base * 2^(n-1))]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling after the first failure.
    pub base: Duration,
    /// The largest ceiling (and the cap on `Retry-After`).
    pub max: Duration,
}

impl Backoff {
    /// The ceiling after `failures` failed attempts: `min(max, base * 2^(failures-1))`.
    ///
    /// ```
    /// # use std::time::Duration;
    /// use classifier_http::webhook::Backoff;
    /// let b = Backoff { base: Duration::from_secs(1), max: Duration::from_secs(300) };
    /// assert_eq!(b.ceiling(1), Duration::from_secs(1));
    /// assert_eq!(b.ceiling(4), Duration::from_secs(8));
    /// assert_eq!(b.ceiling(40), Duration::from_secs(300));
    /// ```
    pub fn ceiling(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1);
        if exp > 31 {
            return self.max;
        }
        self.base
            .checked_mul(1u32 << exp)
            .map_or(self.max, |d| d.min(self.max))
    }

    /// A random delay in `[0, ceiling(failures)]` (full jitter).
    pub fn delay(&self, failures: u32) -> Duration {
        let ceiling = self.ceiling(failures).as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(0..=ceiling))
    }
}

/// The delay a `Retry-After` value asks for: whole seconds, or an HTTP date (a date in the
/// past means no delay). `None` if the value is neither.
///
/// ```
/// # use std::time::{Duration, SystemTime, UNIX_EPOCH};
/// use classifier_http::webhook::parse_retry_after;
/// let now = UNIX_EPOCH + Duration::from_secs(1_445_412_480); // Wed, 21 Oct 2015 07:28:00 GMT
/// assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
/// assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:29:00 GMT", now), Some(Duration::from_secs(60)));
/// assert_eq!(parse_retry_after("soon", now), None);
/// ```
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn ceilings_double_then_cap() {
        let b = Backoff {
            base: Duration::from_millis(1000),
            max: Duration::from_millis(300_000),
        };
        let got: Vec<u64> = (1..=12).map(|n| b.ceiling(n).as_millis() as u64).collect();
        assert_eq!(
            got,
            [1000, 2000, 4000, 8000, 16000, 32000, 64000, 128000, 256000, 300000, 300000, 300000]
        );
        assert_eq!(b.ceiling(0), Duration::from_millis(1000));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_millis(300_000));
        let huge = Backoff {
            base: Duration::from_secs(u64::MAX / 4),
            max: Duration::from_secs(10),
        };
        assert_eq!(huge.ceiling(5), Duration::from_secs(10));
    }

    #[test]
    fn full_jitter_stays_within_and_spreads() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_millis(1000),
        };
        for n in 1..=8 {
            let ceiling = b.ceiling(n);
            let samples: Vec<Duration> = (0..400).map(|_| b.delay(n)).collect();
            assert!(samples.iter().all(|d| *d <= ceiling), "attempt {n}");
            // Full jitter: values spread over the whole range, mean near half the ceiling.
            let mean = samples.iter().map(|d| d.as_secs_f64()).sum::<f64>() / 400.0;
            let half = ceiling.as_secs_f64() / 2.0;
            assert!(
                (mean - half).abs() < half * 0.25,
                "attempt {n}: mean {mean}"
            );
            assert!(samples.iter().any(|d| *d < ceiling / 4));
            assert!(samples.iter().any(|d| *d > ceiling * 3 / 4));
        }
    }

    #[test]
    fn retry_after_forms() {
        let now = UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        // Obsolete formats that HTTP still accepts.
        assert_eq!(
            parse_retry_after("Wednesday, 21-Oct-15 07:28:10 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(parse_retry_after("1.5", now), None);
        assert_eq!(parse_retry_after("", now), None);
    }
}
