//! The connections' log lines, each kind at most once a second (the
//! count of lines left out is in the next one).
use std::time::Duration;

use crate::host::pacing::LogThrottle;

const LOG_INTERVAL: Duration = Duration::from_secs(1);

pub(super) struct Logs {
    pub(super) refused: LogThrottle,
    pub(super) throttled: LogThrottle,
    pub(super) cut: LogThrottle,
    pub(super) idle: LogThrottle,
    pub(super) accept: LogThrottle,
    pub(super) ended: LogThrottle,
}

impl Logs {
    pub(super) fn new() -> Self {
        Self {
            refused: LogThrottle::new(LOG_INTERVAL),
            throttled: LogThrottle::new(LOG_INTERVAL),
            cut: LogThrottle::new(LOG_INTERVAL),
            idle: LogThrottle::new(LOG_INTERVAL),
            accept: LogThrottle::new(LOG_INTERVAL),
            ended: LogThrottle::new(LOG_INTERVAL),
        }
    }
}
