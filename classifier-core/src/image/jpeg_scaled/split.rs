//! One large JPEG's scan decoded by two threads.
//!
//! A helper thread decodes the second part of the entropy-coded data while this thread
//! decodes the first; then both do the IDCT and color conversion of the remaining rows. The
//! result is the one-thread decode's, bit for bit, pixels or error, whatever the data.
//!
//! **With restart markers** the data is cut into intervals that each start on a byte, with
//! the DC predictors at 0, at a known MCU, so the helper simply starts at the first interval
//! after [`SPLIT_AT`] of the data. This thread decodes up to that MCU, makes the check the
//! one-thread decoder makes there (the interval before kept to its data), and takes the
//! helper's MCUs from there if the helper decoded them all without an error.
//!
//! **Without restart markers** nothing marks where an MCU begins, but Huffman codes
//! resynchronize: a decoder started at an arbitrary bit reads garbage for a while, then, once
//! one of its codes ends where a real code ends at the start of an MCU, reads exactly what a
//! decoder started at the beginning reads (Klein and Wiseman, "Parallel Huffman decoding with
//! applications to JPEG files", 2003). So the helper starts at the byte at [`SPLIT_AT`] of
//! the data, decodes MCUs as if one started there, and records where each starts ([`Tail`]).
//! Once this thread's decode passes that byte, it looks for an MCU that starts at a bit where
//! one of the helper's starts. From there both read the same codes with the same tables, so
//! the helper's coefficients are this thread's, but for the DC terms, coded as differences
//! from the previous block: the helper started its predictors at 0, so each component's DC
//! terms are off by one constant, known at that MCU.
//!
//! This thread only takes the helper's MCUs from a state it reached itself, and only if the
//! helper decoded all the rest without an error and within the data. Otherwise (no meeting
//! point, corrupt or truncated data) it goes on alone, as the one-thread decoder does, down
//! to the same error.

use std::sync::{Mutex, OnceLock};

use super::{corrupt, decode_block, finish_row, Bits, Comp, Geometry, Res, ScaledError, Scan};

/// Where the helper thread starts, as a fraction of the entropy-coded data.
///
/// This thread decodes that share and also does the IDCT and color conversion of its rows
/// while the helper only entropy-decodes the rest; then both share the remaining rows' IDCT.
/// The entropy decoding is about half of the work, so starting the helper before the middle
/// balances the two. Measured (`cargo bench --bench preprocess`, quality-90 photos): 0.33 was
/// best for 1920x1080, 0.4 for 4000x3000, 0.27 and 0.47 worse for both.
const SPLIT_AT: f64 = 0.37;

/// Without restart markers, the helper gives up after this many false starts (each one a
/// decode error before it had decoded [`TRUSTED_RUN`] MCUs in a row).
const MAX_ATTEMPTS: usize = 32;

/// MCUs decoded without an error after which a helper's error is taken as the data's own
/// (this thread will meet it too), not as a sign of a false start.
const TRUSTED_RUN: usize = 64;

/// The most memory the helper's coefficients may take, in bytes.
pub(super) fn tail_alloc(comps: &[Comp<'_>], mcus: usize) -> u64 {
    let values = mcu_len(comps) as u64 * mcus as u64 * 4;
    let positions = mcus as u64 * (std::mem::size_of::<usize>() + 4 * 3) as u64;
    values + positions
}

/// Coefficient values of one MCU in the helper's buffer.
fn mcu_len(comps: &[Comp<'_>]) -> usize {
    comps.iter().map(|c| c.h * c.v * c.block_len()).sum()
}

/// Where the helper starts.
#[derive(Debug, Clone, Copy)]
enum Start {
    /// At restart interval `segment` (1-based: the data after restart marker `segment - 1`),
    /// which is MCU `mcu`.
    Restart { segment: usize, mcu: usize },
    /// At this byte of the data, at an unknown MCU.
    Byte(usize),
}

/// Decode the scan into `pixels` with a helper thread: the MCU from which the helper's
/// decode was used, if it was. `None` if the scan is not split (restart intervals that do
/// not reach past [`SPLIT_AT`]) or the thread could not be started: nothing has been decoded
/// then. `scan` is at the start of the data.
pub(super) fn decode(
    g: &Geometry,
    comps: &[Comp<'_>],
    scan: Scan<'_>,
    pixels: &mut [u8],
) -> Option<Res<Option<usize>>> {
    // One DC predictor per component in [`Tail`] (the decoder takes 1 or 3 components).
    if comps.len() > 3 {
        return None;
    }
    let total = g.mcus_x * g.mcus_y;
    let split_byte = (scan.data_len as f64 * SPLIT_AT) as usize;
    let start = if scan.interval > 0 {
        let segment = 1 + scan.restarts.iter().position(|&at| at >= split_byte)?;
        let mcu = segment.checked_mul(scan.interval).filter(|&m| m < total)?;
        Start::Restart { segment, mcu }
    } else {
        Start::Byte(split_byte)
    };
    let tail_cell = OnceLock::new();
    let sync_cell = OnceLock::new();
    let rows = Mutex::new(pixels.chunks_mut(g.row_bytes()).enumerate());
    std::thread::scope(|scope| {
        let (tail_cell, sync_cell, rows) = (&tail_cell, &sync_cell, &rows);
        let helper_comps = comps.to_vec();
        let helper_scan = scan.clone();
        let helper = std::thread::Builder::new()
            .name("jpeg-split".into())
            .spawn_scoped(scope, move || {
                let _publish = PublishOnDrop(tail_cell);
                let tail = tail_cell.get_or_init(|| match start {
                    Start::Restart { segment, mcu } => {
                        decode_tail_from_restart(&helper_comps, g, helper_scan, segment, mcu)
                    }
                    Start::Byte(byte) => {
                        decode_tail_from_byte(&helper_comps, &helper_scan, byte, total)
                    }
                });
                let Some(sync) = *sync_cell.wait() else {
                    return Ok(());
                };
                finish_rows_from_tail(helper_comps, g, tail, &sync, rows)
            });
        let helper = match helper {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(error = %e, "no second thread for the JPEG decode");
                return None;
            }
        };
        let mine = decode_head(g, comps.to_vec(), scan, start, tail_cell, sync_cell, rows);
        let theirs = helper
            .join()
            .unwrap_or_else(|_| corrupt("internal: the helper decoder panicked"));
        Some(theirs.and(mine))
    })
}

/// Sets an empty [`Tail`] if the helper leaves without publishing one (a panic), so that
/// this thread never waits forever.
struct PublishOnDrop<'a>(&'a OnceLock<Tail>);

impl Drop for PublishOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.set(Tail::default());
    }
}

/// The helper's decode from its start until the data ends (or an error).
#[derive(Default)]
struct Tail {
    /// Bit position where each decoded MCU starts, and one more: where the last one ends.
    starts: Vec<usize>,
    /// Each component's DC predictor at the start of each decoded MCU.
    preds: Vec<[i32; 3]>,
    /// Each decoded MCU's coefficients: per component, its blocks (`v` rows of `h`), each
    /// laid out as in [`Comp::coefs`].
    coefs: Vec<i32>,
}

impl Tail {
    /// MCUs decoded.
    fn len(&self) -> usize {
        self.preds.len()
    }

    /// Decode one MCU at the end, with `preds` the DC predictors. False (and nothing added)
    /// on a decode error.
    fn push_mcu(
        &mut self,
        comps: &[Comp<'_>],
        bits: &mut Bits,
        data: &[u8],
        preds: &mut [i32; 3],
    ) -> bool {
        let base = self.coefs.len();
        self.coefs.resize(base + mcu_len(comps), 0);
        let mut mcu = self.coefs.get_mut(base..).unwrap_or_default();
        let before = *preds;
        for (c, pred) in comps.iter().zip(preds.iter_mut()) {
            let len = c.block_len();
            for _ in 0..c.h * c.v {
                let (block, rest) = mcu.split_at_mut(len.min(mcu.len()));
                mcu = rest;
                if decode_block(bits, data, &c.codes, pred, block).is_err() {
                    self.coefs.truncate(base);
                    return false;
                }
            }
        }
        self.preds.push(before);
        true
    }
}

/// Where the two decodes meet: this thread's MCU `mcu` is the helper's MCU `index`.
#[derive(Debug, Clone, Copy)]
struct SyncPoint {
    mcu: usize,
    index: usize,
    /// Per component: what to add to the helper's DC predictors.
    dc_offset: [i32; 3],
}

/// The helper's work with restart markers: decode from restart interval `segment` (MCU
/// `first`) to the last MCU, with the one-thread decoder's checks. Stops at the first error.
fn decode_tail_from_restart(
    comps: &[Comp<'_>],
    g: &Geometry,
    mut scan: Scan<'_>,
    segment: usize,
    first: usize,
) -> Tail {
    let mut tail = Tail::default();
    let Some(&start) = scan.restarts.get(segment - 1) else {
        return tail;
    };
    scan.bits = Bits::new(scan.data, start);
    scan.next_restart = segment;
    scan.segment_end = scan.restarts.get(segment).copied().unwrap_or(scan.data_len);
    scan.todo = scan.interval;
    let mut preds = [0i32; 3];
    for m in first..g.mcus_x * g.mcus_y {
        match scan.restart_if_due() {
            Ok(true) => preds = [0; 3],
            Ok(false) => {}
            Err(_) => break,
        }
        if !tail.push_mcu(comps, &mut scan.bits, scan.data, &mut preds) {
            break;
        }
        if m % g.mcus_x == g.mcus_x - 1 && scan.check_not_past_end().is_err() {
            tail.preds.pop();
            break;
        }
    }
    tail
}

/// The helper's work without restart markers: decode MCUs from byte `start` until the data
/// (or `max_mcus`) ends. A decode error soon after a start means the start was false: try
/// again one byte on.
fn decode_tail_from_byte(
    comps: &[Comp<'_>],
    scan: &Scan<'_>,
    mut start: usize,
    max_mcus: usize,
) -> Tail {
    let (data, data_len) = (scan.data, scan.data_len);
    for _ in 0..MAX_ATTEMPTS {
        let mut tail = Tail::default();
        let mut bits = Bits::new(data, start);
        let mut preds = [0i32; 3];
        let failed = loop {
            let at = bits.consumed_bits();
            tail.starts.push(at);
            if at > data_len * 8 || tail.len() >= max_mcus {
                break false;
            }
            if !tail.push_mcu(comps, &mut bits, data, &mut preds) {
                break true;
            }
        };
        if !failed || tail.len() >= TRUSTED_RUN {
            return tail;
        }
        start = tail.starts.first().map_or(data_len, |&bit| bit / 8 + 1);
        if start >= data_len {
            break;
        }
    }
    Tail::default()
}

/// This thread's work: decode from the start, row by row as the one-thread decoder does,
/// until it meets the helper's decode; then take the helper's MCUs, and share the remaining
/// rows with it. Always settles `sync_cell`.
fn decode_head<'p>(
    g: &Geometry,
    mut comps: Vec<Comp<'_>>,
    mut scan: Scan<'_>,
    start: Start,
    tail_cell: &OnceLock<Tail>,
    sync_cell: &OnceLock<Option<SyncPoint>>,
    rows: &Mutex<Rows<'p>>,
) -> Res<Option<usize>> {
    struct Settle<'a>(&'a OnceLock<Option<SyncPoint>>);
    impl Drop for Settle<'_> {
        fn drop(&mut self) {
            let _ = self.0.set(None);
        }
    }
    let settle = Settle(sync_cell);
    let total = g.mcus_x * g.mcus_y;
    let data_len = scan.data_len;
    let mut tail: Option<&Tail> = None;
    let mut next = 0usize; // the first of the helper's MCUs that may still match
    let mut sync: Option<SyncPoint> = None;
    for my in 0..g.mcus_y {
        // Taken first: once the helper knows the meeting point, it takes the rows after this.
        let lines = next_row(rows, my)?;
        for c in comps.iter_mut() {
            c.coefs.fill(0);
        }
        for mx in 0..g.mcus_x {
            let m = my * g.mcus_x + mx;
            if sync.is_none() {
                let found = match start {
                    Start::Restart { mcu, .. } if m == mcu => {
                        // The check the one-thread decoder makes before this MCU.
                        scan.next_segment()?;
                        let t = *tail.get_or_insert_with(|| tail_cell.wait());
                        (t.len() == total - m).then_some((t, 0))
                    }
                    Start::Restart { .. } => None,
                    Start::Byte(byte) => {
                        let at = scan.bits.consumed_bits();
                        if at >= byte * 8 {
                            let t = *tail.get_or_insert_with(|| tail_cell.wait());
                            while next < t.len() && t.starts[next] < at {
                                next += 1;
                            }
                            (next < t.len()
                                && t.starts[next] == at
                                && covers(t, next, total - m, data_len))
                            .then_some((t, next))
                        } else {
                            None
                        }
                    }
                };
                if let Some((t, index)) = found {
                    let mut dc_offset = [0i32; 3];
                    if matches!(start, Start::Byte(_)) {
                        for ((o, c), p) in dc_offset.iter_mut().zip(&comps).zip(t.preds[index]) {
                            *o = c.pred.wrapping_sub(p);
                        }
                    }
                    sync = Some(SyncPoint {
                        mcu: m,
                        index,
                        dc_offset,
                    });
                    let _ = settle.0.set(sync);
                }
            }
            match (&sync, tail) {
                (Some(point), Some(t)) => copy_mcu(&mut comps, g, t, point, my, mx)?,
                _ => scan.mcu(&mut comps, g.mcus_x, mx)?,
            }
        }
        if sync.is_none() {
            scan.check_not_past_end()?;
        }
        finish_row(&mut comps, g, lines)?;
        if let (Some(point), Some(t)) = (&sync, tail) {
            drop(settle);
            finish_rows_from_tail(comps, g, t, point, rows)?;
            return Ok(Some(point.mcu));
        }
    }
    Ok(None)
}

/// The output rows not yet taken, with their MCU row numbers.
type Rows<'p> = std::iter::Enumerate<std::slice::ChunksMut<'p, u8>>;

/// Take the next output row not yet taken, with its MCU row number.
fn take_row<'p>(rows: &Mutex<Rows<'p>>) -> Res<Option<(usize, &'p mut [u8])>> {
    let mut rows = rows
        .lock()
        .map_err(|_| ScaledError::Corrupt("internal: row lock"))?;
    Ok(rows.next())
}

/// Take output row `my`, which must be the next one.
fn next_row<'p>(rows: &Mutex<Rows<'p>>, my: usize) -> Res<&'p mut [u8]> {
    match take_row(rows)? {
        Some((r, lines)) if r == my => Ok(lines),
        _ => corrupt("internal: row order"),
    }
}

/// Whether the helper's MCUs from `index` on hold the `needed` MCUs left, decoded within the
/// data.
fn covers(tail: &Tail, index: usize, needed: usize, data_len: usize) -> bool {
    tail.len() >= index + needed
        && tail
            .starts
            .get(index + needed)
            .is_some_and(|&end| end <= data_len * 8)
}

/// Rows after the synchronization point, taken one at a time by either thread: the
/// coefficients come from the helper's decode.
fn finish_rows_from_tail(
    mut comps: Vec<Comp<'_>>,
    g: &Geometry,
    tail: &Tail,
    point: &SyncPoint,
    rows: &Mutex<Rows<'_>>,
) -> Res<()> {
    while let Some((my, lines)) = take_row(rows)? {
        for mx in 0..g.mcus_x {
            copy_mcu(&mut comps, g, tail, point, my, mx)?;
        }
        finish_row(&mut comps, g, lines)?;
    }
    Ok(())
}

/// Copy MCU (`mx`, `my`) from the helper's decode into the components' row coefficients, with
/// the DC terms corrected.
fn copy_mcu(
    comps: &mut [Comp<'_>],
    g: &Geometry,
    tail: &Tail,
    point: &SyncPoint,
    my: usize,
    mx: usize,
) -> Res<()> {
    let m = my * g.mcus_x + mx;
    let index = point.index + (m - point.mcu);
    let len = mcu_len(comps);
    let Some(mut src) = tail.coefs.get(index * len..(index + 1) * len) else {
        return corrupt("internal: helper MCU index");
    };
    for (c, &offset) in comps.iter_mut().zip(&point.dc_offset) {
        let len = c.block_len();
        let per_row = g.mcus_x * c.h;
        let dc_step = offset.wrapping_mul(c.codes.q[0]);
        for by in 0..c.v {
            for bx in 0..c.h {
                let b = by * per_row + mx * c.h + bx;
                let (Some(out), Some(block)) =
                    (c.coefs.get_mut(b * len..(b + 1) * len), src.get(..len))
                else {
                    return corrupt("internal: block index");
                };
                out.copy_from_slice(block);
                out[0] = out[0].wrapping_add(dc_step);
                src = &src[len..];
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{decode_reporting, Scaled};
    use super::*;

    /// The shared sample JPEGs: 4:4:4 (china, flower, rocket), 4:4:0 (dog, eagle), 4:2:0
    /// (grace_hopper) and gray (chelsea_gray).
    const PHOTOS: [&str; 7] = [
        "china.jpg",
        "flower.jpg",
        "rocket.jpg",
        "dog.jpg",
        "eagle.jpg",
        "grace_hopper.jpg",
        "chelsea_gray.jpg",
    ];

    fn photo(file: &str) -> Vec<u8> {
        let labels = crate::model::ModelLocator::from_env()
            .find("imagenet_classes.txt")
            .expect("../shared/models (or MODEL_DIR)");
        std::fs::read(labels.with_file_name("samples").join(file)).expect("sample photo")
    }

    /// Serial and split decode of the same bytes (the split one forced whatever the size).
    fn both(bytes: &[u8], denom: usize) -> (Res<Scaled>, Res<(Scaled, Option<usize>)>) {
        let serial = decode_reporting(bytes, denom, 1 << 28, usize::MAX).map(|(s, at)| {
            assert_eq!(at, None, "the serial decode used a helper");
            s
        });
        (serial, decode_reporting(bytes, denom, 1 << 28, 0))
    }

    fn same(a: &Scaled, b: &Scaled) -> bool {
        (a.width, a.height, a.channels) == (b.width, b.height, b.channels) && a.pixels == b.pixels
    }

    #[test]
    fn the_two_decodes_meet_and_give_the_serial_pixels() {
        for file in PHOTOS {
            let bytes = photo(file);
            for denom in [2, 4, 8] {
                let (serial, split) = both(&bytes, denom);
                let serial = serial.expect("serial decode");
                let (split, joined_at) = split.expect("split decode");
                assert!(same(&serial, &split), "{file} 1/{denom}: pixels differ");
                // The helper starts at 40 % of the data, so the decodes meet after MCU 0.
                let at = joined_at.unwrap_or_else(|| panic!("{file} 1/{denom}: never met"));
                assert!(at > 0, "{file} 1/{denom}: met at MCU 0");
            }
        }
    }

    /// xorshift64: a fixed pseudo-random sequence.
    fn next(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    #[test]
    fn damaged_and_cut_scans_give_the_serial_result() {
        // Bytes changed or cut anywhere in the scan, mostly after the helper's start: the
        // split decode must give exactly what the serial one gives, pixels or error.
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let (mut joined, mut failed) = (0, 0);
        for file in [
            "china.jpg",
            "dog.jpg",
            "grace_hopper.jpg",
            "chelsea_gray.jpg",
        ] {
            let bytes = photo(file);
            for round in 0..80 {
                let mut damaged = bytes.clone();
                let at = bytes.len() / 4 + next(&mut seed) as usize % (bytes.len() * 3 / 4);
                if round % 4 == 0 {
                    damaged.truncate(at);
                } else {
                    for k in 0..1 + round % 3 {
                        if let Some(b) = damaged.get_mut(at + 97 * k) {
                            *b = next(&mut seed) as u8;
                        }
                    }
                }
                let (serial, split) = both(&damaged, 2);
                match (serial, split) {
                    (Ok(a), Ok((b, at))) => {
                        assert!(same(&a, &b), "{file} round {round}: pixels differ");
                        joined += usize::from(at.is_some());
                    }
                    (Err(a), Err(b)) => {
                        assert_eq!(a, b, "{file} round {round}");
                        failed += 1;
                    }
                    (a, b) => panic!(
                        "{file} round {round}: serial {:?}, split {:?}",
                        a.map(|_| ()),
                        b.map(|_| ())
                    ),
                }
            }
        }
        // Both kinds of outcome were exercised.
        assert!(
            joined > 20 && failed > 20,
            "joined {joined}, failed {failed}"
        );
    }

    #[test]
    fn shortened_restart_intervals_give_the_serial_result() {
        // dog, eagle and flower have restart markers. Cutting bytes just before a marker makes
        // the interval before it run past its data, an error the one-thread decoder reports
        // when it reaches the marker, including the one where the helper starts.
        let mut overruns = 0;
        for file in ["dog.jpg", "eagle.jpg", "flower.jpg"] {
            let bytes = photo(file);
            let markers = (1..bytes.len())
                .filter(|&i| bytes[i - 1] == 0xFF && (0xD0..=0xD7).contains(&bytes[i]))
                .map(|i| i - 1);
            for at in markers {
                let mut cut = bytes.clone();
                cut.drain(at.saturating_sub(12)..at);
                let (serial, split) = both(&cut, 2);
                match (serial, split) {
                    (Ok(a), Ok((b, _))) => assert!(same(&a, &b), "{file} cut at {at}"),
                    (Err(a), Err(b)) => {
                        assert_eq!(a, b, "{file} cut at {at}");
                        overruns += usize::from(
                            a == ScaledError::Corrupt("restart interval overruns its data"),
                        );
                    }
                    (a, b) => panic!(
                        "{file} cut at {at}: serial {:?}, split {:?}",
                        a.map(|_| ()),
                        b.map(|_| ())
                    ),
                }
            }
        }
        assert!(overruns > 10, "only {overruns} overruns");
    }

    #[test]
    fn a_helper_that_never_meets_the_decode_changes_nothing() {
        // The second half of the scan replaced by bytes that are not Huffman codes of this
        // file: the helper decodes garbage or fails, the decodes never meet, and the result
        // is the serial decode's error.
        let bytes = photo("china.jpg");
        let mut damaged = bytes.clone();
        let half = bytes.len() / 2;
        for b in damaged.iter_mut().skip(half).take(bytes.len() - half - 2) {
            *b = 0x55;
        }
        let (serial, split) = both(&damaged, 2);
        assert_eq!(serial.map(|_| ()), split.map(|_| ()));
    }
}
