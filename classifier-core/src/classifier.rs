//! [`Classifier`]: the three-line entry point (bytes in, labelled predictions out).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::image::{ImageMetadata, ValidationConfig};
use crate::model::{Engine, EngineOptions, Labels, Manifest, ModelEntry, ModelLocator};
use crate::postprocess::{top_k, Prediction};
use crate::preprocess::Preprocessor;

/// The outcome of classifying one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Classification {
    /// The model version that produced it.
    pub model_version: String,
    /// The top-K classes, most probable first.
    pub predictions: Vec<Prediction>,
    /// Format and size of the image as received (dimensions as displayed).
    pub image_metadata: ImageMetadata,
    /// Time spent on this image, in each stage.
    pub timings: Timings,
}

/// Wall-clock time per pipeline stage.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Timings {
    /// Validation and pixel decoding.
    pub decode: Duration,
    /// Resize, crop and normalize.
    pub preprocess: Duration,
    /// The tract call (for a batch: the batch's time divided by its size).
    pub inference: Duration,
}

impl Timings {
    /// Total time over all stages.
    pub fn total(&self) -> Duration {
        self.decode + self.preprocess + self.inference
    }
}

/// An image that passed validation and preprocessing: ready for inference.
///
/// Produced by [`Classifier::prepare`]; an upload that gets this far is known to be a good,
/// fully decodable image.
#[derive(Debug, Clone)]
pub struct PreparedImage {
    /// The model input for this one image.
    pub tensor: Vec<f32>,
    /// What the client sent.
    pub metadata: ImageMetadata,
    /// Decode and preprocess timings.
    pub timings: Timings,
}

struct Inner {
    entry: ModelEntry,
    engine: Engine,
    labels: Labels,
    preprocessor: Preprocessor,
    validation: ValidationConfig,
    top_k: usize,
}

/// A loaded model with its preprocessing and labels. Clone it freely: clones share the model.
///
/// ```
/// # use classifier_core::model::ModelLocator;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let classifier = classifier_core::Classifier::load("latest")?;
/// # let photo = ModelLocator::from_env().find("imagenet_classes.txt")?.with_file_name("samples/chelsea.png");
/// let result = classifier.classify(&std::fs::read(photo)?)?;
/// assert_eq!(result.predictions[0].class_name, "Egyptian cat");
/// assert_eq!((result.image_metadata.width, result.image_metadata.height), (451, 300));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Classifier {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Classifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Classifier")
            .field("version", &self.inner.entry.version)
            .field("top_k", &self.inner.top_k)
            .finish_non_exhaustive()
    }
}

/// Configures and loads a [`Classifier`].
#[derive(Debug, Clone)]
pub struct ClassifierBuilder {
    manifest: Option<Manifest>,
    locator: Option<ModelLocator>,
    version: String,
    validation: ValidationConfig,
    engine: EngineOptions,
    top_k: usize,
}

impl Default for ClassifierBuilder {
    fn default() -> Self {
        ClassifierBuilder {
            manifest: None,
            locator: None,
            version: "latest".into(),
            validation: ValidationConfig::default(),
            engine: EngineOptions::default(),
            top_k: 5,
        }
    }
}

impl ClassifierBuilder {
    /// Use this manifest instead of discovering one (default: the first `manifest.toml` on the
    /// locator's search path, else the built-in one).
    pub fn manifest(mut self, manifest: Manifest) -> Self {
        self.manifest = Some(manifest);
        self
    }

    /// Search for model files with this locator (default: [`ModelLocator::from_env`]).
    pub fn locator(mut self, locator: ModelLocator) -> Self {
        self.locator = Some(locator);
        self
    }

    /// The model version to load; `"latest"` (the default) means the manifest's default.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// Image validation limits.
    pub fn validation(mut self, validation: ValidationConfig) -> Self {
        self.validation = validation;
        self
    }

    /// tract execution options (batching, threads).
    pub fn engine_options(mut self, options: EngineOptions) -> Self {
        self.engine = options;
        self
    }

    /// How many predictions to return per image (default 5).
    pub fn top_k(mut self, k: usize) -> Self {
        self.top_k = k.max(1);
        self
    }

    /// Find and verify the files, load the model and optimize its batch-1 plan.
    pub fn build(self) -> Result<Classifier> {
        let locator = self.locator.unwrap_or_else(ModelLocator::from_env);
        let manifest = match self.manifest {
            Some(m) => m,
            None => match locator.find_manifest() {
                Some(path) => Manifest::from_path(&path)?,
                None => Manifest::builtin()?,
            },
        };
        let entry = manifest.get(&self.version)?.clone();
        let (_, model_bytes) = locator.read_verified(&entry.file, Some(&entry.sha256))?;
        let (labels_path, label_bytes) =
            locator.read_verified(&entry.labels, entry.labels_sha256.as_deref())?;
        let labels = Labels::parse(&String::from_utf8_lossy(&label_bytes), &labels_path)?;
        if labels.len() != entry.num_classes {
            return Err(Error::Labels {
                path: labels_path,
                reason: format!(
                    "{} labels for a model with {} classes",
                    labels.len(),
                    entry.num_classes
                ),
            });
        }
        let started = Instant::now();
        let engine = Engine::load(&entry, &model_bytes, self.engine)?;
        tracing::info!(version = %entry.version, elapsed = ?started.elapsed(), "model loaded");
        let preprocessor = Preprocessor::new(entry.preprocess.clone())?;
        Ok(Classifier {
            inner: Arc::new(Inner {
                entry,
                engine,
                labels,
                preprocessor,
                validation: self.validation,
                top_k: self.top_k,
            }),
        })
    }
}

impl Classifier {
    /// A builder with default settings.
    pub fn builder() -> ClassifierBuilder {
        ClassifierBuilder::default()
    }

    /// Load model `version` (`"latest"` for the manifest default) with default settings.
    pub fn load(version: &str) -> Result<Classifier> {
        Classifier::builder().version(version).build()
    }

    /// The version of the loaded model.
    pub fn version(&self) -> &str {
        &self.inner.entry.version
    }

    /// The manifest entry of the loaded model.
    pub fn entry(&self) -> &ModelEntry {
        &self.inner.entry
    }

    /// The class labels.
    pub fn labels(&self) -> &Labels {
        &self.inner.labels
    }

    /// The validation limits in force.
    pub fn validation(&self) -> &ValidationConfig {
        &self.inner.validation
    }

    /// The underlying tract engine (for raw-tensor inference).
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The preprocessor of this model.
    pub fn preprocessor(&self) -> &Preprocessor {
        &self.inner.preprocessor
    }

    /// Validate, decode and preprocess one image: everything but inference.
    ///
    /// Large baseline JPEGs are decoded at a reduced size in the DCT domain when that keeps
    /// enough pixels for the resize (see [`ValidationConfig::decode_for`]).
    pub fn prepare(&self, bytes: &[u8]) -> Result<PreparedImage> {
        let started = Instant::now();
        let resize_shorter = self.inner.preprocessor.spec().resize_shorter;
        let decoded = self.inner.validation.decode_for(bytes, resize_shorter)?;
        let decoded_at = Instant::now();
        let tensor = self.inner.preprocessor.run_decoded(&decoded)?;
        Ok(PreparedImage {
            tensor,
            metadata: decoded.metadata,
            timings: Timings {
                decode: decoded_at - started,
                preprocess: decoded_at.elapsed(),
                inference: Duration::ZERO,
            },
        })
    }

    /// Run inference on prepared images (batched natively where the model allows) and rank
    /// the classes. The results are in input order.
    pub fn infer(&self, images: Vec<PreparedImage>) -> Result<Vec<Classification>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let n = images.len();
        let mut input = Vec::with_capacity(n * self.inner.entry.preprocess.tensor_len());
        for image in &images {
            input.extend_from_slice(&image.tensor);
        }
        let started = Instant::now();
        let logits = self.inner.engine.run(input, n)?;
        let per_image = started.elapsed() / n as u32;
        let classes = self.inner.engine.num_classes();
        Ok(images
            .into_iter()
            .zip(logits.chunks_exact(classes))
            .map(|(image, logits)| Classification {
                model_version: self.version().to_string(),
                predictions: top_k(logits, &self.inner.labels, self.inner.top_k),
                image_metadata: image.metadata,
                timings: Timings {
                    inference: per_image,
                    ..image.timings
                },
            })
            .collect())
    }

    /// Classify one image.
    ///
    /// ```
    /// let classifier = classifier_core::Classifier::load("latest").unwrap();
    /// match classifier.classify(b"not an image") {
    ///     Err(e) => assert_eq!(e.code(), "INVALID_IMAGE"),
    ///     Ok(_) => unreachable!(),
    /// }
    /// ```
    pub fn classify(&self, bytes: &[u8]) -> Result<Classification> {
        let prepared = self.prepare(bytes)?;
        self.infer(vec![prepared])?
            .pop()
            .ok_or_else(|| Error::Inference("no result for the image".into()))
    }

    /// Classify many images with batched inference. Each image gets its own result: a bad
    /// image yields its error and does not affect the others.
    pub fn classify_batch<B: AsRef<[u8]>>(&self, images: &[B]) -> Vec<Result<Classification>> {
        let prepared: Vec<Result<PreparedImage>> =
            images.iter().map(|b| self.prepare(b.as_ref())).collect();
        let good: Vec<PreparedImage> = prepared
            .iter()
            .filter_map(|p| p.as_ref().ok().cloned())
            .collect();
        let mut classified = match self.infer(good) {
            Ok(results) => results.into_iter().map(Ok).collect::<Vec<_>>(),
            Err(e) => {
                let reason = e.to_string();
                (0..prepared.iter().filter(|p| p.is_ok()).count())
                    .map(|_| Err(Error::Inference(reason.clone())))
                    .collect()
            }
        }
        .into_iter();
        prepared
            .into_iter()
            .map(|p| match p {
                Ok(_) => classified
                    .next()
                    .unwrap_or_else(|| Err(Error::Inference("missing batch result".into()))),
                Err(e) => Err(e),
            })
            .collect()
    }
}
