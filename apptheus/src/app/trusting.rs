//! The trusted starters and launchers: resolved at start, re-resolved on
//! SIGHUP, at once when their directories change (a package upgrade
//! replaces the file at a path), and every few seconds (Apptainer may be
//! installed after the agent, into directories that did not exist).
use std::collections::BTreeSet;

use tokio::sync::watch;

use super::Agent;
use crate::error_chain::chain;
use crate::{
    attribution::trust::{self, TrustedSet},
    cli::Args,
    export::metrics::AgentMetrics,
    host::dirwatch::DirWatch,
};

pub(super) struct Trust {
    pub starters: TrustedSet,
    /// Apptainer's command-line tools (cgroup warm-up, helper runs).
    pub launchers: TrustedSet,
    /// The trusted set, as the monitoring socket sees it.
    tx: Option<watch::Sender<TrustedSet>>,
    /// The last error re-resolving the trusted paths, said once.
    error: Option<String>,
}

impl Trust {
    /// Resolves `--trust.path` and `--trust.launcher`. A path given that
    /// does not exist stops the agent (a typo); with none given, finding
    /// no starter is a warning: the agent trusts them once they appear.
    pub(super) fn resolve(args: &Args) -> anyhow::Result<Trust> {
        let starters = TrustedSet::resolve(&args.trusted_paths())?;
        if starters.files.is_empty() {
            tracing::warn!(
                "no Apptainer starter found in the standard places; trusting nothing until one is \
                 installed (looked for again every few seconds), or pass --trust.path"
            );
        } else {
            tracing::info!(starters = %starters.describe(), "trusting starters");
        }
        let launchers = TrustedSet::resolve_launchers(&args.launcher_paths(), &starters)?;
        if launchers.files.is_empty() {
            tracing::info!(
                "no Apptainer launcher found (--trust.launcher): placements are not prepared ahead"
            );
        } else {
            tracing::info!(launchers = %launchers.describe(), "trusting launchers");
        }
        Ok(Trust {
            starters,
            launchers,
            tx: None,
            error: None,
        })
    }

    pub(super) fn with_sender(mut self, tx: watch::Sender<TrustedSet>) -> Trust {
        self.tx = Some(tx);
        self
    }

    /// Shows how many starters and launchers are trusted.
    pub(super) fn publish(&self, metrics: &AgentMetrics) {
        metrics
            .own
            .trusted_files
            .with_label_values(&["starter"])
            .set(self.starters.files.len() as i64);
        metrics
            .own
            .trusted_files
            .with_label_values(&["launcher"])
            .set(self.launchers.files.len() as i64);
    }
}

impl Agent {
    /// Watches the directories of every file that is or may become
    /// trusted: the paths given, else the standard places, and the
    /// launchers. None (with a warning) if inotify is unavailable: the
    /// re-resolution every few seconds remains.
    pub(super) fn watch_trusted(&self) -> Option<DirWatch> {
        let mut files = self.args.trusted_paths();
        if files.is_empty() {
            files = trust::default_starters(std::path::Path::new("/"));
        }
        let mut launchers = self.args.launcher_paths();
        if launchers.is_empty() {
            launchers = trust::default_launchers(files.iter().map(|p| p.as_path()));
        }
        files.extend(launchers);
        match DirWatch::new(&files) {
            Ok(w) => {
                tracing::debug!(dirs = ?w.watched(), "watching the trusted files' directories");
                Some(w)
            }
            Err(e) => {
                tracing::warn!(error = %chain(&e), "cannot watch the trusted files' directories (inotify); a replaced starter is trusted within 5 s");
                None
            }
        }
    }

    /// Re-resolves the trusted paths; true if the trusted files changed.
    pub(super) fn reload_trust(&mut self, reason: &str) -> bool {
        let resolved = TrustedSet::resolve(&self.args.trusted_paths()).and_then(|t| {
            let l = TrustedSet::resolve_launchers(&self.args.launcher_paths(), &t)?;
            Ok((t, l))
        });
        let trust = &mut self.trust;
        match resolved {
            Ok((t, l)) if t == trust.starters && l == trust.launchers => {
                trust.error = None;
                if reason == "SIGHUP" {
                    tracing::info!("SIGHUP: trusted starters unchanged");
                }
                false
            }
            Ok((t, l)) => {
                trust.error = None;
                if let Some(k) = self.kernel.as_mut()
                    && let Err(e) = k.set_trusted(&t.ids(), &l.ids())
                {
                    tracing::error!(error = %chain(&e), "updating the kernel's trusted set failed; keeping the old one");
                    return false;
                }
                if l != trust.launchers {
                    tracing::info!(before = %trust.launchers.describe(), after = %l.describe(), "{reason}: launchers changed");
                    trust.launchers = l;
                }
                let mut new = BTreeSet::new();
                if t != trust.starters {
                    tracing::info!(before = %trust.starters.describe(), after = %t.describe(), "{reason}: trusted starters changed");
                    if let Some(tx) = &trust.tx {
                        tx.send_replace(t.clone());
                    }
                    new = t.ids().difference(&trust.starters.ids()).copied().collect();
                    trust.starters = t;
                }
                trust.publish(&self.metrics);
                self.recover_runs(&new, super::recovering::Search::NewlyTrusted);
                true
            }
            Err(e) => {
                // Said once per distinct problem, not at every re-check.
                let text = chain(&e).to_string();
                if trust.error.as_deref() != Some(text.as_str()) {
                    tracing::error!(error = %text, "{reason}: cannot resolve trusted starters; keeping the old set");
                    trust.error = Some(text);
                }
                false
            }
        }
    }
}
