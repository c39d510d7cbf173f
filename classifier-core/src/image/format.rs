//! Format sniffing from magic bytes.
//!
//! The format of an upload is decided by its content only, never by a file name or a declared
//! content type. Formats we recognise but do not decode (TIFF, SVG, HTML, ...) are named in the
//! error so that the client learns what it actually sent.

use serde::{Deserialize, Serialize};

/// An image format that `classifier-core` can decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    /// JPEG (baseline or progressive, grayscale, RGB or CMYK).
    Jpeg,
    /// PNG (any bit depth, palette, interlaced, with or without alpha).
    Png,
    /// WebP (lossy or lossless).
    Webp,
    /// GIF (first frame); only when enabled in the validation config.
    Gif,
    /// BMP; only when enabled in the validation config.
    Bmp,
}

impl ImageFormat {
    /// The lowercase name used in API responses (`jpeg`, `png`, `webp`, `gif`, `bmp`).
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "jpeg",
            ImageFormat::Png => "png",
            ImageFormat::Webp => "webp",
            ImageFormat::Gif => "gif",
            ImageFormat::Bmp => "bmp",
        }
    }

    /// The formats accepted by default: JPEG, PNG and WebP.
    pub const DEFAULT_ACCEPTED: [ImageFormat; 3] =
        [ImageFormat::Jpeg, ImageFormat::Png, ImageFormat::Webp];

    pub(crate) fn to_image_crate(self) -> image::ImageFormat {
        match self {
            ImageFormat::Jpeg => image::ImageFormat::Jpeg,
            ImageFormat::Png => image::ImageFormat::Png,
            ImageFormat::Webp => image::ImageFormat::WebP,
            ImageFormat::Gif => image::ImageFormat::Gif,
            ImageFormat::Bmp => image::ImageFormat::Bmp,
        }
    }
}

impl std::fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a byte string looks like, as far as the first bytes tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniffed {
    /// A format we can decode (whether it is accepted is the validator's decision).
    Image(ImageFormat),
    /// Something recognisable that we do not decode; the string names it (`TIFF`, `SVG`, ...).
    Other(&'static str),
}

/// Identify the content of `bytes` from its magic numbers.
///
/// ```
/// use classifier_core::image::{sniff, ImageFormat, Sniffed};
/// assert_eq!(sniff(b"\x89PNG\r\n\x1a\n...."), Sniffed::Image(ImageFormat::Png));
/// assert_eq!(sniff(b"GIF89a......"), Sniffed::Image(ImageFormat::Gif));
/// assert_eq!(sniff(b"hello world"), Sniffed::Other("text"));
/// ```
pub fn sniff(bytes: &[u8]) -> Sniffed {
    const SIGNATURES: &[(&[u8], Sniffed)] = &[
        (b"\xFF\xD8\xFF", Sniffed::Image(ImageFormat::Jpeg)),
        (b"\x89PNG\r\n\x1a\n", Sniffed::Image(ImageFormat::Png)),
        (b"GIF87a", Sniffed::Image(ImageFormat::Gif)),
        (b"GIF89a", Sniffed::Image(ImageFormat::Gif)),
        (b"BM", Sniffed::Image(ImageFormat::Bmp)),
        (b"II*\0", Sniffed::Other("TIFF")),
        (b"MM\0*", Sniffed::Other("TIFF")),
        (b"\0\0\x01\0", Sniffed::Other("ICO")),
        (b"%PDF", Sniffed::Other("PDF")),
        (b"8BPS", Sniffed::Other("PSD")),
        (b"qoif", Sniffed::Other("QOI")),
        (b"\x76\x2F\x31\x01", Sniffed::Other("OpenEXR")),
        (b"PK\x03\x04", Sniffed::Other("ZIP archive")),
        (b"\x1F\x8B", Sniffed::Other("gzip data")),
    ];
    if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        return Sniffed::Image(ImageFormat::Webp);
    }
    if bytes.len() >= 12 && &bytes[4..8] == b"ftyp" {
        return Sniffed::Other(match &bytes[8..12] {
            b"avif" | b"avis" => "AVIF",
            b"heic" | b"heix" | b"mif1" | b"msf1" => "HEIF/HEIC",
            _ => "ISO media (MP4/MOV)",
        });
    }
    for (magic, sniffed) in SIGNATURES {
        if bytes.starts_with(magic) {
            return sniffed.clone();
        }
    }
    sniff_text(bytes)
}

/// Classify data that matched no binary signature: markup, plain text or unknown binary.
fn sniff_text(bytes: &[u8]) -> Sniffed {
    let head = &bytes[..bytes.len().min(1024)];
    let Ok(text) = std::str::from_utf8(trim_utf8_tail(head)) else {
        return Sniffed::Other("unknown binary data");
    };
    let lower = text
        .trim_start_matches('\u{feff}')
        .trim_start()
        .to_ascii_lowercase();
    if lower.contains("<svg") {
        Sniffed::Other("SVG")
    } else if lower.starts_with("<!doctype html") || lower.starts_with("<html") {
        Sniffed::Other("HTML")
    } else if lower.starts_with("<?xml") {
        Sniffed::Other("XML")
    } else if text.chars().all(|c| !c.is_control() || c.is_whitespace()) {
        Sniffed::Other("text")
    } else {
        Sniffed::Other("unknown binary data")
    }
}

/// Drop an incomplete UTF-8 sequence cut by the 1 KiB window, so real text still parses.
fn trim_utf8_tail(bytes: &[u8]) -> &[u8] {
    match std::str::from_utf8(bytes) {
        Ok(_) => bytes,
        Err(e) if e.error_len().is_none() => &bytes[..e.valid_up_to()],
        Err(_) => bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_the_decodable_formats() {
        assert_eq!(
            sniff(b"\xFF\xD8\xFF\xE0rest"),
            Sniffed::Image(ImageFormat::Jpeg)
        );
        assert_eq!(
            sniff(b"RIFF\0\0\0\0WEBPVP8 "),
            Sniffed::Image(ImageFormat::Webp)
        );
        assert_eq!(sniff(b"BM\0\0"), Sniffed::Image(ImageFormat::Bmp));
    }

    #[test]
    fn names_what_it_cannot_decode() {
        assert_eq!(sniff(b"II*\0\x08\0\0\0"), Sniffed::Other("TIFF"));
        assert_eq!(
            sniff(b"<?xml version=\"1.0\"?><svg></svg>"),
            Sniffed::Other("SVG")
        );
        assert_eq!(
            sniff(b"  <!DOCTYPE html><html></html>"),
            Sniffed::Other("HTML")
        );
        assert_eq!(
            sniff(b"\0\x01\x02\x03"),
            Sniffed::Other("unknown binary data")
        );
        assert_eq!(sniff(b""), Sniffed::Other("text"));
        assert_eq!(sniff("caf\u{e9}".as_bytes()), Sniffed::Other("text"));
    }
}
