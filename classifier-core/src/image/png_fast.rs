//! A fast path for the common PNG: 8-bit gray, gray+alpha, RGB or RGBA, not interlaced.
//!
//! Photos stored as PNG compress poorly (chelsea.png: 406 KB of pixels in 234 KB), so decoding
//! them is mostly Huffman decoding of literals. The `png` crate's inflater runs at zlib's
//! speed; libdeflate inflates the same streams 2-2.5x faster (chelsea.png: 0.95 against 2.4 ms).
//! This module inflates the image data with libdeflate in one call, into a buffer of exactly
//! the expected size, and undoes the PNG row filters itself.
//!
//! It is a fast path, not a second authority: [`decode`] runs only after the `png` crate has
//! parsed and validated every chunk before the image data (`ValidationConfig::open`), and it
//! accepts a file only when that file is complete and intact to the end:
//!
//! - the `IDAT` chunks are consecutive and every one has a correct CRC;
//! - the zlib stream inflates, with a correct Adler-32, to exactly the size the header
//!   implies (no more, no less);
//! - every row has a known filter type;
//! - an intact `IEND` chunk follows the last `IDAT`.
//!
//! Anything else (other bit depths, palettes, interlacing, animation, chunks between the image
//! data and `IEND`, any damage) returns [`Unsupported`], and the caller decodes with the `png`
//! crate, which then decodes the file or reports its own error. So the fast path never accepts
//! a file the `png` crate refuses, and never refuses one it accepts; `fuzz/` and
//! `tests/png_fast.rs` check both, and that the pixels are identical.

use libdeflater::Decompressor;

const SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];

/// Why the fast path declined a file (the caller then uses the full decoder).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unsupported(pub &'static str);

/// A decoded PNG: `width * height * channels` samples, rows top to bottom.
#[derive(Debug)]
pub(crate) struct FastPng {
    pub width: u32,
    pub height: u32,
    /// 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA.
    pub channels: usize,
    pub pixels: Vec<u8>,
}

/// One chunk: its type, its data, and the CRC stored after it.
struct Chunk<'a> {
    kind: [u8; 4],
    /// The type and the data: what the CRC covers.
    typed: &'a [u8],
    stored_crc: u32,
}

impl<'a> Chunk<'a> {
    fn data(&self) -> &'a [u8] {
        &self.typed[4..]
    }

    /// Computed only for the chunks whose CRC matters here (the image data and IEND).
    fn crc_ok(&self) -> bool {
        libdeflater::crc32(self.typed) == self.stored_crc
    }
}

/// Reads the chunk at `pos`; `None` if it runs past the end of the file.
fn chunk_at(bytes: &[u8], pos: usize) -> Option<(Chunk<'_>, usize)> {
    let header = bytes.get(pos..pos.checked_add(8)?)?;
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let data_end = pos.checked_add(8)?.checked_add(len)?;
    let end = data_end.checked_add(4)?;
    let typed = bytes.get(pos + 4..data_end)?;
    let stored = bytes.get(data_end..end)?;
    let chunk = Chunk {
        kind: [header[4], header[5], header[6], header[7]],
        typed,
        stored_crc: u32::from_be_bytes([stored[0], stored[1], stored[2], stored[3]]),
    };
    Some((chunk, end))
}

/// Decodes `bytes` if it is a PNG this fast path handles. `max_alloc` bounds the buffer it
/// inflates into, which then holds the pixels.
pub(crate) fn decode(bytes: &[u8], max_alloc: u64) -> Result<FastPng, Unsupported> {
    if bytes.get(..8) != Some(&SIGNATURE[..]) {
        return Err(Unsupported("not a PNG signature"));
    }
    let (ihdr, mut pos) = chunk_at(bytes, 8).ok_or(Unsupported("no IHDR"))?;
    if &ihdr.kind != b"IHDR" || ihdr.data().len() != 13 || !ihdr.crc_ok() {
        return Err(Unsupported("bad IHDR"));
    }
    let d = ihdr.data();
    let width = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
    let height = u32::from_be_bytes([d[4], d[5], d[6], d[7]]);
    let (bit_depth, color_type, compression, filter, interlace) = (d[8], d[9], d[10], d[11], d[12]);
    let channels = match color_type {
        0 => 1,
        2 => 3,
        4 => 2,
        6 => 4,
        _ => return Err(Unsupported("palette or unknown colour type")),
    };
    if bit_depth != 8 {
        return Err(Unsupported("bit depth other than 8"));
    }
    if compression != 0 || filter != 0 || interlace != 0 {
        return Err(Unsupported("interlaced or non-standard method"));
    }
    if width == 0 || height == 0 {
        return Err(Unsupported("empty image"));
    }

    // Chunks before the image data were validated by the png crate; only find the first IDAT,
    // and leave animations (whose frames the png crate places) to it.
    let first_idat = loop {
        let (chunk, next) = chunk_at(bytes, pos).ok_or(Unsupported("truncated before IDAT"))?;
        match &chunk.kind {
            b"IDAT" => break pos,
            b"acTL" | b"fcTL" | b"fdAT" => return Err(Unsupported("animated PNG")),
            b"IEND" => return Err(Unsupported("no image data")),
            _ => pos = next,
        }
    };

    // The image data: consecutive IDAT chunks, each with a correct CRC, then an intact IEND.
    let mut parts: Vec<&[u8]> = Vec::new();
    pos = first_idat;
    loop {
        let (chunk, next) = chunk_at(bytes, pos).ok_or(Unsupported("truncated image data"))?;
        if !chunk.crc_ok() {
            return Err(Unsupported("CRC mismatch"));
        }
        match &chunk.kind {
            b"IDAT" => parts.push(chunk.data()),
            b"IEND" if chunk.data().is_empty() => break,
            _ => return Err(Unsupported("chunks after the image data")),
        }
        pos = next;
    }

    let row_len = (width as usize)
        .checked_mul(channels)
        .ok_or(Unsupported("row too long"))?;
    let stride = row_len + 1; // each row starts with its filter byte
    let raw_len = stride
        .checked_mul(height as usize)
        .ok_or(Unsupported("image too large"))?;
    if raw_len as u64 > max_alloc {
        return Err(Unsupported("over the decoder allocation limit"));
    }
    let joined;
    let stream: &[u8] = match parts.as_slice() {
        [one] => one,
        _ => {
            joined = parts.concat();
            &joined
        }
    };
    let mut raw = vec![0u8; raw_len];
    match Decompressor::new().zlib_decompress(stream, &mut raw) {
        Ok(n) if n == raw_len => {}
        _ => {
            return Err(Unsupported(
                "image data does not inflate to the expected size",
            ))
        }
    }

    // Unfilter in place, each row against the one above (zeros above the first), then close
    // the gaps the filter bytes leave: one buffer for the whole decode.
    let zero_row = vec![0u8; row_len];
    for y in 0..height as usize {
        let (done, rest) = raw.split_at_mut(y * stride);
        let (kind, row) = (rest[0], &mut rest[1..stride]);
        let up = match y {
            0 => &zero_row[..],
            _ => &done[done.len() - row_len..],
        };
        unfilter(kind, row, up, channels)?;
    }
    for y in 0..height as usize {
        raw.copy_within(y * stride + 1..(y + 1) * stride, y * row_len);
    }
    raw.truncate(row_len * height as usize);
    let pixels = raw;
    Ok(FastPng {
        width,
        height,
        channels,
        pixels,
    })
}

/// Undoes one row's filter in place. `up` is the previous reconstructed row (zeros for the
/// first row, as the PNG spec says).
fn unfilter(kind: u8, row: &mut [u8], up: &[u8], bpp: usize) -> Result<(), Unsupported> {
    match bpp {
        1 => unfilter_bpp::<1>(kind, row, up),
        2 => unfilter_bpp::<2>(kind, row, up),
        3 => unfilter_bpp::<3>(kind, row, up),
        _ => unfilter_bpp::<4>(kind, row, up),
    }
}

/// [`unfilter`] for `BPP` bytes per pixel: whole pixels at a time, the left and upper-left
/// pixels carried in registers, no bounds checks, and a branch-free Paeth predictor (photos
/// make its comparisons unpredictable).
fn unfilter_bpp<const BPP: usize>(kind: u8, row: &mut [u8], up: &[u8]) -> Result<(), Unsupported> {
    let pixels = row.chunks_exact_mut(BPP).zip(up.chunks_exact(BPP));
    let mut left = [0u8; BPP];
    match kind {
        0 => {}
        1 => {
            for (px, _) in pixels {
                for c in 0..BPP {
                    px[c] = px[c].wrapping_add(left[c]);
                    left[c] = px[c];
                }
            }
        }
        2 => {
            for (x, u) in row.iter_mut().zip(up) {
                *x = x.wrapping_add(*u);
            }
        }
        3 => {
            for (px, u) in pixels {
                for c in 0..BPP {
                    let avg = ((u16::from(left[c]) + u16::from(u[c])) >> 1) as u8;
                    px[c] = px[c].wrapping_add(avg);
                    left[c] = px[c];
                }
            }
        }
        4 => {
            let mut left = [0i16; BPP];
            let mut upper_left = [0i16; BPP];
            for (px, u) in pixels {
                for c in 0..BPP {
                    px[c] = px[c].wrapping_add(paeth(left[c], i16::from(u[c]), upper_left[c]));
                    left[c] = i16::from(px[c]);
                    upper_left[c] = i16::from(u[c]);
                }
            }
        }
        _ => return Err(Unsupported("unknown row filter")),
    }
    Ok(())
}

/// The Paeth predictor (PNG spec 9.4): the neighbour closest to `a + b - c`, ties going to
/// `a`, then `b`. This is stb_image's equivalent formulation (public domain), which needs no
/// absolute values and compiles to a few min/max and conditional moves; a test checks it
/// against the spec's formulation.
#[inline(always)]
fn paeth(a: i16, b: i16, c: i16) -> u8 {
    let threshold = c * 3 - (a + b);
    let lo = a.min(b);
    let hi = a.max(b);
    let t0 = if hi <= threshold { lo } else { c };
    let t1 = if threshold <= lo { hi } else { t0 };
    t1 as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paeth_follows_the_spec_ties() {
        // a wins ties with b and c; b wins ties with c; c wins when it is nearest.
        assert_eq!(paeth(10, 10, 10), 10);
        assert_eq!(paeth(1, 2, 3), 1);
        assert_eq!(paeth(50, 100, 60), 100);
        assert_eq!(paeth(100, 50, 60), 100);
        assert_eq!(paeth(100, 200, 150), 150);
        assert_eq!(paeth(0, 255, 255), 0);
        assert_eq!(paeth(255, 0, 255), 0);
    }

    #[test]
    fn paeth_equals_the_spec_formulation_everywhere() {
        fn spec(a: u8, b: u8, c: u8) -> u8 {
            let p = i16::from(a) + i16::from(b) - i16::from(c);
            let (pa, pb, pc) = (
                (p - i16::from(a)).abs(),
                (p - i16::from(b)).abs(),
                (p - i16::from(c)).abs(),
            );
            if pa <= pb && pa <= pc {
                a
            } else if pb <= pc {
                b
            } else {
                c
            }
        }
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                for c in 0..=255u8 {
                    let fast = paeth(i16::from(a), i16::from(b), i16::from(c));
                    assert_eq!(fast, spec(a, b, c), "{a} {b} {c}");
                }
            }
        }
    }

    #[test]
    fn declines_what_it_does_not_handle() {
        assert_eq!(
            decode(b"not a png", u64::MAX).unwrap_err(),
            Unsupported("not a PNG signature")
        );
        assert!(decode(&SIGNATURE, u64::MAX).is_err());
    }
}
