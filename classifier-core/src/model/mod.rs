//! Models: the manifest, locating and verifying files, labels, and the tract engine.

pub(crate) mod assist;
mod engine;
mod kernels;
mod labels;
mod locator;
mod manifest;
mod registry;

pub use assist::{AssistTeam, HelperThread};
pub use engine::{Engine, EngineOptions};
pub use labels::Labels;
pub use locator::{sha256_hex, ModelLocator};
pub use manifest::{BatchSupport, Manifest, ModelEntry};
pub use registry::{ModelRegistry, ModelSpec, RegistryBuilder, ReloadReport};
