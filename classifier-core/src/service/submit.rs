//! Submission-side image preparation: validate, decode once, resize and crop, hash.

use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::image::{ImageMetadata, ValidationConfig};
use crate::model::sha256_hex;
use crate::preprocess::Preprocessor;
use crate::service::payload::CropPayload;

/// An upload that passed validation and was turned into a model-ready crop.
#[derive(Debug, Clone)]
pub(crate) struct PreparedUpload {
    /// The image as received and displayed.
    pub metadata: ImageMetadata,
    /// sha256 (hex) of the uploaded bytes.
    pub sha256: String,
    /// The crop (its `prepare_time` covers decode + crop).
    pub crop: CropPayload,
    /// Time spent validating and decoding.
    pub decode: Duration,
}

/// Validate and fully decode `bytes` (so corrupt or truncated data fails here, with
/// `INVALID_IMAGE`), then resize and center-crop for `preprocessor`. Blocking: run it with
/// `spawn_blocking`.
pub(crate) fn prepare_upload(
    validation: &ValidationConfig,
    preprocessor: &Preprocessor,
    bytes: &[u8],
) -> Result<PreparedUpload> {
    let started = Instant::now();
    let decoded = validation.decode(bytes)?;
    let decode = started.elapsed();
    let pixels = preprocessor.crop(&decoded.rgb)?;
    let spec = preprocessor.spec();
    let crop = CropPayload {
        width: spec.input_width,
        height: spec.input_height,
        prepare_time: started.elapsed(),
        pixels: pixels.into(),
    };
    Ok(PreparedUpload {
        metadata: decoded.metadata,
        sha256: sha256_hex(bytes),
        crop,
        decode,
    })
}

/// Run [`prepare_upload`] on tokio's blocking pool.
pub(crate) async fn prepare_upload_blocking(
    validation: ValidationConfig,
    preprocessor: Preprocessor,
    bytes: bytes::Bytes,
) -> Result<PreparedUpload> {
    tokio::task::spawn_blocking(move || prepare_upload(&validation, &preprocessor, &bytes))
        .await
        .map_err(|e| Error::Preprocess(format!("preparation task failed: {e}")))?
}
