//! The model manifest (`models/manifest.toml`): which model versions exist, where their files
//! are, how to check them and how to feed them.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::preprocess::PreprocessSpec;

/// The manifest shipped in the repository, compiled in as the default.
const BUILTIN_MANIFEST: &str = include_str!("../../../models/manifest.toml");

/// Whether a model accepts any batch size or only a fixed one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "size")]
pub enum BatchSupport {
    /// The batch dimension is symbolic: one optimized plan per batch size is built on demand.
    Dynamic,
    /// The graph hard-codes this batch size (usually 1): larger batches run one at a time.
    Fixed(usize),
}

/// One model version as described by the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// The name clients send as `model_version`.
    pub version: String,
    /// ONNX file name, looked up by the [`ModelLocator`](super::ModelLocator).
    pub file: String,
    /// Expected sha256 of the ONNX file (lowercase hex).
    pub sha256: String,
    /// Labels file name (one class name per line, line index = class id).
    pub labels: String,
    /// Expected sha256 of the labels file, if it should be checked.
    #[serde(default)]
    pub labels_sha256: Option<String>,
    /// Where the file can be obtained publicly, if anywhere.
    #[serde(default)]
    pub source_url: Option<String>,
    /// Human-readable description (architecture, provenance).
    #[serde(default)]
    pub description: String,
    /// Batch capability of the graph.
    pub batch: BatchSupport,
    /// Number of output classes.
    pub num_classes: usize,
    /// Input preprocessing.
    pub preprocess: PreprocessSpec,
}

/// The whole manifest: the default version and every registered model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The version that `"latest"` (or no version) means.
    pub default: String,
    /// Optional A/B split of `"latest"`: version -> weight. When set, a request for
    /// `"latest"` (or no version) runs version `v` with probability `weight(v) / sum`; the
    /// version used is recorded in the job and its result. Empty = always `default`.
    ///
    /// ```toml
    /// default = "shufflenet-v2-f32"
    /// latest_weights = { "shufflenet-v2-f32" = 90, "mobilenetv2-f32" = 10 }
    /// ```
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub latest_weights: std::collections::BTreeMap<String, u32>,
    /// Every registered model version.
    #[serde(rename = "model")]
    pub models: Vec<ModelEntry>,
}

impl Manifest {
    /// The manifest compiled into the crate (`models/manifest.toml` of the repository).
    ///
    /// ```
    /// let manifest = classifier_core::model::Manifest::builtin().unwrap();
    /// assert!(manifest.get("latest").is_ok());
    /// ```
    pub fn builtin() -> Result<Manifest> {
        Manifest::parse(BUILTIN_MANIFEST)
    }

    /// Parse and check a manifest from TOML text.
    pub fn parse(text: &str) -> Result<Manifest> {
        let manifest: Manifest =
            toml::from_str(text).map_err(|e| Error::Manifest(e.to_string()))?;
        manifest.check()?;
        Ok(manifest)
    }

    /// Read a manifest file.
    pub fn from_path(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Manifest::parse(&text)
    }

    fn check(&self) -> Result<()> {
        let mut seen = std::collections::HashSet::new();
        for model in &self.models {
            if !seen.insert(model.version.as_str()) {
                return Err(Error::Manifest(format!(
                    "duplicate version {:?}",
                    model.version
                )));
            }
            if model.version == "latest" {
                return Err(Error::Manifest(
                    "\"latest\" is reserved for the default".into(),
                ));
            }
            if model.sha256.len() != 64 || !model.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(Error::Manifest(format!(
                    "{}: sha256 must be 64 hex digits",
                    model.version
                )));
            }
            if matches!(model.batch, BatchSupport::Fixed(0)) || model.num_classes == 0 {
                return Err(Error::Manifest(format!(
                    "{}: batch size and num_classes must be positive",
                    model.version
                )));
            }
            model.preprocess.check()?;
        }
        if !seen.contains(self.default.as_str()) {
            return Err(Error::Manifest(format!(
                "default version {:?} is not listed",
                self.default
            )));
        }
        for version in self.latest_weights.keys() {
            if !seen.contains(version.as_str()) {
                return Err(Error::Manifest(format!(
                    "latest_weights names {version:?}, which is not listed"
                )));
            }
        }
        if !self.latest_weights.is_empty()
            && self
                .latest_weights
                .values()
                .map(|w| u64::from(*w))
                .sum::<u64>()
                == 0
        {
            return Err(Error::Manifest(
                "latest_weights must have a positive total weight".into(),
            ));
        }
        Ok(())
    }

    /// All versions, in manifest order.
    pub fn versions(&self) -> Vec<String> {
        self.models.iter().map(|m| m.version.clone()).collect()
    }

    /// Resolve a requested version: `"latest"` or `""` mean the default.
    pub fn get(&self, version: &str) -> Result<&ModelEntry> {
        let wanted = if version.is_empty() || version == "latest" {
            self.default.as_str()
        } else {
            version
        };
        self.models
            .iter()
            .find(|m| m.version == wanted)
            .ok_or_else(|| Error::UnknownModelVersion {
                requested: version.to_string(),
                available: self.versions(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_manifest_is_valid_and_has_a_default() {
        let m = Manifest::builtin().unwrap();
        assert_eq!(m.get("latest").unwrap().version, m.default);
        assert!(m.models.len() >= 2);
    }

    #[test]
    fn unknown_version_lists_the_available_ones() {
        let m = Manifest::builtin().unwrap();
        let err = m.get("resnet-9000").unwrap_err();
        assert!(err.to_string().contains(&m.default), "{err}");
    }

    #[test]
    fn rejects_a_default_that_is_not_listed() {
        let mut text = Manifest::builtin()
            .map(|m| toml::to_string(&m).unwrap())
            .unwrap();
        text = text.replacen("default = ", "default = \"nope\"\nx = ", 1);
        assert!(Manifest::parse(&text).is_err());
    }
}
