//! Fuzz target: the PNG fast path's row unfiltering, on arbitrary rows of valid PNG files.
//!
//! Mutating whole PNG files rarely reaches the row filters with new data: the fast path
//! checks every CRC and the zlib Adler-32 first, so a changed byte is refused before any row
//! is unfiltered. This target builds the file itself from the input: a header (colour type
//! and size from the first bytes), then rows whose filter bytes and samples come from the
//! rest, deflated and framed with correct checksums. Every such file reaches the row filters,
//! including the SIMD path that undoes eight rows at a time.
//!
//! Each file must decode through the fast path to exactly the `png` crate's pixels, or be
//! refused by both with the same error (an unknown filter byte in any row).

#![no_main]

use std::sync::OnceLock;

use classifier_core::image::{DecodePath, ValidationConfig};
use libfuzzer_sys::fuzz_target;

fn configs() -> &'static (ValidationConfig, ValidationConfig) {
    static CONFIGS: OnceLock<(ValidationConfig, ValidationConfig)> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        let fast = ValidationConfig::default();
        let reference = ValidationConfig {
            fast_png: false,
            ..fast.clone()
        };
        (fast, reference)
    })
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = libdeflater::crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// A PNG from fuzz bytes: `[colour, width, height, filter/sample bytes...]`. The rows cycle
/// through the sample bytes; a filter byte is the input byte modulo 5 (a known filter)
/// unless the byte is 0xFB or above, which is kept as it is (an unknown filter).
fn build_png(data: &[u8]) -> Option<(Vec<u8>, bool)> {
    let (&[colour, w, h], rest) = data.split_first_chunk::<3>()?;
    if rest.is_empty() {
        return None;
    }
    let (colour_type, channels) = match colour % 4 {
        0 => (2u8, 3usize), // RGB
        1 => (6, 4),        // RGBA
        2 => (0, 1),        // gray
        _ => (4, 2),        // gray + alpha
    };
    let width = 32 + usize::from(w % 64);
    let height = 32 + usize::from(h % 32);
    let row_len = width * channels;
    let mut raw = Vec::with_capacity(height * (row_len + 1));
    let mut bytes = rest.iter().cycle();
    let mut all_known = true;
    for _ in 0..height {
        let f = *bytes.next()?;
        let filter = if f >= 0xFB { f } else { f % 5 };
        all_known &= filter <= 4;
        raw.push(filter);
        raw.extend(bytes.by_ref().take(row_len));
    }
    let mut compressor = libdeflater::Compressor::new(libdeflater::CompressionLvl::fastest());
    let mut deflated = vec![0; compressor.zlib_compress_bound(raw.len())];
    let n = compressor.zlib_compress(&raw, &mut deflated).ok()?;
    deflated.truncate(n);

    let mut png = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&(width as u32).to_be_bytes());
    ihdr.extend_from_slice(&(height as u32).to_be_bytes());
    ihdr.extend_from_slice(&[8, colour_type, 0, 0, 0]);
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(&mut png, b"IDAT", &deflated);
    chunk(&mut png, b"IEND", &[]);
    Some((png, all_known))
}

fuzz_target!(|data: &[u8]| {
    let Some((png, all_known)) = build_png(data) else {
        return;
    };
    let (fast, reference) = configs();
    match (fast.decode(&png), reference.decode(&png)) {
        (Ok(a), Ok(b)) => {
            assert!(all_known, "a file with an unknown filter byte was accepted");
            assert_eq!(
                a.path,
                DecodePath::FastPng,
                "the fast path declined a plain PNG"
            );
            assert_eq!(a.metadata, b.metadata);
            assert!(
                a.rgb == b.rgb,
                "PNG fast path pixels differ from the png crate's"
            );
        }
        (Err(a), Err(b)) => {
            assert!(!all_known, "a valid PNG was refused: {a}");
            assert_eq!(a.to_string(), b.to_string());
        }
        (a, b) => panic!(
            "PNG fast path and png crate disagree: {:?} vs {:?}",
            a.map(|d| d.path),
            b.map(|d| d.path)
        ),
    }
});
