//! Helpers shared by the integration tests: where the shared models and photos are, and
//! readers for the reference files. A missing `../shared` is a loud failure, never a skip.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use classifier_core::model::ModelLocator;
use classifier_core::Classifier;

/// The directory holding the shared models, labels, `samples/` and `reference/`.
pub fn shared_models() -> PathBuf {
    let labels = ModelLocator::from_env()
        .find("imagenet_classes.txt")
        .unwrap_or_else(|e| {
            panic!("the shared models directory (../shared/models or $MODEL_DIR) is required: {e}")
        });
    labels
        .parent()
        .expect("labels file has a parent")
        .to_path_buf()
}

/// The 14 sample photos: (stem, file name).
pub fn photos() -> Vec<(String, String)> {
    let dir = shared_models().join("samples");
    let mut photos: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {dir:?}: {e}"))
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.ends_with(".png") || n.ends_with(".jpg"))
        .map(|n| (n.rsplit_once('.').expect("extension").0.to_string(), n))
        .collect();
    photos.sort();
    assert_eq!(
        photos.len(),
        14,
        "expected the 14 shared sample photos in {dir:?}"
    );
    photos
}

pub fn photo_bytes(file: &str) -> Vec<u8> {
    std::fs::read(shared_models().join("samples").join(file)).expect("read photo")
}

/// A little-endian f32 file from `reference/`.
pub fn read_f32(relative: &str) -> Vec<f32> {
    let bytes = std::fs::read(shared_models().join("reference").join(relative))
        .unwrap_or_else(|e| panic!("cannot read reference/{relative}: {e}"));
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

pub fn read_json(relative: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(shared_models().join("reference").join(relative))
        .unwrap_or_else(|e| panic!("cannot read reference/{relative}: {e}"));
    serde_json::from_str(&text).expect("reference json")
}

/// One loaded classifier per version, shared by all tests of a test binary.
pub fn classifier(version: &str) -> Classifier {
    static CACHE: OnceLock<Mutex<HashMap<String, Classifier>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut map = cache.lock().unwrap_or_else(|p| p.into_inner());
    map.entry(version.to_string())
        .or_insert_with(|| {
            Classifier::builder()
                .version(version)
                .top_k(5)
                .build()
                .unwrap_or_else(|e| panic!("load {version}: {e}"))
        })
        .clone()
}

/// Maximum absolute difference between two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
