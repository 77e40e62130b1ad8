//! An error and its causes on one line, `what failed: why: why...`. Each
//! error of the daemon says in its message what failed and gives why as
//! its `source()` (never both), so printing the chain says each cause once.
//! The log lines (`error = %chain(&e)`) and the exit message print errors
//! this way.
//!
//! Every cause is printed as its error says it: nothing is compared or left
//! out. Where another crate's error quotes the error it wraps (aya's
//! `map error: {0}`), the daemon keeps the wrapped error as its cause
//! instead (see `attribution::kernel::load_cause`). A test in `logging`
//! checks that none of the daemon's errors quotes its cause.
use std::{error::Error, fmt};

/// An error followed by each of its sources, `: `-separated.
#[derive(Clone, Copy)]
pub(crate) struct Chain<'a>(&'a (dyn Error + 'static));

/// `e` and its causes, for a log line or a message.
pub(crate) fn chain<'a>(e: &'a (dyn Error + 'static)) -> Chain<'a> {
    Chain(e)
}

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An error with a cause, as the agent's own errors are (also the
    /// logging tests').
    #[derive(Debug, thiserror::Error)]
    #[error("trusted starter /x does not exist (fix --trust.path)")]
    pub(crate) struct Missing {
        #[source]
        pub(crate) source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("cannot start")]
    struct Start(#[source] Missing);

    /// Each error of the chain is said once, outermost first; an error
    /// without a source is its message alone.
    #[test]
    fn each_cause_is_said_once_in_order() {
        let io = std::io::Error::from_raw_os_error(libc::ENOENT);
        let e = Start(Missing { source: io });
        let line = chain(&e).to_string();
        assert_eq!(
            line,
            "cannot start: trusted starter /x does not exist (fix --trust.path): \
             No such file or directory (os error 2)"
        );
        let alone = std::io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(chain(&alone).to_string(), "Permission denied (os error 13)");
    }
}
