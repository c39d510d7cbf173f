//! Submission-side image preparation: validate, decode once, resize and crop, hash.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
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
    preparing: Preparing,
) -> tokio::task::JoinHandle<Result<PreparedUpload>> {
    tokio::task::spawn_blocking(move || {
        let prepared = prepare_upload(&validation, &preprocessor, &bytes);
        drop(preparing);
        prepared
    })
}

/// Counts an upload as being prepared while it lives.
pub(crate) struct Preparing {
    count: Arc<AtomicUsize>,
    others: usize,
}

impl Preparing {
    /// Count one more upload in `count`.
    pub fn enter(count: &Arc<AtomicUsize>) -> Self {
        let others = count.fetch_add(1, Ordering::Relaxed);
        Preparing {
            count: count.clone(),
            others,
        }
    }

    /// Uploads that were being prepared when this one was counted.
    pub fn others(&self) -> usize {
        self.others
    }
}

impl Drop for Preparing {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
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

#[cfg(test)]
mod preparing_tests {
    use super::*;

    #[test]
    fn each_upload_sees_the_ones_already_being_prepared() {
        let count = Arc::new(AtomicUsize::new(0));
        let first = Preparing::enter(&count);
        let second = Preparing::enter(&count);
        assert_eq!((first.others(), second.others()), (0, 1));
        drop(first);
        assert_eq!(Preparing::enter(&count).others(), 1);
        drop(second);
        assert_eq!(count.load(Ordering::Relaxed), 0);
    }
}
