//! Untrusted image bytes in, oriented 8-bit RGB out: format sniffing, validation, decoding.

mod format;
mod jpeg_scaled;
mod png_fast;
mod validate;

pub use format::{sniff, ImageFormat, Sniffed};
pub use validate::{to_rgb8, DecodePath, DecodedImage, ImageMetadata, ValidationConfig};
