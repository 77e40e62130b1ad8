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

/// An error and its causes on one line (`cannot start: what failed: why`),
/// as the daemon's last words.
pub fn error_chain(e: &anyhow::Error) -> String {
    crate::error_chain::chain(e.as_ref()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error_chain::tests::Missing;

    /// The context, the error and its cause, each said once.
    #[test]
    fn each_cause_is_said_once() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let e = anyhow::Error::new(Missing { source: io }).context("cannot start");
        let line = error_chain(&e);
        assert_eq!(
            line,
            "cannot start: trusted starter /x does not exist (fix --trust.path): entity not found"
        );
        let plain = anyhow::anyhow!("a").context("b");
        assert_eq!(error_chain(&plain), "b: a");
    }

    /// The daemon's own errors, as they would reach a log line.
    mod daemon_errors {
        use std::{error::Error, io, path::PathBuf};

        use crate::{
            attribution::{
                kernel::{KernelError, collectors::CollectorError, offsets::OffsetError},
                socket::{SocketError, verify::VerifyError},
                trust::TrustError,
            },
            cgroup::{delegation::DelegationError, layout::LayoutError, placement::PlaceError},
            export::exposition::EncodeError,
            http::HttpError,
            push::PushError,
            webconfig::{WebConfigError, watch::LoadError},
        };

        /// Every error of the daemon that has a cause gives it as its
        /// `source()` and says what failed in its message, never the cause
        /// again (see `error_chain`).
        #[test]
        fn no_error_message_quotes_its_cause() {
            let io = || io::Error::from_raw_os_error(libc::EACCES);
            let p = || PathBuf::from("/x");
            let program = || aya::programs::ProgramError::AlreadyLoaded;
            let errors: Vec<Box<dyn Error>> = vec![
                Box::new(KernelError::Btf(aya::BtfError::InvalidHeader)),
                Box::new(KernelError::Load(Box::new(aya::EbpfError::NoBTF))),
                Box::new(KernelError::Program {
                    program: "p",
                    tracepoint: "t",
                    source: program(),
                }),
                Box::new(KernelError::Map {
                    map: "m",
                    source: aya::maps::MapError::KeyNotFound,
                }),
                Box::new(OffsetError::Btf {
                    path: "/sys/kernel/btf/vmlinux".into(),
                    source: Box::new(btf_rs::Error::Format("bad".into())),
                }),
                Box::new(OffsetError::Parse(btf_rs::Error::Format("bad".into()))),
                Box::new(CollectorError::Program {
                    program: "p",
                    hook: crate::attribution::kernel::collectors::Hook::Raw("sys_exit"),
                    source: program(),
                }),
                Box::new(CollectorError::Cgroup2 {
                    path: "/x".into(),
                    source: io(),
                }),
                Box::new(VerifyError::Credentials(nix::Error::EPERM)),
                Box::new(VerifyError::Pidfd {
                    pid: 1,
                    source: io(),
                }),
                Box::new(VerifyError::Proc {
                    path: p(),
                    source: io(),
                }),
                Box::new(SocketError::CreateDir {
                    dir: p(),
                    source: io(),
                }),
                Box::new(SocketError::Inspect {
                    path: p(),
                    source: io(),
                }),
                Box::new(SocketError::RemoveStale {
                    path: p(),
                    source: io(),
                }),
                Box::new(SocketError::Bind {
                    path: p(),
                    source: io(),
                }),
                Box::new(SocketError::Permissions {
                    path: p(),
                    source: io(),
                }),
                Box::new(TrustError::Missing {
                    path: p(),
                    source: io(),
                }),
                Box::new(TrustError::LauncherMissing {
                    path: p(),
                    source: io(),
                }),
                Box::new(PlaceError::ProcCgroup {
                    pid: 1,
                    source: io(),
                }),
                Box::new(PlaceError::Create {
                    dir: p(),
                    source: io(),
                }),
                Box::new(PlaceError::Move {
                    tid: 1,
                    dir: p(),
                    source: io(),
                }),
                Box::new(DelegationError::Read {
                    path: p(),
                    source: io(),
                }),
                Box::new(DelegationError::Write {
                    file: p(),
                    source: io(),
                }),
                Box::new(LayoutError::Read {
                    path: p(),
                    source: io(),
                }),
                Box::new(HttpError::Bind {
                    addr: "[::]:9100".into(),
                    source: io(),
                }),
                Box::new(PushError::Hostname(io())),
                Box::new(PushError::Tls(rustls::Error::General("bad".into()))),
                Box::new(EncodeError::Write(io())),
                Box::new(WebConfigError::Tls(rustls::Error::General("bad".into()))),
                Box::new(LoadError {
                    path: p(),
                    problem: WebConfigError::Read {
                        what: "the file",
                        path: p(),
                        source: io(),
                    },
                }),
            ];
            for e in &errors {
                let cause = e.source().expect("an error with a cause").to_string();
                let message = e.to_string();
                assert!(
                    !message.contains(&cause),
                    "{message:?} quotes its cause {cause:?}"
                );
            }
        }
    }
}
