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
    /// The crop (its `prepare_time` covers decode + crop).
    pub crop: CropPayload,
    /// Time spent validating and decoding.
    pub decode: Duration,
}

/// Validate and decode `bytes` (so corrupt or truncated data fails here, with
/// `INVALID_IMAGE`), then resize and center-crop for `preprocessor`. Large baseline JPEGs are
/// decoded at a reduced size in the DCT domain when that keeps enough pixels for the resize
/// ([`ValidationConfig::decode_for`]); whatever the reduced decoder cannot read goes to the
/// full-size decoder, so a damaged file is refused just the same. Blocking: run it with
/// [`start_prepare`].
pub(crate) fn prepare_upload(
    validation: &ValidationConfig,
    preprocessor: &Preprocessor,
    bytes: &[u8],
) -> Result<PreparedUpload> {
    let started = Instant::now();
    let decoded = validation.decode_for(bytes, preprocessor.spec().resize_shorter)?;
    let decode = started.elapsed();
    let pixels = preprocessor.crop_decoded(&decoded)?;
    let spec = preprocessor.spec();
    let crop = CropPayload {
        width: spec.input_width,
        height: spec.input_height,
        prepare_time: started.elapsed(),
        pixels: pixels.into(),
    };
    Ok(PreparedUpload {
        metadata: decoded.metadata,
        crop,
        decode,
    })
}

/// Start [`prepare_upload`] on tokio's blocking pool; await it with [`finish_prepare`].
pub(crate) fn start_prepare(
    validation: ValidationConfig,
    preprocessor: Preprocessor,
    bytes: bytes::Bytes,
) -> tokio::task::JoinHandle<Result<PreparedUpload>> {
    tokio::task::spawn_blocking(move || prepare_upload(&validation, &preprocessor, &bytes))
}

/// The outcome of a task of [`start_prepare`].
pub(crate) async fn finish_prepare(
    task: tokio::task::JoinHandle<Result<PreparedUpload>>,
) -> Result<PreparedUpload> {
    task.await
        .map_err(|e| Error::Preprocess(format!("preparation task failed: {e}")))?
}

/// The sha256 (hex) of `bytes`, computed on tokio's blocking pool (a large upload would
/// otherwise hold a reactor thread for milliseconds).
pub(crate) async fn sha256_blocking(bytes: bytes::Bytes) -> Result<String> {
    tokio::task::spawn_blocking(move || sha256_hex(&bytes))
        .await
        .map_err(|e| Error::Preprocess(format!("hashing task failed: {e}")))
}
