//! `classifier`: asynchronous image classification in Rust, the façade crate.
//!
//! Embed classification directly: validate image bytes, decode, preprocess exactly like
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
//! Or run the asynchronous job service: submit an image, get a job id at once, follow its
//! progress, fetch the result. With [`InMemoryBackend`] everything runs in one process; with
//! `RedisBackend` many API and worker processes share the work.
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use classifier::{InMemoryBackend, JobStatus, Priority, QueueConfig, SubmitOptions, Ttls};
//! let service = classifier::Service::builder()
//!     .backend(InMemoryBackend::new(QueueConfig::default(), Ttls::default()))
//!     .workers(2)
//!     .build()
//!     .await?;
//! # let photo = classifier::model::ModelLocator::from_env().find("imagenet_classes.txt")?.with_file_name("samples/coffee.png");
//! let image = std::fs::read(photo)?;
//! let options = SubmitOptions { priority: Priority::High, ..Default::default() };
//! let ticket = service.submit(image.into(), options).await?;
//! while !service.status(ticket.job_id).await?.status.is_terminal() {
//!     tokio::time::sleep(std::time::Duration::from_millis(10)).await;
//! }
//! let result = service.result(ticket.job_id).await?;
//! assert_eq!(result.predictions[0].class_name, "espresso");
//! assert_eq!(service.status(ticket.job_id).await?.status, JobStatus::Completed);
//! service.shutdown().await;
//! # Ok(()) }
//! ```

pub use classifier_core::backend::{
    Backend, CasOutcome, DeadLetter, JobQueue, JobStore, Lease, NackOutcome, QueueConfig,
    QueueDepth, StatusFeed, StatusStream, Ttls, WorkerInfo,
};
pub use classifier_core::job::{
    JobEvent, JobId, JobRecord, JobResult, JobStatus, Priority, Stage, SubmitOptions,
};
pub use classifier_core::model::ModelRegistry;
pub use classifier_core::service::{
    DependencyHealth, HealthReport, JobTicket, ModelInfo, Service, ServiceBuilder,
};
pub use classifier_core::{
    backend, image, job, metrics, model, postprocess, preprocess, service, worker, Classification,
    Classifier, ClassifierBuilder, Error, Prediction, PreparedImage, Result, Timings,
};
pub use classifier_queue::{InMemoryBackend, RedisBackend};
