//! Decoder paths: grayscale, 16-bit, palette, interlaced, CMYK, alpha, EXIF orientation, WebP.
//!
//! The fixtures in `tests/fixtures/` are written by `fixtures/make_fixtures.py` (Pillow, plus a
//! hand-written PNG encoder for what Pillow cannot write: 16-bit RGB and Adam7 interlacing). They
//! are 64x48 with simple patterns that are recomputed here, so lossless formats are checked
//! pixel for pixel and JPEGs within a few levels.

mod common;

use std::io::Cursor;

use classifier_core::image::{DecodedImage, ImageFormat, ValidationConfig};

const W: u32 = 64;
const H: u32 = 48;
const RED: [u8; 3] = [255, 0, 0];
const BLUE: [u8; 3] = [0, 0, 255];

fn decode(bytes: &[u8]) -> DecodedImage {
    ValidationConfig::default()
        .decode(bytes)
        .unwrap_or_else(|e| panic!("decode failed: {e}"))
}

fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {path:?}: {e}"))
}

/// PNG IHDR fields (bit depth, color type, interlace method), to prove a fixture is what its
/// test claims to exercise.
fn png_header(bytes: &[u8]) -> (u8, u8, u8) {
    assert_eq!(&bytes[12..16], b"IHDR");
    (bytes[24], bytes[25], bytes[28])
}

fn encode(image: image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).expect("encode");
    out.into_inner()
}

fn close(a: [u8; 3], b: [u8; 3], tol: u8) -> bool {
    a.iter().zip(b).all(|(x, y)| x.abs_diff(y) <= tol)
}

/// The `gradient` pattern of make_fixtures.py.
fn gradient(x: u32, y: u32) -> [u8; 3] {
    [(x * 4) as u8, (y * 5) as u8, (255 - x * 2) as u8]
}

/// Every pixel equals `expected(x, y)` exactly.
fn assert_every_pixel(d: &DecodedImage, expected: impl Fn(u32, u32) -> [u8; 3]) {
    assert_eq!(d.rgb.dimensions(), (W, H));
    assert_eq!((d.metadata.width, d.metadata.height), (W, H));
    for (x, y, p) in d.rgb.enumerate_pixels() {
        assert_eq!(p.0, expected(x, y), "pixel ({x}, {y})");
    }
}

fn halves(x: u32, _y: u32) -> [u8; 3] {
    if x < W / 2 {
        RED
    } else {
        BLUE
    }
}

#[test]
fn grayscale_png_is_replicated() {
    let bytes = fixture("gray.png");
    assert_eq!(png_header(&bytes), (8, 0, 0));
    let d = decode(&bytes);
    assert_eq!(d.metadata.format, ImageFormat::Png);
    assert_every_pixel(&d, |x, _| [(x * 4) as u8; 3]);
}

#[test]
fn sixteen_bit_rgb_png_keeps_the_high_byte() {
    let bytes = fixture("rgb16.png");
    assert_eq!(png_header(&bytes), (16, 2, 0));
    // Left (0xABCD, 0x00FF, 0xFF00), right (0x1234, 0x80FF, 0xFFFF): truncation, not rounding
    // (rounding would give 0xAC, 0x01 and 0x81).
    assert_every_pixel(&decode(&bytes), |x, _| {
        if x < W / 2 {
            [0xAB, 0x00, 0xFF]
        } else {
            [0x12, 0x80, 0xFF]
        }
    });
}

#[test]
fn sixteen_bit_gray_png_keeps_the_high_byte() {
    let img = image::ImageBuffer::<image::Luma<u16>, _>::from_pixel(40, 40, image::Luma([0x80FF]));
    let d = decode(&encode(
        image::DynamicImage::ImageLuma16(img),
        image::ImageFormat::Png,
    ));
    assert!(d.rgb.pixels().all(|p| p.0 == [0x80, 0x80, 0x80]));
}

#[test]
fn palette_png() {
    let bytes = fixture("palette.png");
    assert_eq!(png_header(&bytes).1, 3, "color type 3 (palette)");
    let d = decode(&bytes);
    assert_eq!(d.metadata.format, ImageFormat::Png);
    assert_every_pixel(&d, halves);
}

#[test]
fn interlaced_png() {
    let bytes = fixture("interlaced.png");
    assert_eq!(png_header(&bytes), (8, 2, 1), "Adam7 interlaced RGB8");
    assert_every_pixel(&decode(&bytes), gradient);
}

#[test]
fn gray_alpha_png_drops_alpha() {
    let bytes = fixture("gray_alpha.png");
    assert_eq!(png_header(&bytes), (8, 4, 0));
    // Alpha is 0 on the left half: the gray value must still come through, not black/white.
    assert_every_pixel(&decode(&bytes), |x, _| [(x * 4) as u8; 3]);
}

#[test]
fn rgba_png_drops_alpha_and_keeps_rgb_where_transparent() {
    let bytes = fixture("rgba.png");
    assert_eq!(png_header(&bytes), (8, 6, 0));
    // Alpha is 0 on the left half and y * 5 on the right: RGB is unchanged everywhere
    // (no compositing onto a background, no premultiplication).
    assert_every_pixel(&decode(&bytes), gradient);
}

#[test]
fn lossless_webp() {
    let bytes = fixture("lossless.webp");
    assert_eq!(&bytes[12..16], b"VP8L", "lossless bitstream");
    let d = decode(&bytes);
    assert_eq!(d.metadata.format, ImageFormat::Webp);
    assert_every_pixel(&d, gradient);
}

#[test]
fn cmyk_jpeg_matches_pillow() {
    let bytes = fixture("cmyk.jpg");
    let d = decode(&bytes);
    assert_eq!(d.metadata.format, ImageFormat::Jpeg);
    assert_eq!(d.rgb.dimensions(), (W, H));
    // Pillow's Image.open("cmyk.jpg").convert("RGB") at the patch centres (printed by
    // make_fixtures.py). Ink (C, M, Y, K): (0, 255, 255, 0), (255, 0, 0, 0),
    // (40, 80, 120, 60), (0, 0, 0, 128).
    let pillow = [
        ((16, 12), [255, 0, 0]),
        ((48, 12), [0, 255, 255]),
        ((16, 36), [164, 134, 103]),
        ((48, 36), [127, 127, 127]),
    ];
    for ((x, y), expected) in pillow {
        let got = d.rgb.get_pixel(x, y).0;
        assert!(
            close(got, expected, 8),
            "({x}, {y}): got {got:?}, Pillow {expected:?}"
        );
    }
}

#[test]
fn exif_orientation_6_is_applied() {
    // Stored 64x48 in quadrants: top-left red, top-right green, bottom-left blue, bottom-right
    // yellow. Orientation 6 = rotate 90 degrees clockwise, so it is displayed 48x64 with
    // top-left blue, top-right red, bottom-left yellow, bottom-right green. Rotating
    // counter-clockwise or transposing would put other colours in these corners.
    let bytes = fixture("orientation6.jpg");
    let d = decode(&bytes);
    assert_eq!((d.metadata.width, d.metadata.height), (H, W));
    assert_eq!(d.rgb.dimensions(), (H, W));
    let corners = [
        ((8, 8), BLUE),
        ((H - 9, 8), RED),
        ((8, W - 9), [255, 255, 0]),
        ((H - 9, W - 9), [0, 255, 0]),
    ];
    for ((x, y), expected) in corners {
        let got = d.rgb.get_pixel(x, y).0;
        assert!(
            close(got, expected, 8),
            "({x}, {y}): got {got:?}, want {expected:?}"
        );
    }
    // inspect() reports the displayed size too, without decoding.
    let meta = ValidationConfig::default()
        .inspect(&bytes)
        .expect("inspect");
    assert_eq!((meta.width, meta.height), (H, W));
}

#[test]
fn grayscale_jpeg_photo() {
    let d = decode(&common::photo_bytes("chelsea_gray.jpg"));
    assert_eq!((d.metadata.width, d.metadata.height), (451, 300));
    assert!(d.rgb.pixels().all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2]));
}
