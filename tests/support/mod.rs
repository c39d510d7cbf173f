//! Small helpers shared by integration tests that run example binaries or edit a model
//! manifest on disk.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The example binary `name`, built next to the test binaries (`cargo test --workspace`
/// builds the examples before the tests; a test selected with `--test` alone does not).
pub fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{bin:?} missing: cargo test builds examples first"
    );
    bin
}

/// Write the repository's model manifest to `path` with `default = "<default>"` followed by
/// the line `extra` (e.g. a `latest_weights = {...}` line, or nothing). Written to a
/// temporary file and renamed into place, so no reader ever sees half a file.
pub fn write_manifest(path: &Path, default: &str, extra: &str) {
    let base = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/manifest.toml"),
    )
    .expect("repository manifest");
    let mut text = String::new();
    for line in base.lines() {
        if line.starts_with("default = ") {
            text.push_str(&format!("default = \"{default}\"\n{extra}\n"));
        } else {
            text.push_str(line);
            text.push('\n');
        }
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write manifest");
    std::fs::rename(&tmp, path).expect("rename manifest");
}
