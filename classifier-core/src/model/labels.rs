//! Class labels: one name per line, the line index is the class id.
//!
//! ImageNet's short names are not unique (`crane` is 134 and 517, `maillot` 638 and 639), so
//! every prediction carries its class id and labels are never looked up by name alone.

use std::path::Path;

use crate::error::{Error, Result};

/// The class names of one model, indexed by class id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labels {
    names: Vec<String>,
}

impl Labels {
    /// Parse a labels file (`str::lines`, so a missing trailing newline is fine).
    pub fn parse(text: &str, path: &Path) -> Result<Labels> {
        let names: Vec<String> = text.lines().map(|l| l.trim().to_string()).collect();
        if let Some(i) = names.iter().position(|n| n.is_empty()) {
            return Err(Error::Labels {
                path: path.to_path_buf(),
                reason: format!("line {} is empty", i + 1),
            });
        }
        Ok(Labels { names })
    }

    /// Number of classes.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// True if there are no labels.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The name of class `id`.
    pub fn name(&self, id: usize) -> Option<&str> {
        self.names.get(id).map(String::as_str)
    }

    /// Every class id whose name is `name` (ImageNet has duplicates).
    pub fn ids_of(&self, name: &str) -> Vec<usize> {
        self.names
            .iter()
            .enumerate()
            .filter(|(_, n)| n.as_str() == name)
            .map(|(i, _)| i)
            .collect()
    }
}
