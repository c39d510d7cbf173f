#![allow(dead_code)]
//! Shared bench helpers: locating the shared photos, making test JPEGs of a given size.

use std::path::PathBuf;

use classifier::model::ModelLocator;

/// The shared models directory (../shared/models or $MODEL_DIR).
pub fn shared_models() -> PathBuf {
    let labels = ModelLocator::from_env()
        .find("imagenet_classes.txt")
        .expect("../shared/models (or MODEL_DIR) is needed for the benches");
    labels.parent().expect("parent").to_path_buf()
}

/// A JPEG (quality 90) of `width` x `height`, made by resizing a shared photo, so it has real
/// photographic content for the decoder.
pub fn photo_jpeg(width: u32, height: u32) -> Vec<u8> {
    let src = image::open(shared_models().join("samples/china.jpg")).expect("china.jpg");
    let resized = src.resize_exact(width, height, image::imageops::FilterType::Triangle);
    let mut out = std::io::Cursor::new(Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode_image(&resized.to_rgb8())
        .expect("encode jpeg");
    out.into_inner()
}
