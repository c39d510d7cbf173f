//! `classify`: classify image files from the command line.
//!
//! ```text
//! cargo run --release --example classify -- [--model VERSION] [--top-k K] [--json] PATH...
//! ```
//!
//! A PATH may be a file or a directory (its image files, by extension; content still decides
//! whether a file is a valid image). Text output by default; with `--json`, one JSON object
//! per image per line. A bad file prints an error and the run goes on; the exit status is 1
//! if any file failed.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use classifier::{Classification, Classifier};
use serde_json::json;

#[derive(Parser, Debug)]
#[command(about = "Classify images with an ImageNet ONNX model (tract)")]
struct Args {
    /// Model version from models/manifest.toml ("latest" = the manifest default).
    #[arg(long, default_value = "latest")]
    model: String,
    /// Number of predictions per image.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=1000))]
    top_k: u16,
    /// Print one JSON object per image per line.
    #[arg(long)]
    json: bool,
    /// Image files or directories.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

const IMAGE_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "svg", "avif", "heic",
];

/// Expand directories into their image files (sorted); keep files as given.
fn expand(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
                .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
                .unwrap_or_default();
            entries.retain(|p| {
                p.is_file()
                    && p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                        IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str())
                    })
            });
            entries.sort();
            files.extend(entries);
        } else {
            files.push(path.clone());
        }
    }
    files
}

/// The JSON line for one file.
fn json_line(file: &Path, outcome: &Result<(Classification, f64), (String, String)>) -> String {
    match outcome {
        Ok((c, seconds)) => json!({
            "file": file.display().to_string(),
            "model_version": c.model_version,
            "predictions": c.predictions,
            "image_metadata": c.image_metadata,
            "processing_time": seconds,
        }),
        Err((code, detail)) => json!({
            "file": file.display().to_string(),
            "error": { "error": code, "detail": detail },
        }),
    }
    .to_string()
}

/// The human-readable lines for one file.
fn text_lines(file: &Path, outcome: &Result<(Classification, f64), (String, String)>) -> String {
    match outcome {
        Ok((c, seconds)) => {
            let m = &c.image_metadata;
            let mut out = format!(
                "{}  ({} {}x{}, {} bytes, {:.1} ms, {})\n",
                file.display(),
                m.format,
                m.width,
                m.height,
                m.file_size,
                seconds * 1000.0,
                c.model_version
            );
            for p in &c.predictions {
                out += &format!(
                    "  {:6.2}%  {:>3}  {}\n",
                    100.0 * p.confidence,
                    p.class_id,
                    p.class_name
                );
            }
            out
        }
        Err((code, detail)) => format!("{}  ERROR {code}: {detail}\n", file.display()),
    }
}

fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    let classifier = Classifier::builder()
        .version(&args.model)
        .top_k(args.top_k.into())
        .build()
        .with_context(|| format!("cannot load model {:?}", args.model))?;
    let files = expand(&args.paths);
    let progress = (std::io::stderr().is_terminal() && files.len() > 8).then(|| {
        let bar = indicatif::ProgressBar::new(files.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let mut stdout = std::io::stdout().lock();
    let mut failed = 0usize;
    for file in &files {
        let started = Instant::now();
        let outcome = match std::fs::read(file) {
            Ok(bytes) => classifier
                .classify(&bytes)
                .map(|c| (c, started.elapsed().as_secs_f64()))
                .map_err(|e| (e.code().to_string(), e.to_string())),
            Err(e) => Err(("IO_ERROR".to_string(), format!("cannot read file: {e}"))),
        };
        failed += usize::from(outcome.is_err());
        let text = if args.json {
            json_line(file, &outcome) + "\n"
        } else {
            text_lines(file, &outcome)
        };
        let written = match &progress {
            Some(bar) => bar.suspend(|| stdout.write_all(text.as_bytes())),
            None => stdout.write_all(text.as_bytes()),
        };
        match written {
            // The reader went away (`| head`): stop quietly, like other Unix tools.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(ExitCode::FAILURE),
            other => other?,
        }
        if let Some(bar) = &progress {
            bar.inc(1);
        }
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    if files.is_empty() {
        eprintln!("no image files found");
        return Ok(ExitCode::FAILURE);
    }
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
