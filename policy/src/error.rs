//! Load errors: every one names the file, the document, the field, the line
//! and the reason.

use std::fmt;
use std::path::PathBuf;

/// One invalid input, located as precisely as the parser allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file path (or the label given to `parse_str`).
    pub file: String,
    /// 0-based index of the YAML document within the file.
    pub document: Option<usize>,
    /// Field path, e.g. `spec.rules[0].from[1].source.ipBlocks[2]`; `None`
    /// for errors about the whole document (YAML syntax, for example).
    pub field: Option<String>,
    /// 1-based line and column, when known.
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        if let Some(doc) = self.document {
            write!(f, ": document {doc}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// Why a policy set did not load. Nothing from a set with an error is used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", DisplayAll(.0))]
    Invalid(Vec<ConfigError>),
}

impl PolicyError {
    /// The located errors (empty for I/O errors).
    pub fn errors(&self) -> &[ConfigError] {
        match self {
            PolicyError::Io { .. } => &[],
            PolicyError::Invalid(errors) => errors,
        }
    }
}

struct DisplayAll<'a>(&'a [ConfigError]);

impl fmt::Display for DisplayAll<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}
