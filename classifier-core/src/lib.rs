//! `classifier-core`: image classification with real ONNX models, in pure Rust.
//!
//! The pipeline is `bytes -> validate -> decode -> preprocess -> infer (tract) -> softmax ->
//! top-K`. Each stage is a module with one job:
//!
//! - [`image`]: format sniffing, limits, decoding untrusted bytes into oriented RGB;
//! - [`preprocess`]: torchvision-exact resize/crop/normalize into the model's tensor;
//! - [`model`]: the manifest, locating and verifying model files, labels, the tract engine;
//! - [`postprocess`]: softmax and top-K;
//! - [`classifier`]: the [`Classifier`] that ties them together;
//! - [`job`]: job records, priorities, stages and the state machine;
//! - [`backend`]: the traits every job backend implements (store, leased priority queue,
//!   status feed);
//! - [`service`]: the asynchronous job [`service::Service`] and its builder;
//! - [`worker`]: the worker runtime (leases, pipeline, inference threads, dynamic batching).
//!
//! ```no_run
//! let classifier = classifier_core::Classifier::load("latest")?;
//! let result = classifier.classify(&std::fs::read("photo.jpg").unwrap())?;
//! println!("{}", result.predictions[0].class_name);
//! # Ok::<(), classifier_core::Error>(())
//! ```

pub mod backend;
pub mod classifier;
pub mod error;
pub mod image;
pub mod job;
pub mod metrics;
pub mod model;
pub mod postprocess;
pub mod preprocess;
pub mod service;
pub mod worker;

pub use classifier::{Classification, Classifier, ClassifierBuilder, PreparedImage, Timings};
pub use error::{Error, Result};
pub use postprocess::Prediction;
