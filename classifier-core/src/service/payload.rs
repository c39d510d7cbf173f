//! The job payload: the model-ready crop made at submission, not the uploaded bytes.
//!
//! Submission validates, fully decodes, resizes and center-crops the image once (so a corrupt
//! or truncated upload is refused there), and stores the result: interleaved RGB8 of exactly
//! the model's input size, behind a small versioned header. Workers never decode again; they
//! only scale the bytes into the float tensor right before inference.
//!
//! Layout (little-endian), 24-byte header then the pixels:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic `CLCP` |
//! | 4 | format version (1) |
//! | 5 | channels (3) |
//! | 6..8 | reserved (0) |
//! | 8..12 | width |
//! | 12..16 | height |
//! | 16..24 | microseconds spent decoding and cropping at submission |
//! | 24.. | `width * height * channels` bytes |

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{Error, Result};

const MAGIC: &[u8; 4] = b"CLCP";
const VERSION: u8 = 1;
const HEADER: usize = 24;

/// A decoded, resized and cropped image, ready to be normalized into a model's tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CropPayload {
    /// Crop width (the model's input width).
    pub width: u32,
    /// Crop height (the model's input height).
    pub height: u32,
    /// Time spent decoding and cropping at submission.
    pub prepare_time: Duration,
    /// Interleaved RGB8, `width * height * 3` bytes.
    pub pixels: Bytes,
}

impl CropPayload {
    /// Serialize to the stored form.
    ///
    /// ```
    /// use classifier_core::service::payload::CropPayload;
    /// let crop = CropPayload {
    ///     width: 2,
    ///     height: 1,
    ///     prepare_time: std::time::Duration::from_micros(1500),
    ///     pixels: vec![1, 2, 3, 4, 5, 6].into(),
    /// };
    /// assert_eq!(CropPayload::decode(crop.encode()).unwrap(), crop);
    /// ```
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(HEADER + self.pixels.len());
        out.put_slice(MAGIC);
        out.put_u8(VERSION);
        out.put_u8(3);
        out.put_u16_le(0);
        out.put_u32_le(self.width);
        out.put_u32_le(self.height);
        out.put_u64_le(u64::try_from(self.prepare_time.as_micros()).unwrap_or(u64::MAX));
        out.put_slice(&self.pixels);
        out.freeze()
    }

    /// Parse the stored form; anything malformed is [`Error::CorruptData`]. The pixels are
    /// a zero-copy slice of `bytes`.
    pub fn decode(bytes: Bytes) -> Result<CropPayload> {
        let corrupt = |why: String| Error::CorruptData(format!("job payload: {why}"));
        if bytes.len() < HEADER {
            return Err(corrupt(format!(
                "{} bytes, shorter than the header",
                bytes.len()
            )));
        }
        if &bytes[0..4] != MAGIC {
            return Err(corrupt("not a prepared crop (bad magic)".into()));
        }
        if bytes[4] != VERSION {
            return Err(corrupt(format!("unsupported payload version {}", bytes[4])));
        }
        if bytes[5] != 3 {
            return Err(corrupt(format!("{} channels, expected 3", bytes[5])));
        }
        let u32_at =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let (width, height) = (u32_at(8), u32_at(12));
        let mut micros = [0u8; 8];
        micros.copy_from_slice(&bytes[16..24]);
        let expected = (width as usize)
            .checked_mul(height as usize)
            .and_then(|n| n.checked_mul(3))
            .ok_or_else(|| corrupt(format!("impossible size {width}x{height}")))?;
        if bytes.len() - HEADER != expected {
            return Err(corrupt(format!(
                "{} pixel bytes for a {width}x{height} crop, expected {expected}",
                bytes.len() - HEADER
            )));
        }
        Ok(CropPayload {
            width,
            height,
            prepare_time: Duration::from_micros(u64::from_le_bytes(micros)),
            pixels: bytes.slice(HEADER..),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CropPayload {
        CropPayload {
            width: 224,
            height: 224,
            prepare_time: Duration::from_micros(12_345),
            pixels: (0..224 * 224 * 3)
                .map(|i| (i % 251) as u8)
                .collect::<Vec<_>>()
                .into(),
        }
    }

    #[test]
    fn round_trips() {
        let p = sample();
        let encoded = p.encode();
        assert_eq!(encoded.len(), 24 + 224 * 224 * 3);
        assert_eq!(CropPayload::decode(encoded).unwrap(), p);
    }

    #[test]
    fn refuses_malformed_payloads() {
        let good = sample().encode();
        for bad in [
            Bytes::new(),
            Bytes::from_static(b"\xff\xd8\xff\xe0 a jpeg, not a crop......"),
            good.slice(..good.len() - 1),
        ] {
            let err = CropPayload::decode(bad).unwrap_err();
            assert!(matches!(err, Error::CorruptData(_)), "{err}");
        }
        let mut wrong_version = good.to_vec();
        wrong_version[4] = 9;
        assert!(CropPayload::decode(wrong_version.into()).is_err());
        let mut huge = good[..24].to_vec();
        huge[8..16].copy_from_slice(&[0xff; 8]);
        assert!(CropPayload::decode(huge.into()).is_err());
    }
}
