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
    let mut y = 0;
    while y < height as usize {
        let (done, rest) = raw.split_at_mut(y * stride);
        let up = match y {
            0 => &zero_row[..],
            _ => &done[done.len() - row_len..],
        };
        y += unfilter_next_rows(rest, stride, up, channels)?;
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

/// Undoes the filters of the next row of `rows`, or of the next [`ROWS_AT_ONCE`] rows (each
/// `stride` bytes: the filter byte, then the samples), in place, and says how many it did.
/// `up` is the reconstructed row above the first (zeros for the image's first row, as the PNG
/// spec says).
///
/// The Average and Paeth filters make each pixel depend on the one to its left, so one row is
/// a single chain of dependent steps. On x86_64, [`ROWS_AT_ONCE`] consecutive RGB or RGBA rows
/// where one of them uses such a filter are done together, each one pixel behind the row above,
/// so that the processor overlaps their chains ([`rows_avx2::rows`] where the CPU has AVX2,
/// [`pixel_simd::rows`] elsewhere).
fn unfilter_next_rows(
    rows: &mut [u8],
    stride: usize,
    up: &[u8],
    bpp: usize,
) -> Result<usize, Unsupported> {
    let known = |kind: u8| {
        if kind <= 4 {
            Ok(kind)
        } else {
            Err(Unsupported("unknown row filter"))
        }
    };
    let kind = known(rows[0])?;
    #[cfg(target_arch = "x86_64")]
    if (bpp == 3 || bpp == 4) && rows.len() >= ROWS_AT_ONCE * stride {
        let mut kinds = [0u8; ROWS_AT_ONCE];
        for (r, k) in kinds.iter_mut().enumerate() {
            *k = known(rows[r * stride])?;
        }
        if kinds.iter().any(|&k| k >= 3) {
            let rows = &mut rows[..ROWS_AT_ONCE * stride];
            unfilter_group(kinds, rows, stride, up, bpp, GroupCode::best());
            return Ok(ROWS_AT_ONCE);
        }
    }
    unfilter(kind, &mut rows[1..stride], up, bpp)?;
    Ok(1)
}

/// Rows unfiltered together by [`unfilter_next_rows`].
#[cfg(target_arch = "x86_64")]
const ROWS_AT_ONCE: usize = 8;

/// Which code unfilters a group of [`ROWS_AT_ONCE`] RGB or RGBA rows.
#[cfg(target_arch = "x86_64")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GroupCode {
    /// [`pixel_simd::rows`]: one pixel per SSE2 register, every x86_64 CPU.
    Sse2,
    /// [`rows_avx2::rows`]: four rows' pixels per AVX2 register.
    Avx2,
}

#[cfg(target_arch = "x86_64")]
impl GroupCode {
    /// The fastest this CPU runs.
    fn best() -> GroupCode {
        if std::arch::is_x86_feature_detected!("avx2") {
            GroupCode::Avx2
        } else {
            GroupCode::Sse2
        }
    }
}

/// Undo the filters `kinds` of the [`ROWS_AT_ONCE`] rows in `rows` (RGB or RGBA: `bpp` 3 or
/// 4) with `code`, which this CPU must support.
#[cfg(target_arch = "x86_64")]
fn unfilter_group(
    kinds: [u8; ROWS_AT_ONCE],
    rows: &mut [u8],
    stride: usize,
    up: &[u8],
    bpp: usize,
    code: GroupCode,
) {
    match code {
        // SAFETY: SSE2 is part of the x86_64 baseline, so every x86_64 CPU has it.
        GroupCode::Sse2 => unsafe {
            match bpp {
                3 => pixel_simd::rows::<3, ROWS_AT_ONCE>(kinds, rows, stride, up),
                _ => pixel_simd::rows::<4, ROWS_AT_ONCE>(kinds, rows, stride, up),
            }
        },
        // SAFETY: `GroupCode::Avx2` is only chosen (by `best`, or by tests after the same
        // check) on a CPU with AVX2.
        GroupCode::Avx2 => unsafe {
            match bpp {
                3 => rows_avx2::rows::<3>(kinds, rows, stride, up),
                _ => rows_avx2::rows::<4>(kinds, rows, stride, up),
            }
        },
    }
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

/// The `BPP` bytes at `at` as the low bytes of a little-endian word (the rest zero): how the
/// SIMD row filters load a pixel without reading past it.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn pixel_word<const BPP: usize>(bytes: &[u8], at: usize) -> i32 {
    let mut w = [0u8; 4];
    w[..BPP].copy_from_slice(&bytes[at..at + BPP]);
    i32::from_le_bytes(w)
}

/// The row filters for RGB and RGBA with one pixel per SSE2 register (libpng's
/// `filter_sse2_intrinsics.c` approach), for several rows at a time. Each channel sits in a 16-bit
/// lane (0..=255), where `a + b - c` and its distances cannot overflow; the final additions
/// use `_epi8` so that they wrap modulo 256 as the spec says, and leave the upper byte of each
/// lane zero. SSE2 is part of x86_64, so no runtime detection is needed.
///
/// `cargo bench --bench preprocess -- 'png/fast path decode/chelsea'` (mostly Paeth rows):
/// 1.44 ms with the scalar filters; with this code 1.56 ms one row at a time (a Paeth pixel is
/// a chain of about ten dependent instructions either way), 1.19 ms two rows at a time,
/// 1.07 ms four, 1.02 ms eight (AMD EPYC Zen 5; libdeflate's inflate is about 0.6 ms of it).
#[cfg(target_arch = "x86_64")]
mod pixel_simd {
    use std::arch::x86_64::{
        __m128i, _mm_add_epi16, _mm_add_epi8, _mm_and_si128, _mm_andnot_si128, _mm_cmpeq_epi16,
        _mm_cvtsi128_si32, _mm_cvtsi32_si128, _mm_max_epi16, _mm_min_epi16, _mm_or_si128,
        _mm_packus_epi16, _mm_setzero_si128, _mm_srli_epi16, _mm_sub_epi16, _mm_unpacklo_epi8,
    };

    /// The `BPP` bytes of one pixel, one per 16-bit lane.
    #[inline]
    #[target_feature(enable = "sse2")]
    fn load<const BPP: usize>(pixel: &[u8]) -> __m128i {
        _mm_unpacklo_epi8(
            _mm_cvtsi32_si128(super::pixel_word::<BPP>(pixel, 0)),
            _mm_setzero_si128(),
        )
    }

    /// Writes the low byte of the first `BPP` lanes (each 0..=255) to `pixel`.
    #[inline]
    #[target_feature(enable = "sse2")]
    fn store<const BPP: usize>(value: __m128i, pixel: &mut [u8]) {
        let word = _mm_cvtsi128_si32(_mm_packus_epi16(value, value)).to_le_bytes();
        pixel[..BPP].copy_from_slice(&word[..BPP]);
    }

    #[inline]
    #[target_feature(enable = "sse2")]
    fn abs16(v: __m128i) -> __m128i {
        _mm_max_epi16(v, _mm_sub_epi16(_mm_setzero_si128(), v))
    }

    /// `mask ? yes : no`, lane by lane (`mask` lanes are all ones or all zeros).
    #[inline]
    #[target_feature(enable = "sse2")]
    fn select(mask: __m128i, yes: __m128i, no: __m128i) -> __m128i {
        _mm_or_si128(_mm_and_si128(mask, yes), _mm_andnot_si128(mask, no))
    }

    /// The Paeth predictor of left `a`, upper `b` and upper-left `c`. With `p = a + b - c`:
    /// `p - a = b - c`, `p - b = a - c` and `p - c = (b - c) + (a - c)`; the nearest wins, ties
    /// going to `a`, then `b`.
    #[inline]
    #[target_feature(enable = "sse2")]
    fn paeth(a: __m128i, b: __m128i, c: __m128i) -> __m128i {
        let to_b = _mm_sub_epi16(b, c);
        let to_a = _mm_sub_epi16(a, c);
        let dist_c = abs16(_mm_add_epi16(to_b, to_a));
        let (dist_a, dist_b) = (abs16(to_b), abs16(to_a));
        let nearest = _mm_min_epi16(dist_c, _mm_min_epi16(dist_a, dist_b));
        select(
            _mm_cmpeq_epi16(nearest, dist_a),
            a,
            select(_mm_cmpeq_epi16(nearest, dist_b), b, c),
        )
    }

    /// One pixel of filter `kind` (0..=4): `raw` plus the prediction from its left (`a`),
    /// upper (`b`) and upper-left (`c`) neighbours.
    #[inline]
    #[target_feature(enable = "sse2")]
    fn reconstruct(kind: u8, raw: __m128i, a: __m128i, b: __m128i, c: __m128i) -> __m128i {
        let predicted = match kind {
            1 => a,
            2 => b,
            3 => _mm_srli_epi16::<1>(_mm_add_epi16(a, b)),
            4 => paeth(a, b, c),
            _ => _mm_setzero_si128(),
        };
        _mm_add_epi8(raw, predicted)
    }

    /// Undoes the filters `kinds` (each 0..=4) of `N` consecutive rows in place. `rows` holds
    /// them, each `stride` bytes (the filter byte, then the samples); `up` is the
    /// reconstructed row above the first. Row `r` runs `r` pixels behind row `r - 1`: its pixel
    /// `x` needs row `r - 1`'s pixels `x` and `x - 1`, which the two previous steps produced
    /// and which stay in registers, so the `N` chains of dependent pixels overlap.
    #[target_feature(enable = "sse2")]
    pub(super) fn rows<const BPP: usize, const N: usize>(
        kinds: [u8; N],
        rows: &mut [u8],
        stride: usize,
        up: &[u8],
    ) {
        let zero = _mm_setzero_si128();
        let pixels = (stride - 1) / BPP;
        // Per row: its left neighbour (its own last output), and its upper and upper-left
        // neighbours (for the first row from `up`, for the others the row above's last two
        // outputs).
        let (mut left, mut upper, mut upper_left) = ([zero; N], [zero; N], [zero; N]);
        for step in 0..pixels + N - 1 {
            if step < pixels {
                upper[0] = load::<BPP>(&up[step * BPP..]);
            }
            for r in 0..N {
                let Some(x) = step.checked_sub(r).filter(|&x| x < pixels) else {
                    continue;
                };
                let at = r * stride + 1 + x * BPP;
                let raw = load::<BPP>(&rows[at..]);
                left[r] = reconstruct(kinds[r], raw, left[r], upper[r], upper_left[r]);
                store::<BPP>(left[r], &mut rows[at..]);
            }
            upper_left = upper;
            upper[1..].copy_from_slice(&left[..N - 1]);
        }
    }
}

/// The row filters for RGB and RGBA, [`ROWS_AT_ONCE`] rows at a time in two AVX2 registers of
/// four rows each: 64-bit lane `r` holds row `r`'s pixel, one channel per 16-bit lane, as in
/// [`pixel_simd`]. Row `r` still runs `r` pixels behind row `r - 1`, so at each step the upper
/// neighbours of rows 1-3 are rows 0-2's previous outputs shifted up one lane (and row 4's is
/// row 3's, from the other register), and each row's predictor is picked by a lane mask.
/// One Paeth computation then serves four rows: [`pixel_simd`] did one per pixel.
///
/// `cargo bench --bench preprocess -- 'png/fast path decode/chelsea'` (AMD EPYC Zen 4): 1.35 ms
/// with [`pixel_simd`], 0.99 ms with this (the unfilter from about 0.5 to 0.2 ms; libdeflate's
/// inflate is the other 0.8 ms). Loading and storing whole 4-byte words in the steps where all
/// eight rows are inside the image, instead of exactly 3 bytes per RGB pixel, was most of it.
#[cfg(target_arch = "x86_64")]
mod rows_avx2 {
    use std::arch::x86_64::{
        __m256i, _mm256_abs_epi16, _mm256_add_epi16, _mm256_add_epi8, _mm256_alignr_epi8,
        _mm256_and_si256, _mm256_blendv_epi8, _mm256_cmpeq_epi16, _mm256_cvtepu8_epi16,
        _mm256_extract_epi32, _mm256_min_epi16, _mm256_or_si256, _mm256_packus_epi16,
        _mm256_permute2x128_si256, _mm256_set1_epi64x, _mm256_set_epi64x, _mm256_setzero_si256,
        _mm256_srli_epi16, _mm256_sub_epi16, _mm_set_epi32,
    };

    use super::{pixel_word as word, ROWS_AT_ONCE};

    /// Rows per register.
    const LANES: usize = 4;

    /// Four words, one per 64-bit lane, their bytes widened to 16-bit lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn widen(w: [i32; LANES]) -> __m256i {
        _mm256_cvtepu8_epi16(_mm_set_epi32(w[3], w[2], w[1], w[0]))
    }

    /// The inverse of [`widen`]: each 64-bit lane's four 16-bit lanes (0..=255) as the bytes
    /// of a little-endian word.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn words_of(v: __m256i) -> [i32; LANES] {
        let packed = _mm256_packus_epi16(v, v);
        [
            _mm256_extract_epi32::<0>(packed),
            _mm256_extract_epi32::<1>(packed),
            _mm256_extract_epi32::<4>(packed),
            _mm256_extract_epi32::<5>(packed),
        ]
    }

    /// `(low[3], high[0], high[1], high[2])`: `high` moved up one 64-bit lane, with the top
    /// lane of `low` entering at the bottom.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn shift_in(high: __m256i, low: __m256i) -> __m256i {
        // (low[2], low[3], high[0], high[1]), then byte-aligned with `high` per 128 bits.
        let middle = _mm256_permute2x128_si256::<0x03>(high, low);
        _mm256_alignr_epi8::<8>(high, middle)
    }

    /// A mask whose 64-bit lane `r` is all ones where `kinds[r] == kind`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn lanes_of(kinds: &[u8], kind: u8) -> __m256i {
        let m = |r: usize| if kinds[r] == kind { -1i64 } else { 0 };
        _mm256_set_epi64x(m(3), m(2), m(1), m(0))
    }

    /// Lane masks of the four predictors of a register's rows.
    #[derive(Clone, Copy)]
    struct Predictors {
        sub: __m256i,
        up: __m256i,
        average: __m256i,
        paeth: __m256i,
    }

    impl Predictors {
        /// For RGB (`BPP` 3) the fourth channel of every lane predicts 0, so that it comes
        /// out as it went in: the byte after the pixel (the next pixel's first raw byte), which
        /// a 4-byte store then writes back unchanged.
        #[inline]
        #[target_feature(enable = "avx2")]
        fn of<const BPP: usize>(kinds: &[u8]) -> Predictors {
            let channels = if BPP == 3 { 0x0000_FFFF_FFFF_FFFF } else { -1 };
            let channels = _mm256_set1_epi64x(channels);
            let lanes = |kind| _mm256_and_si256(lanes_of(kinds, kind), channels);
            Predictors {
                sub: lanes(1),
                up: lanes(2),
                average: lanes(3),
                paeth: lanes(4),
            }
        }

        /// `raw` plus each lane's prediction from left `a`, upper `b` and upper-left `c`
        /// (0 for a row whose filter is None).
        #[inline]
        #[target_feature(enable = "avx2")]
        fn reconstruct(&self, raw: __m256i, a: __m256i, b: __m256i, c: __m256i) -> __m256i {
            let to_b = _mm256_sub_epi16(b, c);
            let to_a = _mm256_sub_epi16(a, c);
            let dist_c = _mm256_abs_epi16(_mm256_add_epi16(to_b, to_a));
            let (dist_a, dist_b) = (_mm256_abs_epi16(to_b), _mm256_abs_epi16(to_a));
            let nearest = _mm256_min_epi16(dist_c, _mm256_min_epi16(dist_a, dist_b));
            let b_or_c = _mm256_blendv_epi8(c, b, _mm256_cmpeq_epi16(nearest, dist_b));
            let paeth = _mm256_blendv_epi8(b_or_c, a, _mm256_cmpeq_epi16(nearest, dist_a));
            let average = _mm256_srli_epi16::<1>(_mm256_add_epi16(a, b));
            let predicted = _mm256_or_si256(
                _mm256_or_si256(_mm256_and_si256(self.sub, a), _mm256_and_si256(self.up, b)),
                _mm256_or_si256(
                    _mm256_and_si256(self.average, average),
                    _mm256_and_si256(self.paeth, paeth),
                ),
            );
            // Lanes hold 0..=255 with a zero upper byte: an 8-bit add wraps as PNG says.
            _mm256_add_epi8(raw, predicted)
        }
    }

    /// Undoes the filters `kinds` (each 0..=4) of the [`ROWS_AT_ONCE`] rows in `rows`
    /// (each `stride` bytes: the filter byte, then the samples) in place; `up` is the
    /// reconstructed row above the first.
    #[target_feature(enable = "avx2")]
    pub(super) fn rows<const BPP: usize>(
        kinds: [u8; ROWS_AT_ONCE],
        rows: &mut [u8],
        stride: usize,
        up: &[u8],
    ) {
        let pixels = (stride - 1) / BPP;
        let predictors = [
            Predictors::of::<BPP>(&kinds[..LANES]),
            Predictors::of::<BPP>(&kinds[LANES..]),
        ];
        let zero = _mm256_setzero_si256();
        // Per register: the last outputs (each row's left neighbour) and the upper neighbours
        // used last step (this step's upper-left ones).
        let (mut left, mut upper) = ([zero; 2], [zero; 2]);
        for step in 0..pixels + ROWS_AT_ONCE - 1 {
            // Row r works on pixel `step - r` when that is in 0..pixels.
            let at = |r: usize| {
                step.checked_sub(r)
                    .filter(|&x| x < pixels)
                    .map(|x| r * stride + 1 + x * BPP)
            };
            let edge = step < ROWS_AT_ONCE - 1 || step >= pixels;
            let above = if step < pixels {
                word::<BPP>(up, step * BPP)
            } else {
                0
            };
            let upper_left = upper;
            upper = [
                shift_in(left[0], widen([0, 0, 0, above])),
                shift_in(left[1], left[0]),
            ];
            if !edge {
                // Every row is inside the image: row r at pixel `step - r`. Whole 4-byte
                // words are loaded and stored (for RGB the fourth byte goes back unchanged,
                // see `Predictors::of`); none reaches past the group (`step - r` stops
                // short of row 7's last pixel here).
                for (g, predictors) in predictors.iter().enumerate() {
                    let at: [usize; LANES] = std::array::from_fn(|l| {
                        let r = g * LANES + l;
                        r * stride + 1 + (step - r) * BPP
                    });
                    let words = at.map(|at| word::<4>(rows, at));
                    let out =
                        predictors.reconstruct(widen(words), left[g], upper[g], upper_left[g]);
                    left[g] = out;
                    for (at, result) in at.into_iter().zip(words_of(out)) {
                        rows[at..at + 4].copy_from_slice(&result.to_le_bytes());
                    }
                }
                continue;
            }
            // The first and last steps: rows outside the image are skipped, and exactly `BPP`
            // bytes are read and written (the group's last pixel ends the slice).
            for g in 0..2 {
                let mut words = [0i32; LANES];
                for (l, w) in words.iter_mut().enumerate() {
                    if let Some(at) = at(g * LANES + l) {
                        *w = word::<BPP>(rows, at);
                    }
                }
                let out = predictors[g].reconstruct(widen(words), left[g], upper[g], upper_left[g]);
                // Rows not started (or done) stay zero: a row's left and upper-left neighbours
                // before its first pixel are zero.
                let active = |l: usize| {
                    if at(g * LANES + l).is_some() {
                        -1i64
                    } else {
                        0
                    }
                };
                let mask = _mm256_set_epi64x(active(3), active(2), active(1), active(0));
                let out = _mm256_and_si256(out, mask);
                left[g] = out;
                for (l, result) in words_of(out).into_iter().enumerate() {
                    if let Some(at) = at(g * LANES + l) {
                        rows[at..at + BPP].copy_from_slice(&result.to_le_bytes()[..BPP]);
                    }
                }
            }
        }
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
    fn rows_done_in_groups_equal_rows_done_one_by_one() {
        // Random bytes, half of them drawn from a few values so that ties and the extremes
        // come up often.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let byte = (state >> 24) as u8;
            match state & 1 {
                0 => [0, 1, 2, 127, 128, 254, 255, 255][usize::from(byte & 7)],
                _ => byte,
            }
        };
        let mut grouped = 0;
        for bpp in 1..=4 {
            // Groups of rows with every pair of filters, and a tail of rows done one by one.
            let groups = (0..=4u8).flat_map(|k| (0..=4u8).map(move |l| [k, l]));
            for kinds in groups.map(|[k, l]| [k, l, (k + l) % 5, 4 - k, l, k, 2, l, 4 - l, k]) {
                for pixels in [1, 2, 7, 8, 9, 451] {
                    let row_len = bpp * pixels;
                    let stride = row_len + 1;
                    let up: Vec<u8> = (0..row_len).map(|_| next()).collect();
                    let mut rows = Vec::new();
                    for kind in kinds {
                        rows.push(kind);
                        rows.extend((0..row_len).map(|_| next()));
                    }
                    // One by one, with the scalar code.
                    let mut expected = rows.clone();
                    let mut above = up.clone();
                    for row in expected.chunks_exact_mut(stride) {
                        let kind = row[0];
                        let samples = &mut row[1..];
                        match bpp {
                            1 => unfilter_bpp::<1>(kind, samples, &above),
                            2 => unfilter_bpp::<2>(kind, samples, &above),
                            3 => unfilter_bpp::<3>(kind, samples, &above),
                            _ => unfilter_bpp::<4>(kind, samples, &above),
                        }
                        .unwrap();
                        above = samples.to_vec();
                    }
                    // Each group code on the first group, where this CPU has it.
                    #[cfg(target_arch = "x86_64")]
                    if bpp >= 3 {
                        let group = ROWS_AT_ONCE * stride;
                        let kinds: [u8; ROWS_AT_ONCE] = std::array::from_fn(|r| kinds[r]);
                        for code in [GroupCode::Sse2, GroupCode::Avx2] {
                            if code == GroupCode::Avx2 && !is_x86_feature_detected!("avx2") {
                                continue;
                            }
                            let mut rows = rows[..group].to_vec();
                            unfilter_group(kinds, &mut rows, stride, &up, bpp, code);
                            assert_eq!(rows, expected[..group], "{code:?}, filters {kinds:?}");
                        }
                    }
                    // As the decoder does it.
                    let mut y = 0;
                    while y < kinds.len() {
                        let (done, rest) = rows.split_at_mut(y * stride);
                        let above = match y {
                            0 => &up[..],
                            _ => &done[done.len() - row_len..],
                        };
                        let n = unfilter_next_rows(rest, stride, above, bpp).unwrap();
                        grouped += usize::from(n > 1);
                        y += n;
                    }
                    assert_eq!(rows, expected, "filters {kinds:?}, {bpp} bytes per pixel");
                }
            }
        }
        if cfg!(target_arch = "x86_64") {
            assert!(grouped > 0, "the grouped path never ran");
        }
    }

    #[test]
    fn an_unknown_filter_is_refused_in_any_row_of_a_group() {
        // Ten Paeth rows of two RGB pixels, one of them with a bad filter byte: the decoder's
        // loop stops with the error wherever the bad row sits (inside a group or after it).
        let (stride, rows) = (7, 10);
        for bad in 0..rows {
            let mut data: Vec<u8> = (0..stride * rows).map(|i| i as u8).collect();
            for r in 0..rows {
                data[r * stride] = if r == bad { 5 } else { 4 };
            }
            let up = [0u8; 6];
            let mut y = 0;
            let outcome = loop {
                let (done, rest) = data.split_at_mut(y * stride);
                let above = match y {
                    0 => &up[..],
                    _ => &done[done.len() - 6..],
                };
                match unfilter_next_rows(rest, stride, above, 3) {
                    Ok(n) if y + n < rows => y += n,
                    other => break other,
                }
            };
            assert_eq!(
                outcome,
                Err(Unsupported("unknown row filter")),
                "bad row {bad}"
            );
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
