//! Problems found in policy, schema, entity and test files, with the file, line and column they
//! point at. Rendering lives in [`crate::render`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

/// The severity of a [`Diagnostic`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Blocks loading: the policy set is not usable.
    Error,
    /// Worth a reviewer's attention; fails `validate` only with `--deny-warnings`.
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Severity::Error => f.write_str("error"),
            Severity::Warning => f.write_str("warning"),
        }
    }
}

/// A position in a source file: 1-based line and column (columns count characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Location {
    /// 1-based line number.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
}

/// One problem, located in a file where possible.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// Stable machine-readable kind, such as `policy-syntax` or `missing-id`.
    pub code: &'static str,
    /// The problem, in one lowercase sentence without a final period.
    pub message: String,
    /// The file the problem is in, as given to the loader.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// The position in `file` where the problem starts.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    /// Length of the marked text in characters, on the first line.
    #[serde(skip)]
    pub marker_len: usize,
    /// The text of the line at `location`, for rendering a snippet.
    #[serde(skip)]
    pub source_line: Option<String>,
    /// Advice on how to fix the problem.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
    /// The policy the problem belongs to, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_id: Option<String>,
}

impl Diagnostic {
    /// Creates an error without a location.
    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(Severity::Error, code, message)
    }

    /// Creates a warning without a location.
    pub fn warning(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(Severity::Warning, code, message)
    }

    fn new(severity: Severity, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            severity,
            code,
            message: message.into(),
            file: None,
            location: None,
            marker_len: 0,
            source_line: None,
            help: None,
            policy_id: None,
        }
    }

    /// Attaches the file, without a position inside it.
    pub fn in_file(mut self, path: &Path) -> Self {
        self.file = Some(path.to_path_buf());
        self
    }

    /// Attaches a file and the byte range `offset..offset + len` inside it.
    pub fn at(mut self, source: &SourceFile, offset: usize, len: usize) -> Self {
        let location = source.location(offset);
        let line_text = source.line_text(location.line).to_string();
        let end = offset.saturating_add(len).min(source.text.len());
        let marked = source.text.get(offset..end).unwrap_or("");
        let first_line_of_marked = marked.lines().next().unwrap_or("");
        self.marker_len = first_line_of_marked.chars().count().max(1);
        self.file = Some(source.path.clone());
        self.location = Some(location);
        self.source_line = Some(line_text);
        self
    }

    /// Attaches a file and a 1-based line and column reported by another parser.
    pub fn at_line_column(mut self, source: &SourceFile, line: usize, column: usize) -> Self {
        self.file = Some(source.path.clone());
        self.location = Some(Location { line, column });
        self.source_line = Some(source.line_text(line).to_string());
        self.marker_len = 1;
        self
    }

    /// Adds advice on how to fix the problem.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Names the policy the problem belongs to.
    pub fn for_policy(mut self, id: impl Into<String>) -> Self {
        self.policy_id = Some(id.into());
        self
    }

    /// Builds a diagnostic from one of Cedar's errors, whose labels carry byte offsets into the
    /// text of `source`.
    pub fn from_cedar(
        severity: Severity,
        code: &'static str,
        error: &dyn miette::Diagnostic,
        source: Option<&SourceFile>,
    ) -> Self {
        let mut diagnostic = Self::new(severity, code, message_with_causes(error));
        if let Some(help) = error.help() {
            diagnostic.help = Some(help.to_string());
        }
        let first_label = error.labels().and_then(|mut labels| labels.next());
        match (source, first_label) {
            (Some(source), Some(label)) => diagnostic.at(source, label.offset(), label.len()),
            (Some(source), None) => diagnostic.in_file(&source.path),
            (None, _) => diagnostic,
        }
    }

    /// Returns `true` for errors.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}", file.display())?;
            if let Some(location) = self.location {
                write!(f, ":{}:{}", location.line, location.column)?;
            }
            f.write_str(": ")?;
        }
        write!(f, "{}: {}", self.severity, self.message)
    }
}

/// The text of one loaded file, with an index of its line starts.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// The path as given to the loader (relative paths stay relative).
    pub path: PathBuf,
    /// The whole text.
    pub text: Arc<str>,
    line_starts: Vec<usize>,
}

impl SourceFile {
    /// Indexes `text` as the content of `path`.
    pub fn new(path: PathBuf, text: impl Into<Arc<str>>) -> Self {
        let text: Arc<str> = text.into();
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(index, _)| index + 1));
        Self {
            path,
            text,
            line_starts,
        }
    }

    /// Converts a byte offset into a 1-based line and character column.
    pub fn location(&self, offset: usize) -> Location {
        let offset = offset.min(self.text.len());
        let line_index = match self.line_starts.binary_search(&offset) {
            Ok(index) => index,
            Err(index) => index.saturating_sub(1),
        };
        let line_start = self.line_starts.get(line_index).copied().unwrap_or(0);
        let column = self
            .text
            .get(line_start..offset)
            .map_or(offset - line_start, |prefix| prefix.chars().count());
        Location {
            line: line_index + 1,
            column: column + 1,
        }
    }

    /// Returns the text of a 1-based line, without its line break.
    pub fn line_text(&self, line: usize) -> &str {
        let Some(start) = line.checked_sub(1).and_then(|i| self.line_starts.get(i)) else {
            return "";
        };
        let rest = self.text.get(*start..).unwrap_or("");
        rest.split('\n').next().unwrap_or("").trim_end_matches('\r')
    }
}

/// Returns an error's message followed by each cause in its source chain that the message does
/// not already contain, joined by `: `.
pub(crate) fn message_with_causes(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let text = inner.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        cause = inner.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_counts_lines_and_characters() {
        let source = SourceFile::new(PathBuf::from("a.cedar"), "ab\nçd\nlast");
        assert_eq!(source.location(0), Location { line: 1, column: 1 });
        assert_eq!(source.location(3), Location { line: 2, column: 1 });
        // `ç` is two bytes but one column.
        assert_eq!(source.location(5), Location { line: 2, column: 2 });
        assert_eq!(source.location(7), Location { line: 3, column: 1 });
        assert_eq!(source.line_text(2), "çd");
        assert_eq!(source.line_text(9), "");
    }
}
