//! `classifier-queue`: job-store and queue backends for the classifier service.
//!
//! Every backend implements the traits of [`classifier_core::backend`] (job store, leased
//! priority queue, status feed, webhook outbox, feedback, result cache) and passes the one conformance suite in
//! `tests/conformance/mod.rs`.
//!
//! - [`InMemoryBackend`]: the embedded default, one process, no persistence.
//!
//! ```
//! use classifier_core::backend::{Backend, QueueConfig, Ttls};
//! let backend = classifier_queue::InMemoryBackend::new(QueueConfig::default(), Ttls::default());
//! assert_eq!(backend.name(), "memory");
//! ```

pub mod error;
pub mod memory;
pub mod redis;

pub use self::redis::{RedisBackend, RedisRateLimiter};
pub use error::{Error, Result};
pub use memory::InMemoryBackend;
