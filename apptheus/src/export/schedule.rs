//! One scraper's schedule: when its next read is expected, learned from
//! the reads it made. Pure; times are seconds on the caller's clock.
//!
//! A schedule starts as a guess from two reads (the period between them,
//! rounded to the second when that close: Prometheus' scrape intervals are
//! whole seconds), and is confirmed by the first read it predicted. From
//! then on each read it predicts corrects its phase and period a little
//! (an alpha-beta filter), and the errors of the latest predictions give
//! its spread: how early or late the next read may come. A guess is
//! dropped when its first predicted read does not come, a confirmed
//! schedule when [`MISSED`] predicted reads in a row did not.

/// Reads of a schedule come at most this far apart, in seconds (ten
/// minutes); the least period is the cadence's to choose.
pub const MAX_PERIOD: f64 = 600.0;
/// A confirmed schedule is dropped after this many predicted reads in a
/// row did not come.
pub const MISSED: u32 = 3;
/// How early or late a guess's first predicted read may come: a period
/// measured from two reads carries the jitter of both.
const GUESS_SPREAD: f64 = 0.25;
/// The least spread of a confirmed schedule.
const MIN_SPREAD: f64 = 0.005;
/// A read further from the prediction than this (or four spreads) is not
/// the schedule's.
const MIN_TOLERANCE: f64 = 0.5;
/// Prediction errors remembered for the spread.
const ERRORS: usize = 8;
/// A gap this close to a whole number of seconds (and within 2 % of it)
/// is taken as that number.
const SNAP: f64 = 0.25;

#[derive(Debug, Clone)]
pub struct Schedule {
    /// Unique among the schedules of a cadence: reads name the schedule
    /// that predicted them.
    pub id: u64,
    /// When the next read is expected.
    next: f64,
    period: f64,
    /// Reads it predicted that came (0: a guess).
    hits: u32,
    /// Predicted reads in a row that did not come.
    missed: u32,
    /// The shortest period it may have.
    min_period: f64,
    /// The two reads a guess was made from.
    from: [f64; 2],
    /// The latest prediction errors, absolute ([`ERRORS`] of them, as a
    /// ring), and how many were ever recorded.
    errors: [f64; ERRORS],
    recorded: usize,
}

/// A gap between two reads as a period: rounded to the second when close.
pub fn snap(gap: f64) -> f64 {
    let whole = gap.round();
    if whole >= 1.0 && (gap - whole).abs() <= SNAP.min(whole * 0.02) {
        whole
    } else {
        gap
    }
}

impl Schedule {
    /// A guess from reads at `first` and `second`, if the gap between
    /// them can be the period of a schedule, which is at least
    /// `min_period`.
    pub fn guess(id: u64, first: f64, second: f64, min_period: f64) -> Option<Self> {
        let period = snap(second - first);
        if !(min_period..=MAX_PERIOD).contains(&period) {
            return None;
        }
        // Both reads place the next one; their mean halves the jitter when
        // the period was rounded (when not, both say the same).
        let next = ((first + 2.0 * period) + (second + period)) / 2.0;
        Some(Schedule {
            id,
            next,
            period,
            hits: 0,
            missed: 0,
            min_period,
            from: [first, second],
            errors: [0.0; ERRORS],
            recorded: 0,
        })
    }

    pub fn confirmed(&self) -> bool {
        self.hits > 0
    }

    /// When the next read is expected.
    pub fn next(&self) -> f64 {
        self.next
    }

    pub fn period(&self) -> f64 {
        self.period
    }

    /// The two reads a guess was made from.
    pub fn from(&self) -> [f64; 2] {
        self.from
    }

    /// How early or late the next read may come.
    pub fn spread(&self) -> f64 {
        // Until a few errors are known, what a guess allows fades out.
        let known = self.recorded.min(ERRORS);
        let prior = GUESS_SPREAD * (1.0 - known as f64 / ERRORS as f64);
        let worst = self.errors[..known].iter().copied().fold(0.0, f64::max);
        let s = (2.0 * worst).max(prior).max(MIN_SPREAD);
        s.min(self.period / 8.0)
    }

    /// How far from the prediction a read may be and still be this
    /// schedule's.
    pub fn tolerance(&self) -> f64 {
        (4.0 * self.spread())
            .max(MIN_TOLERANCE)
            .min(self.period / 4.0)
    }

    /// Moves past the predicted reads that did not come by `now`; false
    /// when the schedule is to be dropped.
    pub fn advance(&mut self, now: f64) -> bool {
        while now > self.next + self.tolerance() {
            self.missed += 1;
            if self.hits == 0 || self.missed >= MISSED {
                return false;
            }
            self.next += self.period;
        }
        true
    }

    /// How far a read at `t` is from the prediction, if it is this
    /// schedule's (call [`Self::advance`] first).
    pub fn error(&self, t: f64) -> Option<f64> {
        let e = (t - self.next).abs();
        (e <= self.tolerance()).then_some(e)
    }

    /// A read at `t` that [`Self::error`] took as this schedule's: the
    /// phase and period corrected, and the next read predicted.
    pub fn hit(&mut self, t: f64) {
        let err = t - self.next;
        self.errors[self.recorded % ERRORS] = err.abs();
        self.recorded = self.recorded.wrapping_add(1);
        // Early on the period is uncertain: follow the error more.
        let beta = (1.0 / f64::from(self.hits + 2)).max(0.1);
        self.period = (self.period + beta * err).clamp(self.min_period, MAX_PERIOD);
        self.next += 0.5 * err + self.period;
        self.hits += 1;
        self.missed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_rounded_to_the_second_when_close() {
        assert_eq!(snap(15.04), 15.0);
        assert_eq!(snap(14.8), 15.0);
        assert_eq!(snap(5.5), 5.5);
        assert_eq!(snap(60.6), 60.6);
        assert_eq!(snap(59.8), 60.0);
    }

    #[test]
    fn a_guess_needs_a_gap_a_schedule_can_have() {
        assert!(Schedule::guess(1, 0.0, 0.1, 5.0).is_none());
        assert!(Schedule::guess(1, 0.0, 4.5, 5.0).is_none());
        assert!(Schedule::guess(1, 0.0, 700.0, 5.0).is_none());
        // 4.9 s is taken as 5 s.
        assert_eq!(Schedule::guess(1, 0.0, 4.9, 5.0).unwrap().period(), 5.0);
        let g = Schedule::guess(1, 10.0, 25.1, 5.0).unwrap();
        assert_eq!(g.period(), 15.0);
        assert!((g.next() - 40.05).abs() < 1e-9, "{}", g.next());
        assert!(!g.confirmed());
    }

    #[test]
    fn a_guess_dies_at_its_first_miss_a_schedule_after_three() {
        let mut g = Schedule::guess(1, 0.0, 15.0, 5.0).unwrap();
        assert!(g.advance(30.5));
        assert!(!g.advance(31.5));
        let mut s = Schedule::guess(1, 0.0, 15.0, 5.0).unwrap();
        s.hit(30.0);
        assert!(s.advance(46.0) && s.advance(61.0));
        assert!(!s.advance(76.0));
    }

    /// Reads every 15 s with ±100 ms of jitter: each is predicted within
    /// its spread, and the spread stays near the jitter.
    #[test]
    fn jitter_is_followed() {
        let mut rng = 7u64;
        let mut jitter = || {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((rng >> 33) as f64 / f64::from(1u32 << 31) - 0.5) * 0.2
        };
        let t = |n: u32, j: f64| f64::from(n) * 15.0 + 3.0 + j;
        let mut s = Schedule::guess(1, t(0, jitter()), t(1, jitter()), 5.0).unwrap();
        let mut outside = 0;
        for n in 2..400 {
            let at = t(n, jitter());
            assert!(s.advance(at));
            let e = s.error(at).expect("predicted");
            if e > s.spread() {
                outside += 1;
            }
            s.hit(at);
        }
        assert!(outside <= 4, "{outside} reads came outside the spread");
        assert!((s.period() - 15.0).abs() < 0.02, "{}", s.period());
        assert!(s.spread() <= 0.41, "{}", s.spread());
    }
}
