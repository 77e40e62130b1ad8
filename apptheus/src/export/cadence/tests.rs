//! The cadence against the readers a site has, and hostile ones, in a
//! simulation: reads at given times, a sampler that takes a sample
//! whenever the cadence says one is due, each taking a fixed time.
use super::*;

/// A read as the simulation saw it.
#[derive(Debug, Clone, Copy)]
struct Seen {
    t: f64,
    /// Which of the scenario's readers.
    who: usize,
    kind: ReadKind,
    waited: bool,
}

struct Sim {
    c: Cadence,
    t0: Instant,
    /// How long a sample takes, seconds.
    cost: f64,
    running: Option<f64>,
    samples: Vec<(f64, Trigger)>,
    seen: Vec<Seen>,
    /// Where the last run stopped.
    now: f64,
}

impl Sim {
    fn new(interval: f64, cost: f64) -> Self {
        let t0 = Instant::now();
        Sim {
            c: Cadence::new(Duration::from_secs_f64(interval), t0),
            t0,
            cost,
            running: None,
            samples: Vec::new(),
            seen: Vec::new(),
            now: 0.0,
        }
    }

    fn at(&self, s: f64) -> Instant {
        self.t0 + Duration::from_secs_f64(s)
    }

    fn secs(&self, i: Instant) -> f64 {
        i.duration_since(self.t0).as_secs_f64()
    }

    /// Runs until `until` with `reads` (time, who, reader), in any order.
    fn run(&mut self, mut reads: Vec<(f64, usize, Reader)>, until: f64) {
        reads.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut i = 0;
        let mut t: f64 = self.now;
        loop {
            if let Some(s) = self.running
                && s + self.cost <= t + 1e-9
            {
                self.c.done(self.at(s), Duration::from_secs_f64(self.cost));
                self.running = None;
            }
            while let Some(&(rt, who, reader)) = reads.get(i)
                && rt <= t + 1e-9
            {
                let a = self.c.arrive(reader, self.at(rt));
                self.seen.push(Seen {
                    t: rt,
                    who,
                    kind: a.kind,
                    waited: matches!(a.answer, Answer::Wait { .. }),
                });
                i += 1;
            }
            let mut next_due = f64::INFINITY;
            if self.running.is_none() {
                match self.c.due(self.at(t)) {
                    Ok(why) => {
                        self.c.start(self.at(t));
                        self.running = Some(t);
                        self.samples.push((t, why));
                    }
                    Err(Some(at)) => next_due = self.secs(at),
                    Err(None) => {}
                }
            }
            let next_read = reads.get(i).map_or(f64::INFINITY, |r| r.0);
            let next_done = self.running.map_or(f64::INFINITY, |s| s + self.cost);
            let next = next_read.min(next_done).min(next_due);
            if !next.is_finite() || next > until {
                self.now = until.max(t);
                return;
            }
            t = next.max(t + 1e-6);
        }
    }

    /// Reads of `who` that waited, after its first `skip`.
    fn waits(&self, who: usize, skip: usize) -> Vec<f64> {
        self.seen
            .iter()
            .filter(|s| s.who == who)
            .skip(skip)
            .filter(|s| s.waited)
            .map(|s| s.t)
            .collect()
    }

    /// Samples started in [from, to).
    fn samples_in(&self, from: f64, to: f64) -> usize {
        self.samples
            .iter()
            .filter(|(t, _)| (from..to).contains(t))
            .count()
    }

    fn kinds(&self, who: usize) -> Vec<ReadKind> {
        self.seen
            .iter()
            .filter(|s| s.who == who)
            .map(|s| s.kind)
            .collect()
    }
}

fn ip(n: u8) -> IpAddr {
    IpAddr::from([10, 0, 0, n])
}

/// A Prometheus at address `n`, identified by `id` (its User-Agent and
/// timeout).
fn prom(n: u8, id: u64) -> Reader {
    Reader::Scrape {
        addr: ip(n),
        scraper: Some(id),
        encoding: 3,
    }
}

/// A reader that says nothing of a schedule (curl, a script).
fn plain(n: u8) -> Reader {
    Reader::Scrape {
        addr: ip(n),
        scraper: None,
        encoding: 0,
    }
}

/// Reads every `period` s from `first` until `until`, each moved by
/// `jitter(n)`.
fn every(first: f64, period: f64, until: f64, mut jitter: impl FnMut(u32) -> f64) -> Vec<f64> {
    let mut v = Vec::new();
    let mut n = 0;
    while first + f64::from(n) * period < until {
        v.push(first + f64::from(n) * period + jitter(n));
        n += 1;
    }
    v
}

fn reads(times: Vec<f64>, who: usize, r: Reader) -> Vec<(f64, usize, Reader)> {
    times.into_iter().map(|t| (t, who, r)).collect()
}

/// A deterministic uniform jitter of ±`max` seconds.
fn uniform(seed: u64, max: f64) -> impl FnMut(u32) -> f64 {
    let mut x = seed;
    move |_| {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((x >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * max
    }
}

const COSTS: [f64; 3] = [0.002, 0.08, 1.5];

#[test]
fn one_prometheus_is_sampled_once_per_scrape_just_before_it() {
    for cost in COSTS {
        let mut sim = Sim::new(0.5, cost);
        sim.run(
            reads(every(3.0, 15.0, 300.0, |_| 0.0), 0, prom(1, 1)),
            310.0,
        );
        assert_eq!(sim.waits(0, 2), Vec::<f64>::new(), "cost {cost}");
        let kinds = sim.kinds(0);
        assert!(
            kinds[3..].iter().all(|k| *k == ReadKind::Scheduled),
            "{kinds:?}"
        );
        // From the third read on: one sample per scrape, all ahead.
        assert_eq!(sim.samples_in(19.0, 289.0), 18, "cost {cost}");
        assert!(
            sim.samples[2..].iter().all(|s| s.1 == Trigger::Ahead),
            "{:?}",
            sim.samples
        );
        assert_eq!(sim.c.schedules(), 1);
    }
}

/// Two servers of an HA pair, at every phase offset: from two addresses,
/// or behind one (same User-Agent and timeout).
#[test]
fn an_ha_pair_at_any_offset_from_two_addresses_or_one_never_waits() {
    for one_address in [false, true] {
        for cost in COSTS {
            for k in 0..60 {
                let offset = f64::from(k) * 0.25;
                let a = prom(1, 1);
                let b = if one_address { a } else { prom(2, 1) };
                let mut sim = Sim::new(0.5, cost);
                let mut all = reads(every(3.0, 15.0, 400.0, |_| 0.0), 0, a);
                all.extend(reads(every(3.0 + offset, 15.0, 400.0, |_| 0.0), 1, b));
                sim.run(all, 410.0);
                let what = format!("one address {one_address}, cost {cost}, offset {offset}");
                assert_eq!(sim.waits(0, 2), Vec::<f64>::new(), "A: {what}");
                assert_eq!(sim.waits(1, 2), Vec::<f64>::new(), "B: {what}");
                // Once both are learned: at most one sample per scrape
                // interval per schedule (fewer where one serves both).
                let from = 3.0 + offset + 31.0;
                let n = sim.samples_in(from, from + 300.0);
                assert!(n <= 40, "{n} samples in 20 intervals: {what}");
                assert!(sim.c.schedules() <= 2, "{what}");
            }
        }
    }
}

#[test]
fn jitter_of_100_ms_never_makes_a_scrape_wait() {
    for cost in COSTS {
        for seed in 0..20 {
            let mut sim = Sim::new(0.5, cost);
            let mut all = reads(every(3.0, 15.0, 900.0, uniform(seed, 0.1)), 0, prom(1, 1));
            all.extend(reads(
                every(10.0, 15.0, 900.0, uniform(seed + 100, 0.1)),
                1,
                prom(1, 1),
            ));
            sim.run(all, 910.0);
            assert_eq!(
                sim.waits(0, 2),
                Vec::<f64>::new(),
                "cost {cost} seed {seed}"
            );
            assert_eq!(
                sim.waits(1, 2),
                Vec::<f64>::new(),
                "cost {cost} seed {seed}"
            );
            let n = sim.samples_in(60.0, 900.0);
            assert!(n <= 2 * 56 + 1, "{n} samples; cost {cost} seed {seed}");
        }
    }
}

/// 15 s, then 60 s, then 15 s again: one read waits at each change (it
/// could not be predicted), then the new period is followed.
#[test]
fn a_scraper_whose_interval_changes_waits_once_at_each_change() {
    for cost in COSTS {
        let mut times = every(3.0, 15.0, 300.0, |_| 0.0);
        let last = *times.last().unwrap();
        times.extend(every(last + 60.0, 60.0, last + 600.0, |_| 0.0));
        let last = *times.last().unwrap();
        times.extend(every(last + 15.0, 15.0, last + 300.0, |_| 0.0));
        let end = times.last().unwrap() + 10.0;
        let mut sim = Sim::new(0.5, cost);
        sim.run(reads(times.clone(), 0, prom(1, 1)), end);
        let waits = sim.waits(0, 2);
        assert!(waits.len() <= 2, "cost {cost}: waits at {waits:?}");
        // At 60 s, once the period is learned: one sample per read.
        let slow = times.iter().position(|t| *t > 300.0).unwrap();
        let (from, to) = (times[slow + 1] + 0.001, times[slow + 8]);
        let n = sim.samples_in(from, to);
        assert_eq!(n, 7, "samples between 8 reads 60 s apart; cost {cost}");
    }
}

/// Somebody's curl now and then: served what there is when recent, and
/// never disturbing Prometheus's schedule.
#[test]
fn curl_now_and_then_neither_waits_long_nor_disturbs_prometheus() {
    let mut sim = Sim::new(0.5, 0.08);
    let mut all = reads(every(3.0, 15.0, 600.0, |_| 0.0), 0, prom(1, 1));
    let mut jit = uniform(5, 30.0);
    all.extend(reads(
        every(40.0, 37.0, 600.0, |_| jit(0).abs()),
        1,
        plain(1),
    ));
    sim.run(all, 610.0);
    assert_eq!(sim.waits(0, 2), Vec::<f64>::new());
    assert!(sim.kinds(0)[3..].iter().all(|k| *k == ReadKind::Scheduled));
    // Curl's reads: each served at once when the latest sample is at most
    // 5 s old, else after one sample.
    let curls = sim.kinds(1).len();
    let extra = sim.samples_in(31.0, 600.0) - 38;
    assert!(extra <= curls, "{extra} samples for {curls} reads");
}

/// A client that reads ten times a second for a minute, beside a
/// Prometheus: at most one sample per 5 s for it, and Prometheus never
/// waits.
#[test]
fn a_client_reading_ten_times_a_second_adds_at_most_one_sample_per_5_s() {
    for (cost, every_s) in [(0.002, 5.0), (0.08, 5.0), (1.5, 30.0)] {
        for forged in [false, true] {
            let mut sim = Sim::new(0.5, cost);
            let mut all = reads(every(3.0, 15.0, 200.0, |_| 0.0), 0, prom(1, 1));
            let hostile = if forged { prom(9, 1) } else { plain(9) };
            all.extend(reads(every(100.0, 0.1, 160.0, |_| 0.0), 1, hostile));
            sim.run(all, 200.0);
            assert_eq!(sim.waits(0, 2), Vec::<f64>::new(), "cost {cost}");
            let others = sim
                .samples
                .iter()
                .filter(|(t, w)| (100.0..160.0).contains(t) && *w == Trigger::Scrape)
                .count();
            let bound = (60.0 / every_s) as usize + 1;
            assert!(
                others <= bound,
                "{others} samples for the client (at most {bound}); cost {cost}, forged {forged}"
            );
            let ahead = sim
                .samples
                .iter()
                .filter(|(t, w)| (100.0..160.0).contains(t) && *w == Trigger::Ahead)
                .count();
            assert!(ahead <= 4, "{ahead} samples ahead in 60 s; forged {forged}");
        }
    }
}

/// 64 addresses that read right after each scrape: served Prometheus's
/// sample, no sample of their own; with Prometheus's headers forged, they
/// take no schedule Prometheus has, and it never waits.
#[test]
fn sixty_four_addresses_reading_after_each_scrape_cost_nothing() {
    for forged in [false, true] {
        for after in [0.05, 1.0, 3.0] {
            let mut sim = Sim::new(0.5, 0.08);
            let mut all = reads(every(3.0, 15.0, 600.0, |_| 0.0), 0, prom(1, 1));
            for n in 0..64u8 {
                let r = if forged {
                    prom(100 + n, 1)
                } else {
                    plain(100 + n)
                };
                all.extend(reads(
                    every(3.0 + after + f64::from(n) * 0.001, 15.0, 600.0, |_| 0.0),
                    1 + usize::from(n),
                    r,
                ));
            }
            sim.run(all, 610.0);
            let what = format!("forged {forged}, {after} s after");
            assert_eq!(sim.waits(0, 2), Vec::<f64>::new(), "{what}");
            assert!(
                sim.kinds(0)[3..].iter().all(|k| *k == ReadKind::Scheduled),
                "{what}"
            );
            let n = sim.samples_in(60.0, 600.0);
            // Prometheus's 36, and, for forged schedules that read more
            // than a sample's freshness after it, one more per scrape.
            let most = if forged && after > 0.5 { 72 } else { 36 };
            assert!(n <= most + 1, "{n} samples in 36 scrape intervals: {what}");
            assert!(sim.c.schedules() <= MAX_SCHEDULES);
        }
    }
}

/// Scrapers that arrive after four schedules are followed are served like
/// any other reader: the four are kept.
#[test]
fn schedules_are_bounded_and_never_taken_over() {
    let mut sim = Sim::new(0.5, 0.02);
    let mut all = Vec::new();
    for n in 0..4u8 {
        all.extend(reads(
            every(1.0 + f64::from(n) * 3.0, 15.0, 600.0, |_| 0.0),
            usize::from(n),
            prom(n + 1, 1),
        ));
    }
    for n in 0..40u8 {
        all.extend(reads(
            every(100.0 + f64::from(n) * 0.3, 7.0, 600.0, |_| 0.0),
            10 + usize::from(n),
            prom(100 + n, 1),
        ));
    }
    sim.run(all, 610.0);
    for who in 0..4 {
        assert_eq!(sim.waits(who, 2), Vec::<f64>::new(), "{who}");
    }
    assert_eq!(sim.c.schedules(), 4);
    // The newcomers: at most one sample per 5 s for all their reads, and
    // the learning budget.
    let n = sim.samples_in(100.0, 600.0);
    let most = 4 * 34 + 100 + 4 + 34;
    assert!(n <= most, "{n} samples");
}

#[test]
fn scrapers_remembered_are_bounded() {
    let mut sim = Sim::new(0.5, 0.01);
    let all: Vec<_> = (0..2000u32)
        .map(|n| {
            (
                f64::from(n) * 0.01,
                0,
                Reader::Scrape {
                    addr: IpAddr::from(n.to_be_bytes()),
                    scraper: Some(1),
                    encoding: 0,
                },
            )
        })
        .collect();
    sim.run(all, 30.0);
    assert!(sim.c.scrapers() <= MAX_SCRAPERS, "{}", sim.c.scrapers());
}

#[test]
fn nobody_reading_means_no_sampling() {
    let mut sim = Sim::new(0.5, 0.01);
    sim.run(reads(every(3.0, 15.0, 60.0, |_| 0.0), 0, prom(1, 1)), 400.0);
    // The reader stopped after 60 s: three periods later nothing is due.
    let last = sim.samples.last().unwrap().0;
    assert!(last < 60.0 + 3.0 * 15.0, "sampled at {last}");
    assert_eq!(sim.c.schedules(), 0);
}

#[test]
fn a_push_target_is_learned_like_a_scraper_and_waits_only_at_first() {
    let mut sim = Sim::new(0.5, 0.08);
    sim.run(
        reads(
            every(15.0, 15.0, 300.0, |_| 0.0),
            0,
            Reader::Push("pushgateway"),
        ),
        310.0,
    );
    assert_eq!(sim.waits(0, 2), Vec::<f64>::new());
    assert!(sim.kinds(0).iter().all(|k| *k == ReadKind::Push));
    assert!(sim.samples_in(40.0, 300.0) <= 18);
}

#[test]
fn a_read_during_a_sample_waits_for_it_and_an_old_one_is_not_enough() {
    let t0 = Instant::now();
    let ms = |n: u64| t0 + Duration::from_millis(n);
    let mut c = Cadence::new(Duration::from_millis(500), t0);
    c.start(ms(0));
    let a = c.arrive(plain(1), ms(100));
    assert_eq!(a.answer, Answer::Wait { since: ms(0) });
    assert_eq!(c.wanted(), None);
    c.done(ms(0), Duration::from_millis(200));
    assert!(c.published_since(ms(0)));
    // A push needs a sample at most the interval old.
    let a = c.arrive(Reader::Push("pushgateway"), ms(1600));
    assert_eq!(a.answer, Answer::Wait { since: ms(1600) });
    assert_eq!(c.wanted(), Some(Trigger::Push));
    // A plain read is served a sample up to 5 s old.
    let a = c.arrive(plain(1), ms(1700));
    assert_eq!(a.answer, Answer::Serve);
}

#[test]
fn samples_longer_than_the_interval_start_early_enough() {
    let t0 = Instant::now();
    let mut c = Cadence::new(Duration::from_millis(500), t0);
    c.done(t0, Duration::from_millis(100));
    assert_eq!(c.bound(), 0.5);
    c.done(t0, Duration::from_millis(1200));
    assert!((c.bound() - 2.42).abs() < 1e-9);
    assert_eq!(c.other_every(), Duration::from_secs(24));
    // The longest of the last four counts.
    for _ in 0..3 {
        c.done(t0, Duration::from_millis(100));
    }
    assert!((c.bound() - 2.42).abs() < 1e-9);
    c.done(t0, Duration::from_millis(100));
    assert_eq!(c.bound(), 0.5);
    assert_eq!(c.other_every(), Duration::from_secs(5));
}

#[test]
fn encodings_of_scheduled_scrapers_are_prepared() {
    let mut sim = Sim::new(0.5, 0.01);
    sim.run(reads(every(3.0, 15.0, 60.0, |_| 0.0), 0, prom(1, 1)), 50.0);
    assert_eq!(sim.c.encodings(), 1 << 3);
}

/// The bounds follow --monitor.interval: ten intervals between samples for
/// reads no schedule explains, and as the shortest period of a schedule.
#[test]
fn the_bounds_follow_the_interval() {
    let mut sim = Sim::new(0.1, 0.002);
    let mut all = reads(every(0.5, 2.0, 60.0, |_| 0.0), 0, prom(1, 1));
    all.extend(reads(every(0.3, 0.1, 60.0, |_| 0.0), 1, plain(2)));
    sim.run(all, 60.0);
    assert_eq!(sim.c.other_every(), Duration::from_secs(1));
    assert_eq!(sim.c.schedules(), 1, "a scraper every 2 s is followed");
    assert_eq!(sim.waits(0, 2), Vec::<f64>::new());
    let others = sim
        .samples
        .iter()
        .filter(|s| s.1 == Trigger::Scrape)
        .count();
    assert!(others <= 61, "{others}");
}

/// Two scrapers at one address, offset by a little less than half their
/// period: the read that fits a guess mixing the two is taken for the
/// second of a pair of one period instead, and both are followed.
#[test]
fn a_pair_near_half_a_period_apart_is_two_schedules() {
    for seed in 0..10 {
        let mut sim = Sim::new(0.5, 0.002);
        let mut all = reads(every(3.0, 15.0, 600.0, uniform(seed, 0.1)), 0, prom(1, 1));
        all.extend(reads(
            every(9.9, 15.0, 600.0, uniform(seed + 50, 0.1)),
            1,
            prom(1, 1),
        ));
        sim.run(all, 600.0);
        assert_eq!(sim.c.schedules(), 2, "seed {seed}");
        assert_eq!(sim.waits(0, 2), Vec::<f64>::new(), "seed {seed}");
        assert_eq!(sim.waits(1, 2), Vec::<f64>::new(), "seed {seed}");
    }
}

/// Between a sample taken for a scrape and the scrape, changes wait.
#[test]
fn changes_wait_for_the_scrape_a_sample_was_taken_for() {
    let mut sim = Sim::new(0.5, 0.08);
    sim.run(reads(every(3.0, 15.0, 64.0, |_| 0.0), 0, prom(1, 1)), 61.0);
    let t0 = sim.t0;
    let at = |s: f64| t0 + Duration::from_secs_f64(s);
    assert!(!sim.c.hold(at(61.0)), "not before that sample");
    sim.run(Vec::new(), 62.9);
    // The sample for the read at 63 s was taken: held until it comes.
    assert!(sim.c.hold(at(62.9)));
    sim.c.arrive(prom(1, 1), at(63.0));
    assert!(!sim.c.hold(at(63.01)), "released by the read");
    // A read that does not come releases it after its tolerance.
    let mut sim = Sim::new(0.5, 0.08);
    sim.run(reads(every(3.0, 15.0, 50.0, |_| 0.0), 0, prom(1, 1)), 62.9);
    let t0 = sim.t0;
    let at = |s: f64| t0 + Duration::from_secs_f64(s);
    assert!(sim.c.hold(at(62.9)));
    assert!(!sim.c.hold(at(64.0)));
}

/// A scraper faster than ten intervals is served like any other reader,
/// not followed as several schedules of a multiple of its period.
#[test]
fn a_scraper_faster_than_a_schedule_may_be_is_not_followed() {
    let mut sim = Sim::new(2.0, 0.01);
    sim.run(reads(every(3.0, 6.0, 600.0, |_| 0.0), 0, prom(1, 1)), 600.0);
    assert_eq!(sim.c.schedules(), 0);
    assert!(sim.kinds(0).iter().all(|k| *k == ReadKind::Unscheduled));
    // At most one sample per ten intervals (20 s).
    assert!(sim.samples.len() <= 31, "{}", sim.samples.len());
}
