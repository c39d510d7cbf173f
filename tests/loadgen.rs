//! The `loadgen` example run as a benchmark user would, against a real server (127.0.0.1:0,
//! the real model, API keys on): it must complete jobs without errors over the WebSocket and by
//! polling, and report what the server refused. `cargo test` builds the examples before the
//! tests, so the binary is next to this test's. No figure is asserted, only that the client
//! works.

mod http_support;
mod support;

use classifier_http::HttpConfig;
use http_support::{start, Options};

const KEY: &str = "loadgen-test-key";

/// Run the load generator for one second at concurrency 2; its standard output.
async fn run(base: &str, extra: &[&str]) -> String {
    let mut command = std::process::Command::new(support::example_binary("loadgen"));
    command
        .args(["--url", base, "--concurrency", "2", "--duration", "1"])
        .args(["--warmup", "0"])
        .args(extra);
    let out = output(command).await;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "loadgen failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Run `command` to its end off the runtime's threads (the server runs on them).
async fn output(mut command: std::process::Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("blocking task")
        .expect("run loadgen")
}

/// The number after "completed jobs: " in a report.
fn completed(report: &str) -> usize {
    report
        .lines()
        .find_map(|l| l.strip_prefix("completed jobs: "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no completed count in {report}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completes_jobs_over_the_websocket_and_by_polling_and_reports_refusals() {
    let server = start(Options {
        http: HttpConfig {
            api_keys: vec![KEY.into()],
            ..Options::default().http
        },
        ..Options::default()
    })
    .await;

    for mode in [&["--ws"][..], &["--poll-ms", "2"][..]] {
        let mut args = vec!["--api-key", KEY];
        args.extend_from_slice(mode);
        let report = run(&server.base, &args).await;
        assert!(completed(&report) > 0, "{mode:?}: {report}");
        assert!(report.contains("errors: {}"), "{mode:?}: {report}");
    }

    // Without the key every submission is refused, and the report says so.
    let report = run(&server.base, &["--ws"]).await;
    assert_eq!(completed(&report), 0, "{report}");
    assert!(report.contains("\"submit 401\""), "{report}");

    // A URL with a path is refused at once with a clear message.
    let mut command = std::process::Command::new(support::example_binary("loadgen"));
    command.args(["--url", &server.url("/api/v1"), "--duration", "1"]);
    let out = output(command).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("without a path"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop().await;
}
