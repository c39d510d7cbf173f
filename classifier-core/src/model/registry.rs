//! [`ModelRegistry`]: every model version of the manifest, loaded lazily, kept in an LRU.
//!
//! - [`ModelRegistry::spec`] answers "how is an image prepared for version X" from the
//!   manifest alone, without loading the model: API-only processes validate and crop images
//!   at submission with it.
//! - [`ModelRegistry::get`] returns a loaded [`Classifier`], loading it on first use on a
//!   blocking thread (never on the async reactor) and keeping at most `cache_size` versions
//!   loaded (least recently used first out; the default version is never evicted).
//! - `"latest"`, `""` or `None` mean the default version (the manifest's, unless overridden).
//!
//! Hot reload: the manifest and its derived specs live in one immutable [`Catalog`] behind an
//! `RwLock<Arc<..>>`, and loaded models are handed out as `Classifier` clones (an `Arc`
//! inside). A reload can therefore build a new catalog, swap it in and drop cache entries,
//! while jobs in flight keep the model they started with.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use super::{EngineOptions, Manifest, ModelEntry, ModelLocator};
use crate::classifier::Classifier;
use crate::error::{Error, Result};
use crate::image::ValidationConfig;
use crate::metrics::Metrics;
use crate::preprocess::Preprocessor;
use crate::service::ModelInfo;

/// How to prepare input for one model version, known without loading the model.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// The manifest entry.
    pub entry: ModelEntry,
    /// Its preprocessor (resize, crop, normalize).
    pub preprocessor: Preprocessor,
}

/// One immutable view of the manifest (swapped as a whole by a reload).
#[derive(Debug)]
struct Catalog {
    manifest: Manifest,
    default: String,
    specs: HashMap<String, Arc<ModelSpec>>,
}

impl Catalog {
    fn new(manifest: Manifest, default_override: Option<&str>) -> Result<Catalog> {
        let default = match default_override {
            Some(v) if !v.is_empty() && v != "latest" => manifest.get(v)?.version.clone(),
            _ => manifest.default.clone(),
        };
        let mut specs = HashMap::new();
        for entry in &manifest.models {
            let preprocessor = Preprocessor::new(entry.preprocess.clone())?;
            specs.insert(
                entry.version.clone(),
                Arc::new(ModelSpec {
                    entry: entry.clone(),
                    preprocessor,
                }),
            );
        }
        Ok(Catalog {
            manifest,
            default,
            specs,
        })
    }

    /// Resolve like [`Catalog::resolve`], except that `"latest"` follows the manifest's A/B
    /// weights when it has some.
    fn route(&self, version: Option<&str>) -> Result<&Arc<ModelSpec>> {
        let weights = &self.manifest.latest_weights;
        if weights.is_empty() || !matches!(version, None | Some("") | Some("latest")) {
            return self.resolve(version);
        }
        let total: u64 = weights.values().map(|w| u64::from(*w)).sum();
        let mut pick = fastrand::u64(0..total.max(1));
        for (name, weight) in weights {
            if pick < u64::from(*weight) {
                return self.resolve(Some(name));
            }
            pick -= u64::from(*weight);
        }
        self.resolve(version)
    }

    /// The versions a reload preloads: the default and every A/B arm.
    fn hot_versions(&self) -> Vec<String> {
        let mut hot = vec![self.default.clone()];
        for (name, weight) in &self.manifest.latest_weights {
            if *weight > 0 && !hot.contains(name) {
                hot.push(name.clone());
            }
        }
        hot
    }

    fn resolve(&self, version: Option<&str>) -> Result<&Arc<ModelSpec>> {
        let wanted = match version {
            None | Some("") | Some("latest") => self.default.as_str(),
            Some(v) => v,
        };
        self.specs
            .get(wanted)
            .ok_or_else(|| Error::UnknownModelVersion {
                requested: version.unwrap_or_default().to_string(),
                available: self.manifest.versions(),
            })
    }
}

/// Loaded models, least recently used first.
#[derive(Default)]
struct Cache {
    entries: Vec<(String, Classifier)>,
}

impl Cache {
    fn touch(&mut self, version: &str) -> Option<Classifier> {
        let i = self.entries.iter().position(|(v, _)| v == version)?;
        let entry = self.entries.remove(i);
        let classifier = entry.1.clone();
        self.entries.push(entry);
        Some(classifier)
    }
}

/// Where a reload reads the manifest from.
#[derive(Debug, Clone)]
enum ManifestSource {
    /// This file.
    Path(std::path::PathBuf),
    /// The first `manifest.toml` on the locator's path, else the built-in one.
    Locator,
    /// A manifest handed to the builder: a reload keeps it.
    Fixed,
}

/// What [`ModelRegistry::reload`] changed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReloadReport {
    /// Every version of the new manifest.
    pub versions: Vec<String>,
    /// What `"latest"` means now.
    pub default: String,
    /// Versions that are new.
    pub added: Vec<String>,
    /// Versions that are gone (their loaded models were dropped; jobs in flight keep them).
    pub removed: Vec<String>,
    /// Versions whose entry changed (file, checksum, preprocessing...): reloaded on next use.
    pub changed: Vec<String>,
    /// Versions loaded after the reload (the default and A/B arms are loaded before the swap).
    pub loaded: Vec<String>,
}

struct Inner {
    catalog: RwLock<Arc<Catalog>>,
    source: ManifestSource,
    default_override: Option<String>,
    cache: Mutex<Cache>,
    /// One load at a time, so that two requests for the same cold version load it once.
    load_lock: tokio::sync::Mutex<()>,
    locator: ModelLocator,
    validation: ValidationConfig,
    engine: EngineOptions,
    top_k: usize,
    cache_size: usize,
    metrics: Option<Arc<Metrics>>,
}

/// The model versions a service can run. Cheap to clone (an `Arc` inside).
///
/// ```no_run
/// # async fn demo() -> classifier_core::Result<()> {
/// use classifier_core::model::ModelRegistry;
/// let registry = ModelRegistry::builder().cache_size(2).build()?;
/// let spec = registry.spec(None)?; // the default's preprocessing, nothing loaded
/// assert_eq!(spec.entry.preprocess.input_width, 224);
/// let model = registry.get(Some("latest")).await?; // loads it (off the reactor)
/// assert_eq!(model.version(), spec.entry.version);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ModelRegistry {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ModelRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelRegistry")
            .field("default", &self.default_version())
            .field("loaded", &self.loaded())
            .field("cache_size", &self.inner.cache_size)
            .finish_non_exhaustive()
    }
}

/// Configures a [`ModelRegistry`].
#[derive(Debug, Clone)]
pub struct RegistryBuilder {
    manifest: Option<Manifest>,
    manifest_path: Option<std::path::PathBuf>,
    locator: Option<ModelLocator>,
    default_model: Option<String>,
    cache_size: usize,
    validation: ValidationConfig,
    engine: EngineOptions,
    top_k: usize,
    metrics: Option<Arc<Metrics>>,
}

impl Default for RegistryBuilder {
    fn default() -> Self {
        RegistryBuilder {
            manifest: None,
            manifest_path: None,
            locator: None,
            default_model: None,
            cache_size: 3,
            validation: ValidationConfig::default(),
            engine: EngineOptions::default(),
            top_k: 5,
            metrics: None,
        }
    }
}

impl RegistryBuilder {
    /// Use this manifest (default: the first `manifest.toml` on the locator's path, else the
    /// built-in one).
    pub fn manifest(mut self, manifest: Manifest) -> Self {
        self.manifest = Some(manifest);
        self
    }

    /// Read the manifest from this file (and re-read it on [`ModelRegistry::reload`]).
    pub fn manifest_path(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.manifest_path = Some(path.into());
        self
    }

    /// Where model files are searched (default [`ModelLocator::from_env`]).
    pub fn locator(mut self, locator: ModelLocator) -> Self {
        self.locator = Some(locator);
        self
    }

    /// Make `version` what `"latest"` means instead of the manifest's default.
    pub fn default_model(mut self, version: impl Into<String>) -> Self {
        self.default_model = Some(version.into());
        self
    }

    /// How many versions stay loaded at once (default 3, at least 1).
    pub fn cache_size(mut self, n: usize) -> Self {
        self.cache_size = n.max(1);
        self
    }

    /// Image limits of the loaded classifiers.
    pub fn validation(mut self, validation: ValidationConfig) -> Self {
        self.validation = validation;
        self
    }

    /// tract options of every loaded model.
    pub fn engine_options(mut self, options: EngineOptions) -> Self {
        self.engine = options;
        self
    }

    /// Predictions per image (default 5).
    pub fn top_k(mut self, k: usize) -> Self {
        self.top_k = k.max(1);
        self
    }

    /// Report the number of loaded models to these metrics.
    pub fn metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Read the manifest and check the default; loads no model.
    pub fn build(self) -> Result<ModelRegistry> {
        let locator = self.locator.unwrap_or_else(ModelLocator::from_env);
        let source = match (&self.manifest_path, &self.manifest) {
            (Some(path), _) => ManifestSource::Path(path.clone()),
            (None, Some(_)) => ManifestSource::Fixed,
            (None, None) => ManifestSource::Locator,
        };
        let manifest = match (self.manifest, &source) {
            (_, ManifestSource::Path(path)) => Manifest::from_path(path)?,
            (Some(m), _) => m,
            (None, _) => read_from_locator(&locator)?,
        };
        let catalog = Catalog::new(manifest, self.default_model.as_deref())?;
        Ok(ModelRegistry {
            inner: Arc::new(Inner {
                catalog: RwLock::new(Arc::new(catalog)),
                source,
                default_override: self.default_model,
                cache: Mutex::new(Cache::default()),
                load_lock: tokio::sync::Mutex::new(()),
                locator,
                validation: self.validation,
                engine: self.engine,
                top_k: self.top_k,
                cache_size: self.cache_size,
                metrics: self.metrics,
            }),
        })
    }
}

fn read_from_locator(locator: &ModelLocator) -> Result<Manifest> {
    match locator.find_manifest() {
        Some(path) => Manifest::from_path(&path),
        None => Manifest::builtin(),
    }
}

impl ModelRegistry {
    /// A builder with default settings.
    pub fn builder() -> RegistryBuilder {
        RegistryBuilder::default()
    }

    fn catalog(&self) -> Arc<Catalog> {
        // The catalog is replaced whole, never mutated: a poisoned lock still holds a valid one.
        self.inner
            .catalog
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.inner.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The version `"latest"` means.
    pub fn default_version(&self) -> String {
        self.catalog().default.clone()
    }

    /// The A/B split of `"latest"` (version -> weight); empty when latest is the default.
    pub fn latest_weights(&self) -> std::collections::BTreeMap<String, u32> {
        self.catalog().manifest.latest_weights.clone()
    }

    /// Every version of the manifest, in manifest order.
    pub fn versions(&self) -> Vec<String> {
        self.catalog().manifest.versions()
    }

    /// The image limits every model of this registry applies.
    pub fn validation(&self) -> &ValidationConfig {
        &self.inner.validation
    }

    /// Resolve `version` (`None`, `""` and `"latest"` mean the default) to its manifest
    /// entry and preprocessor, without loading the model. Unknown versions are
    /// [`Error::UnknownModelVersion`], listing the available ones.
    pub fn spec(&self, version: Option<&str>) -> Result<Arc<ModelSpec>> {
        self.catalog().resolve(version).cloned()
    }

    /// Like [`ModelRegistry::spec`], but `"latest"` (or no version) follows the manifest's
    /// A/B weights (`latest_weights`) when it has some. Submissions use this; the version
    /// picked is the one recorded in the job.
    pub fn route(&self, version: Option<&str>) -> Result<Arc<ModelSpec>> {
        self.catalog().route(version).cloned()
    }

    /// Re-read the manifest and swap it in with zero downtime.
    ///
    /// The default version and every A/B arm of the new manifest are loaded *before* the
    /// swap, so no request waits for (or fails on) a load; versions that are gone or whose
    /// entry changed are dropped from the cache afterwards. Jobs in flight keep the
    /// [`Classifier`] they hold and finish on the model they started with. On any error
    /// (unreadable manifest, a model that does not load) nothing changes.
    pub async fn reload(&self) -> Result<ReloadReport> {
        let manifest = match &self.inner.source {
            ManifestSource::Path(path) => Manifest::from_path(path)?,
            ManifestSource::Locator => read_from_locator(&self.inner.locator)?,
            ManifestSource::Fixed => self.catalog().manifest.clone(),
        };
        let next = Arc::new(Catalog::new(
            manifest,
            self.inner.default_override.as_deref(),
        )?);
        // One reload or load at a time: a load racing the swap could cache a stale model.
        let _loading = self.inner.load_lock.lock().await;
        let old = self.catalog();
        let unchanged = |v: &str| match (old.specs.get(v), next.specs.get(v)) {
            (Some(a), Some(b)) => a.entry == b.entry,
            _ => false,
        };
        let mut fresh = Vec::new();
        for version in next.hot_versions() {
            let cached = unchanged(&version) && self.cache().touch(&version).is_some();
            if !cached {
                let spec = next.resolve(Some(&version))?.clone();
                fresh.push((version.clone(), self.load(&next.manifest, &spec).await?));
            }
        }
        let report = ReloadReport {
            versions: next.manifest.versions(),
            default: next.default.clone(),
            added: next
                .manifest
                .versions()
                .into_iter()
                .filter(|v| !old.specs.contains_key(v))
                .collect(),
            removed: old
                .manifest
                .versions()
                .into_iter()
                .filter(|v| !next.specs.contains_key(v))
                .collect(),
            changed: next
                .manifest
                .versions()
                .into_iter()
                .filter(|v| old.specs.contains_key(v) && !unchanged(v))
                .collect(),
            loaded: Vec::new(),
        };
        let keep: Vec<String> = old
            .manifest
            .versions()
            .into_iter()
            .filter(|v| unchanged(v))
            .collect();
        *self
            .inner
            .catalog
            .write()
            .unwrap_or_else(|p| p.into_inner()) = next;
        self.cache().entries.retain(|(v, _)| keep.contains(v));
        for (version, classifier) in fresh {
            self.insert(version, classifier);
        }
        let loaded = self.loaded();
        if let Some(m) = &self.inner.metrics {
            m.set_models_loaded(loaded.len());
        }
        tracing::info!(
            default = %report.default,
            added = ?report.added,
            removed = ?report.removed,
            changed = ?report.changed,
            "model manifest reloaded"
        );
        Ok(ReloadReport { loaded, ..report })
    }

    /// Load `spec` (from `manifest`) on a blocking thread.
    async fn load(&self, manifest: &Manifest, spec: &ModelSpec) -> Result<Classifier> {
        let name = spec.entry.version.clone();
        let builder = Classifier::builder()
            .manifest(manifest.clone())
            .locator(self.inner.locator.clone())
            .version(name.clone())
            .validation(self.inner.validation.clone())
            .engine_options(self.inner.engine)
            .top_k(self.inner.top_k);
        let started = Instant::now();
        let classifier = tokio::task::spawn_blocking(move || builder.build())
            .await
            .map_err(|e| Error::ModelLoad {
                version: name.clone(),
                reason: format!("loader task failed: {e}"),
            })??;
        tracing::info!(version = %name, elapsed = ?started.elapsed(), "model ready");
        Ok(classifier)
    }

    /// The versions loaded now, least recently used first.
    pub fn loaded(&self) -> Vec<String> {
        self.cache()
            .entries
            .iter()
            .map(|(v, _)| v.clone())
            .collect()
    }

    /// The loaded model for `version`, if it is loaded (never loads).
    pub fn get_loaded(&self, version: Option<&str>) -> Option<Classifier> {
        let spec = self.spec(version).ok()?;
        self.cache().touch(&spec.entry.version)
    }

    /// The model for `version`, loading it (on a blocking thread) if needed. Loaded models
    /// are kept in an LRU of `cache_size` versions; the default version is never evicted.
    pub async fn get(&self, version: Option<&str>) -> Result<Classifier> {
        let spec = self.spec(version)?;
        let name = spec.entry.version.clone();
        if let Some(c) = self.cache().touch(&name) {
            return Ok(c);
        }
        let _loading = self.inner.load_lock.lock().await;
        if let Some(c) = self.cache().touch(&name) {
            return Ok(c);
        }
        let catalog = self.catalog();
        let classifier = self.load(&catalog.manifest, &spec).await?;
        self.insert(name, classifier.clone());
        Ok(classifier)
    }

    fn insert(&self, version: String, classifier: Classifier) {
        let default = self.default_version();
        let loaded = {
            let mut cache = self.cache();
            cache.entries.retain(|(v, _)| *v != version);
            cache.entries.push((version, classifier));
            while cache.entries.len() > self.inner.cache_size {
                let Some(i) = cache.entries.iter().position(|(v, _)| *v != default) else {
                    break;
                };
                let (evicted, _) = cache.entries.remove(i);
                tracing::info!(version = %evicted, "model evicted from the cache");
            }
            cache.entries.len()
        };
        if let Some(m) = &self.inner.metrics {
            m.set_models_loaded(loaded);
        }
    }

    /// Every version of the manifest, for `GET /models`.
    pub fn infos(&self) -> Vec<ModelInfo> {
        let catalog = self.catalog();
        let loaded = self.loaded();
        catalog
            .manifest
            .models
            .iter()
            .map(|m| ModelInfo {
                version: m.version.clone(),
                default: m.version == catalog.default,
                loaded: loaded.contains(&m.version),
                input_width: m.preprocess.input_width,
                input_height: m.preprocess.input_height,
                description: m.description.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> ModelRegistry {
        ModelRegistry::builder().cache_size(2).build().unwrap()
    }

    #[test]
    fn latest_and_none_resolve_to_the_default() {
        let r = registry();
        let default = r.default_version();
        assert_eq!(r.spec(None).unwrap().entry.version, default);
        assert_eq!(r.spec(Some("latest")).unwrap().entry.version, default);
        assert_eq!(r.spec(Some("")).unwrap().entry.version, default);
    }

    #[test]
    fn unknown_versions_list_the_available_ones() {
        let err = registry().spec(Some("resnet-9000")).unwrap_err();
        match &err {
            Error::UnknownModelVersion { available, .. } => assert!(available.len() >= 2),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(err.code(), "VALIDATION_ERROR");
    }

    #[test]
    fn default_override_must_exist() {
        let r = ModelRegistry::builder()
            .default_model("mobilenetv2-f32")
            .build()
            .unwrap();
        assert_eq!(
            r.spec(Some("latest")).unwrap().entry.version,
            "mobilenetv2-f32"
        );
        assert!(ModelRegistry::builder()
            .default_model("nope")
            .build()
            .is_err());
    }

    #[tokio::test]
    async fn loads_lazily_and_evicts_lru_but_keeps_the_default() {
        let r = registry();
        assert!(r.loaded().is_empty());
        assert!(r.infos().iter().all(|i| !i.loaded));
        let default = r.get(None).await.unwrap();
        assert_eq!(default.version(), r.default_version());
        r.get(Some("mobilenetv2-f32")).await.unwrap();
        r.get(Some("shufflenet-v2-qdq")).await.unwrap();
        let loaded = r.loaded();
        assert_eq!(loaded.len(), 2, "{loaded:?}");
        assert!(loaded.contains(&r.default_version()));
        assert!(loaded.contains(&"shufflenet-v2-qdq".to_string()));
        let infos = r.infos();
        assert_eq!(infos.iter().filter(|i| i.default).count(), 1);
        assert_eq!(infos.iter().filter(|i| i.loaded).count(), 2);
    }

    fn manifest_text(default: &str, extra: &str) -> String {
        let base = toml::to_string(&Manifest::builtin().unwrap()).unwrap();
        base.replacen(
            "default = ",
            &format!("{extra}\ndefault = \"{default}\"\nx_old_default = "),
            1,
        )
        .lines()
        .filter(|l| !l.starts_with("x_old_default"))
        .collect::<Vec<_>>()
        .join("\n")
    }

    #[test]
    fn latest_follows_the_ab_weights_but_the_default_does_not_move() {
        let text = manifest_text(
            "shufflenet-v2-f32",
            r#"latest_weights = { "mobilenetv2-f32" = 3, "shufflenet-v2-qdq" = 1 }"#,
        );
        let r = ModelRegistry::builder()
            .manifest(Manifest::parse(&text).unwrap())
            .build()
            .unwrap();
        let mut counts = HashMap::<String, usize>::new();
        for _ in 0..400 {
            *counts
                .entry(r.route(None).unwrap().entry.version.clone())
                .or_default() += 1;
        }
        let mobile = counts.get("mobilenetv2-f32").copied().unwrap_or(0);
        let qdq = counts.get("shufflenet-v2-qdq").copied().unwrap_or(0);
        assert_eq!(mobile + qdq, 400, "{counts:?}");
        // Expected 300/100; the bounds are > 6 standard deviations wide.
        assert!((250..=350).contains(&mobile), "{counts:?}");
        assert_eq!(r.spec(None).unwrap().entry.version, "shufflenet-v2-f32");
        assert_eq!(
            r.route(Some("shufflenet-v2-f32")).unwrap().entry.version,
            "shufflenet-v2-f32"
        );
        assert_eq!(r.latest_weights().len(), 2);
    }

    #[test]
    fn weights_must_name_listed_versions_and_be_positive() {
        let unknown = manifest_text("shufflenet-v2-f32", r#"latest_weights = { "nope" = 1 }"#);
        assert!(Manifest::parse(&unknown).is_err());
        let zero = manifest_text(
            "shufflenet-v2-f32",
            r#"latest_weights = { "mobilenetv2-f32" = 0 }"#,
        );
        assert!(Manifest::parse(&zero).is_err());
    }

    #[tokio::test]
    async fn reload_swaps_the_default_and_jobs_keep_their_model() {
        let dir = std::env::temp_dir().join(format!("registry-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("manifest.toml");
        std::fs::write(&path, manifest_text("shufflenet-v2-f32", "")).unwrap();
        let r = ModelRegistry::builder()
            .manifest_path(&path)
            .cache_size(2)
            .build()
            .unwrap();
        let before = r.get(None).await.unwrap();
        assert_eq!(before.version(), "shufflenet-v2-f32");

        // Same manifest: nothing changes, nothing reloads.
        let same = r.reload().await.unwrap();
        assert!(same.added.is_empty() && same.removed.is_empty() && same.changed.is_empty());

        // New default: loaded before the swap; the old classifier still works.
        std::fs::write(&path, manifest_text("mobilenetv2-f32", "")).unwrap();
        let report = r.reload().await.unwrap();
        assert_eq!(report.default, "mobilenetv2-f32");
        assert!(
            report.loaded.contains(&"mobilenetv2-f32".to_string()),
            "{report:?}"
        );
        assert_eq!(r.get_loaded(None).unwrap().version(), "mobilenetv2-f32");
        let crop = vec![128u8; before.preprocessor().crop_len()];
        let mut tensor = vec![0f32; before.preprocessor().spec().tensor_len()];
        before
            .preprocessor()
            .normalize_into(&crop, &mut tensor)
            .unwrap();
        assert_eq!(before.engine().run(tensor, 1).unwrap().len(), 1000);

        // A manifest that does not parse changes nothing.
        std::fs::write(&path, "default = \"nope\"").unwrap();
        assert!(r.reload().await.is_err());
        assert_eq!(r.default_version(), "mobilenetv2-f32");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
