//! Fuzz target: arbitrary bytes through validation, decoding and preprocessing.
//!
//! Any input must give `Ok` or a typed `Err`, never a panic, an abort or an unbounded
//! allocation. The limits are the defaults except for the decoder allocation limit, lowered to
//! 64 MiB so that libFuzzer's 2 GiB RSS limit is never the thing that stops a legitimately
//! bounded decode (the default 256 MiB per image is a production setting, not a bug).
//!
//! Three paths are driven with every input: the full-size decode with the ImageNet
//! preprocessing, `decode_for` with the ImageNet resize (reduced JPEG decoding for large
//! photos), and `decode_for` for a tiny model (resize 8, crop 8x8) so that the reduced-size
//! JPEG decoder (`image/jpeg_scaled.rs`) runs on the small files a fuzzer makes: any JPEG of
//! at least 32 pixels on its shorter side is then decoded at 1/2, 1/4 or 1/8.
//!
//! The PNG fast path (`image/png_fast.rs`, on by default) is checked against the `png` crate
//! (`fast_png: false`): the same pixels and metadata, or both refuse the file with the same
//! error. The two-thread reduced JPEG decode (`image/jpeg_scaled/split.rs`), forced on every
//! file (`jpeg_split_min_bytes: 0`), is checked against the one-thread decode the same way.

#![no_main]

use std::sync::OnceLock;

use classifier_core::image::ValidationConfig;
use classifier_core::preprocess::{PreprocessSpec, Preprocessor};
use libfuzzer_sys::fuzz_target;

struct Setup {
    validation: ValidationConfig,
    /// The same limits with the PNG fast path off: the `png` crate alone.
    reference: ValidationConfig,
    /// The same limits with every reduced JPEG decode split over two threads.
    split: ValidationConfig,
    /// The same limits with the reduced JPEG decode on one thread only.
    one_thread: ValidationConfig,
    imagenet: Preprocessor,
    tiny: Preprocessor,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let validation = ValidationConfig {
            max_decode_alloc: 64 * 1024 * 1024,
            ..ValidationConfig::default()
        };
        let imagenet = Preprocessor::new(PreprocessSpec::imagenet()).expect("imagenet spec");
        let tiny = Preprocessor::new(PreprocessSpec {
            input_width: 8,
            input_height: 8,
            resize_shorter: 8,
            ..PreprocessSpec::imagenet()
        })
        .expect("tiny spec");
        let reference = ValidationConfig {
            fast_png: false,
            ..validation.clone()
        };
        let split = ValidationConfig {
            jpeg_split_min_bytes: 0,
            ..validation.clone()
        };
        let one_thread = ValidationConfig {
            jpeg_split_min_bytes: usize::MAX,
            ..validation.clone()
        };
        Setup {
            validation,
            reference,
            split,
            one_thread,
            imagenet,
            tiny,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let s = setup();
    let _ = s.validation.inspect(data);
    let full = s.validation.decode(data);
    match (&full, s.reference.decode(data)) {
        (Ok(fast), Ok(reference)) => {
            assert_eq!(fast.metadata, reference.metadata);
            assert!(fast.rgb == reference.rgb, "PNG fast path pixels differ");
        }
        (Err(fast), Err(reference)) => assert_eq!(fast.to_string(), reference.to_string()),
        (fast, reference) => panic!(
            "PNG fast path and png crate disagree: {:?} vs {:?}",
            fast.as_ref().map(|d| d.path),
            reference.map(|d| d.path)
        ),
    }
    if let Ok(decoded) = &full {
        let tensor = s
            .imagenet
            .run(&decoded.rgb)
            .expect("a decoded image always preprocesses");
        assert!(tensor.iter().all(|v| v.is_finite()));
    }
    for pre in [&s.imagenet, &s.tiny] {
        let resize = pre.spec().resize_shorter;
        match (s.split.decode_for(data, resize), s.one_thread.decode_for(data, resize)) {
            (Ok(split), Ok(one)) => {
                assert_eq!(split.metadata, one.metadata);
                assert_eq!(split.scale_denom, one.scale_denom);
                assert!(split.rgb == one.rgb, "split JPEG decode pixels differ");
            }
            (Err(split), Err(one)) => assert_eq!(split.to_string(), one.to_string()),
            (split, one) => panic!(
                "split and one-thread JPEG decodes disagree: {:?} vs {:?}",
                split.map(|d| d.path),
                one.map(|d| d.path)
            ),
        }
        if let Ok(decoded) = s.validation.decode_for(data, resize) {
            // Same image as the full decode: same metadata (full size), and a reduced image
            // is accepted only where the full decoder accepts the file too.
            let full = full
                .as_ref()
                .expect("decode_for accepted what decode refused");
            assert_eq!(decoded.metadata, full.metadata);
            let tensor = pre
                .run_decoded(&decoded)
                .expect("a decoded image always preprocesses");
            assert!(tensor.iter().all(|v| v.is_finite()));
        }
    }
});
