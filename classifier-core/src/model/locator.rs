//! Finding model and label files on disk, and verifying their checksums.
//!
//! Search order: `$MODEL_DIR`, then `./models`, then `../shared/models`, each tried relative to
//! the current directory first and then to each of its ancestors (so that tests, which cargo
//! runs from a crate's own directory, find the same files as a binary run from the workspace
//! root). The first directory that holds the file wins; a file whose sha256 differs from the
//! manifest's is an error, not a reason to keep looking.

use std::path::PathBuf;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Where model files are looked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelLocator {
    dirs: Vec<PathBuf>,
}

impl ModelLocator {
    /// The standard search path (`$MODEL_DIR`, `./models`, `../shared/models`, then the same
    /// relative to each ancestor of the current directory).
    pub fn from_env() -> ModelLocator {
        let mut dirs = Vec::new();
        if let Some(dir) = std::env::var_os("MODEL_DIR").filter(|d| !d.is_empty()) {
            dirs.push(PathBuf::from(dir));
        }
        if let Ok(cwd) = std::env::current_dir() {
            for base in cwd.ancestors() {
                dirs.push(base.join("models"));
                if let Some(parent) = base.parent() {
                    dirs.push(parent.join("shared").join("models"));
                }
            }
        }
        ModelLocator { dirs }
    }

    /// Search exactly these directories, in order.
    pub fn with_dirs(dirs: impl IntoIterator<Item = PathBuf>) -> ModelLocator {
        ModelLocator {
            dirs: dirs.into_iter().collect(),
        }
    }

    /// The directories searched, in order.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// The first existing path for `file` in the search directories.
    pub fn find(&self, file: &str) -> Result<PathBuf> {
        if file.contains(['/', '\\']) || file == ".." {
            return Err(Error::Manifest(format!(
                "file name {file:?} must not contain a path"
            )));
        }
        self.dirs
            .iter()
            .map(|dir| dir.join(file))
            .find(|path| path.is_file())
            .ok_or_else(|| Error::ModelFileNotFound {
                file: file.to_string(),
                searched: self.dirs.clone(),
            })
    }

    /// Find `file`, read it, and check its sha256 when `expected_sha256` is given.
    pub fn read_verified(
        &self,
        file: &str,
        expected_sha256: Option<&str>,
    ) -> Result<(PathBuf, Vec<u8>)> {
        let path = self.find(file)?;
        let bytes = std::fs::read(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        if let Some(expected) = expected_sha256 {
            let actual = sha256_hex(&bytes);
            if !actual.eq_ignore_ascii_case(expected) {
                return Err(Error::ChecksumMismatch {
                    path,
                    expected: expected.to_string(),
                    actual,
                });
            }
        }
        Ok((path, bytes))
    }

    /// The first `manifest.toml` in the search directories, if any.
    pub fn find_manifest(&self) -> Option<PathBuf> {
        self.dirs
            .iter()
            .map(|dir| dir.join("manifest.toml"))
            .find(|p| p.is_file())
    }
}

/// Lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
