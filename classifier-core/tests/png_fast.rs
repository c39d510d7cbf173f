//! The PNG fast path (libdeflate + our own row unfiltering, `image/png_fast.rs`) against the
//! `png` crate, which stays the authority:
//!
//! - it is taken for the common PNGs (8-bit gray, gray+alpha, RGB, RGBA, not interlaced), and
//!   the pixels are identical to the `png` crate's for every row filter and chunk layout;
//! - it declines what it does not handle (16-bit, palette, interlaced), which the `png` crate
//!   then decodes;
//! - on damaged files (cut anywhere, bad CRCs, corrupt deflate data, bad filter bytes, short or
//!   long image data, a bad Adler-32) the outcome is exactly the `png` crate's: the same pixels
//!   or the same error;
//! - its allocation limit is respected on both sides of the boundary.

mod common;

use classifier_core::image::{DecodePath, DecodedImage, ValidationConfig};
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ExtendedColorType, ImageEncoder};

fn fast() -> ValidationConfig {
    ValidationConfig::default()
}

fn reference() -> ValidationConfig {
    ValidationConfig {
        fast_png: false,
        ..ValidationConfig::default()
    }
}

/// Decodes `bytes` with and without the fast path, asserts the outcomes are identical, and
/// returns the path the fast configuration took (`None` when both refused the file).
fn same_outcome_with(fast: &ValidationConfig, bytes: &[u8], what: &str) -> Option<DecodePath> {
    let slow = ValidationConfig {
        fast_png: false,
        ..fast.clone()
    };
    match (fast.decode(bytes), slow.decode(bytes)) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.metadata, b.metadata, "{what}: metadata");
            assert!(a.rgb == b.rgb, "{what}: pixels differ from the png crate's");
            assert_eq!(b.path, DecodePath::Full, "{what}: reference path");
            Some(a.path)
        }
        (Err(a), Err(b)) => {
            assert_eq!(a.to_string(), b.to_string(), "{what}: error");
            None
        }
        (a, b) => panic!(
            "{what}: fast path {:?}, png crate {:?}",
            a.map(|d| d.path),
            b.map(|d| d.path)
        ),
    }
}

fn same_outcome(bytes: &[u8], what: &str) -> Option<DecodePath> {
    same_outcome_with(&fast(), bytes, what)
}

fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {path:?}: {e}"))
}

/// A deterministic noisy gradient: every filter type has work to do on it.
fn pixels(width: u32, height: u32, channels: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_u32;
    let mut out = Vec::with_capacity(width as usize * height as usize * channels);
    for y in 0..height {
        for x in 0..width {
            for c in 0..channels {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                let smooth = (x * 3 + y * 2 + c as u32 * 40) as u8;
                out.push(smooth.wrapping_add((state % 24) as u8));
            }
        }
    }
    out
}

fn encode(width: u32, height: u32, color: ExtendedColorType, filter: FilterType) -> Vec<u8> {
    let channels = match color {
        ExtendedColorType::L8 => 1,
        ExtendedColorType::La8 => 2,
        ExtendedColorType::Rgb8 => 3,
        _ => 4,
    };
    let mut out = Vec::new();
    PngEncoder::new_with_quality(&mut out, CompressionType::Default, filter)
        .write_image(&pixels(width, height, channels), width, height, color)
        .expect("encode PNG");
    out
}

// ------------------------------------------------------------------------------------------
// Hand-built PNGs, for layouts and damage an encoder never produces.
// ------------------------------------------------------------------------------------------

fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut typed = kind.to_vec();
    typed.extend_from_slice(data);
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&typed);
    out.extend_from_slice(&libdeflater::crc32(&typed).to_be_bytes());
    out
}

fn ihdr(width: u32, height: u32, color_type: u8) -> Vec<u8> {
    let mut d = width.to_be_bytes().to_vec();
    d.extend_from_slice(&height.to_be_bytes());
    d.extend_from_slice(&[8, color_type, 0, 0, 0]);
    chunk(b"IHDR", &d)
}

fn zlib(raw: &[u8]) -> Vec<u8> {
    let mut compressor = libdeflater::Compressor::new(libdeflater::CompressionLvl::default());
    let mut out = vec![0; compressor.zlib_compress_bound(raw.len())];
    let n = compressor.zlib_compress(raw, &mut out).expect("compress");
    out.truncate(n);
    out
}

/// Filtered rows (filter byte + RGB samples) of a 40x36 RGB image, each row with `filter`.
fn raw_rows(filter: u8) -> Vec<u8> {
    let (w, h) = (40usize, 36usize);
    let samples = pixels(w as u32, h as u32, 3);
    samples
        .chunks(w * 3)
        .flat_map(|row| std::iter::once(filter).chain(row.iter().copied()))
        .collect()
}

const SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];

/// A 40x36 RGB PNG from `parts`: the zlib stream is split into that many IDAT chunks, and
/// `between` is placed between the last IDAT and IEND.
fn build(zlib_stream: &[u8], parts: usize, between: &[u8], iend: bool) -> Vec<u8> {
    let mut png = SIGNATURE.to_vec();
    png.extend(ihdr(40, 36, 2));
    png.extend(chunk(b"pHYs", &[0, 0, 11, 19, 0, 0, 11, 19, 1]));
    let size = zlib_stream.len().div_ceil(parts.max(1)).max(1);
    for piece in zlib_stream.chunks(size) {
        png.extend(chunk(b"IDAT", piece));
    }
    png.extend_from_slice(between);
    if iend {
        png.extend(chunk(b"IEND", &[]));
    }
    png
}

// ------------------------------------------------------------------------------------------

#[test]
fn sample_photos_take_the_fast_path_with_identical_pixels() {
    let mut taken = 0;
    for (stem, file) in common::photos() {
        if !file.ends_with(".png") {
            continue;
        }
        let bytes = common::photo_bytes(&file);
        let path = same_outcome(&bytes, &stem);
        assert_eq!(path, Some(DecodePath::FastPng), "{stem}");
        taken += 1;
    }
    assert_eq!(taken, 7, "the seven sample PNGs");
}

#[test]
fn every_row_filter_and_colour_type_decodes_identically() {
    let filters = [
        FilterType::NoFilter,
        FilterType::Sub,
        FilterType::Up,
        FilterType::Avg,
        FilterType::Paeth,
        FilterType::Adaptive,
    ];
    let colours = [
        ExtendedColorType::L8,
        ExtendedColorType::La8,
        ExtendedColorType::Rgb8,
        ExtendedColorType::Rgba8,
    ];
    for filter in filters {
        for colour in colours {
            for (w, h) in [(97, 61), (32, 32), (33, 300)] {
                let bytes = encode(w, h, colour, filter);
                let what = format!("{filter:?} {colour:?} {w}x{h}");
                assert_eq!(
                    same_outcome(&bytes, &what),
                    Some(DecodePath::FastPng),
                    "{what}"
                );
            }
        }
    }
}

#[test]
fn hand_built_filters_including_the_first_row() {
    // Each filter on every row, the first row included (where "above" is zeros).
    for filter in 0..=4u8 {
        let png = build(&zlib(&raw_rows(filter)), 1, &[], true);
        let what = format!("filter {filter} on every row");
        assert_eq!(same_outcome(&png, &what), Some(DecodePath::FastPng));
    }
}

#[test]
fn the_fixtures_it_does_not_handle_go_to_the_png_crate() {
    for (name, expected) in [
        ("gray.png", DecodePath::FastPng),
        ("gray_alpha.png", DecodePath::FastPng),
        ("rgba.png", DecodePath::FastPng),
        ("rgb16.png", DecodePath::Full),
        ("palette.png", DecodePath::Full),
        ("interlaced.png", DecodePath::Full),
    ] {
        assert_eq!(same_outcome(&fixture(name), name), Some(expected), "{name}");
    }
}

#[test]
fn chunk_layouts() {
    let stream = zlib(&raw_rows(4));
    // Image data split over several IDATs, including empty ones.
    assert_eq!(
        same_outcome(&build(&stream, 7, &[], true), "seven IDATs"),
        Some(DecodePath::FastPng)
    );
    let mut empties = chunk(b"IDAT", &[]);
    empties.extend(chunk(b"IDAT", &[]));
    let mut png = SIGNATURE.to_vec();
    png.extend(ihdr(40, 36, 2));
    png.extend(chunk(b"IDAT", &[]));
    png.extend(chunk(b"IDAT", &stream));
    png.extend(empties);
    png.extend(chunk(b"IEND", &[]));
    assert_eq!(
        same_outcome(&png, "empty IDATs around the data"),
        Some(DecodePath::FastPng)
    );
    // A tRNS colour key (the png crate then expands to RGBA, whose alpha is dropped) and a
    // suggested palette in an RGB image: the same RGB either way.
    let mut png = SIGNATURE.to_vec();
    png.extend(ihdr(40, 36, 2));
    png.extend(chunk(b"PLTE", &[1, 2, 3, 4, 5, 6]));
    png.extend(chunk(b"tRNS", &[0, 10, 0, 20, 0, 30]));
    png.extend(chunk(b"IDAT", &stream));
    png.extend(chunk(b"IEND", &[]));
    assert_eq!(
        same_outcome(&png, "RGB with tRNS and PLTE"),
        Some(DecodePath::FastPng)
    );
    // A text chunk between the image data and IEND: declined, the png crate decodes it.
    let text = chunk(b"tEXt", b"Comment\0after the image data");
    assert_eq!(
        same_outcome(&build(&stream, 1, &text, true), "tEXt after IDAT"),
        Some(DecodePath::Full)
    );
    // Bytes after IEND are ignored by both.
    let mut trailing = build(&stream, 1, &[], true);
    trailing.extend_from_slice(b"trailing garbage");
    assert_eq!(
        same_outcome(&trailing, "bytes after IEND"),
        Some(DecodePath::FastPng)
    );
    // No IEND at all: whatever the png crate says, the fast path does not accept it.
    assert_ne!(
        same_outcome(&build(&stream, 1, &[], false), "no IEND"),
        Some(DecodePath::FastPng)
    );
}

#[test]
fn damaged_image_data_has_the_png_crates_outcome() {
    let raw = raw_rows(4);
    let stream = zlib(&raw);

    // An unknown filter byte on row 10.
    let mut bad_filter = raw.clone();
    bad_filter[10 * (40 * 3 + 1)] = 5;
    assert_ne!(
        same_outcome(&build(&zlib(&bad_filter), 1, &[], true), "filter 5"),
        Some(DecodePath::FastPng)
    );
    // Too little and too much image data.
    let short = zlib(&raw[..raw.len() - 7]);
    assert_eq!(
        same_outcome(&build(&short, 1, &[], true), "short data"),
        None
    );
    let mut long = raw.clone();
    long.extend_from_slice(&[0; 121]);
    assert_ne!(
        same_outcome(&build(&zlib(&long), 1, &[], true), "long data"),
        Some(DecodePath::FastPng)
    );
    // A wrong Adler-32 (the png crate does not check it by default; libdeflate does).
    let mut adler = stream.clone();
    let last = adler.len() - 1;
    adler[last] ^= 0x55;
    assert_ne!(
        same_outcome(&build(&adler, 1, &[], true), "bad Adler-32"),
        Some(DecodePath::FastPng)
    );
    // Corrupt deflate data under a correct CRC, at many offsets.
    for offset in (2..stream.len() - 4).step_by(97) {
        let mut corrupt = stream.clone();
        corrupt[offset] ^= 0xA5;
        same_outcome(
            &build(&corrupt, 2, &[], true),
            &format!("deflate byte {offset} flipped"),
        );
    }
}

#[test]
fn bad_crcs_and_cuts_have_the_png_crates_outcome() {
    let photo = common::photo_bytes("chelsea.png");
    // Flip the CRC of every chunk in turn.
    let mut pos = 8;
    while pos + 12 <= photo.len() {
        let len = u32::from_be_bytes([photo[pos], photo[pos + 1], photo[pos + 2], photo[pos + 3]])
            as usize;
        let kind = String::from_utf8_lossy(&photo[pos + 4..pos + 8]).into_owned();
        let crc_at = pos + 8 + len;
        let mut bad = photo.clone();
        bad[crc_at] ^= 0x01;
        let path = same_outcome(&bad, &format!("bad CRC on {kind}"));
        if kind == "IDAT" || kind == "IEND" {
            assert_ne!(path, Some(DecodePath::FastPng), "bad CRC on {kind}");
        }
        pos = crc_at + 4;
    }
    // Cut the file at many points, including inside and just before IEND.
    let mut cuts: Vec<usize> = (9..photo.len()).step_by(photo.len() / 40).collect();
    cuts.extend([
        photo.len() - 1,
        photo.len() - 4,
        photo.len() - 12,
        photo.len() - 13,
    ]);
    for cut in cuts {
        assert_ne!(
            same_outcome(&photo[..cut], &format!("cut at {cut}")),
            Some(DecodePath::FastPng),
            "cut at {cut}"
        );
    }
}

#[test]
fn allocation_limit_on_both_sides() {
    let photo = common::photo_bytes("chelsea.png");
    let (w, h) = (451usize, 300usize);
    // The fast path inflates into one buffer (a filter byte per row) and unfilters in place.
    let needed = ((w * 3 + 1) * h) as u64;
    let at = ValidationConfig {
        max_decode_alloc: needed,
        ..ValidationConfig::default()
    };
    assert_eq!(
        same_outcome_with(&at, &photo, "limit = needed"),
        Some(DecodePath::FastPng)
    );
    let below = ValidationConfig {
        max_decode_alloc: needed - 1,
        ..ValidationConfig::default()
    };
    assert_ne!(
        same_outcome_with(&below, &photo, "limit = needed - 1"),
        Some(DecodePath::FastPng)
    );
}

#[test]
fn the_off_switch_uses_the_png_crate() {
    let photo = common::photo_bytes("chelsea.png");
    let decoded: DecodedImage = reference().decode(&photo).expect("decode");
    assert_eq!(decoded.path, DecodePath::Full);
}
