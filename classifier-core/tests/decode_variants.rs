//! Decoder paths: grayscale, 16-bit, palette, interlaced, CMYK, alpha, EXIF orientation, WebP.
//! Fixtures are made in the test with the `image` encoders, or by `fixtures/make_fixtures.py`
//! (Pillow) for what `image` cannot write (palette, interlaced, CMYK, EXIF).

use std::io::Cursor;

use classifier_core::image::{DecodedImage, ImageFormat, ValidationConfig};

const RED: [u8; 3] = [255, 0, 0];
const BLUE: [u8; 3] = [0, 0, 255];

fn decode(bytes: &[u8]) -> DecodedImage {
    ValidationConfig::default().decode(bytes).expect("decodes")
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .expect("fixture")
}

fn encode(image: image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).expect("encode");
    out.into_inner()
}

fn close(a: [u8; 3], b: [u8; 3], tol: u8) -> bool {
    a.iter().zip(b).all(|(x, y)| x.abs_diff(y) <= tol)
}

/// Fixtures are 64x48, red on the left half and blue on the right.
fn assert_halves(d: &DecodedImage, tol: u8) {
    assert_eq!(d.rgb.dimensions(), (64, 48));
    assert!(
        close(d.rgb.get_pixel(8, 24).0, RED, tol),
        "{:?}",
        d.rgb.get_pixel(8, 24)
    );
    assert!(
        close(d.rgb.get_pixel(56, 24).0, BLUE, tol),
        "{:?}",
        d.rgb.get_pixel(56, 24)
    );
}

#[test]
fn palette_png() {
    let d = decode(&fixture("palette.png"));
    assert_eq!(d.metadata.format, ImageFormat::Png);
    assert_halves(&d, 0);
}

#[test]
fn interlaced_png() {
    assert_halves(&decode(&fixture("interlaced.png")), 0);
}

#[test]
fn cmyk_jpeg_matches_pillow() {
    // Pillow's convert("RGB") of this file gives exactly red and blue (make_fixtures.py).
    let d = decode(&fixture("cmyk.jpg"));
    assert_eq!(d.metadata.format, ImageFormat::Jpeg);
    assert_halves(&d, 8);
}

#[test]
fn exif_orientation_is_applied() {
    // Stored 64x48 with red on the left; orientation 6 = rotate 90 degrees clockwise, so it is
    // displayed 48x64 with red on top.
    let d = decode(&fixture("orientation6.jpg"));
    assert_eq!((d.metadata.width, d.metadata.height), (48, 64));
    assert_eq!(d.rgb.dimensions(), (48, 64));
    assert!(
        close(d.rgb.get_pixel(24, 8).0, RED, 8),
        "{:?}",
        d.rgb.get_pixel(24, 8)
    );
    assert!(
        close(d.rgb.get_pixel(24, 56).0, BLUE, 8),
        "{:?}",
        d.rgb.get_pixel(24, 56)
    );
    assert_eq!(
        ValidationConfig::default()
            .inspect(&fixture("orientation6.jpg"))
            .unwrap()
            .width,
        48
    );
}

#[test]
fn sixteen_bit_png_keeps_the_high_byte() {
    let img = image::ImageBuffer::<image::Rgb<u16>, _>::from_pixel(
        40,
        40,
        image::Rgb([0xABCD, 0x00FF, 0xFF00]),
    );
    let d = decode(&encode(
        image::DynamicImage::ImageRgb16(img),
        image::ImageFormat::Png,
    ));
    assert_eq!(d.rgb.get_pixel(5, 5).0, [0xAB, 0x00, 0xFF]);
}

#[test]
fn sixteen_bit_gray_png() {
    let img = image::ImageBuffer::<image::Luma<u16>, _>::from_pixel(40, 40, image::Luma([0x80FF]));
    let d = decode(&encode(
        image::DynamicImage::ImageLuma16(img),
        image::ImageFormat::Png,
    ));
    assert_eq!(d.rgb.get_pixel(5, 5).0, [0x80, 0x80, 0x80]);
}

#[test]
fn grayscale_is_replicated() {
    let img = image::GrayImage::from_pixel(40, 40, image::Luma([77]));
    let d = decode(&encode(
        image::DynamicImage::ImageLuma8(img),
        image::ImageFormat::Png,
    ));
    assert_eq!(d.rgb.get_pixel(0, 0).0, [77, 77, 77]);
}

#[test]
fn gray_alpha_drops_alpha() {
    let img = image::GrayAlphaImage::from_pixel(40, 40, image::LumaA([200, 0]));
    let d = decode(&encode(
        image::DynamicImage::ImageLumaA8(img),
        image::ImageFormat::Png,
    ));
    assert_eq!(d.rgb.get_pixel(0, 0).0, [200, 200, 200]);
}

#[test]
fn rgba_drops_alpha_even_when_fully_transparent() {
    let img = image::RgbaImage::from_pixel(40, 40, image::Rgba([10, 20, 30, 0]));
    let d = decode(&encode(
        image::DynamicImage::ImageRgba8(img),
        image::ImageFormat::Png,
    ));
    assert_eq!(d.rgb.get_pixel(3, 3).0, [10, 20, 30]);
}

#[test]
fn lossless_webp() {
    let mut img = image::RgbImage::from_pixel(64, 48, image::Rgb(RED));
    for x in 32..64 {
        for y in 0..48 {
            img.put_pixel(x, y, image::Rgb(BLUE));
        }
    }
    let d = decode(&encode(
        image::DynamicImage::ImageRgb8(img),
        image::ImageFormat::WebP,
    ));
    assert_eq!(d.metadata.format, ImageFormat::Webp);
    assert_halves(&d, 0);
}

#[test]
fn grayscale_jpeg_photo() {
    let bytes = std::fs::read(
        classifier_core::model::ModelLocator::from_env()
            .find("imagenet_classes.txt")
            .expect("shared models")
            .with_file_name("samples/chelsea_gray.jpg"),
    )
    .expect("photo");
    let d = decode(&bytes);
    assert_eq!((d.metadata.width, d.metadata.height), (451, 300));
    assert!(d.rgb.pixels().all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2]));
}
