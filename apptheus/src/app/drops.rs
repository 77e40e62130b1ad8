//! What the kernel programs dropped (a map full, a program's failed run),
//! exported at each housekeeping tick, and said once in the log with the
//! flag that avoids it.
use super::Agent;
use crate::model::drops::{self, Drop};

impl Agent {
    /// Reads the kernel's drop counters; exports what grew and logs the
    /// first of each kind.
    pub(super) fn report_drops(&mut self) {
        let Some(k) = &self.kernel else { return };
        let totals = k.drops();
        for news in self.drops.update(&totals) {
            match news.drop {
                Drop::MapFull(map) => {
                    self.metrics
                        .ebpf_map_full
                        .with_label_values(&[map.label()])
                        .inc_by(news.more);
                    if news.first {
                        tracing::warn!(
                            map = map.label(),
                            count = news.more,
                            "a kernel map is full: {}; raise {} (counted in apptheus_ebpf_map_full_total)",
                            map.loss(),
                            map.flag()
                        );
                    }
                }
                Drop::ProgramError(program) => {
                    self.metrics
                        .ebpf_program_errors
                        .with_label_values(&[program])
                        .inc_by(news.more);
                    if news.first {
                        tracing::warn!(
                            program,
                            count = news.more,
                            "a kernel program failed to read what it handles: {}; please report it with the kernel version (counted in apptheus_ebpf_program_errors_total)",
                            drops::program_loss(program)
                        );
                    }
                }
                // Exported by housekeeping, with the reconciliation it calls for.
                Drop::EventsLost => {}
            }
        }
    }
}
