//! When to sample, so that scrapers get a sample taken just before they
//! read, nothing is sampled that nobody reads, and no reader can make the
//! agent sample more than a bounded rate. Pure: time is passed in.
//!
//! Readers are of three kinds:
//!
//! - **Scrapers that say they scrape on a schedule**: Prometheus and the
//!   agents built on its scrape code send `X-Prometheus-Scrape-Timeout-Seconds`.
//!   One is told from another by its address, its User-Agent and that
//!   header, and, behind one address, by its timing: each of its
//!   schedules (`schedule`) predicts its next read, and a read belongs to
//!   the schedule whose prediction it fits. A sample is started ahead of
//!   each predicted read, early enough to be done before the read comes
//!   (by the duration of the latest samples and the schedule's spread)
//!   and late enough to be at most `--monitor.interval` old then (more
//!   where samples or the reader's jitter take longer: see
//!   [`Cadence::sched_bound`]). At most [`MAX_SCHEDULES`] are followed; a
//!   newcomer never takes the place of one followed.
//! - **Every other read** (a scraper's first reads, a person's curl, a
//!   script, a read off its schedule): served the latest sample when it
//!   is at most [`Cadence::other_every`] old (ten intervals, 5 s at the
//!   default `--monitor.interval`; or twenty samples' durations where
//!   that is longer); else it waits for a new sample, but such reads ask
//!   for at most one sample per that time, all of them together. A
//!   scraper that reads more often than that is one of them too.
//! - **Push targets** (trusted, ours): their schedule is learned the same
//!   way, and a push that finds no recent enough sample waits for one.
//!
//! Learning a schedule: two reads of a scraper give a guess (their gap as
//! the period); the guess's predicted read is sampled ahead (such samples,
//! for guesses only, come from a small budget: [`LEARN_BURST`], then one
//! per [`LEARN_EVERY`]); the read, when it comes, confirms the guess. A
//! guess whose predicted read does not come is dropped; a schedule whose
//! reads stop is dropped after three of its periods.
use std::{
    collections::VecDeque,
    net::IpAddr,
    time::{Duration, Instant},
};

use crate::export::schedule::{MAX_PERIOD, Schedule, snap};

/// Who reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reader {
    /// A scrape from `addr`. `scraper` is set when the reader says it
    /// scrapes on a schedule: a hash of what it says of itself (its
    /// User-Agent, its timeout), which tells scrapers at one address
    /// apart. `encoding` is the encoding it asked for (an index the
    /// exposition defines), prepared ahead of its reads.
    Scrape {
        addr: IpAddr,
        scraper: Option<u64>,
        encoding: u8,
    },
    /// The push task for this target.
    Push(&'static str),
}

/// What a read was, for `apptheus_reads_total{reader}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadKind {
    /// Predicted by a learned schedule.
    Scheduled,
    /// Any other scrape.
    Unscheduled,
    /// A push.
    Push,
}

impl ReadKind {
    pub const ALL: [ReadKind; 3] = [ReadKind::Scheduled, ReadKind::Unscheduled, ReadKind::Push];

    pub const fn name(self) -> &'static str {
        match self {
            ReadKind::Scheduled => "scheduled",
            ReadKind::Unscheduled => "unscheduled",
            ReadKind::Push => "push",
        }
    }
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

/// What a read gets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Answer {
    /// The latest sample: at once.
    Serve,
    /// The first sample that started at or after `since` (one under way,
    /// or one asked for now): wait for it.
    Wait { since: Instant },
}

/// A read's kind and answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Arrival {
    pub kind: ReadKind,
    pub answer: Answer,
}

/// Scrapers' schedules followed at most (push targets aside).
pub const MAX_SCHEDULES: usize = 4;
/// Guesses (schedules not yet confirmed) of one scraper at most.
const MAX_GUESSES_EACH: usize = 4;
/// Scrapers remembered at most (a stream of addresses cannot make the
/// agent keep more). A scraper with a schedule or a guess keeps its place;
/// a newcomer takes the place of the newest of the others (those that came
/// first stay), and when there is none, is not remembered.
const MAX_SCRAPERS: usize = 64;
/// Reads of a scraper remembered, to guess its schedules from.
const RECENT: usize = 4;
/// Reads that no schedule explains ask for a sample at most once per this
/// many intervals, or [`OTHER_COST_MULTIPLE`] samples' durations if
/// longer, and are served a sample that old; a schedule's period is at
/// least as long (and at least [`MIN_PERIOD`]).
pub const OTHER_INTERVALS: f64 = 10.0;
pub const OTHER_COST_MULTIPLE: f64 = 20.0;
/// The shortest period of a schedule, seconds, whatever the interval.
const MIN_PERIOD: f64 = 1.0;
/// Samples ahead of guesses only: this many in a row, then one per
/// [`LEARN_EVERY`] seconds.
pub const LEARN_BURST: f64 = 4.0;
pub const LEARN_EVERY: f64 = 15.0;
/// Added to the expected duration of a sample, for the sample's own
/// variation.
const MARGIN: f64 = 0.02;
/// Periods this close (seconds) are taken as one.
const SAME_PERIOD: f64 = 0.25;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Scraper(IpAddr, u64),
    Push(&'static str),
}

/// A scraper (or push target) and what was learned of it.
#[derive(Debug)]
struct Scraper {
    key: Key,
    /// Its latest reads: when, and the schedule that predicted each.
    recent: VecDeque<(f64, Option<u64>)>,
    schedules: Vec<Schedule>,
    /// Its first and latest reads.
    first: f64,
    seen: f64,
    /// The encoding it asked for last.
    encoding: u8,
}

impl Scraper {
    fn trusted(&self) -> bool {
        matches!(self.key, Key::Push(_))
    }

    fn confirmed(&self) -> usize {
        self.schedules.iter().filter(|s| s.confirmed()).count()
    }
}

#[derive(Debug)]
pub struct Cadence {
    /// Times are seconds since this instant.
    t0: Instant,
    interval: f64,
    scrapers: Vec<Scraper>,
    /// When the latest published sample started.
    latest: Option<f64>,
    /// When the sample under way started.
    running: Option<f64>,
    /// A read waits for a new sample, and why.
    wanted: Option<Trigger>,
    /// How long the latest samples took: the longest of them is taken as
    /// what the next will take.
    costs: [f64; 4],
    next_cost: usize,
    /// When reads that no schedule explains may next ask for a sample.
    other_at: f64,
    /// Samples ahead of guesses that may be taken now, and when that was
    /// last worked out.
    learn_tokens: f64,
    learn_at: f64,
    /// The sample due now is for guesses only (it takes a token).
    learning: bool,
    next_id: u64,
}

impl Cadence {
    pub fn new(interval: Duration, now: Instant) -> Self {
        Cadence {
            t0: now,
            interval: interval.as_secs_f64(),
            scrapers: Vec::new(),
            latest: None,
            running: None,
            wanted: None,
            costs: [0.0; 4],
            next_cost: 0,
            other_at: f64::NEG_INFINITY,
            learn_tokens: LEARN_BURST,
            learn_at: 0.0,
            learning: false,
            next_id: 0,
        }
    }

    fn secs(&self, i: Instant) -> f64 {
        i.saturating_duration_since(self.t0).as_secs_f64()
    }

    fn instant(&self, s: f64) -> Instant {
        self.t0 + Duration::from_secs_f64(s.max(0.0))
    }

    /// What the next sample is expected to take.
    fn cost(&self) -> f64 {
        self.costs.iter().copied().fold(0.0, f64::max)
    }

    /// The most time a sample served to a push may be old: the interval,
    /// or, where samples take longer than half of it, twice their
    /// duration (a sample is already its duration old when published, and
    /// serves until the next one, started then, is).
    fn bound(&self) -> f64 {
        self.interval.max(2.0 * self.cost() + MARGIN)
    }

    /// The most time a sample served to a read of schedule `s` may be old:
    /// as [`Self::bound`], and more by twice the schedule's spread (a read
    /// early by that much must find the sample done, one late by as much
    /// must find it recent).
    fn sched_bound(&self, s: &Schedule) -> f64 {
        sched_bound(self.interval, self.cost(), s)
    }

    /// How often reads that no schedule explains may ask for a sample, and
    /// how old a sample they are served may be.
    #[cfg(test)]
    pub fn other_every(&self) -> Duration {
        Duration::from_secs_f64(self.other_secs())
    }

    fn other_secs(&self) -> f64 {
        (OTHER_INTERVALS * self.interval).max(OTHER_COST_MULTIPLE * self.cost())
    }

    /// The shortest period of a schedule, seconds.
    fn min_period(&self) -> f64 {
        (OTHER_INTERVALS * self.interval).max(MIN_PERIOD)
    }

    /// `reader` reads at `now`.
    pub fn arrive(&mut self, reader: Reader, now: Instant) -> Arrival {
        let t = self.secs(now);
        self.forget(t);
        match reader {
            Reader::Push(name) => {
                self.learn(Key::Push(name), t, 0);
                Arrival {
                    kind: ReadKind::Push,
                    answer: self.fresh(t, self.bound(), Trigger::Push),
                }
            }
            Reader::Scrape {
                addr,
                scraper: Some(h),
                encoding,
            } => match self.learn(Key::Scraper(addr, h), t, encoding) {
                Some((true, bound)) => Arrival {
                    kind: ReadKind::Scheduled,
                    answer: self.fresh(t, bound, Trigger::Scrape),
                },
                // A guess's read: served the sample taken ahead of it, if
                // there was one.
                Some((false, bound)) if self.latest.is_some_and(|l| l >= t - bound) => Arrival {
                    kind: ReadKind::Scheduled,
                    answer: Answer::Serve,
                },
                _ => Arrival {
                    kind: ReadKind::Unscheduled,
                    answer: self.other(t),
                },
            },
            Reader::Scrape { scraper: None, .. } => Arrival {
                kind: ReadKind::Unscheduled,
                answer: self.other(t),
            },
        }
    }

    /// A read that needs a sample at most `bound` old.
    fn fresh(&mut self, t: f64, bound: f64, why: Trigger) -> Answer {
        if self.latest.is_some_and(|l| l >= t - bound) {
            return Answer::Serve;
        }
        if let Some(r) = self.running.filter(|r| *r >= t - bound) {
            return Answer::Wait {
                since: self.instant(r),
            };
        }
        self.wanted.get_or_insert(why);
        Answer::Wait {
            since: self.instant(t),
        }
    }

    /// A read that no schedule explains.
    fn other(&mut self, t: f64) -> Answer {
        let every = self.other_secs();
        match self.latest {
            Some(l) if l >= t - every => Answer::Serve,
            latest => {
                if let Some(r) = self.running {
                    Answer::Wait {
                        since: self.instant(r),
                    }
                } else if t >= self.other_at || latest.is_none() {
                    self.other_at = t + every;
                    self.wanted.get_or_insert(Trigger::Scrape);
                    Answer::Wait {
                        since: self.instant(t),
                    }
                } else {
                    // The budget is spent: what there is (started less
                    // than `every` before the sample that spent it).
                    Answer::Serve
                }
            }
        }
    }

    /// Whether a sample that started at or after `since` is published.
    pub fn published_since(&self, since: Instant) -> bool {
        let s = self.secs(since);
        self.latest.is_some_and(|l| l >= s)
    }

    /// A read of `key` at `t`: the schedule it fits is corrected, or new
    /// guesses are made from it. Returns, when a schedule predicted it,
    /// whether that schedule was confirmed before, and how old its sample
    /// may be.
    fn learn(&mut self, key: Key, t: f64, encoding: u8) -> Option<(bool, f64)> {
        let i = self.scraper(key, t)?;
        let taken = self.confirmed_scrapes();
        let (interval, cost, min_period) = (self.interval, self.cost(), self.min_period());
        let sc = &mut self.scrapers[i];
        sc.seen = t;
        sc.encoding = encoding;
        // The best fit; on a near tie the shorter period (a reader whose
        // period shortened fits both its old schedule and its new one).
        let best = sc
            .schedules
            .iter()
            .enumerate()
            .filter_map(|(n, s)| s.error(t).map(|e| (n, e + s.period() / 100.0)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(n, _)| n);
        let best = best.filter(|&n| {
            let g = &sc.schedules[n];
            g.confirmed() || !pairs_instead(sc, g, t, min_period)
        });
        if let Some(n) = best {
            let was = sc.schedules[n].confirmed();
            if !was && !sc.trusted() && taken >= MAX_SCHEDULES {
                // No room: the guess goes, and the scraper is read like
                // any other reader until a schedule is dropped.
                sc.schedules.remove(n);
            } else {
                let s = &mut sc.schedules[n];
                let bound = sched_bound(interval, cost, s);
                s.hit(t);
                let id = s.id;
                remember(sc, t, Some(id));
                return Some((was, bound));
            }
        }
        if sc.trusted() || taken < MAX_SCHEDULES {
            self.guess(i, t);
        }
        remember(&mut self.scrapers[i], t, None);
        None
    }

    /// Guesses from a read at `t` of scraper `i` that no schedule
    /// explained (see [`partners`]).
    fn guess(&mut self, i: usize, t: f64) {
        for r in partners(&self.scrapers[i], t, self.min_period()) {
            let Some(g) = Schedule::guess(self.next_id, r, t, self.min_period()) else {
                continue;
            };
            let sc = &mut self.scrapers[i];
            // A schedule already expects that read.
            if sc
                .schedules
                .iter()
                .any(|s| (s.next() - g.next()).abs() <= s.spread())
            {
                continue;
            }
            self.next_id += 1;
            let guesses = sc.schedules.iter().filter(|s| !s.confirmed()).count();
            if guesses >= MAX_GUESSES_EACH
                && let Some(oldest) = sc.schedules.iter().position(|s| !s.confirmed())
            {
                sc.schedules.remove(oldest);
            }
            sc.schedules.push(g);
        }
        prune(&mut self.scrapers[i].schedules);
    }

    /// The index of `key`'s scraper, made if need be; None when there is
    /// no room (see [`MAX_SCRAPERS`]).
    fn scraper(&mut self, key: Key, t: f64) -> Option<usize> {
        if let Some(i) = self.scrapers.iter().position(|s| s.key == key) {
            return Some(i);
        }
        let scrapes = self.scrapers.iter().filter(|s| !s.trusted()).count();
        if matches!(key, Key::Scraper(..)) && scrapes >= MAX_SCRAPERS {
            let idle = self
                .scrapers
                .iter()
                .enumerate()
                .filter(|(_, s)| !s.trusted() && s.schedules.is_empty())
                .max_by(|a, b| a.1.first.total_cmp(&b.1.first))
                .map(|(i, _)| i)?;
            self.scrapers.swap_remove(idle);
        }
        self.scrapers.push(Scraper {
            key,
            recent: VecDeque::with_capacity(RECENT),
            schedules: Vec::new(),
            first: t,
            seen: t,
            encoding: 0,
        });
        Some(self.scrapers.len() - 1)
    }

    /// Scrapers' confirmed schedules (push targets' aside).
    fn confirmed_scrapes(&self) -> usize {
        self.scrapers
            .iter()
            .filter(|s| !s.trusted())
            .map(Scraper::confirmed)
            .sum()
    }

    /// Drops the schedules whose reads stopped, and the scrapers silent
    /// for longer than any schedule's period.
    fn forget(&mut self, t: f64) {
        for sc in &mut self.scrapers {
            sc.schedules.retain_mut(|s| s.advance(t));
        }
        self.scrapers
            .retain(|s| !s.schedules.is_empty() || t - s.seen <= MAX_PERIOD);
    }

    /// A read waits for a new sample: why (the sampler takes one now).
    #[cfg(test)]
    pub fn wanted(&self) -> Option<Trigger> {
        self.wanted
    }

    /// Why a sample is due at `now`, if one is; else when the next one is
    /// (None: no read expected that the newest sample would not serve).
    pub fn due(&mut self, now: Instant) -> Result<Trigger, Option<Instant>> {
        if let Some(w) = self.wanted {
            return Ok(w);
        }
        let t = self.secs(now);
        self.forget(t);
        self.learn_tokens =
            (self.learn_tokens + (t - self.learn_at).max(0.0) / LEARN_EVERY).min(LEARN_BURST);
        self.learn_at = t;
        let newest = self.running.or(self.latest);
        let can_learn = self.learn_tokens >= 1.0;
        // Each schedule's next read that the newest sample will not serve,
        // and when its sample may start: (earliest, preferred, latest,
        // whether it is a guess).
        let mut windows: Vec<(f64, f64, f64, bool)> = Vec::new();
        for sc in &self.scrapers {
            for s in &sc.schedules {
                let guess = !s.confirmed() && !sc.trusted();
                if guess && !can_learn {
                    continue;
                }
                let (earliest, preferred, latest) = self.window(s, newest);
                windows.push((earliest, preferred, latest, guess));
            }
        }
        // The sample for the first of them, moved later (within its window)
        // when that lets it serve other reads too.
        let Some(first) = windows.iter().copied().min_by(|a, b| a.1.total_cmp(&b.1)) else {
            return Err(None);
        };
        windows.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (mut at, mut latest) = (first.1, first.2);
        let mut guesses_only = true;
        for w in windows {
            let start = at.max(w.0);
            if start <= latest.min(w.2) {
                at = start;
                latest = latest.min(w.2);
                guesses_only &= w.3;
            }
        }
        if at <= t {
            self.learning = guesses_only;
            Ok(Trigger::Ahead)
        } else {
            Err(Some(self.instant(at)))
        }
    }

    /// Schedule `s`'s first predicted read that the `newest` sample (started
    /// then) will not serve, as the window its sample may start in:
    /// (earliest, preferred, latest). The earliest
    /// start is still recent enough for a read late by the spread; the
    /// latest is done (by the expected duration and a quarter more) for a
    /// read early by as much; the preferred is midway.
    fn window(&self, s: &Schedule, newest: Option<f64>) -> (f64, f64, f64) {
        let bound = self.sched_bound(s);
        let late = s.spread() - bound;
        let mut p = s.next();
        if let Some(n) = newest
            && n >= p + late
        {
            // Reads until n - late are served by it.
            let k = ((n - late - p) / s.period()).floor() + 1.0;
            p += k * s.period();
        }
        let earliest = p + late;
        let latest = p - s.spread() - 1.25 * self.cost() - MARGIN;
        (earliest, (earliest + latest) / 2.0, latest)
    }

    /// A sample starts at `now`.
    pub fn start(&mut self, now: Instant) {
        self.running = Some(self.secs(now));
        self.wanted = None;
        if std::mem::take(&mut self.learning) {
            self.learn_tokens -= 1.0;
        }
    }

    /// The sample that started at `started` is published, after `took`.
    pub fn done(&mut self, started: Instant, took: Duration) {
        let s = self.secs(started);
        self.running = None;
        self.latest = Some(self.latest.map_or(s, |l| l.max(s)));
        self.costs[self.next_cost] = took.as_secs_f64();
        self.next_cost = (self.next_cost + 1) % self.costs.len();
    }

    /// Whether a sample taken for a predicted read is published and that
    /// read has not come yet: a change published now (a container's final
    /// sample) would make the read encode the exposition again, so it waits
    /// for the read (at most the sample's bound and the schedule's
    /// tolerance).
    pub fn hold(&self, now: Instant) -> bool {
        let t = self.secs(now);
        let Some(latest) = self.latest else {
            return false;
        };
        self.scrapers
            .iter()
            .flat_map(|sc| &sc.schedules)
            .filter(|s| s.confirmed())
            .any(|s| {
                let p = s.next();
                latest >= p - self.sched_bound(s) && latest <= p && t <= p + s.tolerance()
            })
    }

    /// Scrapers' schedules followed now (confirmed).
    pub fn schedules(&self) -> usize {
        self.confirmed_scrapes()
    }

    /// The encodings that scrapers with a schedule asked for, as a set of
    /// bits (`1 << encoding`): prepared at each sample.
    pub fn encodings(&self) -> u8 {
        self.scrapers
            .iter()
            .filter(|s| !s.trusted() && s.confirmed() > 0)
            .fold(0, |m, s| {
                m | 1u8.checked_shl(u32::from(s.encoding)).unwrap_or(0)
            })
    }

    /// Scrapers remembered now.
    #[cfg(test)]
    fn scrapers(&self) -> usize {
        self.scrapers.len()
    }
}

/// The reads of `sc` that a read at `t` no schedule explains is paired
/// with, for guesses: its two latest far enough back (not two that one
/// schedule predicted), with at most two of its reads in between (as many
/// as two other scrapers at one address make): a scraper that reads more
/// often than a schedule may is not taken for several schedules of a
/// multiple of its period.
fn partners(sc: &Scraper, t: f64, min_period: f64) -> Vec<f64> {
    let mut pairs: Vec<(f64, Option<u64>)> = Vec::with_capacity(2);
    for &(r, by) in sc.recent.iter().rev().take(3) {
        if pairs.len() == 2 || t - r > MAX_PERIOD {
            break;
        }
        if t - r < 0.9 * min_period || (by.is_some() && pairs.iter().any(|p| p.1 == by)) {
            continue;
        }
        pairs.push((r, by));
    }
    pairs.into_iter().map(|p| p.0).collect()
}

/// Whether a read at `t` that fits guess `g` is better taken as the
/// second read of a new guess that has the period of another guess, made
/// from two other reads, when `g`'s period is not theirs: two scrapers at
/// one address (an HA pair, one period), rather than one guess mixing
/// their reads.
fn pairs_instead(sc: &Scraper, g: &Schedule, t: f64, min_period: f64) -> bool {
    partners(sc, t, min_period).into_iter().any(|r| {
        let period = snap(t - r);
        (period - g.period()).abs() > SAME_PERIOD
            && sc.schedules.iter().any(|k| {
                !k.confirmed()
                    && k.id != g.id
                    && (k.period() - period).abs() <= SAME_PERIOD
                    && !k.from().contains(&r)
                    && !k.from().contains(&t)
            })
    })
}

/// Two scrapers behind one address read on the same period, as a rule
/// (an HA pair): where two guesses of one period explain four distinct
/// reads, the guesses of other periods made from those reads go.
fn prune(schedules: &mut Vec<Schedule>) {
    let guesses: Vec<&Schedule> = schedules.iter().filter(|s| !s.confirmed()).collect();
    let shares = |a: &Schedule, b: &Schedule| a.from().iter().any(|r| b.from().contains(r));
    let mut pairs: Vec<(&Schedule, &Schedule)> = Vec::new();
    for (n, a) in guesses.iter().enumerate() {
        for b in &guesses[n + 1..] {
            if (a.period() - b.period()).abs() <= SAME_PERIOD && !shares(a, b) {
                pairs.push((a, b));
            }
        }
    }
    // Only when one period pairs them: four reads of two scrapers 15 s
    // apart, 13.75 s from each other, are as well two 13.75 s apart and
    // 15 s from each other (their next reads will tell).
    let Some(&(first, _)) = pairs.first() else {
        return;
    };
    if pairs
        .iter()
        .any(|(a, _)| (a.period() - first.period()).abs() > SAME_PERIOD)
    {
        return;
    }
    let drop: Vec<u64> = guesses
        .iter()
        .filter(|h| {
            (h.period() - first.period()).abs() > SAME_PERIOD
                && pairs.iter().any(|(a, b)| shares(h, a) || shares(h, b))
        })
        .map(|h| h.id)
        .collect();
    schedules.retain(|s| !drop.contains(&s.id));
}

/// See [`Cadence::sched_bound`].
fn sched_bound(interval: f64, cost: f64, s: &Schedule) -> f64 {
    interval.max(2.0 * cost + 2.0 * s.spread() + 2.0 * MARGIN)
}

/// Records a read of `sc` at `t`, predicted by schedule `by`.
fn remember(sc: &mut Scraper, t: f64, by: Option<u64>) {
    if sc.recent.len() == RECENT {
        sc.recent.pop_front();
    }
    sc.recent.push_back((t, by));
}

#[cfg(test)]
mod tests;
