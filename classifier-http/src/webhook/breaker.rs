//! A circuit breaker per destination (`host:port`), in process memory.
//!
//! Closed: every delivery goes through; `threshold` consecutive failures (network errors,
//! timeouts, 5xx, 429) open it. Open: deliveries are not attempted until the cool-down is
//! over (the dispatcher reschedules them for then, without counting an attempt). Half-open:
//! after the cool-down one delivery is let through as a trial; its success closes the
//! breaker, its failure opens it for another cool-down. Any response other than a failure
//! (2xx, or a 4xx the receiver meant) counts as a success: the host is up.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// While a half-open trial is in flight, other deliveries to the host wait at most this.
const HALF_OPEN_RECHECK: Duration = Duration::from_secs(1);

/// Whether a delivery may be attempted now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Attempt it (closed, or the half-open trial).
    Allow,
    /// Do not attempt it; try again after this long.
    Open {
        /// Time until the breaker lets a delivery through again.
        retry_in: Duration,
    },
}

#[derive(Debug, Default)]
struct HostState {
    failures: u32,
    open_until: Option<Instant>,
    trial: bool,
}

/// The breakers of every destination.
#[derive(Debug)]
pub struct Breakers {
    threshold: u32,
    cooldown: Duration,
    hosts: HashMap<String, HostState>,
}

impl Breakers {
    /// Breakers that open after `threshold` consecutive failures (0 = never) for `cooldown`.
    pub fn new(threshold: u32, cooldown: Duration) -> Breakers {
        Breakers {
            threshold,
            cooldown,
            hosts: HashMap::new(),
        }
    }

    /// May a delivery to `key` be attempted at `now`? In the half-open state the first
    /// caller gets the trial; it must then report [`Breakers::success`],
    /// [`Breakers::failure`] or [`Breakers::neutral`].
    pub fn admit(&mut self, key: &str, now: Instant) -> Admission {
        let Some(state) = self.hosts.get_mut(key) else {
            return Admission::Allow;
        };
        match state.open_until {
            None => Admission::Allow,
            Some(until) if now < until => Admission::Open {
                retry_in: until - now,
            },
            Some(_) if state.trial => Admission::Open {
                retry_in: HALF_OPEN_RECHECK.min(self.cooldown),
            },
            Some(_) => {
                state.trial = true;
                Admission::Allow
            }
        }
    }

    /// The host answered: close its breaker.
    pub fn success(&mut self, key: &str) {
        self.hosts.remove(key);
    }

    /// An attempt to `key` failed at `now`. Returns `true` if that opened the breaker.
    pub fn failure(&mut self, key: &str, now: Instant) -> bool {
        if self.threshold == 0 {
            return false;
        }
        let state = self.hosts.entry(key.to_string()).or_default();
        state.failures = state.failures.saturating_add(1);
        let open = match state.open_until {
            // The half-open trial failed (or a straggler admitted before the cool-down
            // ended): open again.
            Some(until) => state.trial || now >= until,
            None => state.failures >= self.threshold,
        };
        if open {
            state.open_until = Some(now + self.cooldown);
            state.trial = false;
        }
        open
    }

    /// An attempt that says nothing about the host (e.g. refused before connecting): only
    /// give the half-open trial back.
    pub fn neutral(&mut self, key: &str) {
        if let Some(state) = self.hosts.get_mut(key) {
            state.trial = false;
        }
    }

    /// Is `key`'s breaker open (cooling down) at `now`?
    pub fn is_open(&self, key: &str, now: Instant) -> bool {
        self.hosts
            .get(key)
            .and_then(|s| s.open_until)
            .is_some_and(|until| now < until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOL: Duration = Duration::from_secs(30);

    #[test]
    fn opens_after_threshold_consecutive_failures() {
        let mut b = Breakers::new(3, COOL);
        let t0 = Instant::now();
        assert_eq!(b.admit("h:80", t0), Admission::Allow);
        assert!(!b.failure("h:80", t0));
        assert!(!b.failure("h:80", t0));
        // A success in between resets the count.
        b.success("h:80");
        assert!(!b.failure("h:80", t0));
        assert!(!b.failure("h:80", t0));
        assert!(b.failure("h:80", t0));
        assert!(b.is_open("h:80", t0));
        assert_eq!(
            b.admit("h:80", t0 + Duration::from_secs(10)),
            Admission::Open {
                retry_in: Duration::from_secs(20)
            }
        );
        // Other hosts are not affected.
        assert_eq!(b.admit("other:80", t0), Admission::Allow);
        assert!(!b.is_open("h:81", t0));
    }

    #[test]
    fn half_open_lets_one_trial_through() {
        let mut b = Breakers::new(1, COOL);
        let t0 = Instant::now();
        assert!(b.failure("h:80", t0));
        let later = t0 + COOL;
        assert_eq!(b.admit("h:80", later), Admission::Allow);
        // The trial is in flight: the others wait a little.
        assert_eq!(
            b.admit("h:80", later),
            Admission::Open {
                retry_in: HALF_OPEN_RECHECK
            }
        );
        // The trial fails: open for a whole new cool-down.
        assert!(b.failure("h:80", later));
        assert!(b.is_open("h:80", later + COOL - Duration::from_millis(1)));
        // Next trial succeeds: closed, everyone goes through.
        let again = later + COOL;
        assert_eq!(b.admit("h:80", again), Admission::Allow);
        b.success("h:80");
        assert_eq!(b.admit("h:80", again), Admission::Allow);
        assert_eq!(b.admit("h:80", again), Admission::Allow);
    }

    #[test]
    fn neutral_returns_the_trial() {
        let mut b = Breakers::new(1, COOL);
        let t0 = Instant::now();
        b.failure("h:80", t0);
        assert_eq!(b.admit("h:80", t0 + COOL), Admission::Allow);
        b.neutral("h:80");
        assert_eq!(b.admit("h:80", t0 + COOL), Admission::Allow);
    }

    #[test]
    fn threshold_zero_never_opens() {
        let mut b = Breakers::new(0, COOL);
        let t0 = Instant::now();
        for _ in 0..100 {
            assert!(!b.failure("h:80", t0));
        }
        assert_eq!(b.admit("h:80", t0), Admission::Allow);
    }
}
