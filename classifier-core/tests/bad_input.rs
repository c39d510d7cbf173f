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

/// The error of `result`, which must have failed with API code `code`.
fn failure<T: std::fmt::Debug>(result: Result<T, Error>, code: &str) -> Error {
    let err = result.expect_err("expected an error");
    assert_eq!(err.code(), code, "{err}");
    err
}

/// Both the header check and the full decode refuse `bytes` with `UnsupportedFormat` naming
/// `detected`, in the variant and in the message.
fn assert_unsupported(config: &ValidationConfig, bytes: &[u8], detected: &str) {
    for err in [
        failure(config.inspect(bytes), "INVALID_IMAGE"),
        failure(config.decode(bytes), "INVALID_IMAGE"),
    ] {
        assert!(
            matches!(&err, Error::UnsupportedFormat { detected: d, .. } if d == detected),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains(&format!("unsupported image format: {detected};")),
            "{err}"
        );
    }
}

#[test]
fn empty() {
    let err = failure(decode(b""), "INVALID_IMAGE");
    assert!(matches!(err, Error::EmptyImage), "{err}");
    let err = failure(ValidationConfig::default().inspect(b""), "INVALID_IMAGE");
    assert!(matches!(err, Error::EmptyImage), "{err}");
}

#[test]
fn one_byte() {
    // 0xFF is the first byte of a JPEG signature, but one byte is not a JPEG.
    assert_unsupported(&ValidationConfig::default(), &[0xFF], "unknown binary data");
    assert_unsupported(&ValidationConfig::default(), b"A", "text");
}

#[test]
fn text() {
    let bytes = b"name,label\ncat.jpg,cat\n";
    assert_unsupported(&ValidationConfig::default(), bytes, "text");
    let err = failure(decode(bytes), "INVALID_IMAGE");
    assert!(err.to_string().contains("JPEG, PNG, WEBP"), "{err}");
}

#[test]
fn html() {
    assert_unsupported(
        &ValidationConfig::default(),
        b"<!DOCTYPE html><html><body>hi</body></html>",
        "HTML",
    );
}

#[test]
fn jpeg_cut_in_half() {
    let bytes = common::photo_bytes("dog.jpg");
    let half = &bytes[..bytes.len() / 2];
    // The header is intact, but the cheap check already sees that the scan data is cut.
    let err = failure(ValidationConfig::default().inspect(half), "INVALID_IMAGE");
    assert!(
        matches!(err, Error::CorruptImage { format: "JPEG", .. }),
        "{err}"
    );
    let err = failure(decode(half), "INVALID_IMAGE");
    assert!(
        matches!(err, Error::CorruptImage { format: "JPEG", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("truncated"), "{err}");
    // Every cut point fails cleanly, none panics.
    for cut in (2..bytes.len()).step_by(bytes.len() / 50) {
        assert!(decode(&bytes[..cut]).is_err(), "cut at {cut} decoded");
    }
}

#[test]
fn png_cut_in_half() {
    let bytes = common::photo_bytes("chelsea.png");
    let err = failure(decode(&bytes[..bytes.len() / 2]), "INVALID_IMAGE");
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
    assert_eq!(&bomb[12..16], b"IHDR");
    let err = failure(ValidationConfig::default().inspect(&bomb), "INVALID_IMAGE");
    assert!(matches!(err, Error::ImageTooLarge { .. }), "{err}");
    let err = failure(decode(&bomb), "INVALID_IMAGE");
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
    for result in [
        lenient.inspect(&bomb).map(|_| ()),
        lenient.decode(&bomb).map(|_| ()),
    ] {
        let err = failure(result, "INVALID_IMAGE");
        assert!(
            matches!(err, Error::DecodeLimitExceeded { limit } if limit == 64 * 1024 * 1024),
            "{err}"
        );
    }
    // Refused from the header: a real decode would have to allocate 30 GB, which this
    // test process could not survive; no timing assertion (machines are noisy).
}

#[test]
fn decoder_allocation_limit_both_sides() {
    let bytes = png(64, 64); // 64 * 64 * 3 = 12288 bytes of pixels
    let at = |limit| ValidationConfig {
        max_decode_alloc: limit,
        ..ValidationConfig::default()
    };
    assert!(at(12_288).decode(&bytes).is_ok());
    let err = failure(at(12_287).decode(&bytes), "INVALID_IMAGE");
    assert!(
        matches!(err, Error::DecodeLimitExceeded { limit: 12_287 }),
        "{err}"
    );
}

#[test]
fn gif_is_unsupported_by_default_and_accepted_when_configured() {
    let gif = encode(
        image::DynamicImage::new_rgba8(40, 40),
        image::ImageFormat::Gif,
    );
    assert_unsupported(&ValidationConfig::default(), &gif, "GIF");
    let with_gif = ValidationConfig {
        accepted_formats: vec![ImageFormat::Jpeg, ImageFormat::Png, ImageFormat::Gif],
        ..ValidationConfig::default()
    };
    let decoded = with_gif.decode(&gif).expect("GIF accepted when configured");
    assert_eq!(decoded.metadata.format, ImageFormat::Gif);
    assert_eq!((decoded.metadata.width, decoded.metadata.height), (40, 40));
    // Accepting GIF does not accept BMP.
    let bmp = encode(
        image::DynamicImage::new_rgb8(40, 40),
        image::ImageFormat::Bmp,
    );
    assert_unsupported(&with_gif, &bmp, "BMP");
}

#[test]
fn bmp_is_unsupported() {
    let bmp = encode(
        image::DynamicImage::new_rgb8(40, 40),
        image::ImageFormat::Bmp,
    );
    assert_unsupported(&ValidationConfig::default(), &bmp, "BMP");
    let with_bmp = ValidationConfig {
        accepted_formats: vec![ImageFormat::Bmp],
        ..ValidationConfig::default()
    };
    let decoded = with_bmp.decode(&bmp).expect("BMP accepted when configured");
    assert_eq!(decoded.metadata.format, ImageFormat::Bmp);
}

#[test]
fn svg_is_unsupported() {
    let svg = br#"<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="100" height="100"><circle r="40"/></svg>"#;
    assert_unsupported(&ValidationConfig::default(), svg, "SVG");
    // Without the XML declaration too.
    assert_unsupported(
        &ValidationConfig::default(),
        br#"<svg xmlns="http://www.w3.org/2000/svg"/>"#,
        "SVG",
    );
}

#[test]
fn tiff_is_unsupported() {
    assert_unsupported(&ValidationConfig::default(), b"II*\0\x08\0\0\0\0\0", "TIFF");
}

#[test]
fn minimum_dimensions_both_sides() {
    let err = failure(decode(&png(16, 16)), "INVALID_IMAGE");
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
    let err = failure(decode(&png(31, 32)), "INVALID_IMAGE");
    assert!(
        matches!(err, Error::ImageTooSmall { width: 31, .. }),
        "{err}"
    );
    let err = failure(decode(&png(32, 31)), "INVALID_IMAGE");
    assert!(
        matches!(err, Error::ImageTooSmall { height: 31, .. }),
        "{err}"
    );
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
    let err = failure(v.inspect(&png(4097, 32)), "INVALID_IMAGE");
    assert!(
        matches!(err, Error::ImageTooLarge { width: 4097, .. }),
        "{err}"
    );
    let err = failure(v.inspect(&png(32, 4097)), "INVALID_IMAGE");
    assert!(
        matches!(err, Error::ImageTooLarge { height: 4097, .. }),
        "{err}"
    );
    let small_max = ValidationConfig {
        max_width: 100,
        max_height: 100,
        ..ValidationConfig::default()
    };
    assert!(small_max.decode(&png(100, 100)).is_ok());
    let err = failure(small_max.decode(&png(101, 100)), "INVALID_IMAGE");
    assert!(matches!(err, Error::ImageTooLarge { .. }), "{err}");
}

#[test]
fn max_file_size_both_sides() {
    // A real small PNG; the limit is set to exactly its length, then one byte less.
    let bytes = png(40, 40);
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
    for result in [
        one_less.inspect(&bytes).map(|_| ()),
        one_less.decode(&bytes).map(|_| ()),
    ] {
        let err = failure(result, "PAYLOAD_TOO_LARGE");
        assert!(
            matches!(err, Error::FileTooLarge { size, limit } if size == bytes.len() && limit == bytes.len() - 1),
            "{err}"
        );
    }
    // Default limit: 10 MiB + 1 byte of otherwise valid-looking JPEG is refused by size.
    let mut big = common::photo_bytes("dog.jpg");
    big.resize(10 * 1024 * 1024 + 1, 0);
    let err = failure(decode(&big), "PAYLOAD_TOO_LARGE");
    assert!(
        matches!(
            err,
            Error::FileTooLarge {
                size: 10_485_761,
                limit: 10_485_760
            }
        ),
        "{err}"
    );
}

#[test]
fn a_jpeg_named_png_is_accepted_because_content_decides() {
    let dir = std::env::temp_dir().join(format!("bad-input-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("x.png");
    std::fs::write(&path, common::photo_bytes("dog.jpg")).expect("write");
    let bytes = std::fs::read(&path).expect("read");
    std::fs::remove_dir_all(&dir).ok();
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
        let err = failure(decode(&bytes), "INVALID_IMAGE");
        assert!(matches!(err, Error::CorruptImage { .. }), "{err}");
    }
}
