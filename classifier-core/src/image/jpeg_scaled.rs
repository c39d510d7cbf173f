//! Reduced-size decoding of baseline JPEGs in the DCT domain (libjpeg's `scale_denom`,
//! Pillow's `draft()`).
//!
//! A JPEG stores each 8x8 block as DCT coefficients. Running an `N`-point inverse DCT on the
//! block's `N`x`N` lowest frequencies gives the block at `N/8` of its size, so an image can be
//! decoded at 1/2, 1/4 or 1/8 scale without reconstructing the full-resolution pixels. The
//! entropy (Huffman) decoding still reads every coefficient, but the IDCT, upsampling and
//! color conversion work shrinks by the square of the scale.
//!
//! Chroma planes that are subsampled (4:2:0, 4:2:2, 4:4:0) are decoded with a correspondingly
//! larger IDCT (libjpeg 7+'s "DCT scaling" of components), so every plane comes out at the same
//! resolution and no upsampling pass is needed.
//!
//! Scope: baseline and extended sequential Huffman JPEGs with 8-bit samples, one (grayscale) or
//! three (YCbCr) components in a single interleaved scan, sampling ratios of 1 or 2. Anything
//! else (progressive, arithmetic coding, 12-bit, CMYK, RGB-transformed, multi-scan) is reported
//! as [`ScaledError::Unsupported`] so that the caller can decode it at full size instead.
//!
//! Every read is bounds-checked; corrupt data gives [`ScaledError::Corrupt`], never a panic.
//!
//! A large scan is decoded by two threads ([`split`]), with the same result.

mod split;

/// A decoded image at reduced size: 8-bit gray (1 channel) or RGB (3 channels), row-major.
#[derive(Debug, Clone)]
pub(crate) struct Scaled {
    /// Width in pixels: `ceil(full_width / denom)`.
    pub width: u32,
    /// Height in pixels: `ceil(full_height / denom)`.
    pub height: u32,
    /// 1 (gray) or 3 (RGB).
    pub channels: u8,
    /// `width * height * channels` samples.
    pub pixels: Vec<u8>,
}

/// Why a JPEG was not decoded at reduced size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScaledError {
    /// A valid JPEG this decoder does not handle (decode it at full size instead).
    Unsupported(&'static str),
    /// Malformed or truncated data.
    Corrupt(&'static str),
    /// The decode would allocate more than the allowed number of bytes.
    Limit,
}

type Res<T> = std::result::Result<T, ScaledError>;

fn corrupt<T>(reason: &'static str) -> Res<T> {
    Err(ScaledError::Corrupt(reason))
}

/// Zigzag index -> natural (row-major) index.
const UN_ZIGZAG: [u8; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
];

/// Bits looked up at once in the Huffman tables.
const FAST_BITS: u32 = 10;

/// A Huffman table with a `FAST_BITS` lookup for short codes and libjpeg's `maxcode`/`valptr`
/// search for longer ones.
#[derive(Clone)]
struct Huffman {
    /// `fast[peek]`: `length << 8 | symbol` for codes of at most `FAST_BITS` bits, 0 otherwise.
    fast: Box<[u16; 1 << FAST_BITS]>,
    /// For AC tables: `fast[peek]` with the magnitude bits decoded too, when code and magnitude
    /// fit in `FAST_BITS`: `value << 16 | advance << 8 | total_length` (`advance` = run + 1,
    /// 16 for ZRL, [`EOB`] for end of block). 0 if not decodable this way.
    ac_fast: Box<[u32; 1 << FAST_BITS]>,
    /// For AC tables: `skip[peek]` for skipping as many whole codes (with their magnitude
    /// bits) as fit in `SKIP_BITS` bits: `eob << 15 | advance << 5 | total_length`, where
    /// `advance` is the number of coefficient positions covered and `eob` says the last code
    /// is an end of block. 0 if not even one code fits.
    skip: Box<[u16; 1 << SKIP_BITS]>,
    /// Largest code of each length (index 1..=16), -1 if none; index 17 is a sentinel.
    maxcode: [i32; 18],
    /// `values[valoffset[l] + code]` is the symbol of code `code` of length `l`.
    valoffset: [i32; 17],
    values: Vec<u8>,
}

const EOB: u32 = 0xFF;

/// Bits looked up at once when skipping AC codes.
const SKIP_BITS: u32 = 12;

impl Huffman {
    fn new(counts: &[u8; 16], values: &[u8], ac: bool) -> Res<Huffman> {
        let mut fast = Box::new([0u16; 1 << FAST_BITS]);
        let mut maxcode = [-1i32; 18];
        let mut valoffset = [0i32; 17];
        let mut code: u32 = 0;
        let mut k = 0usize;
        for len in 1..=16u32 {
            let n = u32::from(counts[len as usize - 1]);
            if n > 0 {
                valoffset[len as usize] = k as i32 - code as i32;
                for _ in 0..n {
                    if code >= (1 << len) {
                        return corrupt("bad Huffman table (code overflow)");
                    }
                    if len <= FAST_BITS {
                        let shift = FAST_BITS - len;
                        let first = (code << shift) as usize;
                        for e in &mut fast[first..first + (1 << shift)] {
                            *e = (len << 8) as u16 | u16::from(values[k]);
                        }
                    }
                    code += 1;
                    k += 1;
                }
                maxcode[len as usize] = code as i32 - 1;
            }
            code <<= 1;
        }
        maxcode[17] = i32::MAX;
        let mut ac_fast = Box::new([0u32; 1 << FAST_BITS]);
        if ac {
            for (peek, e) in fast.iter().enumerate() {
                let (len, symbol) = (u32::from(e >> 8), u32::from(e & 0xFF));
                if len == 0 {
                    continue;
                }
                let (run, size) = (symbol >> 4, symbol & 15);
                let entry = if size == 0 {
                    let advance = if run == 15 { 16 } else { EOB };
                    // Only EOB (0x00) and ZRL (0xF0) are valid; leave others to the slow path.
                    if run != 15 && run != 0 {
                        continue;
                    }
                    advance << 8 | len
                } else if len + size <= FAST_BITS {
                    let bits = (peek as u32 >> (FAST_BITS - len - size)) & ((1 << size) - 1);
                    let value = extend(bits, size);
                    (value as u32) << 16 | (run + 1) << 8 | (len + size)
                } else {
                    continue;
                };
                ac_fast[peek] = entry;
            }
        }
        let mut table = Huffman {
            fast,
            ac_fast,
            skip: Box::new([0u16; 1 << SKIP_BITS]),
            maxcode,
            valoffset,
            values: values.to_vec(),
        };
        if ac {
            table.fill_skip();
        }
        Ok(table)
    }

    /// The code at the start of `peek16` (the next 16 bits): `(length, symbol)`.
    fn code_at(&self, peek16: u32) -> Option<(u32, u32)> {
        let e = self.fast[(peek16 >> (16 - FAST_BITS)) as usize];
        if e != 0 {
            Some((u32::from(e >> 8), u32::from(e & 0xFF)))
        } else {
            slow_symbol(self, peek16)
        }
    }

    /// Fill `skip`: for every `SKIP_BITS`-bit pattern, the whole AC codes (with their
    /// magnitude bits) it starts with.
    fn fill_skip(&mut self) {
        for peek in 0..1u32 << SKIP_BITS {
            let (mut pos, mut advance, mut eob) = (0u32, 0u32, 0u32);
            while pos < SKIP_BITS {
                // The pattern's bits from `pos` on, as 16 bits (zeros past the pattern).
                let rest = (peek << (16 - SKIP_BITS) << pos) & 0xFFFF;
                let Some((len, symbol)) = self.code_at(rest) else {
                    break;
                };
                let (run, size) = (symbol >> 4, symbol & 15);
                if pos + len + size > SKIP_BITS || (size == 0 && run != 0 && run != 15) {
                    break;
                }
                if symbol == 0 {
                    pos += len;
                    eob = 1;
                    break;
                }
                let a = if size == 0 { 16 } else { run + 1 };
                // Past 64 positions the block is over (or corrupt): leave it to the slow path.
                if advance + a > 64 {
                    break;
                }
                pos += len + size;
                advance += a;
            }
            if pos > 0 {
                self.skip[peek as usize] = (eob << 15 | advance << 5 | pos) as u16;
            }
        }
    }
}

/// Decode a code longer than `FAST_BITS` from the next 16 bits: `(length, symbol)`.
#[cold]
#[inline(never)]
fn slow_symbol(table: &Huffman, peek16: u32) -> Option<(u32, u32)> {
    let peek16 = peek16 as i32;
    for len in FAST_BITS as usize + 1..=16 {
        let code = peek16 >> (16 - len);
        if code <= table.maxcode[len] {
            let index = (table.valoffset[len] + code) as usize;
            return table.values.get(index).map(|&v| (len as u32, u32::from(v)));
        }
    }
    None
}

/// JPEG's sign extension of a `size`-bit magnitude.
#[inline(always)]
fn extend(bits: u32, size: u32) -> i32 {
    if size == 0 {
        0
    } else if bits < (1 << (size - 1)) {
        bits as i32 - (1 << size) + 1
    } else {
        bits as i32
    }
}

/// Big-endian bit reader over unstuffed entropy-coded data.
///
/// The data must end with [`PADDING`] zero bytes. Reading past the real data yields zero
/// bits (callers check [`consumed_bits`](Self::consumed_bits) against the real length). A
/// small `Copy` value that the hot loops keep in registers: no function takes its address.
#[derive(Clone, Copy)]
struct Bits {
    /// Valid bits, left-aligned.
    acc: u64,
    /// Number of valid bits in `acc`.
    n: u32,
    /// Bytes loaded so far (may run past the data; loads are clamped to the padding).
    pos: usize,
}

/// Zero bytes appended to the entropy-coded data.
const PADDING: usize = 8;

impl Bits {
    fn new(data: &[u8], pos: usize) -> Self {
        let mut bits = Bits { acc: 0, n: 0, pos };
        bits.refill(data);
        bits
    }

    /// Make at least 56 bits available.
    #[inline(always)]
    fn refill(&mut self, data: &[u8]) {
        // Past the end, load from the zero padding.
        let at = self.pos.min(data.len().saturating_sub(PADDING));
        let word = match data.get(at..at + 8) {
            Some(chunk) => u64::from_be_bytes(chunk.try_into().unwrap_or([0; 8])),
            None => 0,
        };
        self.acc |= word >> self.n;
        let bytes = (63 - self.n) >> 3;
        self.pos += bytes as usize;
        self.n += bytes * 8;
    }

    #[inline(always)]
    fn peek(&self, bits: u32) -> u32 {
        (self.acc >> (64 - bits)) as u32
    }

    #[inline(always)]
    fn consume(&mut self, bits: u32) {
        self.acc <<= bits;
        self.n -= bits;
    }

    /// Read `size` (0..=15) bits as a JPEG signed magnitude. Needs `size` bits available.
    #[inline(always)]
    fn receive_extend(&mut self, size: u32) -> i32 {
        if size == 0 {
            return 0;
        }
        let bits = self.peek(size);
        self.consume(size);
        extend(bits, size)
    }

    /// Decode one Huffman symbol. Needs 16 bits available.
    #[inline(always)]
    fn symbol(&mut self, table: &Huffman) -> Result<u32, &'static str> {
        let e = table.fast[self.peek(FAST_BITS) as usize];
        let (len, symbol) = if e != 0 {
            (u32::from(e >> 8), u32::from(e & 0xFF))
        } else {
            slow_symbol(table, self.peek(16)).ok_or("bad Huffman code")?
        };
        self.consume(len);
        Ok(symbol)
    }

    /// Bits consumed so far (counting from the start of the data).
    fn consumed_bits(&self) -> usize {
        self.pos * 8 - self.n as usize
    }
}

#[derive(Debug, Clone, Copy)]
struct Component {
    id: u8,
    h: usize,
    v: usize,
    tq: usize,
    td: usize,
    ta: usize,
}

struct Header {
    width: usize,
    height: usize,
    components: Vec<Component>,
    qt: [Option<[u16; 64]>; 4],
    dc: [Option<Huffman>; 4],
    ac: [Option<Huffman>; 4],
    restart_interval: usize,
    adobe_transform: Option<u8>,
    /// Offset of the first byte of entropy-coded data.
    scan_start: usize,
}

/// Read a big-endian u16 at `pos`.
fn be16(bytes: &[u8], pos: usize) -> Res<usize> {
    match bytes.get(pos..pos + 2) {
        Some(b) => Ok(usize::from(u16::from_be_bytes([b[0], b[1]]))),
        None => corrupt("truncated marker segment"),
    }
}

/// The marker at `pos` (after any number of 0xFF fill bytes); `pos` moves past it.
/// `at_end` says what is missing if the file ends first.
fn next_marker(bytes: &[u8], pos: &mut usize, at_end: &'static str) -> Res<u8> {
    match bytes.get(*pos) {
        Some(0xFF) => *pos += 1,
        Some(_) => return corrupt("expected a marker"),
        None => return corrupt(at_end),
    }
    while bytes.get(*pos) == Some(&0xFF) {
        *pos += 1;
    }
    let Some(&marker) = bytes.get(*pos) else {
        return corrupt(at_end);
    };
    *pos += 1;
    Ok(marker)
}

/// The payload of the marker segment whose length field is at `pos`, and that length
/// (which counts the length field itself).
fn marker_segment(bytes: &[u8], pos: usize) -> Res<(&[u8], usize)> {
    let len = be16(bytes, pos)?;
    if len < 2 {
        return corrupt("bad marker segment length");
    }
    match bytes.get(pos + 2..pos + len) {
        Some(segment) => Ok((segment, len)),
        None => corrupt("truncated marker segment"),
    }
}

fn parse_header(bytes: &[u8]) -> Res<Header> {
    if bytes.get(0..2) != Some(&[0xFF, 0xD8]) {
        return corrupt("no start-of-image marker");
    }
    let mut h = Header {
        width: 0,
        height: 0,
        components: Vec::new(),
        qt: [None; 4],
        dc: [None, None, None, None],
        ac: [None, None, None, None],
        restart_interval: 0,
        adobe_transform: None,
        scan_start: 0,
    };
    let mut pos = 2;
    loop {
        let marker = next_marker(bytes, &mut pos, "no scan before the end of the file")?;
        if matches!(marker, 0x01 | 0xD0..=0xD7) {
            continue; // standalone markers
        }
        if marker == 0xD9 {
            return corrupt("end of image before any scan");
        }
        let (segment, len) = marker_segment(bytes, pos)?;
        match marker {
            0xC0 | 0xC1 => parse_sof(segment, &mut h)?,
            0xC2 | 0xC6 | 0xCA | 0xCE => return Err(ScaledError::Unsupported("progressive")),
            0xC3 | 0xC5 | 0xC7 | 0xCB | 0xCF => return Err(ScaledError::Unsupported("lossless")),
            0xC9 | 0xCD | 0xCC => return Err(ScaledError::Unsupported("arithmetic coding")),
            0xC4 => parse_dht(segment, &mut h)?,
            0xDB => parse_dqt(segment, &mut h)?,
            0xDD => {
                h.restart_interval = be16(segment, 0)?;
            }
            0xEE if segment.len() >= 12 && segment.starts_with(b"Adobe") => {
                h.adobe_transform = Some(segment[11]);
            }
            0xDA => {
                parse_sos(segment, &mut h)?;
                h.scan_start = pos + len;
                return Ok(h);
            }
            _ => {} // APPn, COM, DNL, ...: skipped
        }
        pos += len;
    }
}

fn parse_sof(s: &[u8], h: &mut Header) -> Res<()> {
    if !h.components.is_empty() {
        return corrupt("more than one frame header");
    }
    if s.len() < 6 {
        return corrupt("short frame header");
    }
    if s[0] != 8 {
        return Err(ScaledError::Unsupported("not 8-bit"));
    }
    h.height = be16(s, 1)?;
    h.width = be16(s, 3)?;
    let n = usize::from(s[5]);
    if h.width == 0 || h.height == 0 {
        return Err(ScaledError::Unsupported(
            "zero or deferred (DNL) dimensions",
        ));
    }
    if n != 1 && n != 3 {
        return Err(ScaledError::Unsupported("not 1 or 3 components"));
    }
    if s.len() < 6 + 3 * n {
        return corrupt("short frame header");
    }
    for i in 0..n {
        let c = &s[6 + 3 * i..9 + 3 * i];
        let (hs, vs) = (usize::from(c[1] >> 4), usize::from(c[1] & 15));
        if !(1..=4).contains(&hs) || !(1..=4).contains(&vs) || c[2] > 3 {
            return corrupt("bad component in the frame header");
        }
        h.components.push(Component {
            id: c[0],
            h: hs,
            v: vs,
            tq: usize::from(c[2]),
            td: 0,
            ta: 0,
        });
    }
    Ok(())
}

fn parse_dht(mut s: &[u8], h: &mut Header) -> Res<()> {
    while !s.is_empty() {
        if s.len() < 17 {
            return corrupt("short Huffman table");
        }
        let (class, id) = (s[0] >> 4, usize::from(s[0] & 15));
        if class > 1 || id > 3 {
            return corrupt("bad Huffman table id");
        }
        let mut counts = [0u8; 16];
        counts.copy_from_slice(&s[1..17]);
        let total: usize = counts.iter().map(|&c| usize::from(c)).sum();
        if total > 256 || s.len() < 17 + total {
            return corrupt("bad Huffman table size");
        }
        let table = Huffman::new(&counts, &s[17..17 + total], class == 1)?;
        if class == 0 {
            h.dc[id] = Some(table);
        } else {
            h.ac[id] = Some(table);
        }
        s = &s[17 + total..];
    }
    Ok(())
}

fn parse_dqt(mut s: &[u8], h: &mut Header) -> Res<()> {
    while !s.is_empty() {
        let (precision, id) = (s[0] >> 4, usize::from(s[0] & 15));
        if precision > 1 || id > 3 {
            return corrupt("bad quantization table id");
        }
        let size = if precision == 0 { 64 } else { 128 };
        let Some(values) = s.get(1..1 + size) else {
            return corrupt("short quantization table");
        };
        // Stored in zigzag order, kept that way (the decoder works in zigzag order).
        let mut table = [0u16; 64];
        for (k, q) in table.iter_mut().enumerate() {
            *q = if precision == 0 {
                u16::from(values[k])
            } else {
                u16::from_be_bytes([values[2 * k], values[2 * k + 1]])
            };
        }
        h.qt[id] = Some(table);
        s = &s[1 + size..];
    }
    Ok(())
}

fn parse_sos(s: &[u8], h: &mut Header) -> Res<()> {
    if h.components.is_empty() {
        return corrupt("scan before the frame header");
    }
    let n = usize::from(*s.first().unwrap_or(&0));
    if s.len() < 1 + 2 * n + 3 {
        return corrupt("short scan header");
    }
    if n != h.components.len() {
        return Err(ScaledError::Unsupported("non-interleaved scans"));
    }
    for i in 0..n {
        let (id, tables) = (s[1 + 2 * i], s[2 + 2 * i]);
        let Some(c) = h.components.get_mut(i) else {
            return corrupt("bad scan header");
        };
        if c.id != id {
            return Err(ScaledError::Unsupported(
                "scan components out of frame order",
            ));
        }
        c.td = usize::from(tables >> 4);
        c.ta = usize::from(tables & 15);
        if c.td > 3 || c.ta > 3 {
            return corrupt("bad Huffman table id in the scan header");
        }
    }
    let (ss, se, a) = (s[1 + 2 * n], s[2 + 2 * n], s[3 + 2 * n]);
    if ss != 0 || se != 63 || a != 0 {
        return corrupt("bad spectral selection for a sequential scan");
    }
    Ok(())
}

/// Copy the entropy-coded data of the scan starting at `start` without its byte stuffing.
///
/// Returns the data and, for each RST marker met, the offset in the data where the next
/// restart interval begins. Stops at the first other marker (or the end of the file) and
/// returns its position.
fn unstuff(bytes: &[u8], start: usize, out: &mut Vec<u8>, restarts: &mut Vec<usize>) -> usize {
    let mut pos = start;
    loop {
        let rest = bytes.get(pos..).unwrap_or(&[]);
        let run = find_ff(rest);
        out.extend_from_slice(&rest[..run]);
        pos += run;
        // bytes[pos] is 0xFF (or the end).
        let Some(&next) = bytes.get(pos + 1) else {
            return pos;
        };
        match next {
            0x00 => {
                out.push(0xFF);
                pos += 2;
            }
            0xFF => pos += 1, // fill byte
            0xD0..=0xD7 => {
                restarts.push(out.len());
                pos += 2;
            }
            _ => return pos,
        }
    }
}

/// Checks what follows the scan's entropy-coded data, from `pos`: only well-formed table,
/// restart-interval, application and comment segments, then the end-of-image marker.
///
/// The full-size decoder reads these too and refuses a file whose trailing segments are cut
/// or which holds a second frame or scan, so the reduced decoder must not accept such a file
/// either: a truncated segment is an error, and anything that would carry more image data is
/// left to the full-size decoder.
fn check_trailer(bytes: &[u8], mut pos: usize) -> Res<()> {
    loop {
        match next_marker(bytes, &mut pos, "no end-of-image marker after the scan")? {
            0xD9 => return Ok(()),
            0x01 | 0xD0..=0xD7 => continue,
            0xC4 | 0xDB | 0xDC | 0xDD | 0xE0..=0xEF | 0xFE => pos += marker_segment(bytes, pos)?.1,
            _ => return Err(ScaledError::Unsupported("more than one scan or frame")),
        }
    }
}

/// Index of the first 0xFF byte in `bytes`, or its length.
fn find_ff(bytes: &[u8]) -> usize {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let mut i = 0;
    while let Some(chunk) = bytes.get(i..i + 8) {
        let x = !u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
        if (x.wrapping_sub(LO) & !x & HI) != 0 {
            break;
        }
        i += 8;
    }
    while i < bytes.len() && bytes[i] != 0xFF {
        i += 1;
    }
    i
}

/// `matrix[x][u]` for a reduced IDCT to `n` outputs per 8 inputs along one axis: the mean of
/// the 8-point IDCT basis function `u` over the `8 / n` full-size pixels that output `x`
/// covers (`C(u) / 2 * cos((2i + 1) u pi / 16)` averaged), for the `n` lowest frequencies.
///
/// With `n = 8` this is the ordinary IDCT; with fewer outputs each output is the box average
/// of the full-size pixels it replaces, minus the (small) contribution of the frequencies
/// above `n`, which the reduced decode does not read.
fn idct_matrix(n: usize) -> [[f32; 8]; 8] {
    let mut m = [[0f32; 8]; 8];
    let s = 8 / n;
    for (x, row) in m.iter_mut().enumerate().take(n) {
        for (u, v) in row.iter_mut().enumerate().take(n) {
            let c = if u == 0 {
                std::f64::consts::FRAC_1_SQRT_2
            } else {
                1.0
            };
            let mean = (0..s)
                .map(|j| {
                    let i = (x * s + j) as f64;
                    ((2.0 * i + 1.0) * u as f64 * std::f64::consts::PI / 16.0).cos()
                })
                .sum::<f64>()
                / s as f64;
            *v = (c / 2.0 * mean) as f32;
        }
    }
    m
}

/// Inverse DCT of a block's `BH` x `BW` lowest frequencies (`coef[v * BW + u]`, dequantized)
/// into `BW` x `BH` pixels of `out` (row stride `stride`), level-shifted and clamped.
///
/// `mwt[u][x]` and `mh[y][v]` come from [`idct_matrix`] (the first transposed), so both passes
/// are sums of `BW`-wide row vectors, which the compiler vectorizes.
#[inline(always)]
fn idct_block<const BW: usize, const BH: usize>(
    coef: &[i32],
    mwt: &[[f32; 8]; 8],
    mh: &[[f32; 8]; 8],
    out: &mut [u8],
    stride: usize,
) {
    let Some(coef) = coef.get(..BW * BH) else {
        return;
    };
    // tmp[v] = sum_u coef[v][u] * mwt[u]
    let mut tmp = [[0f32; BW]; BH];
    // High vertical frequencies are often all zero: skip those rows in both passes.
    let mut rows = 0;
    for (v, (trow, crow)) in tmp.iter_mut().zip(coef.chunks_exact(BW)).enumerate() {
        if crow.iter().all(|&c| c == 0) {
            continue;
        }
        rows = v + 1;
        for (u, &c) in crow.iter().enumerate() {
            let c = c as f32;
            for x in 0..BW {
                trow[x] += c * mwt[u][x];
            }
        }
    }
    for (y, mrow) in mh.iter().enumerate().take(BH) {
        // Rounded and clamped with the 1.5 * 2^23 trick: in [MAGIC, MAGIC + 255] the low
        // mantissa bits of an f32 are the integer itself (round to nearest), which vectorizes
        // where a saturating float-to-int cast does not.
        let mut acc = [128.0f32; BW];
        for (&m, trow) in mrow.iter().zip(&tmp).take(rows) {
            for x in 0..BW {
                acc[x] += m * trow[x];
            }
        }
        let Some(line) = out.get_mut(y * stride..y * stride + BW) else {
            return;
        };
        for (o, a) in line.iter_mut().zip(acc) {
            *o = (a + MAGIC).clamp(MAGIC, MAGIC + 255.0).to_bits() as u8;
        }
    }
}

/// The 4x4 reduced IDCT (1/2 scale, the common case) with the 4-point butterfly: the same
/// result as `idct_block::<4, 4>` up to float rounding, in about half the operations.
/// `scale[v][u]` is `idct_matrix(4)[0][v] * idct_matrix(4)[0][u]` divided by the butterfly's
/// cosines (see [`butterfly_scale`]).
#[inline(always)]
fn idct_4x4(coef: &[i32], scale: &[[f32; 4]; 4], out: &mut [u8], stride: usize) {
    let Some(coef) = coef.get(..16) else {
        return;
    };
    let mut r = [[0f32; 4]; 4];
    for ((row, crow), srow) in r.iter_mut().zip(coef.chunks_exact(4)).zip(scale) {
        for ((v, &c), &s) in row.iter_mut().zip(crow).zip(srow) {
            *v = c as f32 * s;
        }
    }
    // Rows of `t` are output rows y, lanes the horizontal frequencies u; then the same
    // butterfly on the transpose gives rows x, lanes y.
    let t = butterfly4(&r);
    let o = transpose4(&butterfly4(&transpose4(&t)));
    for (y, row) in o.iter().enumerate() {
        let px: [u8; 4] = std::array::from_fn(|x| {
            (row[x] + (128.0 + MAGIC))
                .clamp(MAGIC, MAGIC + 255.0)
                .to_bits() as u8
        });
        if let Some(line) = out.get_mut(y * stride..y * stride + 4) {
            line.copy_from_slice(&px);
        }
    }
}

/// 4-point inverse DCT along the first index, for 4 lanes at once:
/// `out[x][i] = sum_u r[u][i] * cos((2x + 1) u pi / 8)`.
#[inline(always)]
fn butterfly4(r: &[[f32; 4]; 4]) -> [[f32; 4]; 4] {
    const K: f32 = std::f32::consts::FRAC_1_SQRT_2; // cos(2 pi / 8)
    const C1: f32 = 0.923_879_5; // cos(pi / 8)
    const C3: f32 = 0.382_683_43; // cos(3 pi / 8)
                                  // Whole-row operations (each a 4-lane vector op once compiled).
    let lanes = |f: &dyn Fn(usize) -> f32| -> [f32; 4] { [f(0), f(1), f(2), f(3)] };
    let e0 = lanes(&|i| r[0][i] + K * r[2][i]);
    let e1 = lanes(&|i| r[0][i] - K * r[2][i]);
    let o0 = lanes(&|i| C1 * r[1][i] + C3 * r[3][i]);
    let o1 = lanes(&|i| C3 * r[1][i] - C1 * r[3][i]);
    [
        lanes(&|i| e0[i] + o0[i]),
        lanes(&|i| e1[i] + o1[i]),
        lanes(&|i| e1[i] - o1[i]),
        lanes(&|i| e0[i] - o0[i]),
    ]
}

fn transpose4(m: &[[f32; 4]; 4]) -> [[f32; 4]; 4] {
    std::array::from_fn(|j| std::array::from_fn(|i| m[i][j]))
}

/// [`idct_4x4`] of two horizontally adjacent blocks at once (`out` receives 8 pixels per
/// line), in 8-lane AVX vectors: block `a` in the low 128-bit half, `b` in the high one. Every
/// lane goes through exactly the operations of [`idct_4x4`] in the same order (separate
/// multiplies and adds, as Rust compiles the scalar code, no fused multiply-add), so the
/// pixels are identical.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn idct_4x4_pair_avx2(
    a: &[i32],
    b: &[i32],
    scale: &[[f32; 4]; 4],
    out: &mut [u8],
    stride: usize,
) {
    use std::arch::x86_64::*;
    let (Some(a), Some(b)) = (a.get(..16), b.get(..16)) else {
        return;
    };
    // r[v] = [a[v][0..4] | b[v][0..4]] * scale[v], as floats.
    let r: [__m256; 4] = std::array::from_fn(|v| {
        // SAFETY: a and b hold 16 values, v < 4 (unaligned loads of 4 i32 each).
        let (lo, hi) = unsafe {
            (
                _mm_loadu_si128(a.as_ptr().add(4 * v).cast()),
                _mm_loadu_si128(b.as_ptr().add(4 * v).cast()),
            )
        };
        let s = _mm_loadu_ps(scale[v].as_ptr());
        _mm256_mul_ps(
            _mm256_cvtepi32_ps(_mm256_set_m128i(hi, lo)),
            _mm256_set_m128(s, s),
        )
    });
    let butterfly = |r: [__m256; 4]| -> [__m256; 4] {
        let k = _mm256_set1_ps(std::f32::consts::FRAC_1_SQRT_2);
        let c1 = _mm256_set1_ps(0.923_879_5);
        let c3 = _mm256_set1_ps(0.382_683_43);
        let e0 = _mm256_add_ps(r[0], _mm256_mul_ps(k, r[2]));
        let e1 = _mm256_sub_ps(r[0], _mm256_mul_ps(k, r[2]));
        let o0 = _mm256_add_ps(_mm256_mul_ps(c1, r[1]), _mm256_mul_ps(c3, r[3]));
        let o1 = _mm256_sub_ps(_mm256_mul_ps(c3, r[1]), _mm256_mul_ps(c1, r[3]));
        [
            _mm256_add_ps(e0, o0),
            _mm256_add_ps(e1, o1),
            _mm256_sub_ps(e1, o1),
            _mm256_sub_ps(e0, o0),
        ]
    };
    // A 4x4 transpose within each 128-bit half (both blocks at once).
    let transpose = |m: [__m256; 4]| -> [__m256; 4] {
        let t0 = _mm256_unpacklo_ps(m[0], m[1]);
        let t1 = _mm256_unpackhi_ps(m[0], m[1]);
        let t2 = _mm256_unpacklo_ps(m[2], m[3]);
        let t3 = _mm256_unpackhi_ps(m[2], m[3]);
        [
            _mm256_shuffle_ps::<0x44>(t0, t2),
            _mm256_shuffle_ps::<0xEE>(t0, t2),
            _mm256_shuffle_ps::<0x44>(t1, t3),
            _mm256_shuffle_ps::<0xEE>(t1, t3),
        ]
    };
    let o = transpose(butterfly(transpose(butterfly(r))));
    // Round and clamp as idct_4x4 does; the pixel is the low byte of the float's bits.
    let (bias, low, high) = (
        _mm256_set1_ps(128.0 + MAGIC),
        _mm256_set1_ps(MAGIC),
        _mm256_set1_ps(MAGIC + 255.0),
    );
    let byte = _mm256_set1_epi32(0xFF);
    let px: [__m256i; 4] = std::array::from_fn(|y| {
        let v = _mm256_max_ps(_mm256_min_ps(_mm256_add_ps(o[y], bias), high), low);
        _mm256_and_si256(_mm256_castps_si256(v), byte)
    });
    // Per half: rows 0-3 of that block as 16 bytes (4 per row).
    let bytes = _mm256_packus_epi16(
        _mm256_packus_epi32(px[0], px[1]),
        _mm256_packus_epi32(px[2], px[3]),
    );
    let (lo, hi) = (
        _mm256_castsi256_si128(bytes),
        _mm256_extracti128_si256::<1>(bytes),
    );
    // Rows y: a's 4 bytes then b's 4 bytes.
    let rows01 = _mm_unpacklo_epi32(lo, hi);
    let rows23 = _mm_unpackhi_epi32(lo, hi);
    let lines = [
        _mm_cvtsi128_si64(rows01),
        _mm_extract_epi64::<1>(rows01),
        _mm_cvtsi128_si64(rows23),
        _mm_extract_epi64::<1>(rows23),
    ];
    for (y, line) in lines.into_iter().enumerate() {
        if let Some(dst) = out.get_mut(y * stride..y * stride + 8) {
            dst.copy_from_slice(&line.to_le_bytes());
        }
    }
}

/// Per-coefficient factors for [`idct_4x4`]: with `a[u] = matrix[0][u] / cos(u pi / 8)` (the
/// matrix of [`idct_matrix`]`(4)` is `a[u] * cos((2x + 1) u pi / 8)`), `a[v] * a[u]`.
fn butterfly_scale() -> [[f32; 4]; 4] {
    let m = idct_matrix(4);
    let a: [f32; 4] =
        std::array::from_fn(|u| m[0][u] / (u as f32 * std::f32::consts::PI / 8.0).cos());
    std::array::from_fn(|v| std::array::from_fn(|u| a[v] * a[u]))
}

/// 1.5 * 2^23: adding it to a float in (-2^22, 2^22) leaves the rounded integer in the low
/// mantissa bits.
const MAGIC: f32 = 12_582_912.0;

fn transpose(m: [[f32; 8]; 8]) -> [[f32; 8]; 8] {
    let mut t = [[0f32; 8]; 8];
    for (i, row) in m.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            t[j][i] = v;
        }
    }
    t
}

/// Per-component state of the scan decode.
#[derive(Clone)]
struct Comp<'h> {
    codes: BlockCodes<'h>,
    /// Blocks of this component per MCU, horizontally and vertically.
    h: usize,
    v: usize,
    /// Output pixels per block (`n * hmax / h`, `n * vmax / v`).
    bw: usize,
    bh: usize,
    pred: i32,
    /// Coefficients of one MCU row: `v` rows of `mcus_x * h` blocks of `bw * bh + 1` values.
    coefs: Vec<i32>,
    /// `idct_matrix(bw)` transposed, and `idct_matrix(bh)`.
    mwt: [[f32; 8]; 8],
    mh: [[f32; 8]; 8],
    /// [`butterfly_scale`], for 4x4 blocks.
    scale4: [[f32; 4]; 4],
    /// Pixels of one MCU row: `v * bh` rows of `mcus_x * h * bw` samples.
    pixels: Vec<u8>,
}

impl Comp<'_> {
    /// Values per block in `coefs` (the last one is the scratch slot).
    fn block_len(&self) -> usize {
        self.bw * self.bh + 1
    }
}

/// Decode `bytes` at `1/denom` scale (`denom` is 2, 4 or 8), allocating at most `max_alloc`
/// bytes for pixel and entropy buffers. A scan with at least `split_min_bytes` of
/// entropy-coded data is decoded on two threads ([`split`]) if the allocation limit allows.
pub(crate) fn decode(
    bytes: &[u8],
    denom: usize,
    max_alloc: u64,
    split_min_bytes: usize,
) -> Res<Scaled> {
    decode_reporting(bytes, denom, max_alloc, split_min_bytes).map(|(scaled, _)| scaled)
}

/// [`decode`], also telling from which MCU on a helper thread's decode was used
/// ([`split`]), if it was.
fn decode_reporting(
    bytes: &[u8],
    denom: usize,
    max_alloc: u64,
    split_min_bytes: usize,
) -> Res<(Scaled, Option<usize>)> {
    let n = match denom {
        2 => 4,
        4 => 2,
        8 => 1,
        _ => return Err(ScaledError::Unsupported("scale")),
    };
    let header = parse_header(bytes)?;
    let frame = &header.components;
    if frame.len() == 3 {
        if header.adobe_transform == Some(0) {
            return Err(ScaledError::Unsupported("RGB (Adobe transform 0)"));
        }
        if frame.iter().map(|c| c.id).eq(*b"RGB") {
            return Err(ScaledError::Unsupported("RGB component ids"));
        }
    }
    let single = frame.len() == 1;
    // A single-component scan is not interleaved: one block per MCU whatever the sampling.
    let sampling = |c: &Component| if single { (1, 1) } else { (c.h, c.v) };
    let hmax = frame.iter().map(|c| sampling(c).0).max().unwrap_or(1);
    let vmax = frame.iter().map(|c| sampling(c).1).max().unwrap_or(1);
    let mcus_x = header.width.div_ceil(8 * hmax);
    let mcus_y = header.height.div_ceil(8 * vmax);
    let out_w = header.width.div_ceil(denom);
    let out_h = header.height.div_ceil(denom);
    let channels = if single { 1 } else { 3 };
    let row_w = mcus_x * hmax * n; // pixels per plane row (padded)
    let row_h = vmax * n; // plane rows per MCU row
    let scan_len = bytes.len().saturating_sub(header.scan_start);
    // Output + entropy data + per component one MCU row of pixels and (i32) coefficients.
    let alloc = (out_w * out_h * channels) as u64
        + scan_len as u64
        + frame.len() as u64 * (row_w * row_h) as u64 * (1 + 4 * 2);
    if alloc > max_alloc {
        return Err(ScaledError::Limit);
    }

    let mut comps = Vec::with_capacity(frame.len());
    for c in frame {
        let (h, v) = sampling(c);
        if hmax % h != 0 || vmax % v != 0 {
            return Err(ScaledError::Unsupported("fractional sampling ratio"));
        }
        let (bw, bh) = (n * hmax / h, n * vmax / v);
        if !matches!((bw, bh), (1 | 2 | 4 | 8, 1 | 2 | 4 | 8)) || bw / bh > 2 || bh / bw > 2 {
            return Err(ScaledError::Unsupported(
                "sampling ratio too large for this scale",
            ));
        }
        let Some(qt) = header.qt[c.tq] else {
            return corrupt("missing quantization table");
        };
        let (Some(dc), Some(ac)) = (header.dc[c.td].as_ref(), header.ac[c.ta].as_ref()) else {
            return corrupt("missing Huffman table");
        };
        let mut slot = [(bw * bh) as u8; 64];
        let mut q = [0i32; 64];
        let mut kmax = 0;
        for k in 0..64 {
            let natural = usize::from(UN_ZIGZAG[k]);
            let (u, w) = (natural % 8, natural / 8);
            q[k] = i32::from(qt[k]);
            if u < bw && w < bh {
                slot[k] = (w * bw + u) as u8;
                kmax = k;
            }
        }
        let blocks = v * mcus_x * h;
        comps.push(Comp {
            codes: BlockCodes {
                dc,
                ac,
                slot,
                q,
                kmax,
            },
            h,
            v,
            bw,
            bh,
            pred: 0,
            coefs: vec![0; blocks * (bw * bh + 1)],
            mwt: transpose(idct_matrix(bw)),
            mh: idct_matrix(bh),
            scale4: butterfly_scale(),
            pixels: vec![0; row_w * row_h],
        });
    }

    let mut data = Vec::with_capacity(scan_len + PADDING);
    let mut restarts = Vec::new();
    let scan_end = unstuff(bytes, header.scan_start, &mut data, &mut restarts);
    check_trailer(bytes, scan_end)?;
    let data_len = data.len();
    data.extend_from_slice(&[0; PADDING]);

    let geometry = Geometry {
        mcus_x,
        mcus_y,
        row_w,
        row_h,
        out_w,
        channels,
    };
    let mut pixels = vec![0u8; out_w * out_h * channels];
    let interval = header.restart_interval;
    let mut decoded = false;
    let mut joined_at = None;
    if data_len >= split_min_bytes {
        // Over the allocation limit with the helper's buffer: decode on one thread.
        if alloc + split::tail_alloc(&comps, mcus_x * mcus_y) <= max_alloc {
            let scan = Scan::new(&data, data_len, &restarts, interval);
            // `None`: not split after all (see `split::decode`); decode on this thread.
            if let Some(result) = split::decode(&geometry, &comps, scan, &mut pixels) {
                joined_at = result?;
                decoded = true;
                tracing::trace!(
                    ?joined_at,
                    mcus = mcus_x * mcus_y,
                    "JPEG scan decoded on two threads"
                );
            }
        }
    }
    if !decoded {
        let mut scan = Scan::new(&data, data_len, &restarts, interval);
        let mut rows = pixels.chunks_mut(geometry.row_bytes());
        for _ in 0..mcus_y {
            for c in comps.iter_mut() {
                c.coefs.fill(0);
            }
            for mx in 0..mcus_x {
                scan.mcu(&mut comps, mcus_x, mx)?;
            }
            scan.check_not_past_end()?;
            finish_row(&mut comps, &geometry, rows.next().unwrap_or_default())?;
        }
    }
    let scaled = Scaled {
        width: out_w as u32,
        height: out_h as u32,
        channels: channels as u8,
        pixels,
    };
    Ok((scaled, joined_at))
}

/// The layout of the decode: MCUs, and the pixel rows one MCU row makes.
struct Geometry {
    mcus_x: usize,
    mcus_y: usize,
    /// Samples per plane row (padded to whole blocks).
    row_w: usize,
    /// Plane rows (and output lines, but for the last MCU row) per MCU row.
    row_h: usize,
    /// Output width in pixels.
    out_w: usize,
    /// 1 (gray) or 3 (RGB).
    channels: usize,
}

impl Geometry {
    /// Output bytes of one MCU row (the last one may be shorter).
    fn row_bytes(&self) -> usize {
        (self.row_h * self.out_w * self.channels).max(1)
    }
}

/// The entropy decoder's place in the scan, with the restart-interval bookkeeping.
#[derive(Clone)]
struct Scan<'d> {
    data: &'d [u8],
    /// Length of the real data (`data` ends with [`PADDING`] zero bytes).
    data_len: usize,
    /// Offsets in `data` where each restart interval's data starts.
    restarts: &'d [usize],
    interval: usize,
    bits: Bits,
    segment_end: usize,
    next_restart: usize,
    /// MCUs left in the current restart interval.
    todo: usize,
}

impl<'d> Scan<'d> {
    fn new(data: &'d [u8], data_len: usize, restarts: &'d [usize], interval: usize) -> Self {
        Scan {
            data,
            data_len,
            restarts,
            interval,
            bits: Bits::new(data, 0),
            segment_end: restarts.first().copied().unwrap_or(data_len),
            next_restart: 0,
            todo: interval,
        }
    }

    /// Decode the MCU in column `mx` of the current MCU row into the components' row
    /// coefficients.
    fn mcu(&mut self, comps: &mut [Comp<'_>], mcus_x: usize, mx: usize) -> Res<()> {
        if self.restart_if_due()? {
            for c in comps.iter_mut() {
                c.pred = 0;
            }
        }
        for c in comps.iter_mut() {
            let len = c.block_len();
            let per_row = mcus_x * c.h;
            for by in 0..c.v {
                for bx in 0..c.h {
                    let b = by * per_row + mx * c.h + bx;
                    let Some(out) = c.coefs.get_mut(b * len..(b + 1) * len) else {
                        return corrupt("internal: block index");
                    };
                    decode_block(&mut self.bits, self.data, &c.codes, &mut c.pred, out)
                        .map_err(ScaledError::Corrupt)?;
                }
            }
        }
        Ok(())
    }

    /// Before an MCU: at the end of a restart interval, check that the interval kept to its
    /// data and move to the next one. True if the DC predictors must be reset.
    fn restart_if_due(&mut self) -> Res<bool> {
        if self.interval == 0 {
            return Ok(false);
        }
        let due = self.todo == 0;
        if due {
            let start = self.next_segment()?;
            self.next_restart += 1;
            self.segment_end =
                (self.restarts.get(self.next_restart).copied()).unwrap_or(self.data_len);
            self.bits = Bits::new(self.data, start);
            self.todo = self.interval;
        }
        self.todo -= 1;
        Ok(due)
    }

    /// At the end of a restart interval: where the next one's data starts, if the one that
    /// ends kept to its data.
    fn next_segment(&self) -> Res<usize> {
        if self.bits.consumed_bits() > self.segment_end * 8 {
            return corrupt("restart interval overruns its data");
        }
        match self.restarts.get(self.next_restart) {
            Some(&start) => Ok(start),
            None => corrupt("missing restart marker"),
        }
    }

    /// An MCU row must not have read past the end of the data (its zero padding).
    fn check_not_past_end(&self) -> Res<()> {
        if self.bits.consumed_bits() > self.data_len * 8 {
            return corrupt("truncated scan");
        }
        Ok(())
    }
}

/// Reduced IDCT of one MCU row's coefficients (in `comps`) into the row planes, then color
/// conversion of its visible lines into `lines` (the row's part of the output).
fn finish_row(comps: &mut [Comp<'_>], g: &Geometry, lines: &mut [u8]) -> Res<()> {
    let row_w = g.row_w;
    for c in comps.iter_mut() {
        let blocks_x = g.mcus_x * c.h;
        match (c.bw, c.bh) {
            (1, 1) => idct_row::<1, 1>(c, blocks_x, row_w),
            (2, 2) => idct_row::<2, 2>(c, blocks_x, row_w),
            (4, 4) => idct_row_4x4(c, blocks_x, row_w),
            (8, 8) => idct_row::<8, 8>(c, blocks_x, row_w),
            (2, 1) => idct_row::<2, 1>(c, blocks_x, row_w),
            (1, 2) => idct_row::<1, 2>(c, blocks_x, row_w),
            (4, 2) => idct_row::<4, 2>(c, blocks_x, row_w),
            (2, 4) => idct_row::<2, 4>(c, blocks_x, row_w),
            (8, 4) => idct_row::<8, 4>(c, blocks_x, row_w),
            (4, 8) => idct_row::<4, 8>(c, blocks_x, row_w),
            _ => return Err(ScaledError::Unsupported("block size")),
        }
    }
    let out_w = g.out_w;
    for (i, line) in lines.chunks_exact_mut(out_w * g.channels).enumerate() {
        let plane = |c: usize| {
            comps
                .get(c)
                .and_then(|c| c.pixels.get(i * row_w..i * row_w + out_w))
                .unwrap_or(&[])
        };
        if g.channels == 1 {
            for (o, &v) in line.iter_mut().zip(plane(0)) {
                *o = v;
            }
        } else {
            ycbcr_row(plane(0), plane(1), plane(2), line);
        }
    }
    Ok(())
}

/// Reduced IDCT of every block of one MCU row of component `c` into `c.pixels`.
fn idct_row<const BW: usize, const BH: usize>(c: &mut Comp<'_>, blocks_x: usize, row_w: usize) {
    let len = BW * BH + 1;
    for by in 0..c.v {
        for bx in 0..blocks_x {
            let b = by * blocks_x + bx;
            let (Some(coef), Some(out)) = (
                c.coefs.get(b * len..b * len + BW * BH),
                c.pixels.get_mut(by * BH * row_w + bx * BW..),
            ) else {
                return;
            };
            idct_one::<BW, BH>(coef, (&c.mwt, &c.mh, &c.scale4), out, row_w);
        }
    }
}

/// [`idct_row`] for 4x4 blocks (1/2 scale): on a CPU with AVX2, two horizontally adjacent
/// blocks that both need the whole IDCT go through [`idct_4x4_pair_avx2`] together.
fn idct_row_4x4(c: &mut Comp<'_>, blocks_x: usize, row_w: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // A block's 16 coefficients and one spare, as in `idct_row`.
        const LEN: usize = 4 * 4 + 1;
        for by in 0..c.v {
            let mut bx = 0;
            while bx < blocks_x {
                let b = by * blocks_x + bx;
                let (Some(coefs), Some(out)) = (
                    c.coefs
                        .get(b * LEN..(b + 2).min(by * blocks_x + blocks_x) * LEN),
                    c.pixels.get_mut(by * 4 * row_w + bx * 4..),
                ) else {
                    return;
                };
                if let (Some(a), Some(next)) = (coefs.get(..16), coefs.get(LEN..LEN + 16)) {
                    if !dc_only(a) && !dc_only(next) {
                        // SAFETY: AVX2 was detected above.
                        unsafe { idct_4x4_pair_avx2(a, next, &c.scale4, out, row_w) };
                        bx += 2;
                        continue;
                    }
                }
                if let Some(a) = coefs.get(..16) {
                    idct_one::<4, 4>(a, (&c.mwt, &c.mh, &c.scale4), out, row_w);
                }
                bx += 1;
            }
        }
        return;
    }
    idct_row::<4, 4>(c, blocks_x, row_w);
}

/// True if a block has only its DC coefficient (a flat block).
#[inline(always)]
fn dc_only(coef: &[i32]) -> bool {
    // (An OR over all of them vectorizes; an early-exit search does not.)
    coef.iter().skip(1).fold(0, |any, &v| any | v) == 0
}

/// A component's IDCT tables: the matrices `(mwt, mh)` of [`idct_block`] and the butterfly
/// factors of [`idct_4x4`].
type IdctTables<'a> = (&'a [[f32; 8]; 8], &'a [[f32; 8]; 8], &'a [[f32; 4]; 4]);

/// Reduced IDCT of one block (`coef`, `BW * BH` dequantized coefficients) into `out` (row
/// stride `stride`) with the component's tables.
#[inline(always)]
fn idct_one<const BW: usize, const BH: usize>(
    coef: &[i32],
    (mwt, mh, scale4): IdctTables<'_>,
    out: &mut [u8],
    stride: usize,
) {
    if dc_only(coef) {
        // Only the DC term: a flat block of its mean.
        let dc = (coef[0] as f32 * 0.125 + 128.5).clamp(0.0, 255.0) as u8;
        for line in out.chunks_mut(stride).take(BH) {
            if let Some(line) = line.get_mut(..BW) {
                line.fill(dc);
            }
        }
    } else if BW == 4 && BH == 4 {
        idct_4x4(coef, scale4, out, stride);
    } else {
        idct_block::<BW, BH>(coef, mwt, mh, out, stride);
    }
}

/// JFIF YCbCr to RGB for one line (`out` holds `y.len()` RGB pixels).
fn ycbcr_row(y: &[u8], cb: &[u8], cr: &[u8], out: &mut [u8]) {
    const LANES: usize = 16;
    let convert = |y: &[u8], cb: &[u8], cr: &[u8], out: &mut [u8]| {
        for (((px, &y), &cb), &cr) in out.chunks_exact_mut(3).zip(y).zip(cb).zip(cr) {
            let (r, g, b) = ycbcr_pixel(y, cb, cr);
            px.copy_from_slice(&[r, g, b]);
        }
    };
    let mut chunks = out.chunks_exact_mut(3 * LANES);
    let mut i = 0;
    for px in &mut chunks {
        // Whole lanes at a time into planar arrays (vectorized), then interleaved.
        let (Some(y), Some(cb), Some(cr)) = (
            y.get(i..i + LANES),
            cb.get(i..i + LANES),
            cr.get(i..i + LANES),
        ) else {
            return;
        };
        let mut rgb = [[0u8; LANES]; 3];
        for j in 0..LANES {
            let (r, g, b) = ycbcr_pixel(y[j], cb[j], cr[j]);
            rgb[0][j] = r;
            rgb[1][j] = g;
            rgb[2][j] = b;
        }
        for (j, p) in px.chunks_exact_mut(3).enumerate() {
            p.copy_from_slice(&[rgb[0][j], rgb[1][j], rgb[2][j]]);
        }
        i += LANES;
    }
    let rest = chunks.into_remainder();
    if let (Some(y), Some(cb), Some(cr)) = (y.get(i..), cb.get(i..), cr.get(i..)) {
        convert(y, cb, cr, rest);
    }
}

/// One pixel, JFIF equations (ITU-R BT.601 full range), rounded to nearest.
#[inline(always)]
fn ycbcr_pixel(y: u8, cb: u8, cr: u8) -> (u8, u8, u8) {
    let (y, cb, cr) = (f32::from(y), f32::from(cb) - 128.0, f32::from(cr) - 128.0);
    let r = y + 1.402 * cr;
    let g = y - 0.344_136_3 * cb - 0.714_136_3 * cr;
    let b = y + 1.772 * cb;
    let to_u8 = |v: f32| (v + MAGIC).clamp(MAGIC, MAGIC + 255.0).to_bits() as u8;
    (to_u8(r), to_u8(g), to_u8(b))
}

/// What decoding one block of a component needs.
#[derive(Clone, Copy)]
struct BlockCodes<'h> {
    dc: &'h Huffman,
    ac: &'h Huffman,
    /// `slot[k]`: where zigzag coefficient `k` goes in a block's coefficients (`v * bw + u`),
    /// or `bw * bh` (a scratch slot) if the reduced IDCT does not use it.
    slot: [u8; 64],
    /// Dequantization factor per zigzag index.
    q: [i32; 64],
    /// Highest zigzag index the reduced IDCT uses.
    kmax: usize,
}

/// Decode one block: the DC difference and the AC coefficients. The dequantized coefficients
/// the reduced IDCT uses are stored at their slots in `out` (others land in its scratch slot
/// or are only skipped).
///
/// Not inlined, and working on a local copy of the bit reader, so that its state stays in
/// registers in the loops.
#[inline(never)]
fn decode_block(
    bits: &mut Bits,
    data: &[u8],
    codes: &BlockCodes<'_>,
    pred: &mut i32,
    out: &mut [i32],
) -> Result<(), &'static str> {
    let mut b = *bits;
    let result = decode_block_with(&mut b, data, codes, pred, out);
    *bits = b;
    result
}

#[inline(always)]
fn decode_block_with(
    bits: &mut Bits,
    data: &[u8],
    codes: &BlockCodes<'_>,
    pred: &mut i32,
    out: &mut [i32],
) -> Result<(), &'static str> {
    let (ac, slot, q, kmax) = (codes.ac, &codes.slot, &codes.q, codes.kmax);
    bits.refill(data);
    let size = bits.symbol(codes.dc)?;
    if size > 11 {
        return Err("bad DC magnitude");
    }
    *pred = pred.wrapping_add(bits.receive_extend(size));
    if let Some(o) = out.first_mut() {
        *o = pred.wrapping_mul(q[0]);
    }
    // `k`: the next zigzag index. Coefficients up to the last one the reduced IDCT uses:
    let mut k = 1usize;
    while k <= kmax {
        bits.refill(data);
        let e = ac.ac_fast[bits.peek(FAST_BITS) as usize];
        let (advance, value);
        if e != 0 {
            bits.consume(e & 0xFF);
            advance = ((e >> 8) & 0xFF) as usize;
            value = (e >> 16) as u16 as i16 as i32;
        } else {
            let rs = bits.symbol(ac)?;
            let (r, s) = ((rs >> 4) as usize, rs & 15);
            advance = match (r, s) {
                (0, 0) => EOB as usize,
                (15, 0) => 16,
                (_, 0) => return Err("bad AC symbol"),
                _ => r + 1,
            };
            value = bits.receive_extend(s);
        }
        if advance == EOB as usize {
            return Ok(());
        }
        // ZRL stores its zero value at the last index it skips: harmless.
        k += advance;
        let at = (k - 1) & 63;
        if let Some(o) = out.get_mut(usize::from(slot[at])) {
            *o = value.wrapping_mul(q[at]);
        }
    }
    // The rest is only skipped, several codes per lookup when they are short.
    while k < 64 {
        bits.refill(data);
        let e = u32::from(ac.skip[bits.peek(SKIP_BITS) as usize]);
        let (len, advance, eob) = ((e & 31), ((e >> 5) & 127) as usize, (e >> 15) as usize);
        // An end of block is only coded before index 64.
        if len != 0 && k + advance + eob <= 64 {
            bits.consume(len);
            if eob != 0 {
                return Ok(());
            }
            k += advance;
            continue;
        }
        let rs = bits.symbol(ac)?;
        let (r, s) = ((rs >> 4) as usize, rs & 15);
        if s == 0 {
            if r == 15 {
                k += 16;
                continue;
            }
            if r != 0 {
                return Err("bad AC symbol");
            }
            return Ok(());
        }
        bits.consume(s);
        k += r + 1;
    }
    if k > 64 {
        return Err("coefficient index out of range");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(image: &image::DynamicImage) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
            .encode_image(image)
            .expect("encode");
        out.into_inner()
    }

    #[test]
    fn sign_extension() {
        assert_eq!(extend(0, 1), -1);
        assert_eq!(extend(1, 1), 1);
        assert_eq!(extend(0b011, 3), -4);
        assert_eq!(extend(0b100, 3), 4);
        assert_eq!(extend(0, 0), 0);
    }

    /// The AC Huffman tables of a JPEG as (counts, values), read straight from its DHT
    /// segments.
    fn ac_tables(bytes: &[u8]) -> Vec<([u8; 16], Vec<u8>)> {
        let mut tables = Vec::new();
        let mut pos = 2;
        while pos + 4 <= bytes.len() && bytes[pos] == 0xFF && bytes[pos + 1] != 0xDA {
            let len = usize::from(u16::from_be_bytes([bytes[pos + 2], bytes[pos + 3]]));
            if bytes[pos + 1] == 0xC4 {
                let mut s = &bytes[pos + 4..pos + 2 + len];
                while !s.is_empty() {
                    let mut counts = [0u8; 16];
                    counts.copy_from_slice(&s[1..17]);
                    let n: usize = counts.iter().map(|&c| usize::from(c)).sum();
                    if s[0] >> 4 == 1 {
                        tables.push((counts, s[17..17 + n].to_vec()));
                    }
                    s = &s[17 + n..];
                }
            }
            pos += 2 + len;
        }
        tables
    }

    /// Decode the AC codes at the start of a `SKIP_BITS`-bit pattern bit by bit with the
    /// canonical code assignment, as far as whole codes fit: (total length, positions covered,
    /// ended with EOB).
    fn skip_by_hand(counts: &[u8; 16], values: &[u8], pattern: u32) -> (u32, u32, bool) {
        let bit = |i: u32| (pattern >> (SKIP_BITS - 1 - i)) & 1;
        let (mut pos, mut advance) = (0, 0);
        'codes: loop {
            // Canonical codes: for each length, consecutive values after the shorter ones.
            let (mut code, mut first, mut k) = (0u32, 0u32, 0usize);
            for len in 1..=16u32 {
                if pos + len > SKIP_BITS {
                    return (pos, advance, false);
                }
                code = code << 1 | bit(pos + len - 1);
                let n = u32::from(counts[len as usize - 1]);
                if code >= first && code < first + n {
                    let symbol = u32::from(values[k + (code - first) as usize]);
                    let (run, size) = (symbol >> 4, symbol & 15);
                    if pos + len + size > SKIP_BITS {
                        return (pos, advance, false);
                    }
                    match (run, size) {
                        (0, 0) => return (pos + len, advance, true),
                        (15, 0) => advance += 16,
                        (_, 0) => return (pos, advance, false),
                        _ => advance += run + 1,
                    }
                    pos += len + size;
                    continue 'codes;
                }
                k += n as usize;
                first = (first + n) << 1;
            }
            return (pos, advance, false);
        }
    }

    #[test]
    fn skip_table_agrees_with_code_by_code_decoding() {
        let image = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(64, 64, |x, y| {
            image::Rgb([
                (x * 37 % 256) as u8,
                (y * 91 % 256) as u8,
                ((x ^ y) * 13) as u8,
            ])
        }));
        let tables = ac_tables(&encode(&image));
        assert!(!tables.is_empty());
        for (counts, values) in tables {
            let table = Huffman::new(&counts, &values, true).expect("table");
            let mut multi = 0;
            for pattern in 0..1u32 << SKIP_BITS {
                let e = u32::from(table.skip[pattern as usize]);
                let got = (e & 31, (e >> 5) & 127, e >> 15 == 1);
                assert_eq!(
                    got,
                    skip_by_hand(&counts, &values, pattern),
                    "{pattern:012b}"
                );
                let single = table.ac_fast[(pattern >> (SKIP_BITS - FAST_BITS)) as usize] & 0xFF;
                if single != 0 && got.0 > single {
                    multi += 1;
                }
            }
            // The point of the table: many patterns hold more than one code.
            assert!(multi > 1000, "{multi} multi-code entries");
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx2_pair_idct_gives_exactly_the_pixels_of_two_single_ones() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            eprintln!("no AVX2 on this CPU: the pair IDCT is never used here");
            return;
        }
        let scale = butterfly_scale();
        let mut seed = 0x1319_8A2E_0370_7344u64;
        let mut next = |range: i64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % (2 * range as u64 + 1)) as i32 - range as i32
        };
        for case in 0..5000 {
            // Real-looking coefficients, and now and then huge ones that clamp at 0 and 255.
            let big = case % 10 == 0;
            let block: Vec<i32> = (0..32)
                .map(|i| {
                    let range = if big {
                        20_000
                    } else if i % 16 == 0 {
                        2048
                    } else {
                        300 >> (i % 16 / 4)
                    };
                    next(range)
                })
                .collect();
            let (a, b) = block.split_at(16);
            let stride = 11;
            let (mut single, mut pair) = ([7u8; 4 * 11], [7u8; 4 * 11]);
            idct_4x4(a, &scale, &mut single, stride);
            idct_4x4(b, &scale, &mut single[4..], stride);
            // SAFETY: AVX2 was detected above.
            unsafe { idct_4x4_pair_avx2(a, b, &scale, &mut pair, stride) };
            assert_eq!(single, pair, "{a:?} {b:?}");
        }
    }

    #[test]
    fn butterfly_4x4_idct_equals_the_matrix_one() {
        let (mwt, mh, scale) = (transpose(idct_matrix(4)), idct_matrix(4), butterfly_scale());
        let mut seed = 0x243F_6A88_85A3_08D3u64;
        for _ in 0..2000 {
            let coef: Vec<i32> = (0..16)
                .map(|i| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    // Mostly small, like real coefficients; DC larger.
                    let range = if i == 0 { 2048 } else { 300 >> (i / 4) };
                    (seed % (2 * range + 1)) as i32 - range as i32
                })
                .collect();
            let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
            idct_block::<4, 4>(&coef, &mwt, &mh, &mut a, 4);
            idct_4x4(&coef, &scale, &mut b, 4);
            assert!(
                a.iter().zip(&b).all(|(x, y)| x.abs_diff(*y) <= 1),
                "{coef:?}: {a:?} vs {b:?}"
            );
        }
    }

    #[test]
    fn flat_colour_decodes_to_the_same_colour_at_every_scale() {
        let colour = image::Rgb([200u8, 100, 50]);
        let image = image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(100, 60, colour));
        let bytes = encode(&image);
        let full = image::load_from_memory(&bytes).unwrap().to_rgb8();
        let expected = full.get_pixel(50, 30).0;
        for denom in [2, 4, 8] {
            let s = decode(&bytes, denom, 1 << 24, usize::MAX).expect("decode");
            assert_eq!(
                (s.width, s.height, s.channels),
                (
                    100u32.div_ceil(denom as u32),
                    60u32.div_ceil(denom as u32),
                    3
                )
            );
            for px in s.pixels.chunks_exact(3) {
                assert!(
                    px.iter().zip(expected).all(|(a, b)| a.abs_diff(b) <= 2),
                    "1/{denom}: {px:?} vs {expected:?}"
                );
            }
        }
    }

    #[test]
    fn reports_what_it_does_not_handle() {
        // SOI, then a frame header: precision 8, 16x16, one component.
        let frame = |marker: u8, precision: u8, components: u8| {
            let mut b = vec![0xFF, 0xD8, 0xFF, marker, 0, 8 + 3 * components, precision];
            b.extend_from_slice(&[0, 16, 0, 16, components]);
            for id in 1..=components {
                b.extend_from_slice(&[id, 0x11, 0]);
            }
            b
        };
        let unsupported = |bytes: Vec<u8>| {
            matches!(
                decode(&bytes, 2, 1 << 20, usize::MAX),
                Err(ScaledError::Unsupported(_))
            )
        };
        assert!(unsupported(frame(0xC2, 8, 3)), "progressive");
        assert!(unsupported(frame(0xC9, 8, 3)), "arithmetic");
        assert!(unsupported(frame(0xC0, 12, 3)), "12-bit");
        assert!(unsupported(frame(0xC0, 8, 4)), "CMYK");
        assert!(unsupported(frame(0xC0, 8, 2)), "two components");
        // Not a JPEG, cut headers, a Huffman table with three 1-bit codes: corrupt.
        let corrupt = |bytes: &[u8]| {
            matches!(
                decode(bytes, 2, 1 << 20, usize::MAX),
                Err(ScaledError::Corrupt(_))
            )
        };
        assert!(corrupt(b"hello"));
        assert!(corrupt(&frame(0xC0, 8, 3)[..9]));
        let mut bad_table = vec![0xFF, 0xD8, 0xFF, 0xC4, 0, 22, 0x10, 3];
        bad_table.extend_from_slice(&[0; 15]);
        bad_table.extend_from_slice(&[1, 2, 3]);
        assert!(corrupt(&bad_table));
    }

    #[test]
    fn allocation_limit_is_respected() {
        let image = image::DynamicImage::ImageRgb8(image::RgbImage::new(512, 512));
        let bytes = encode(&image);
        assert_eq!(
            decode(&bytes, 2, 10_000, usize::MAX).unwrap_err(),
            ScaledError::Limit
        );
        assert!(decode(&bytes, 2, 1 << 24, usize::MAX).is_ok());
    }

    /// What follows the scan is read like the full-size decoder reads it (found by fuzzing:
    /// a cut table segment after the scan was accepted here and refused by zune-jpeg).
    #[test]
    fn segments_after_the_scan_are_checked() {
        let image = image::DynamicImage::ImageRgb8(image::RgbImage::new(64, 48));
        let bytes = encode(&image);
        assert_eq!(&bytes[bytes.len() - 2..], &[0xFF, 0xD9]);
        let body = &bytes[..bytes.len() - 2];
        let with = |tail: &[u8]| [body, tail].concat();
        assert!(decode(&bytes, 2, 1 << 24, usize::MAX).is_ok());
        // A comment and a restart-interval segment, then EOI: fine.
        let ok = with(&[
            0xFF, 0xFE, 0, 4, b'h', b'i', 0xFF, 0xDD, 0, 4, 0, 0, 0xFF, 0xD9,
        ]);
        assert!(decode(&ok, 2, 1 << 24, usize::MAX).is_ok());
        // A Huffman table segment that claims more bytes than the file has: corrupt.
        let cut = with(&[0xFF, 0xC4, 0, 40, 0x10, 1, 2, 0xFF, 0xD9]);
        assert!(matches!(
            decode(&cut, 2, 1 << 24, usize::MAX),
            Err(ScaledError::Corrupt(_))
        ));
        // No end-of-image marker: corrupt. Another frame or scan: left to the full decoder.
        assert!(matches!(
            decode(body, 2, 1 << 24, usize::MAX),
            Err(ScaledError::Corrupt(_))
        ));
        let frame = with(&[
            0xFF, 0xC0, 0, 11, 8, 0, 16, 0, 16, 1, 1, 0x11, 0, 0xFF, 0xD9,
        ]);
        assert!(matches!(
            decode(&frame, 2, 1 << 24, usize::MAX),
            Err(ScaledError::Unsupported(_))
        ));
        let scan = with(&[0xFF, 0xDA, 0, 8, 1, 1, 0, 0, 63, 0, 0xFF, 0xD9]);
        assert!(matches!(
            decode(&scan, 2, 1 << 24, usize::MAX),
            Err(ScaledError::Unsupported(_))
        ));
    }
}
