//! The `classify` example run as a user would: real files, real process, JSON output parsed.
//! `cargo test` builds the examples before the tests, so the binary is next to this test's.

mod support;

use std::path::PathBuf;
use std::process::Command;

use classifier::model::ModelLocator;

fn samples() -> PathBuf {
    let labels = ModelLocator::from_env()
        .find("imagenet_classes.txt")
        .expect("../shared/models is required");
    labels.with_file_name("samples")
}

fn json_lines(stdout: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

#[test]
fn json_output_classifies_photos_and_reports_a_text_file() {
    let text = std::env::temp_dir().join(format!("cli-notes-{}.txt", std::process::id()));
    std::fs::write(&text, "just some notes\n").expect("write");
    let out = Command::new(support::example_binary("classify"))
        .args(["--json", "--top-k", "3"])
        .arg(samples().join("chelsea.png"))
        .arg(&text)
        .arg(samples().join("coffee.png"))
        .output()
        .expect("run classify");
    std::fs::remove_file(&text).ok();
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failed file makes the exit status 1"
    );
    let lines = json_lines(&out.stdout);
    assert_eq!(lines.len(), 3, "the run goes on after a bad file");
    assert_eq!(lines[0]["predictions"][0]["class_id"], 285);
    assert_eq!(lines[0]["predictions"][0]["class_name"], "Egyptian cat");
    assert_eq!(lines[0]["predictions"].as_array().map(Vec::len), Some(3));
    assert_eq!(lines[0]["image_metadata"]["format"], "png");
    assert_eq!(lines[0]["image_metadata"]["width"], 451);
    assert_eq!(lines[0]["model_version"], "shufflenet-v2-f32");
    assert!(lines[0]["processing_time"]
        .as_f64()
        .is_some_and(|t| t > 0.0));
    assert_eq!(lines[1]["error"]["error"], "INVALID_IMAGE");
    assert!(lines[1]["error"]["detail"]
        .as_str()
        .is_some_and(|d| d.contains("text")));
    assert_eq!(lines[2]["predictions"][0]["class_name"], "espresso");
}

#[test]
fn a_directory_is_expanded_and_all_photos_succeed() {
    let out = Command::new(support::example_binary("classify"))
        .args(["--json", "--model", "mobilenetv2-f32"])
        .arg(samples())
        .output()
        .expect("run classify");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out.stdout);
    assert_eq!(lines.len(), 14);
    assert!(lines
        .iter()
        .all(|l| l["model_version"] == "mobilenetv2-f32"));
}

#[test]
fn an_unknown_model_is_a_clear_error() {
    let out = Command::new(support::example_binary("classify"))
        .args(["--model", "resnet-9000"])
        .arg(samples().join("chelsea.png"))
        .output()
        .expect("run classify");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("resnet-9000") && stderr.contains("shufflenet-v2-f32"),
        "{stderr}"
    );
}
