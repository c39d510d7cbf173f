//! Inputs kept from fuzzing (`fuzz/`): each must go through validation, decode and
//! preprocessing with a typed result and no panic. Any crash the fuzzer finds is added here.
//!
//! Run of 2026-11-26: `RUSTC_BOOTSTRAP=1 cargo fuzz run decode_preprocess --
//! -max_total_time=660 -max_len=300000`, seeded with the decoder fixtures and the small sample
//! photos: 45,535 executions in 661 s (ASan build, ~68 exec/s: every input is decoded and
//! resized), 5,235 coverage points, no crash, leak or timeout. The fuzzer found no failing
//! input, so the files in `tests/fuzz_regressions/` are a spread of its mutated corpus
//! (corrupt PNG chunks, truncated JPEG scans, broken WebP headers, ...), kept as regression
//! inputs for the error paths.
//!
//! Run of the reduced-size JPEG decoder (`decode_for`), later the same day on another machine:
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run -s none -a decode_preprocess CORPUS SEEDS --
//! -max_total_time=720 -max_len=300000` (no sanitizer: the decoder has no `unsafe`; `-a` keeps
//! overflow checks and debug assertions on), seeded as before plus small JPEGs of every
//! subsampling, gray, progressive and EXIF-rotated. It found `crash-jpeg-cut-segment-after-scan`
//! after 160,129 executions: a table segment cut short after the scan, accepted by the reduced
//! decoder and refused by the full one (fixed: the segments after the scan are now checked).
//! The second run after the fix: 410,613 executions in 721 s (569 exec/s), 4,495 coverage
//! points, no failure.
//!
//! Run of the PNG fast path (`image/png_fast.rs`), where the target also compares every decode
//! with the `png` crate alone: same command, seeded with the fixtures, the kept inputs, the
//! sample photos under 300 KB and 20 small hand-built PNGs (every colour type and row filter,
//! single and split IDATs): 41,115 executions in 721 s (57 exec/s: the photo seeds are large),
//! no failure.
//!
//! Runs of 2026-12-07, after the fast path began undoing row filters eight rows at a time:
//! - `decode_preprocess` (ASan), seeded with the PNG fixtures and 20 hand-built RGB/RGBA PNGs
//!   of 32-64 pixels whose rows mix Paeth, Average and the other filters (two with an unknown
//!   filter byte inside a group of eight), `-max_total_time=900 -max_len=20000`: 736,415
//!   executions, 3,654 coverage points, no failure.
//! - `png_rows` (ASan), a new target that builds valid PNGs from its input so that every
//!   input reaches the row filters (byte mutations of whole files are refused at the CRCs),
//!   `-max_total_time=600 -max_len=4096`: 891,871 executions, no failure. With a bug planted in
//!   the eight-row code (the last row of a group reading zeros as its upper pixels) it panicked
//!   ("pixels differ from the png crate's") after 44 executions from an empty corpus.

use classifier_core::image::ValidationConfig;
use classifier_core::preprocess::{PreprocessSpec, Preprocessor};

/// The fuzz target's checks: a typed result from `decode` and from `decode_for` (with the
/// ImageNet resize, and with a tiny model so that small JPEGs take the reduced-size decoder),
/// and `decode_for` never accepts what `decode` refuses, nor reports other metadata; the PNG
/// fast path gives the `png` crate's outcome (same pixels, or the same error).
#[test]
fn every_kept_fuzz_input_gives_a_typed_result() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions");
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .expect("fuzz_regressions dir")
        .map(|e| e.expect("entry").path())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "no inputs in {dir:?}");
    let validation = ValidationConfig::default();
    let png_crate_only = ValidationConfig {
        fast_png: false,
        ..ValidationConfig::default()
    };
    let pre = Preprocessor::new(PreprocessSpec::imagenet()).expect("spec");
    let tiny = Preprocessor::new(PreprocessSpec {
        input_width: 8,
        input_height: 8,
        resize_shorter: 8,
        ..PreprocessSpec::imagenet()
    })
    .expect("tiny spec");
    for path in inputs {
        let bytes = std::fs::read(&path).expect("read input");
        let full = validation.decode(&bytes);
        match (&full, png_crate_only.decode(&bytes)) {
            (Ok(a), Ok(b)) => assert!(a.rgb == b.rgb && a.metadata == b.metadata, "{path:?}"),
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{path:?}"),
            _ => panic!("{path:?}: the PNG fast path and the png crate disagree"),
        }
        match &full {
            Ok(decoded) => {
                let tensor = pre.run(&decoded.rgb).expect("decoded images preprocess");
                assert!(tensor.iter().all(|v| v.is_finite()), "{path:?}");
            }
            Err(e) => assert!(e.is_invalid_image(), "{path:?}: {e}"),
        }
        for p in [&pre, &tiny] {
            match validation.decode_for(&bytes, p.spec().resize_shorter) {
                Ok(decoded) => {
                    let Ok(reference) = &full else {
                        panic!("{path:?}: decode_for accepted what decode refused");
                    };
                    assert_eq!(decoded.metadata, reference.metadata, "{path:?}");
                    let tensor = p.run_decoded(&decoded).expect("decoded images preprocess");
                    assert!(tensor.iter().all(|v| v.is_finite()), "{path:?}");
                }
                Err(e) => assert!(e.is_invalid_image(), "{path:?}: {e}"),
            }
        }
    }
}
