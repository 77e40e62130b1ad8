//! When to sample, so that what readers (scrapes, pushes) get is never
//! older than `--monitor.interval`, and nothing is sampled that nobody
//! reads. Pure: time is passed in.
//!
//! Each reader (a scraping address, a push target) is followed: from the
//! time between its reads, the time of its next read is predicted, and a
//! sample is started just ahead of it, early enough to be done when the
//! read comes (by the duration of the last samples, and a margin), late
//! enough to be at most `interval` old then. A read that finds no recent
//! enough sample (a reader's first reads, a late one) waits for one. A
//! reader that stops reading is forgotten after a few of its periods, and
//! with it the samples taken for it.
use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

/// Who reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reader {
    /// Scrapes from this address.
    Scrape(IpAddr),
    /// The push task for this target.
    Push(&'static str),
}

/// Why a sample is taken (`apptheus_samples_total{trigger}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A scrape found no recent enough sample and waits.
    Scrape,
    /// Ahead of a reader's predicted read.
    Ahead,
    /// A push found no recent enough sample and waits.
    Push,
    /// `--monitor.on-demand=false`: every interval.
    Interval,
}

impl Trigger {
    pub const ALL: [Trigger; 4] = [
        Trigger::Scrape,
        Trigger::Ahead,
        Trigger::Push,
        Trigger::Interval,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Trigger::Scrape => "scrape",
            Trigger::Ahead => "ahead",
            Trigger::Push => "push",
            Trigger::Interval => "interval",
        }
    }
}

/// Readers followed at most (scrapers are a handful; this bounds what a
/// stream of addresses could make the agent keep).
const MAX_READERS: usize = 64;

/// A reader is forgotten when it missed this many of its periods.
const MISSED_PERIODS: u32 = 3;

/// Added to the expected duration of a sample, for the reader's jitter
/// and the sample's own.
const MARGIN: Duration = Duration::from_millis(20);

/// How a reader's period follows changes: this share of each new gap.
const SMOOTHING: f64 = 0.25;

#[derive(Debug, Clone, Copy)]
struct Track {
    last: Instant,
    period: Option<Duration>,
}

impl Track {
    fn expected(&self) -> Option<Instant> {
        self.period.map(|p| self.last + p)
    }

    fn lost(&self, now: Instant) -> bool {
        match self.period {
            Some(p) => now > self.last + p * MISSED_PERIODS + MARGIN,
            // One read only: kept for long enough to learn a period of up to
            // ten minutes.
            None => now > self.last + Duration::from_secs(600),
        }
    }
}

/// What a read gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The latest sample is recent enough.
    Serve,
    /// A sample under way will be: wait for it.
    WaitRunning,
    /// A sample must be taken first (it is asked for).
    WaitNew,
}

#[derive(Debug)]
pub struct Cadence {
    interval: Duration,
    readers: HashMap<Reader, Track>,
    /// When the latest published sample started.
    latest: Option<Instant>,
    /// When the sample under way started.
    running: Option<Instant>,
    /// A read waits for a new sample, and why.
    wanted: Option<Trigger>,
    /// How long the latest samples took: the longest of them is taken as
    /// what the next will take.
    costs: [Duration; 4],
    /// Where the next duration goes in `costs`.
    next_cost: usize,
}

impl Cadence {
    pub fn new(interval: Duration) -> Self {
        Cadence {
            interval,
            readers: HashMap::new(),
            latest: None,
            running: None,
            wanted: None,
            costs: [Duration::ZERO; 4],
            next_cost: 0,
        }
    }

    /// Whether a sample that started at `started` may serve a read at `now`:
    /// within the interval, or, where samples take longer than half of it,
    /// within twice their duration (and a margin): a sample is already its
    /// duration old when it is published, and serves until the next one,
    /// started then, is.
    fn recent(&self, started: Instant, now: Instant) -> bool {
        now.saturating_duration_since(started) <= self.bound()
    }

    /// The most time a served sample may be old.
    fn bound(&self) -> Duration {
        self.interval.max(self.cost() * 2 + MARGIN)
    }

    /// What the next sample is expected to take.
    fn cost(&self) -> Duration {
        self.costs.iter().max().copied().unwrap_or_default()
    }

    /// `reader` reads at `now`.
    pub fn arrive(&mut self, reader: Reader, now: Instant) -> Answer {
        self.readers.retain(|_, t| !t.lost(now));
        if !self.readers.contains_key(&reader) && self.readers.len() >= MAX_READERS {
            // The longest silent one makes room.
            if let Some(oldest) = self
                .readers
                .iter()
                .min_by_key(|(_, t)| t.last)
                .map(|(r, _)| *r)
            {
                self.readers.remove(&oldest);
            }
        }
        self.readers
            .entry(reader)
            .and_modify(|t| {
                let gap = now.saturating_duration_since(t.last);
                t.period = Some(match t.period {
                    // Close to what was seen: smoothed; else a new cadence.
                    Some(p) if gap.abs_diff(p) <= p / 4 => {
                        p.mul_f64(1.0 - SMOOTHING) + gap.mul_f64(SMOOTHING)
                    }
                    _ => gap,
                });
                t.last = now;
            })
            .or_insert(Track {
                last: now,
                period: None,
            });
        if self.latest.is_some_and(|s| self.recent(s, now)) {
            return Answer::Serve;
        }
        if self.running.is_some_and(|s| self.recent(s, now)) {
            return Answer::WaitRunning;
        }
        if self.wanted.is_none() {
            self.wanted = Some(match reader {
                Reader::Scrape(_) => Trigger::Scrape,
                Reader::Push(_) => Trigger::Push,
            });
        }
        Answer::WaitNew
    }

    /// Whether a read that came at `since` is served now.
    pub fn served(&self, since: Instant) -> bool {
        self.latest.is_some_and(|s| self.recent(s, since))
    }

    /// A read waits for a new sample: why (the sampler takes one now).
    pub fn wanted(&self) -> Option<Trigger> {
        self.wanted
    }

    /// When to start the next sample ahead of a reader (it may be past:
    /// at once); None when no reader is expected whose read the latest
    /// sample would not serve.
    pub fn ahead(&self, now: Instant) -> Option<Instant> {
        let lead = self.lead();
        let newest = self.running.or(self.latest);
        // Reads until then are served by the newest sample.
        let served_until = newest.map(|s| s + self.bound());
        self.readers
            .values()
            .filter(|t| !t.lost(now))
            .filter_map(|t| {
                let e = t.expected()?;
                let p = t.period?.max(Duration::from_millis(1));
                // The reader's first read the newest sample will not serve.
                let first = match served_until {
                    Some(until) if e <= until => {
                        let n = (until - e).as_nanos() / p.as_nanos() + 1;
                        e + p * u32::try_from(n).unwrap_or(u32::MAX)
                    }
                    _ => e,
                };
                Some(first.checked_sub(lead).unwrap_or(first))
            })
            .min()
    }

    /// How long before a predicted read its sample starts: the expected
    /// duration, half of it again and a margin, and no more than a served
    /// sample may be old (one started earlier would be too old at the read).
    fn lead(&self) -> Duration {
        let cost = self.cost();
        (cost + cost / 2 + MARGIN).min(self.bound())
    }

    /// A sample starts at `now`.
    pub fn start(&mut self, now: Instant) {
        self.running = Some(now);
        self.wanted = None;
    }

    /// The sample that started at `started` is published, after `took`.
    pub fn done(&mut self, started: Instant, took: Duration) {
        self.running = None;
        self.latest = Some(self.latest.map_or(started, |l| l.max(started)));
        self.costs[self.next_cost] = took;
        self.next_cost = (self.next_cost + 1) % self.costs.len();
    }

    /// Readers followed now.
    #[cfg(test)]
    fn readers(&self) -> usize {
        self.readers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn ip(n: u8) -> Reader {
        Reader::Scrape(IpAddr::from([10, 0, 0, n]))
    }

    /// Runs the sampler's side: a sample taking `took` whenever one is
    /// wanted or due ahead at `now`.
    fn sampler(c: &mut Cadence, now: Instant, took: Duration) -> Option<Trigger> {
        let why = match (c.wanted(), c.ahead(now)) {
            (Some(w), _) => w,
            (None, Some(at)) if at <= now => Trigger::Ahead,
            _ => return None,
        };
        c.start(now);
        c.done(now, took);
        Some(why)
    }

    #[test]
    fn a_regular_scraper_is_sampled_just_before_it_comes() {
        let interval = 500 * MS;
        let mut c = Cadence::new(interval);
        let t0 = Instant::now();
        let took = 40 * MS;
        // The first two scrapes wait: nothing is known of the reader.
        assert_eq!(c.arrive(ip(1), t0), Answer::WaitNew);
        assert_eq!(sampler(&mut c, t0, took), Some(Trigger::Scrape));
        assert!(c.served(t0));
        let t1 = t0 + 15_000 * MS;
        assert_eq!(c.arrive(ip(1), t1), Answer::WaitNew);
        assert_eq!(sampler(&mut c, t1, took), Some(Trigger::Scrape));
        // From then on: one sample ahead of each scrape, none between.
        let mut samples = 0;
        for n in 2..10u32 {
            let expected = t0 + 15_000 * MS * n;
            let mut t = expected - 14_000 * MS;
            while t < expected {
                if let Some(why) = sampler(&mut c, t, took) {
                    assert_eq!(why, Trigger::Ahead);
                    samples += 1;
                    let age = expected - t;
                    assert!(age <= interval && age >= took, "age {age:?}");
                }
                t += MS;
            }
            // A little early or late: still served.
            let jitter = if n % 2 == 0 { 3 * MS } else { Duration::ZERO };
            assert_eq!(c.arrive(ip(1), expected + jitter), Answer::Serve);
        }
        assert_eq!(samples, 8, "one sample per scrape");
    }

    #[test]
    fn a_frequent_reader_gets_samples_every_interval_and_never_waits() {
        let interval = 500 * MS;
        let mut c = Cadence::new(interval);
        let t0 = Instant::now();
        c.arrive(ip(1), t0);
        sampler(&mut c, t0, 30 * MS);
        let mut samples = 0;
        let mut t = t0;
        for _ in 0..1000 {
            t += 5 * MS;
            if sampler(&mut c, t, 30 * MS).is_some() {
                samples += 1;
            }
            assert_eq!(c.arrive(ip(1), t), Answer::Serve, "at {:?}", t - t0);
        }
        // 5 s of reads every 5 ms: about one sample per (interval - lead).
        assert!((9..=13).contains(&samples), "{samples} samples");
    }

    #[test]
    fn nobody_reading_means_no_sampling() {
        let mut c = Cadence::new(500 * MS);
        let t0 = Instant::now();
        assert_eq!(c.ahead(t0), None);
        for n in 0..3 {
            let t = t0 + 15_000 * MS * n;
            c.arrive(ip(1), t);
            sampler(&mut c, t, 10 * MS);
        }
        assert!(c.ahead(t0 + 40_000 * MS).is_some());
        // The reader stops: after a few of its periods nothing is due.
        assert_eq!(c.ahead(t0 + 120_000 * MS), None);
        c.arrive(ip(2), t0 + 120_000 * MS);
        assert_eq!(c.readers(), 1, "the silent reader was forgotten");
    }

    #[test]
    fn a_read_during_a_recent_sample_waits_for_it_and_an_old_one_is_not_enough() {
        let mut c = Cadence::new(500 * MS);
        let t0 = Instant::now();
        c.start(t0);
        assert_eq!(c.arrive(ip(1), t0 + 100 * MS), Answer::WaitRunning);
        assert_eq!(c.wanted(), None);
        c.done(t0, 200 * MS);
        assert!(c.served(t0 + 100 * MS));
        // A sample that started too long before the read does not serve it.
        c.start(t0 + 1000 * MS);
        assert_eq!(c.arrive(ip(2), t0 + 1600 * MS), Answer::WaitNew);
        assert_eq!(c.wanted(), Some(Trigger::Scrape));
        c.done(t0 + 1000 * MS, 100 * MS);
        assert!(!c.served(t0 + 1600 * MS));
        assert_eq!(
            c.wanted(),
            Some(Trigger::Scrape),
            "still wanted after that one"
        );
    }

    #[test]
    fn samples_longer_than_the_interval_start_early_enough_to_be_done() {
        let mut c = Cadence::new(500 * MS);
        let t = Instant::now();
        c.done(t, 100 * MS);
        assert_eq!((c.lead(), c.bound()), (170 * MS, 500 * MS));
        c.done(t, 400 * MS);
        assert_eq!((c.lead(), c.bound()), (620 * MS, 820 * MS));
        c.done(t, 1200 * MS);
        assert_eq!((c.lead(), c.bound()), (1820 * MS, 2420 * MS));
        // The longest of the last four counts.
        for _ in 0..3 {
            c.done(t, 100 * MS);
        }
        assert_eq!(c.bound(), 2420 * MS);
        c.done(t, 100 * MS);
        assert_eq!(c.bound(), 500 * MS);
    }

    #[test]
    fn samples_longer_than_the_interval_back_to_back_never_make_a_frequent_reader_wait() {
        let mut c = Cadence::new(500 * MS);
        let t0 = Instant::now();
        let took = 1500 * MS;
        c.arrive(ip(1), t0);
        c.start(t0);
        c.done(t0, took);
        let mut t = t0 + took;
        let mut running: Option<Instant> = None;
        for _ in 0..2000 {
            t += 5 * MS;
            if let Some(s) = running
                && t >= s + took
            {
                c.done(s, took);
                running = None;
            }
            if running.is_none()
                && let Some(at) = c.ahead(t)
                && at <= t
            {
                c.start(t);
                running = Some(t);
            }
            assert_eq!(c.arrive(ip(1), t), Answer::Serve, "at {:?}", t - t0);
        }
    }

    #[test]
    fn readers_are_bounded() {
        let mut c = Cadence::new(500 * MS);
        let t0 = Instant::now();
        for n in 0..=MAX_READERS {
            c.arrive(
                Reader::Scrape(IpAddr::from([10, 0, (n / 256) as u8, n as u8])),
                t0 + MS * n as u32,
            );
        }
        assert_eq!(c.readers(), MAX_READERS);
        c.arrive(Reader::Push("pushgateway"), t0 + 1000 * MS);
        assert_eq!(c.readers(), MAX_READERS);
    }
}
