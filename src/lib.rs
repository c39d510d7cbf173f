//! `classifier`: asynchronous image classification in Rust, the façade crate.
//!
//! Today it re-exports the core: validate image bytes, decode, preprocess exactly like
//! torchvision, and run a real ImageNet ONNX model with pure-Rust tract.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let classifier = classifier::Classifier::load("latest")?;
//! # let photo = classifier::model::ModelLocator::from_env().find("imagenet_classes.txt")?.with_file_name("samples/coffee.png");
//! let result = classifier.classify(&std::fs::read(photo)?)?;
//! println!("{} {:.3}", result.predictions[0].class_name, result.predictions[0].confidence);
//! assert_eq!(result.predictions[0].class_id, 967); // espresso
//! # Ok(()) }
//! ```
//!
//! The job service (`classifier-queue`) and the HTTP API (`classifier-http`) build on it.

pub use classifier_core::{
    image, model, postprocess, preprocess, Classification, Classifier, ClassifierBuilder, Error,
    Prediction, PreparedImage, Result, Timings,
};
