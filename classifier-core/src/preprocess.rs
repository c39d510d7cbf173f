//! Preprocessing: decoded RGB pixels to the model's input tensor.
//!
//! Implements torchvision's ImageNet evaluation transform exactly as the reference does
//! (`Resize(shorter) -> CenterCrop -> ToTensor -> Normalize`):
//! - the shorter side becomes `resize_shorter`, the longer one `floor(resize_shorter * long /
//!   short)` (truncated, not rounded); an image that already has that size is not resized;
//! - the crop offsets are `round_half_even((resized - crop) / 2)`;
//! - `x = f32(u8) / 255`, then `(x - mean) / std`, all in f32.
//!
//! Resizing uses `fast_image_resize`'s SIMD bilinear convolution, which (like Pillow's
//! `BILINEAR`) widens its support when downscaling, so it antialiases. Only the source region
//! under the crop window is resampled, with the same sampling geometry as resizing the whole
//! image and then cropping.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::image::DecodedImage;

/// Memory layout of the input tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// Batch, channel, height, width (PyTorch/ONNX convention).
    #[default]
    Nchw,
    /// Batch, height, width, channel (TensorFlow convention).
    Nhwc,
}

/// How one model wants its input prepared; read from the model manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessSpec {
    /// Width of the model input (the center-crop width).
    pub input_width: u32,
    /// Height of the model input (the center-crop height).
    pub input_height: u32,
    /// The shorter side is resized to this before cropping.
    pub resize_shorter: u32,
    /// Per-channel mean (R, G, B) subtracted after scaling to [0, 1].
    pub mean: [f32; 3],
    /// Per-channel standard deviation (R, G, B) divided by after subtracting the mean.
    pub std: [f32; 3],
    /// Tensor layout.
    #[serde(default)]
    pub layout: Layout,
}

impl PreprocessSpec {
    /// torchvision's ImageNet evaluation preprocessing: resize 256, crop 224, ImageNet mean/std.
    pub fn imagenet() -> Self {
        PreprocessSpec {
            input_width: 224,
            input_height: 224,
            resize_shorter: 256,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            layout: Layout::Nchw,
        }
    }

    /// Number of f32 values in one image's tensor (3 * width * height).
    pub fn tensor_len(&self) -> usize {
        3 * self.input_width as usize * self.input_height as usize
    }

    /// Check that the spec can work for every image (used when a manifest is loaded).
    pub fn check(&self) -> Result<()> {
        let fail = |m: &str| Err(Error::Manifest(m.to_string()));
        if self.input_width == 0 || self.input_height == 0 {
            return fail("input_width and input_height must be positive");
        }
        if self.resize_shorter < self.input_width.max(self.input_height) {
            return fail("resize_shorter must be at least the input width and height");
        }
        if self.std.iter().any(|s| !s.is_finite() || *s <= 0.0)
            || self.mean.iter().any(|m| !m.is_finite())
        {
            return fail("std must be positive and mean finite");
        }
        Ok(())
    }
}

/// Where an image of a given size is resized and cropped (torchvision semantics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Width after the shorter-side resize.
    pub resized_width: u32,
    /// Height after the shorter-side resize.
    pub resized_height: u32,
    /// Left edge of the crop in the resized image.
    pub crop_left: u32,
    /// Top edge of the crop in the resized image.
    pub crop_top: u32,
}

/// `round((resized - crop) / 2)` with Python's round-half-to-even.
fn center_offset(resized: u32, crop: u32) -> u32 {
    let twice = resized.saturating_sub(crop);
    let (half, odd) = (twice / 2, twice % 2 == 1);
    // k + 0.5 rounds to whichever of k and k + 1 is even.
    if odd && half % 2 == 1 {
        half + 1
    } else {
        half
    }
}

impl Geometry {
    /// Compute the torchvision geometry for a `width` x `height` image.
    ///
    /// ```
    /// use classifier_core::preprocess::{Geometry, PreprocessSpec};
    /// let g = Geometry::for_image(640, 427, &PreprocessSpec::imagenet());
    /// assert_eq!((g.resized_width, g.resized_height), (383, 256)); // truncated, not 384
    /// let dog = Geometry::for_image(768, 576, &PreprocessSpec::imagenet());
    /// assert_eq!(dog.crop_left, 58); // round(58.5) == 58
    /// ```
    pub fn for_image(width: u32, height: u32, spec: &PreprocessSpec) -> Geometry {
        let size = u64::from(spec.resize_shorter);
        let (w, h) = (u64::from(width.max(1)), u64::from(height.max(1)));
        let (rw, rh) = if w <= h {
            (size, size * h / w)
        } else {
            (size * w / h, size)
        };
        let (rw, rh) = (
            rw.min(u64::from(u32::MAX)) as u32,
            rh.min(u64::from(u32::MAX)) as u32,
        );
        Geometry {
            resized_width: rw,
            resized_height: rh,
            crop_left: center_offset(rw, spec.input_width),
            crop_top: center_offset(rh, spec.input_height),
        }
    }
}

/// Turns decoded RGB images into model input tensors for one [`PreprocessSpec`].
///
/// Cheap to clone; holds a 768-entry lookup table for the scale-and-normalize step.
#[derive(Debug, Clone)]
pub struct Preprocessor {
    spec: PreprocessSpec,
    /// `lut[c][v] = (v / 255 - mean[c]) / std[c]`, computed in f32 like the reference.
    lut: [[f32; 256]; 3],
}

impl Preprocessor {
    /// Build a preprocessor for `spec`.
    pub fn new(spec: PreprocessSpec) -> Result<Self> {
        spec.check()?;
        let mut lut = [[0f32; 256]; 3];
        for (c, table) in lut.iter_mut().enumerate() {
            for (v, out) in table.iter_mut().enumerate() {
                *out = (v as f32 / 255.0f32 - spec.mean[c]) / spec.std[c];
            }
        }
        Ok(Preprocessor { spec, lut })
    }

    /// The spec this preprocessor implements.
    pub fn spec(&self) -> &PreprocessSpec {
        &self.spec
    }

    /// Preprocess one image into a new tensor of [`PreprocessSpec::tensor_len`] values.
    pub fn run(&self, rgb: &RgbImage) -> Result<Vec<f32>> {
        let mut out = vec![0f32; self.spec.tensor_len()];
        self.run_into(rgb, &mut out)?;
        Ok(out)
    }

    /// Preprocess one image into `out`, which must hold exactly [`PreprocessSpec::tensor_len`]
    /// values (one image's slot in a batch tensor).
    pub fn run_into(&self, rgb: &RgbImage, out: &mut [f32]) -> Result<()> {
        if out.len() != self.spec.tensor_len() {
            return Err(Error::Preprocess(format!(
                "output slot holds {} values, expected {}",
                out.len(),
                self.spec.tensor_len()
            )));
        }
        let cropped = self.resize_and_crop(rgb)?;
        self.normalize(cropped.buffer(), out);
        Ok(())
    }

    /// [`run`](Self::run) for a [`DecodedImage`], which may have been decoded at reduced size
    /// ([`ValidationConfig::decode_for`](crate::image::ValidationConfig::decode_for)): the
    /// resize and crop geometry comes from the full size in its metadata, so the crop covers
    /// exactly the part of the photo it covers after a full-size decode.
    pub fn run_decoded(&self, decoded: &DecodedImage) -> Result<Vec<f32>> {
        let mut out = vec![0f32; self.spec.tensor_len()];
        let cropped = self.resize_and_crop_decoded(decoded)?;
        self.normalize(cropped.buffer(), &mut out);
        Ok(out)
    }

    /// [`crop`](Self::crop) for a [`DecodedImage`] (see [`run_decoded`](Self::run_decoded)).
    ///
    /// ```
    /// use classifier_core::image::ValidationConfig;
    /// use classifier_core::preprocess::{PreprocessSpec, Preprocessor};
    /// let pre = Preprocessor::new(PreprocessSpec::imagenet()).unwrap();
    /// let mut jpeg = std::io::Cursor::new(Vec::new());
    /// image::RgbImage::from_fn(2400, 1200, |x, y| image::Rgb([(x / 10) as u8, (y / 5) as u8, 90]))
    ///     .write_to(&mut jpeg, image::ImageFormat::Jpeg)
    ///     .unwrap();
    /// let validation = ValidationConfig::default();
    /// let reduced = validation.decode_for(jpeg.get_ref(), 256).unwrap();
    /// assert_eq!(reduced.scale_denom, 2);
    /// let full = validation.decode(jpeg.get_ref()).unwrap();
    /// let (a, b) = (pre.crop_decoded(&reduced).unwrap(), pre.crop(&full.rgb).unwrap());
    /// assert!(a.iter().zip(&b).all(|(x, y)| x.abs_diff(*y) <= 3));
    /// ```
    pub fn crop_decoded(&self, decoded: &DecodedImage) -> Result<Vec<u8>> {
        Ok(self.resize_and_crop_decoded(decoded)?.into_vec())
    }

    fn resize_and_crop_decoded(&self, decoded: &DecodedImage) -> Result<Image<'static>> {
        let denom = decoded.scale_denom;
        if denom <= 1 {
            return self.resize_and_crop(&decoded.rgb);
        }
        let (w, h) = (decoded.metadata.width, decoded.metadata.height);
        if decoded.rgb.dimensions() != (w.div_ceil(denom), h.div_ceil(denom)) {
            return Err(Error::Preprocess(format!(
                "a {w}x{h} image at 1/{denom} scale cannot be {}x{} pixels",
                decoded.rgb.width(),
                decoded.rgb.height()
            )));
        }
        self.resize_and_crop_scaled(&decoded.rgb, w, h, f64::from(denom))
    }

    /// Number of bytes of one crop: interleaved RGB8, `input_width * input_height * 3`.
    pub fn crop_len(&self) -> usize {
        self.spec.tensor_len()
    }

    /// The first half of [`run`](Self::run): resize and center-crop `rgb` into the model's
    /// input size, as interleaved RGB8 ([`crop_len`](Self::crop_len) bytes).
    ///
    /// `normalize_into(&crop(rgb)?, out)` gives exactly the tensor of `run_into(rgb, out)`, so
    /// the expensive part (decode, resize) can run once at submission and the cheap part
    /// (scaling to floats) right before inference.
    ///
    /// ```
    /// use classifier_core::preprocess::{PreprocessSpec, Preprocessor};
    /// let pre = Preprocessor::new(PreprocessSpec::imagenet()).unwrap();
    /// let rgb = image::RgbImage::from_pixel(300, 400, image::Rgb([10, 200, 30]));
    /// let crop = pre.crop(&rgb).unwrap();
    /// assert_eq!(crop.len(), 224 * 224 * 3);
    /// let mut tensor = vec![0.0; pre.spec().tensor_len()];
    /// pre.normalize_into(&crop, &mut tensor).unwrap();
    /// assert_eq!(tensor, pre.run(&rgb).unwrap());
    /// ```
    pub fn crop(&self, rgb: &RgbImage) -> Result<Vec<u8>> {
        Ok(self.resize_and_crop(rgb)?.into_vec())
    }

    /// The second half of [`run`](Self::run): scale, normalize and lay out a crop made by
    /// [`crop`](Self::crop) into `out` ([`PreprocessSpec::tensor_len`] values).
    pub fn normalize_into(&self, crop: &[u8], out: &mut [f32]) -> Result<()> {
        if crop.len() != self.crop_len() || out.len() != self.spec.tensor_len() {
            return Err(Error::Preprocess(format!(
                "crop of {} bytes into {} values; expected {} and {}",
                crop.len(),
                out.len(),
                self.crop_len(),
                self.spec.tensor_len()
            )));
        }
        self.normalize(crop, out);
        Ok(())
    }

    /// Resample the crop window of the resized image: a `input_width` x `input_height` RGB8
    /// image.
    fn resize_and_crop(&self, rgb: &RgbImage) -> Result<Image<'static>> {
        let (w, h) = rgb.dimensions();
        self.resize_and_crop_scaled(rgb, w, h, 1.0)
    }

    /// Resample the crop window of a `full_w` x `full_h` image, of which `rgb` holds the
    /// pixels at `1 / denom` scale (pixel `i` of `rgb` covers full-size pixels
    /// `[i * denom, (i + 1) * denom)`).
    fn resize_and_crop_scaled(
        &self,
        rgb: &RgbImage,
        full_w: u32,
        full_h: u32,
        denom: f64,
    ) -> Result<Image<'static>> {
        let (w, h) = rgb.dimensions();
        let (cw, ch) = (self.spec.input_width, self.spec.input_height);
        let g = Geometry::for_image(full_w, full_h, &self.spec);
        let src = ImageRef::new(w, h, rgb.as_raw(), PixelType::U8x3)
            .map_err(|e| Error::Preprocess(e.to_string()))?;
        let mut dst = Image::new(cw, ch, PixelType::U8x3);
        // Output pixel x of the resized image samples the source at (x + 0.5) * w / rw, so the
        // crop window [left, left + cw) of the resized image is the source box below (in
        // `rgb`'s pixels: full-size coordinates divided by `denom`).
        let (sx, sy) = (
            f64::from(full_w) / f64::from(g.resized_width) / denom,
            f64::from(full_h) / f64::from(g.resized_height) / denom,
        );
        // Two separable passes in Pillow's order, horizontal first, each rounding to u8 (for
        // u8 images fast_image_resize would otherwise run the vertical pass first, and the
        // different intermediate rounding moves ~20% of the values by one level).
        let bilinear =
            ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
        let mut columns = Image::new(cw, h, PixelType::U8x3);
        let horizontal = bilinear.crop(
            f64::from(g.crop_left) * sx,
            0.0,
            f64::from(cw) * sx,
            f64::from(h),
        );
        let mut resizer = Resizer::new();
        resizer
            .resize(&src, &mut columns, &horizontal)
            .map_err(|e| Error::Preprocess(e.to_string()))?;
        let vertical = bilinear.crop(
            0.0,
            f64::from(g.crop_top) * sy,
            f64::from(cw),
            f64::from(ch) * sy,
        );
        resizer
            .resize(&columns, &mut dst, &vertical)
            .map_err(|e| Error::Preprocess(e.to_string()))?;
        Ok(dst)
    }

    /// Scale, normalize and lay out `pixels` (interleaved RGB8 of the crop) into `out`.
    fn normalize(&self, pixels: &[u8], out: &mut [f32]) {
        let plane = self.spec.input_width as usize * self.spec.input_height as usize;
        match self.spec.layout {
            Layout::Nchw => {
                let (r, rest) = out.split_at_mut(plane);
                let (g, b) = rest.split_at_mut(plane);
                for (i, px) in pixels.chunks_exact(3).enumerate() {
                    r[i] = self.lut[0][px[0] as usize];
                    g[i] = self.lut[1][px[1] as usize];
                    b[i] = self.lut[2][px[2] as usize];
                }
            }
            Layout::Nhwc => {
                for (i, v) in pixels.iter().enumerate() {
                    out[i] = self.lut[i % 3][*v as usize];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn center_offset_rounds_half_to_even() {
        assert_eq!(center_offset(341, 224), 58); // 58.5 -> 58
        assert_eq!(center_offset(383, 224), 80); // 79.5 -> 80
        assert_eq!(center_offset(379, 224), 78); // 77.5 -> 78
        assert_eq!(center_offset(256, 224), 16);
        assert_eq!(center_offset(224, 224), 0);
    }

    #[test]
    fn geometry_truncates_the_long_side() {
        let spec = PreprocessSpec::imagenet();
        let g = Geometry::for_image(512, 600, &spec);
        assert_eq!(
            (g.resized_width, g.resized_height, g.crop_top),
            (256, 300, 38)
        );
        let g = Geometry::for_image(128, 128, &spec);
        assert_eq!((g.resized_width, g.resized_height), (256, 256));
    }

    #[test]
    fn rejects_unusable_specs() {
        let mut spec = PreprocessSpec::imagenet();
        spec.resize_shorter = 100;
        assert!(Preprocessor::new(spec).is_err());
        let mut spec = PreprocessSpec::imagenet();
        spec.std[1] = 0.0;
        assert!(Preprocessor::new(spec).is_err());
    }
}
