//! One line for an error and its causes.
//!
//! The workspace's error types follow one rule: a variant that has a source
//! does not print it; its message says what was being done, and whoever
//! prints the error walks the chain. This is that walk for the places that
//! turn an error into text themselves (log lines, the guest-facing I/O error
//! log, error strings handed across an API), so that no cause is lost and
//! none is printed twice.

use std::error::Error;
use std::fmt;

/// Displays `err` followed by each of its causes, joined with ": ", the
/// same text as anyhow's `{:#}`.
pub fn error_chain<'a>(err: &'a (dyn Error + 'a)) -> ErrorChain<'a> {
    ErrorChain(err)
}

/// An error shown with its causes; made by [`error_chain`].
#[derive(Clone, Copy)]
pub struct ErrorChain<'a>(&'a (dyn Error + 'a));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(err) = cause {
            write!(f, ": {err}")?;
            cause = err.source();
        }
        Ok(())
    }
}

impl fmt::Debug for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[derive(Debug)]
    struct Outer(io::Error);

    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("reading the manifest")
        }
    }

    impl Error for Outer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn prints_each_cause_once_in_order() {
        let inner = io::Error::new(io::ErrorKind::NotFound, "index.json: missing");
        let err = Outer(inner);
        assert_eq!(
            error_chain(&err).to_string(),
            "reading the manifest: index.json: missing"
        );
    }

    #[test]
    fn an_error_without_causes_is_its_message() {
        let err = io::Error::other("disk full");
        assert_eq!(error_chain(&err).to_string(), "disk full");
    }
}
