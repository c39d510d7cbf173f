//! Inputs kept from fuzzing (`fuzz/`): each must go through validation, decode and
//! preprocessing with a typed result and no panic. Any crash the fuzzer finds is added here.

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
