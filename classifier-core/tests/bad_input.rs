//! Bad input: every case is a typed error with a useful message, never a panic, and every
//! limit is tested on both sides.

mod common;

use std::io::Cursor;

use classifier_core::image::{ImageFormat, ValidationConfig};
use classifier_core::Error;

fn encode(image: image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).expect("encode");
    out.into_inner()
}

fn png(width: u32, height: u32) -> Vec<u8> {
    encode(
        image::DynamicImage::new_rgb8(width, height),
        image::ImageFormat::Png,
    )
}

fn decode(bytes: &[u8]) -> Result<(), Error> {
    ValidationConfig::default().decode(bytes).map(|_| ())
}

#[test]
fn empty() {
    let err = decode(b"").unwrap_err();
    assert!(matches!(err, Error::EmptyImage));
    assert_eq!(err.code(), "INVALID_IMAGE");
}

#[test]
fn one_byte() {
    let err = decode(&[0xFF]).unwrap_err();
    assert!(matches!(err, Error::UnsupportedFormat { .. }), "{err}");
}

#[test]
fn text() {
    let err = decode(b"name,label\ncat.jpg,cat\n").unwrap_err();
    assert!(
        matches!(&err, Error::UnsupportedFormat { detected, .. } if detected == "text"),
        "{err}"
    );
    assert!(err.to_string().contains("JPEG, PNG, WEBP"), "{err}");
}

#[test]
fn html() {
    let err = decode(b"<!DOCTYPE html><html><body>hi</body></html>").unwrap_err();
    assert!(
        matches!(&err, Error::UnsupportedFormat { detected, .. } if detected == "HTML"),
        "{err}"
    );
}

#[test]
fn jpeg_cut_in_half() {
    let bytes = common::photo_bytes("dog.jpg");
    let half = &bytes[..bytes.len() / 2];
    // The header is intact, but the cheap check already sees that the scan data is cut.
    assert!(ValidationConfig::default().inspect(half).is_err());
    let err = decode(half).unwrap_err();
    assert!(
        matches!(err, Error::CorruptImage { format: "JPEG", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("truncated"), "{err}");
    assert_eq!(err.code(), "INVALID_IMAGE");
    // Every cut point fails cleanly, none panics.
    for cut in (2..bytes.len()).step_by(bytes.len() / 50) {
        assert!(decode(&bytes[..cut]).is_err(), "cut at {cut} decoded");
    }
}

#[test]
fn png_cut_in_half() {
    let bytes = common::photo_bytes("chelsea.png");
    let err = decode(&bytes[..bytes.len() / 2]).unwrap_err();
    assert!(
        matches!(err, Error::CorruptImage { format: "PNG", .. }),
        "{err}"
    );
    for cut in (8..bytes.len()).step_by(bytes.len() / 40) {
        assert!(decode(&bytes[..cut]).is_err(), "cut at {cut} decoded");
    }
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
    out
}

/// A PNG whose IHDR claims `width` x `height` RGB8, with a token IDAT: a decompression-bomb
/// header. Decoding it for real would need width * height * 3 bytes.
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    out.extend(chunk(b"IHDR", &ihdr));
    out.extend(chunk(
        b"IDAT",
        &[0x78, 0x01, 0x01, 0x00, 0x00, 0xFF, 0xFF, 0, 0, 0, 1],
    ));
    out.extend(chunk(b"IEND", &[]));
    out
}

#[test]
fn png_header_claiming_100000_square_is_refused_before_allocating() {
    let bomb = png_claiming(100_000, 100_000);
    let err = decode(&bomb).unwrap_err();
    assert!(
        matches!(
            err,
            Error::ImageTooLarge {
                width: 100_000,
                height: 100_000,
                ..
            }
        ),
        "{err}"
    );
    // With the dimension limit raised, the decoder allocation limit still refuses it
    // (30 GB of pixels) without allocating.
    let lenient = ValidationConfig {
        max_width: 200_000,
        max_height: 200_000,
        max_decode_alloc: 64 * 1024 * 1024,
        ..ValidationConfig::default()
    };
    let err = lenient.decode(&bomb).unwrap_err();
    assert!(matches!(err, Error::DecodeLimitExceeded { .. }), "{err}");
}

#[test]
fn decoder_allocation_limit_both_sides() {
    let bytes = png(64, 64); // 64 * 64 * 3 = 12288 bytes of pixels
    let at = |limit| ValidationConfig {
        max_decode_alloc: limit,
        ..ValidationConfig::default()
    };
    assert!(at(12_288).decode(&bytes).is_ok());
    assert!(matches!(
        at(12_287).decode(&bytes),
        Err(Error::DecodeLimitExceeded { .. })
    ));
}

#[test]
fn gif_is_unsupported_by_default_and_accepted_when_configured() {
    let gif = encode(
        image::DynamicImage::new_rgba8(40, 40),
        image::ImageFormat::Gif,
    );
    let err = decode(&gif).unwrap_err();
    assert!(
        matches!(&err, Error::UnsupportedFormat { detected, .. } if detected == "GIF"),
        "{err}"
    );
    let with_gif = ValidationConfig {
        accepted_formats: vec![ImageFormat::Jpeg, ImageFormat::Png, ImageFormat::Gif],
        ..ValidationConfig::default()
    };
    let decoded = with_gif.decode(&gif).expect("GIF accepted when configured");
    assert_eq!(decoded.metadata.format, ImageFormat::Gif);
}

#[test]
fn bmp_is_unsupported() {
    let bmp = encode(
        image::DynamicImage::new_rgb8(40, 40),
        image::ImageFormat::Bmp,
    );
    let err = decode(&bmp).unwrap_err();
    assert!(
        matches!(&err, Error::UnsupportedFormat { detected, .. } if detected == "BMP"),
        "{err}"
    );
}

#[test]
fn svg_is_unsupported() {
    let svg = br#"<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="100" height="100"><circle r="40"/></svg>"#;
    let err = decode(svg).unwrap_err();
    assert!(
        matches!(&err, Error::UnsupportedFormat { detected, .. } if detected == "SVG"),
        "{err}"
    );
}

#[test]
fn tiff_is_unsupported() {
    let err = decode(b"II*\0\x08\0\0\0\0\0").unwrap_err();
    assert!(
        matches!(&err, Error::UnsupportedFormat { detected, .. } if detected == "TIFF"),
        "{err}"
    );
}

#[test]
fn minimum_dimensions_both_sides() {
    let err = decode(&png(16, 16)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::ImageTooSmall {
                width: 16,
                height: 16,
                ..
            }
        ),
        "{err}"
    );
    assert!(matches!(
        decode(&png(31, 32)),
        Err(Error::ImageTooSmall { .. })
    ));
    assert!(decode(&png(32, 32)).is_ok());
    let tiny_ok = ValidationConfig {
        min_width: 16,
        min_height: 16,
        ..ValidationConfig::default()
    };
    assert!(tiny_ok.decode(&png(16, 16)).is_ok());
}

#[test]
fn maximum_dimensions_both_sides() {
    let v = ValidationConfig::default();
    assert!(v.inspect(&png(4096, 32)).is_ok());
    assert!(v.inspect(&png(32, 4096)).is_ok());
    assert!(matches!(
        v.inspect(&png(4097, 32)),
        Err(Error::ImageTooLarge { width: 4097, .. })
    ));
    assert!(matches!(
        v.inspect(&png(32, 4097)),
        Err(Error::ImageTooLarge { height: 4097, .. })
    ));
    let small_max = ValidationConfig {
        max_width: 100,
        max_height: 100,
        ..ValidationConfig::default()
    };
    assert!(small_max.decode(&png(100, 100)).is_ok());
    assert!(small_max.decode(&png(101, 100)).is_err());
}

#[test]
fn max_file_size_both_sides() {
    let bytes = common::photo_bytes("chelsea_gray.jpg");
    let exact = ValidationConfig {
        max_file_size: bytes.len(),
        ..ValidationConfig::default()
    };
    assert!(
        exact.decode(&bytes).is_ok(),
        "exactly the limit is accepted"
    );
    let one_less = ValidationConfig {
        max_file_size: bytes.len() - 1,
        ..ValidationConfig::default()
    };
    let err = one_less.decode(&bytes).unwrap_err();
    assert!(matches!(err, Error::FileTooLarge { .. }), "{err}");
    assert_eq!(err.code(), "PAYLOAD_TOO_LARGE");
    // Default limit: 10 MiB + 1 byte of otherwise valid-looking JPEG is refused by size.
    let mut big = common::photo_bytes("dog.jpg");
    big.resize(10 * 1024 * 1024 + 1, 0);
    assert!(matches!(
        decode(&big),
        Err(Error::FileTooLarge {
            limit: 10_485_760,
            ..
        })
    ));
}

#[test]
fn a_jpeg_named_png_is_accepted_because_content_decides() {
    let path = std::env::temp_dir().join(format!("really-a-jpeg-{}.png", std::process::id()));
    std::fs::write(&path, common::photo_bytes("dog.jpg")).expect("write");
    let bytes = std::fs::read(&path).expect("read");
    std::fs::remove_file(&path).ok();
    let decoded = ValidationConfig::default().decode(&bytes).expect("decodes");
    assert_eq!(decoded.metadata.format, ImageFormat::Jpeg);
    assert_eq!(
        (decoded.metadata.width, decoded.metadata.height),
        (768, 576)
    );
}

#[test]
fn garbage_after_a_valid_signature_is_a_corrupt_image() {
    for magic in [
        &b"\x89PNG\r\n\x1a\n"[..],
        b"\xFF\xD8\xFF\xE0",
        b"RIFF\x10\0\0\0WEBPVP8 ",
    ] {
        let mut bytes = magic.to_vec();
        bytes.extend_from_slice(&[0xAB; 64]);
        let err = decode(&bytes).unwrap_err();
        assert!(matches!(err, Error::CorruptImage { .. }), "{err}");
    }
}
