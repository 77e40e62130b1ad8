//! Sampling on demand: readers (scrapes, pushes) say when they read and
//! wait, when need be, for a sample recent enough; the sampler (the main
//! loop) learns from them when to sample (see `cadence`).
use std::{
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use tokio::sync::{Notify, watch};

use crate::{
    export::cadence::{Answer, Cadence, ReadKind, Reader, Trigger},
    sync::lock,
};

/// The longest a read waits for a sample; then it is served what there is
/// (Prometheus' default scrape timeout is 10 s).
const MAX_WAIT: Duration = Duration::from_secs(8);

pub struct Demand {
    /// `--monitor.on-demand`; when off, the sampler samples every interval
    /// and readers never wait.
    on_demand: bool,
    cadence: Mutex<Cadence>,
    /// Readers tell the sampler that the plan changed (a read waits, or a
    /// reader's next read is predicted anew).
    changed: Notify,
    /// Counts published samples; waiting readers watch it.
    published: watch::Sender<u64>,
}

impl Demand {
    pub fn new(interval: Duration, on_demand: bool) -> Self {
        Demand {
            on_demand,
            cadence: Mutex::new(Cadence::new(interval, Instant::now())),
            changed: Notify::new(),
            published: watch::Sender::new(0),
        }
    }

    fn cadence(&self) -> MutexGuard<'_, Cadence> {
        lock(&self.cadence)
    }

    /// `reader` is about to read: returns once the latest sample is recent
    /// enough for it (at once, usually: the sampler saw it coming), with
    /// what kind of read it was and whether it waited.
    pub async fn fresh(&self, reader: Reader) -> (ReadKind, bool) {
        if !self.on_demand {
            let kind = match reader {
                Reader::Push(_) => ReadKind::Push,
                Reader::Scrape { .. } => ReadKind::Unscheduled,
            };
            return (kind, false);
        }
        let now = Instant::now();
        let mut published = self.published.subscribe();
        let (arrival, before, after) = {
            let mut c = self.cadence();
            let before = c.schedules();
            let arrival = c.arrive(reader, now);
            (arrival, before, c.schedules())
        };
        if before != after {
            tracing::debug!(schedules = after, "scrape schedules followed");
        }
        // Wake the sampler either way: it plans its next sample anew.
        self.changed.notify_one();
        let Answer::Wait { since } = arrival.answer else {
            return (arrival.kind, false);
        };
        let deadline = tokio::time::Instant::from_std(now + MAX_WAIT);
        loop {
            match tokio::time::timeout_at(deadline, published.changed()).await {
                Ok(Ok(())) if self.cadence().published_since(since) => break,
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => {
                    tracing::debug!(
                        ?reader,
                        "no sample recent enough in time; serving the latest"
                    );
                    break;
                }
            }
        }
        (arrival.kind, true)
    }

    /// Sampler: waits until readers change the plan.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Sampler: why a sample is due at `now`, if one is; else when the next
    /// one is (None: no reader expected).
    pub fn due(&self, now: Instant) -> Result<Trigger, Option<Instant>> {
        self.cadence().due(now)
    }

    /// Sampler: a sample of every container starts.
    pub fn started(&self, now: Instant) {
        self.cadence().start(now);
    }

    /// Sampler: the sample that started at `started` is published.
    pub fn published(&self, started: Instant) {
        self.cadence().done(started, started.elapsed());
        self.published.send_modify(|n| *n += 1);
    }

    #[cfg(feature = "testing")]
    pub fn on_demand(&self) -> bool {
        self.on_demand
    }

    /// Whether changes published now should wait for a scrape about to
    /// come (see `Cadence::hold`).
    pub fn hold(&self, now: Instant) -> bool {
        self.on_demand && self.cadence().hold(now)
    }

    /// Scrapers' schedules followed now.
    pub fn schedules(&self) -> usize {
        self.cadence().schedules()
    }

    /// The encodings scrapers with a schedule asked for (bits).
    pub fn encodings(&self) -> u8 {
        self.cadence().encodings()
    }
}

#[cfg(test)]
mod tests {
    use std::{net::IpAddr, sync::Arc};

    use super::*;

    #[tokio::test]
    async fn a_read_waits_for_the_sample_it_asked_for() {
        let d = Arc::new(Demand::new(Duration::from_millis(500), true));
        let reader = Reader::Scrape {
            addr: IpAddr::from([127, 0, 0, 1]),
            scraper: None,
            encoding: 0,
        };
        let r = {
            let d = d.clone();
            tokio::spawn(async move { d.fresh(reader).await })
        };
        d.changed().await;
        assert_eq!(d.due(Instant::now()), Ok(Trigger::Scrape));
        let t = Instant::now();
        d.started(t);
        assert!(!r.is_finished());
        d.published(t);
        let (kind, waited) = tokio::time::timeout(Duration::from_secs(5), r)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((kind, waited), (ReadKind::Unscheduled, true));
        // The next read is served at once.
        let next = tokio::time::timeout(Duration::from_millis(100), d.fresh(reader))
            .await
            .unwrap();
        assert_eq!(next, (ReadKind::Unscheduled, false));
    }

    #[tokio::test]
    async fn sampling_on_a_clock_never_makes_readers_wait() {
        let d = Demand::new(Duration::from_millis(500), false);
        let got = tokio::time::timeout(
            Duration::from_millis(100),
            d.fresh(Reader::Push("pushgateway")),
        )
        .await
        .unwrap();
        assert_eq!(got, (ReadKind::Push, false));
        assert!(!d.on_demand());
    }
}
