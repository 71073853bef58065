//! [`PolicyError`], the crate's one error type, and turning Cedar's source spans into `file:line:col`.

use std::fmt;

use miette::Diagnostic;
use sallyport_ids::CustomerId;

/// A place in a policy file: 1-based line and column (in characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The policy file's name, as given to [`crate::CustomerPolicy::parse`].
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
}

impl Location {
    /// The location of byte `offset` in `source` (clamped to the text; a mid-character offset counts as
    /// that character).
    pub(crate) fn at(file: &str, source: &str, offset: usize) -> Self {
        let mut end = offset.min(source.len());
        while !source.is_char_boundary(end) {
            end -= 1;
        }
        let before = &source[..end];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Self {
            file: file.to_owned(),
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// One problem found in a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where it is.
    pub at: Location,
    /// What is wrong, lowercase, with Cedar's help text appended when it has one.
    pub message: String,
}

impl Problem {
    /// A problem from a Cedar diagnostic: located at its first labelled span, message plus help.
    pub(crate) fn from_diagnostic(file: &str, source: &str, diag: &dyn Diagnostic) -> Self {
        let offset = diag
            .labels()
            .and_then(|mut labels| labels.next())
            .map_or(0, |label| label.offset());
        let mut message = diag.to_string();
        if let Some(help) = diag.help() {
            message.push_str(" (help: ");
            message.push_str(&help.to_string());
            message.push(')');
        }
        Self {
            at: Location::at(file, source, offset),
            message,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

/// Displays problems one per line.
struct Lines<'a>(&'a [Problem]);

impl fmt::Display for Lines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// A customer's policy could not be loaded. Every variant about the file names `file:line:col`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The file is not valid Cedar policy syntax (one problem per line, in file order).
    #[error("{}", Lines(.0))]
    Parse(Vec<Problem>),
    /// The policies do not validate against the Sallyport schema in strict mode (one problem per line).
    #[error("{}", Lines(.0))]
    Validation(Vec<Problem>),
    /// Two policies have the same id.
    #[error("{at}: duplicate policy id `{id}`; give each policy its own `@id`")]
    DuplicateId {
        /// The repeating policy's `@id` annotation.
        at: Location,
        /// The repeated id.
        id: String,
    },
    /// A policy has an `@id` annotation with an empty value.
    #[error("{at}: empty policy id; write `@id(\"some-name\")`")]
    EmptyId {
        /// The `@id` annotation.
        at: Location,
    },
    /// The file holds a policy template, which Sallyport does not link.
    #[error(
        "{at}: policy templates (`?principal`, `?resource`) are not supported; name the principal or resource"
    )]
    Template {
        /// The first template slot.
        at: Location,
    },
    /// The customer's time zone is not an IANA time zone name.
    #[error(
        "unknown time zone `{zone}` for customer `{customer}`: use an IANA name such as `Europe/Berlin`"
    )]
    TimeZone {
        /// The customer.
        customer: CustomerId,
        /// The rejected zone name.
        zone: String,
    },
    /// A bug in this crate, not in the policy file (e.g. the built-in schema does not load).
    #[error("internal error: {0}")]
    Internal(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_count_lines_and_characters() {
        let src = "ab\ncdé\nfg";
        let at = |o| {
            let l = Location::at("f", src, o);
            (l.line, l.column)
        };
        assert_eq!(at(0), (1, 1));
        assert_eq!(at(2), (1, 3));
        assert_eq!(at(3), (2, 1));
        assert_eq!(at(5), (2, 3));
        assert_eq!(at(6), (2, 3), "mid-character offset");
        assert_eq!(at(8), (3, 1));
        assert_eq!(at(1000), (3, 3), "clamped");
        assert_eq!(Location::at("p.cedar", src, 3).to_string(), "p.cedar:2:1");
    }
}
