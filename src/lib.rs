//! `classifier`: asynchronous image classification in Rust, the façade crate.
//!
//! Today it re-exports the core: validate image bytes, decode, preprocess exactly like
//! torchvision, and run a real ImageNet ONNX model with pure-Rust tract.
//!
//! ```no_run
//! let classifier = classifier::Classifier::load("latest")?;
//! let result = classifier.classify(&std::fs::read("photo.jpg").unwrap())?;
//! println!("{} {:.3}", result.predictions[0].class_name, result.predictions[0].confidence);
//! # Ok::<(), classifier::Error>(())
//! ```
//!
//! The job service (`classifier-queue`) and the HTTP API (`classifier-http`) build on it.

pub use classifier_core::{
    image, model, postprocess, preprocess, Classification, Classifier, ClassifierBuilder, Error,
    Prediction, PreparedImage, Result, Timings,
};
