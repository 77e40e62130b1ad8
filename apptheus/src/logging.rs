//! Log set-up: logfmt (the Prometheus ecosystem's default) or JSON, to stderr.
use tracing_subscriber::{EnvFilter, prelude::*};

use crate::cli::{LogFormat, LogLevel};

pub fn init(level: LogLevel, format: LogFormat) {
    let level = match level {
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
    };
    // Our own crate at the chosen level; libraries one step quieter unless
    // debugging.
    let filter = EnvFilter::new(format!(
        "{},apptheus={level}",
        if level == "debug" { "info" } else { "warn" }
    ));
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Logfmt => registry
            .with(
                tracing_logfmt::builder()
                    .layer()
                    .with_writer(std::io::stderr),
            )
            .init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(std::io::stderr),
            )
            .init(),
    }
}

/// An error and its causes on one line, each cause said once: a message
/// that already quotes its cause (`... (No such file or directory)`)
/// is not followed by that cause again.
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("trusted starter /x does not exist ({source}); fix --trust.path")]
    struct Missing {
        source: std::io::Error,
    }

    #[test]
    fn each_cause_is_said_once() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let e = anyhow::Error::new(Missing { source: io }).context("cannot start");
        let line = error_chain(&e);
        assert_eq!(line.matches("not found").count(), 1, "{line}");
        assert!(
            line.starts_with("cannot start: trusted starter /x"),
            "{line}"
        );
        let plain = anyhow::anyhow!("a").context("b");
        assert_eq!(error_chain(&plain), "b: a");
    }
}
