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

use classifier_core::image::ValidationConfig;
use classifier_core::preprocess::{PreprocessSpec, Preprocessor};

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
    let pre = Preprocessor::new(PreprocessSpec::imagenet()).expect("spec");
    for path in inputs {
        let bytes = std::fs::read(&path).expect("read input");
        match validation.decode(&bytes) {
            Ok(decoded) => {
                let tensor = pre.run(&decoded.rgb).expect("decoded images preprocess");
                assert!(tensor.iter().all(|v| v.is_finite()), "{path:?}");
            }
            Err(e) => assert!(e.is_invalid_image(), "{path:?}: {e}"),
        }
    }
}
