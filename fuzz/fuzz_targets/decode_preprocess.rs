//! Fuzz target: arbitrary bytes through validation, decoding and preprocessing.
//!
//! Any input must give `Ok` or a typed `Err`, never a panic, an abort or an unbounded
//! allocation. The limits are the defaults except for the decoder allocation limit, lowered to
//! 64 MiB so that libFuzzer's 2 GiB RSS limit is never the thing that stops a legitimately
//! bounded decode (the default 256 MiB per image is a production setting, not a bug).

#![no_main]

use std::sync::OnceLock;

use classifier_core::image::ValidationConfig;
use classifier_core::preprocess::{PreprocessSpec, Preprocessor};
use libfuzzer_sys::fuzz_target;

fn setup() -> &'static (ValidationConfig, Preprocessor) {
    static SETUP: OnceLock<(ValidationConfig, Preprocessor)> = OnceLock::new();
    SETUP.get_or_init(|| {
        let validation = ValidationConfig {
            max_decode_alloc: 64 * 1024 * 1024,
            ..ValidationConfig::default()
        };
        let pre = Preprocessor::new(PreprocessSpec::imagenet()).expect("imagenet spec");
        (validation, pre)
    })
}

fuzz_target!(|data: &[u8]| {
    let (validation, pre) = setup();
    let _ = validation.inspect(data);
    if let Ok(decoded) = validation.decode(data) {
        let tensor = pre.run(&decoded.rgb).expect("a decoded image always preprocesses");
        assert!(tensor.iter().all(|v| v.is_finite()));
    }
});
