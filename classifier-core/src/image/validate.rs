//! Validation and decoding of untrusted image bytes.
//!
//! Order of checks, cheapest first, so that bad input costs almost nothing:
//!
//! 1. size limit;
//! 2. magic-byte format sniffing;
//! 3. dimensions from the header (before any pixel is decoded);
//! 4. decoder allocation limit;
//! 5. the pixel decode itself.
//!
//! Decoder errors become [`Error::CorruptImage`]; nothing here panics on any input (see
//! `fuzz/`).
//!
//! [`ValidationConfig::decode_for`] may decode a large JPEG at 1/2, 1/4 or 1/8 of its size
//! (DCT-domain scaling, see `jpeg_scaled`) when the model only needs a much smaller image;
//! everything else, and any JPEG that path does not handle, is decoded at full size.

use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, GrayImage, ImageDecoder, ImageReader, Limits, RgbImage};
use serde::{Deserialize, Serialize};

use super::format::{sniff, ImageFormat, Sniffed};
use super::jpeg_scaled;
use super::png_fast;
use crate::error::{Error, Result};

/// Limits applied to every image before it is decoded. All of them are configurable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidationConfig {
    /// Maximum size of the encoded file in bytes (default 10 MiB). Exactly this size is accepted.
    pub max_file_size: usize,
    /// Minimum width in pixels (default 32).
    pub min_width: u32,
    /// Minimum height in pixels (default 32).
    pub min_height: u32,
    /// Maximum width in pixels (default 4096).
    pub max_width: u32,
    /// Maximum height in pixels (default 4096).
    pub max_height: u32,
    /// Maximum bytes a decoder may allocate for one image (default 256 MiB).
    pub max_decode_alloc: u64,
    /// The formats that are accepted (default JPEG, PNG, WebP; GIF and BMP can be added).
    pub accepted_formats: Vec<ImageFormat>,
    /// Reduced-size decoding of large JPEGs in [`decode_for`](Self::decode_for), like
    /// libjpeg's `scale_denom` or Pillow's `draft()` (default 2.0; 0 turns it off).
    ///
    /// A JPEG is decoded at 1/2, 1/4 or 1/8 of its size (the strongest reduction that fits)
    /// when its shorter side still comes out at least `jpeg_draft_margin` times the size the
    /// model resizes the shorter side to: a 1920x1080 photo is decoded at 960x540 for a model
    /// that resizes to 256, a 4000x3000 one at 1000x750. Decoding is then several times faster,
    /// and the input tensor changes slightly because the resize starts from fewer pixels. With
    /// the default margin of 2 (Pillow's `reducing_gap` advice) the largest change measured
    /// was 15 levels of 255 on a few pixels (0.26 after normalization) with a mean of 1.1
    /// levels, on real photos at exactly 2x, and the top-1 class never changed. A margin of 1
    /// reduces further (1/4 for 1080p) at up to 42 levels, mean 2.4, on upscaled photos.
    ///
    /// Only baseline (sequential Huffman) 8-bit grayscale and YCbCr JPEGs take this path;
    /// progressive, CMYK and other JPEGs, and images that are not large enough, are decoded
    /// at full size.
    #[serde(default = "default_jpeg_draft_margin")]
    pub jpeg_draft_margin: f32,
    /// Inflate the common PNG (8-bit gray, gray+alpha, RGB or RGBA, not interlaced) with
    /// libdeflate instead of the `png` crate's inflater (default true). The pixels are
    /// identical; a photo PNG decodes about twice as fast. Files the fast path does not handle,
    /// or finds damaged, go to the `png` crate, which stays the authority on errors.
    #[serde(default = "default_fast_png")]
    pub fast_png: bool,
    /// Entropy-coded data size (bytes) from which a reduced-size JPEG decode uses two threads
    /// (default 64 KiB on a machine with more than one core, `usize::MAX`, i.e. never, on
    /// one core). A second thread starts partway through the data and the two decodes are
    /// joined where they meet (see `image/jpeg_scaled/split.rs`): the pixels are identical,
    /// and a 1920x1080 photo decodes about 1.5x faster. The job service (`Service`) splits
    /// only when no other upload is being prepared and one of its inference threads is idle:
    /// on busy cores the second thread only adds its overhead (2-7 % of the throughput). A
    /// caller that already decodes an image per core at once should set `usize::MAX`.
    #[serde(default = "default_jpeg_split_min_bytes")]
    pub jpeg_split_min_bytes: usize,
}

fn default_jpeg_draft_margin() -> f32 {
    2.0
}

fn default_fast_png() -> bool {
    true
}

fn default_jpeg_split_min_bytes() -> usize {
    // Asked once: on Linux the answer comes from the affinity mask and cgroup files.
    static MULTI_CORE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let multi_core =
        *MULTI_CORE.get_or_init(|| std::thread::available_parallelism().is_ok_and(|n| n.get() > 1));
    if multi_core {
        64 * 1024
    } else {
        usize::MAX
    }
}

impl Default for ValidationConfig {
    fn default() -> Self {
        ValidationConfig {
            max_file_size: 10 * 1024 * 1024,
            min_width: 32,
            min_height: 32,
            max_width: 4096,
            max_height: 4096,
            max_decode_alloc: 256 * 1024 * 1024,
            accepted_formats: ImageFormat::DEFAULT_ACCEPTED.to_vec(),
            jpeg_draft_margin: default_jpeg_draft_margin(),
            fast_png: default_fast_png(),
            jpeg_split_min_bytes: default_jpeg_split_min_bytes(),
        }
    }
}

/// Facts about an accepted image, as reported to API clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageMetadata {
    /// The sniffed format.
    pub format: ImageFormat,
    /// Width as displayed (after EXIF orientation).
    pub width: u32,
    /// Height as displayed (after EXIF orientation).
    pub height: u32,
    /// Size of the encoded bytes received.
    pub file_size: usize,
}

/// A decoded image: 8-bit RGB pixels, oriented as displayed, plus its metadata.
#[derive(Debug, Clone)]
pub struct DecodedImage {
    /// What the client sent (`width` and `height` are always the full displayed size).
    pub metadata: ImageMetadata,
    /// The pixels, alpha dropped, grayscale expanded, 16-bit reduced to the high byte. At
    /// `1 / scale_denom` of the full size: `ceil(width / scale_denom)` x
    /// `ceil(height / scale_denom)`.
    pub rgb: RgbImage,
    /// 1 for a full-size decode; 2, 4 or 8 when [`ValidationConfig::decode_for`] decoded a
    /// large JPEG at reduced size. Preprocess such an image with
    /// [`Preprocessor::run_decoded`](crate::preprocess::Preprocessor::run_decoded) or
    /// [`crop_decoded`](crate::preprocess::Preprocessor::crop_decoded), which place the crop
    /// by the full size.
    pub scale_denom: u32,
    /// Which decoder produced the pixels.
    pub path: DecodePath,
}

/// Which decoder produced a [`DecodedImage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodePath {
    /// The `image` crate's decoder for the format, at full size.
    Full,
    /// The reduced-size JPEG decoder (`scale_denom` > 1).
    ReducedJpeg,
    /// The PNG fast path (libdeflate), at full size.
    FastPng,
}

impl ValidationConfig {
    fn accepted_list(&self) -> String {
        self.accepted_formats
            .iter()
            .map(|f| f.as_str().to_ascii_uppercase())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Check size and format; returns the sniffed format.
    fn check_bytes(&self, bytes: &[u8]) -> Result<ImageFormat> {
        if bytes.is_empty() {
            return Err(Error::EmptyImage);
        }
        if bytes.len() > self.max_file_size {
            return Err(Error::FileTooLarge {
                size: bytes.len(),
                limit: self.max_file_size,
            });
        }
        match sniff(bytes) {
            Sniffed::Image(format) if self.accepted_formats.contains(&format) => Ok(format),
            Sniffed::Image(format) => Err(Error::UnsupportedFormat {
                detected: format.as_str().to_ascii_uppercase(),
                accepted: self.accepted_list(),
            }),
            Sniffed::Other(what) => Err(Error::UnsupportedFormat {
                detected: what.to_string(),
                accepted: self.accepted_list(),
            }),
        }
    }

    fn check_dimensions(&self, width: u32, height: u32) -> Result<()> {
        if width > self.max_width || height > self.max_height {
            return Err(Error::ImageTooLarge {
                width,
                height,
                max_width: self.max_width,
                max_height: self.max_height,
            });
        }
        if width < self.min_width || height < self.min_height {
            return Err(Error::ImageTooSmall {
                width,
                height,
                min_width: self.min_width,
                min_height: self.min_height,
            });
        }
        Ok(())
    }

    /// Open a decoder after the byte-level checks, and check the header's dimensions.
    ///
    /// No pixel is decoded yet. Returns the decoder, its format and the EXIF orientation.
    fn open<'a>(
        &self,
        bytes: &'a [u8],
    ) -> Result<(impl ImageDecoder + 'a, ImageFormat, Orientation)> {
        let format = self.check_bytes(bytes)?;
        if format == ImageFormat::Jpeg && !jpeg_has_end_of_image(bytes) {
            // zune-jpeg (lenient mode) would fill a cut-off scan with gray and succeed.
            return Err(Error::CorruptImage {
                format: "JPEG",
                reason: "truncated: no end-of-image marker after the image data".into(),
            });
        }
        let mut reader = ImageReader::with_format(Cursor::new(bytes), format.to_image_crate());
        let mut limits = Limits::no_limits();
        limits.max_alloc = Some(self.max_decode_alloc);
        reader.limits(limits);
        let mut decoder = reader
            .into_decoder()
            .map_err(|e| self.decode_error(format, e))?;
        let (width, height) = decoder.dimensions();
        self.check_dimensions(width, height)?;
        if decoder.total_bytes() > self.max_decode_alloc {
            return Err(Error::DecodeLimitExceeded {
                limit: self.max_decode_alloc,
            });
        }
        // A broken EXIF block must not reject an otherwise good photo: show it unrotated.
        let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
        Ok((decoder, format, orientation))
    }

    fn decode_error(&self, format: ImageFormat, error: image::ImageError) -> Error {
        match error {
            image::ImageError::Limits(_) => Error::DecodeLimitExceeded {
                limit: self.max_decode_alloc,
            },
            other => Error::CorruptImage {
                format: format_name(format),
                reason: other.to_string(),
            },
        }
    }

    /// Validate `bytes` from the header alone, without decoding pixels.
    ///
    /// Cheap: use it to refuse bad uploads early. A file that passes can still turn out to be
    /// truncated when [`decode`](Self::decode) reads its pixels.
    ///
    /// ```
    /// use classifier_core::image::ValidationConfig;
    /// let err = ValidationConfig::default().inspect(b"plain text").unwrap_err();
    /// assert_eq!(err.code(), "INVALID_IMAGE");
    /// ```
    pub fn inspect(&self, bytes: &[u8]) -> Result<ImageMetadata> {
        let (decoder, format, orientation) = self.open(bytes)?;
        let (width, height) = decoder.dimensions();
        Ok(metadata(format, width, height, orientation, bytes.len()))
    }

    /// Validate and fully decode `bytes` into oriented 8-bit RGB at full size.
    pub fn decode(&self, bytes: &[u8]) -> Result<DecodedImage> {
        self.decode_for(bytes, 0)
    }

    /// Validate and decode `bytes` for a model that resizes the shorter side to
    /// `resize_shorter` pixels: like [`decode`](Self::decode), except that a large JPEG may be
    /// decoded at 1/2, 1/4 or 1/8 of its size (see
    /// [`jpeg_draft_margin`](Self::jpeg_draft_margin)); [`DecodedImage::scale_denom`] tells.
    /// `resize_shorter = 0` always decodes at full size.
    ///
    /// The checks are the same as for a full decode (dimensions and allocation limit on the
    /// full size, a truncated JPEG is an error), EXIF orientation is applied, and the
    /// metadata reports the full displayed size.
    ///
    /// ```
    /// use classifier_core::image::ValidationConfig;
    /// let mut jpeg = std::io::Cursor::new(Vec::new());
    /// image::RgbImage::from_pixel(2048, 1536, image::Rgb([200, 100, 50]))
    ///     .write_to(&mut jpeg, image::ImageFormat::Jpeg)
    ///     .unwrap();
    /// let decoded = ValidationConfig::default().decode_for(jpeg.get_ref(), 256).unwrap();
    /// assert_eq!(decoded.scale_denom, 2); // 1536 / 2 = 768 >= 2 * 256; 1536 / 4 = 384 is not
    /// assert_eq!(decoded.rgb.dimensions(), (1024, 768));
    /// assert_eq!((decoded.metadata.width, decoded.metadata.height), (2048, 1536));
    /// ```
    pub fn decode_for(&self, bytes: &[u8], resize_shorter: u32) -> Result<DecodedImage> {
        let (decoder, format, orientation) = self.open(bytes)?;
        let (width, height) = decoder.dimensions();
        let metadata = metadata(format, width, height, orientation, bytes.len());
        let denom = if format == ImageFormat::Jpeg {
            self.jpeg_scale_denom(width.min(height), resize_shorter)
        } else {
            1
        };
        if denom > 1 {
            match jpeg_scaled::decode(
                bytes,
                denom as usize,
                self.max_decode_alloc,
                self.jpeg_split_min_bytes,
            ) {
                Ok(scaled) => {
                    let image = match scaled.channels {
                        1 => GrayImage::from_raw(scaled.width, scaled.height, scaled.pixels)
                            .map(DynamicImage::ImageLuma8),
                        _ => RgbImage::from_raw(scaled.width, scaled.height, scaled.pixels)
                            .map(DynamicImage::ImageRgb8),
                    };
                    if let Some(mut image) = image {
                        image.apply_orientation(orientation);
                        return Ok(DecodedImage {
                            metadata,
                            rgb: to_rgb8(image),
                            scale_denom: denom,
                            path: DecodePath::ReducedJpeg,
                        });
                    }
                }
                // The full-size decoder below is the authority on what is acceptable: it
                // decodes what the reduced path does not handle, and reports the errors.
                Err(e) => tracing::debug!(
                    reason = ?e,
                    "reduced-size JPEG decode not used; decoding at full size"
                ),
            }
        }
        if format == ImageFormat::Png && self.fast_png {
            // The png crate has parsed and checked every chunk before the image data (`open`).
            match png_fast::decode(bytes, self.max_decode_alloc) {
                Ok(png) => {
                    if let Some(mut image) = fast_png_image(png) {
                        image.apply_orientation(orientation);
                        return Ok(DecodedImage {
                            metadata,
                            rgb: to_rgb8(image),
                            scale_denom: 1,
                            path: DecodePath::FastPng,
                        });
                    }
                }
                // As above: the png crate decodes what the fast path declines, or reports why not.
                Err(e) => tracing::debug!(reason = e.0, "PNG fast path not used"),
            }
        }
        let mut image =
            DynamicImage::from_decoder(decoder).map_err(|e| self.decode_error(format, e))?;
        image.apply_orientation(orientation);
        Ok(DecodedImage {
            metadata,
            rgb: to_rgb8(image),
            scale_denom: 1,
            path: DecodePath::Full,
        })
    }

    /// The DCT scale (1, 2, 4 or 8) for a JPEG whose shorter side is `shorter` pixels, for a
    /// model that resizes it to `resize_shorter`: the largest whose reduced shorter side is
    /// still at least `jpeg_draft_margin * resize_shorter`.
    fn jpeg_scale_denom(&self, shorter: u32, resize_shorter: u32) -> u32 {
        let margin = f64::from(self.jpeg_draft_margin);
        if margin.is_nan() || margin <= 0.0 || resize_shorter == 0 {
            return 1;
        }
        let needed = margin * f64::from(resize_shorter);
        [8, 4, 2]
            .into_iter()
            .find(|&d| f64::from(shorter) / f64::from(d) >= needed)
            .unwrap_or(1)
    }
}

/// True if an EOI marker (`FF D9`) follows the image's first start-of-scan marker (`FF DA`).
///
/// Entropy-coded data never contains `FF D9` (a data `FF` is stuffed as `FF 00`), so a JPEG
/// cut anywhere inside its scans has no EOI after its first SOS. The SOS is found by walking
/// the marker segments, so an EXIF thumbnail (a whole JPEG inside APP1, with its own SOS and
/// EOI) does not count. The EOI is searched from the end: a complete file ends with it, so
/// this costs almost nothing (a forward scan over the entropy-coded data took 0.5 ms for a
/// 1920x1080 photo).
/// The fast path's samples as an image of the matching colour type.
fn fast_png_image(png: png_fast::FastPng) -> Option<DynamicImage> {
    use image::{GrayAlphaImage, RgbaImage};
    let (w, h, pixels) = (png.width, png.height, png.pixels);
    match png.channels {
        1 => GrayImage::from_raw(w, h, pixels).map(DynamicImage::ImageLuma8),
        2 => GrayAlphaImage::from_raw(w, h, pixels).map(DynamicImage::ImageLumaA8),
        3 => RgbImage::from_raw(w, h, pixels).map(DynamicImage::ImageRgb8),
        4 => RgbaImage::from_raw(w, h, pixels).map(DynamicImage::ImageRgba8),
        _ => None,
    }
}

fn jpeg_has_end_of_image(bytes: &[u8]) -> bool {
    let Some(sos) = first_scan(bytes) else {
        return false;
    };
    bytes
        .windows(2)
        .rposition(|w| w == [0xFF, 0xD9])
        .is_some_and(|eoi| eoi > sos)
}

/// Offset of the first SOS marker, found by walking the marker segments from SOI; if the
/// segments do not parse, the first `FF DA` bytes anywhere.
fn first_scan(bytes: &[u8]) -> Option<usize> {
    let mut pos = 2;
    loop {
        if bytes.get(pos) != Some(&0xFF) {
            break;
        }
        while bytes.get(pos + 1) == Some(&0xFF) {
            pos += 1; // fill bytes
        }
        match bytes.get(pos + 1) {
            Some(0xDA) => return Some(pos),
            Some(0xD9) => return None, // end of image before any scan
            Some(0x01 | 0xD0..=0xD8) => pos += 2,
            Some(_) => {
                let len = bytes.get(pos + 2..pos + 4)?;
                pos += 2 + usize::from(u16::from_be_bytes([len[0], len[1]]));
            }
            None => return None,
        }
    }
    bytes.windows(2).position(|w| w == [0xFF, 0xDA])
}

fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Png => "PNG",
        ImageFormat::Webp => "WebP",
        ImageFormat::Gif => "GIF",
        ImageFormat::Bmp => "BMP",
    }
}

fn metadata(
    format: ImageFormat,
    width: u32,
    height: u32,
    orientation: Orientation,
    file_size: usize,
) -> ImageMetadata {
    let swapped = matches!(
        orientation,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    );
    let (width, height) = if swapped {
        (height, width)
    } else {
        (width, height)
    };
    ImageMetadata {
        format,
        width,
        height,
        file_size,
    }
}

/// Convert any decoded image to 8-bit RGB the way the reference (Pillow `convert("RGB")`) does:
/// alpha is dropped (not composited), gray is replicated, 16-bit samples keep their high byte.
pub fn to_rgb8(image: DynamicImage) -> RgbImage {
    let (width, height) = (image.width(), image.height());
    let rgb = match image {
        DynamicImage::ImageRgb8(rgb) => return rgb,
        DynamicImage::ImageRgba8(i) => pick_rgb(i.as_raw(), 4, |v| v),
        DynamicImage::ImageLuma8(i) => pick_rgb(i.as_raw(), 1, |v| v),
        DynamicImage::ImageLumaA8(i) => pick_rgb(i.as_raw(), 2, |v| v),
        DynamicImage::ImageRgb16(i) => pick_rgb(i.as_raw(), 3, high_byte),
        DynamicImage::ImageRgba16(i) => pick_rgb(i.as_raw(), 4, high_byte),
        DynamicImage::ImageLuma16(i) => pick_rgb(i.as_raw(), 1, high_byte),
        DynamicImage::ImageLumaA16(i) => pick_rgb(i.as_raw(), 2, high_byte),
        DynamicImage::ImageRgb32F(i) => pick_rgb(i.as_raw(), 3, unit_float_to_u8),
        DynamicImage::ImageRgba32F(i) => pick_rgb(i.as_raw(), 4, unit_float_to_u8),
        other => return other.to_rgb8(),
    };
    // `pick_rgb` yields exactly width * height * 3 samples, so this cannot fail.
    RgbImage::from_raw(width, height, rgb).unwrap_or_else(|| RgbImage::new(width, height))
}

fn high_byte(v: u16) -> u8 {
    (v >> 8) as u8
}

fn unit_float_to_u8(v: f32) -> u8 {
    (v.clamp(0.0, 1.0) * 255.0).round() as u8
}

/// Take R, G, B (or the gray sample three times) from interleaved samples with `channels`
/// channels, converting each sample with `convert`.
fn pick_rgb<T: Copy>(samples: &[T], channels: usize, convert: impl Fn(T) -> u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(samples.len() / channels * 3);
    for pixel in samples.chunks_exact(channels) {
        if channels < 3 {
            let v = convert(pixel[0]);
            out.extend_from_slice(&[v, v, v]);
        } else {
            out.extend_from_slice(&[convert(pixel[0]), convert(pixel[1]), convert(pixel[2])]);
        }
    }
    out
}
