//! The readers a site has, and hostile ones, against the agent at its
//! defaults (issue 25): real Prometheus servers (one; an HA pair from two
//! addresses, one of them through a forwarder from 127.0.0.2; the pair
//! behind one address; one whose interval goes 15 s -> 60 s -> 15 s; one
//! beside somebody's curl), scrapers of our own where the timing must be
//! chosen (two at one address with +-100 ms of jitter; one followed by 64
//! addresses reading right after each of its scrapes), and a client that
//! reads ten times a second. For each: the samples taken, the scrapes that
//! waited, and the agent's CPU, over a window that starts once the agent
//! follows the arrangement's schedules.
use std::{
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::bail;
use apptheus_testkit::{forward::Forward, prometheus::Prometheus, scrape::value};

use super::{
    Agent, Ctx, Report, Sizes,
    agent::{PROMETHEUS_HEADERS, get_metrics},
    scale::{Containers, clean_up, tracked},
};

/// One arrangement's figures.
pub struct ReadersRow {
    pub arrangement: String,
    pub window_s: f64,
    /// Scrapes a schedule predicted, and of them those that waited.
    pub scheduled: f64,
    pub scheduled_waited: f64,
    /// Other reads, and of them those that waited.
    pub other: f64,
    pub other_waited: f64,
    /// Samples taken ahead of predicted scrapes, and for other reads.
    pub ahead: f64,
    pub for_reads: f64,
    /// The most samples the window allows: one per scrape interval per
    /// schedule, and what the arrangement adds (see `note`).
    pub most: f64,
    /// Scheduled scrapes that may wait in the window (an interval change).
    pub waits_allowed: f64,
    pub cpu_pct: f64,
    pub note: &'static str,
}

impl ReadersRow {
    pub fn met(&self) -> bool {
        self.scheduled_waited <= self.waits_allowed && self.ahead + self.for_reads <= self.most
    }
}

/// What the agent counted, as a reader saw it.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    ahead: f64,
    for_reads: f64,
    scheduled: f64,
    scheduled_waited: f64,
    other: f64,
    other_waited: f64,
    schedules: f64,
}

impl Counts {
    fn of(text: &str) -> Self {
        let v = |name: &str, labels: &[(&str, &str)]| value(text, name, labels).unwrap_or(0.0);
        let reads = |reader: &str, answer: &str| {
            v(
                "apptheus_reads_total",
                &[("reader", reader), ("answer", answer)],
            )
        };
        Counts {
            ahead: v("apptheus_samples_total", &[("trigger", "ahead")]),
            for_reads: v("apptheus_samples_total", &[("trigger", "scrape")]),
            scheduled: reads("scheduled", "at_once") + reads("scheduled", "waited"),
            scheduled_waited: reads("scheduled", "waited"),
            other: reads("unscheduled", "at_once") + reads("unscheduled", "waited"),
            other_waited: reads("unscheduled", "waited"),
            schedules: v("apptheus_scrape_schedules", &[]),
        }
    }

    /// As Prometheus `p` scraped it last.
    fn from_prometheus(p: &Prometheus) -> anyhow::Result<Self> {
        let q = |query: &str| -> anyhow::Result<f64> { Ok(p.query(query)?.unwrap_or(0.0)) };
        let reads = |reader: &str, answer: &str| {
            q(&format!(
                "apptheus_reads_total{{reader=\"{reader}\",answer=\"{answer}\"}}"
            ))
        };
        Ok(Counts {
            ahead: q("apptheus_samples_total{trigger=\"ahead\"}")?,
            for_reads: q("apptheus_samples_total{trigger=\"scrape\"}")?,
            scheduled: reads("scheduled", "at_once")? + reads("scheduled", "waited")?,
            scheduled_waited: reads("scheduled", "waited")?,
            other: reads("unscheduled", "at_once")? + reads("unscheduled", "waited")?,
            other_waited: reads("unscheduled", "waited")?,
            schedules: q("apptheus_scrape_schedules")?,
        })
    }
}

/// A scraper of our own with Prometheus's headers: every `period`, from
/// `from`, each read moved by up to +-`jitter` seconds; it keeps the last
/// exposition it read, and tells `after` when each scrape is done.
struct Scraper {
    stop: Arc<AtomicBool>,
    last: Arc<Mutex<Option<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl Scraper {
    fn start(
        agent: &str,
        from: IpAddr,
        period: Duration,
        phase: Duration,
        jitter: f64,
        seed: u64,
        after: Option<mpsc::Sender<()>>,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let last = Arc::new(Mutex::new(None));
        let (stopped, kept, agent) = (stop.clone(), last.clone(), agent.to_string());
        let thread = std::thread::spawn(move || {
            let mut x = seed.wrapping_mul(2654435761).wrapping_add(1);
            let t0 = Instant::now() + phase;
            let mut k: u32 = 0;
            while !stopped.load(Ordering::Relaxed) {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let j = ((x >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * jitter;
                let at = t0 + period * k;
                let at = if j >= 0.0 {
                    at + Duration::from_secs_f64(j)
                } else {
                    at.checked_sub(Duration::from_secs_f64(-j)).unwrap_or(at)
                };
                k += 1;
                while Instant::now() < at {
                    if stopped.load(Ordering::Relaxed) {
                        return;
                    }
                    std::thread::sleep((at - Instant::now()).min(Duration::from_millis(50)));
                }
                if let Ok((_, text)) = get_metrics(&agent, Some(from), &PROMETHEUS_HEADERS)
                    && let Ok(mut l) = kept.lock()
                {
                    *l = Some(text);
                }
                if let Some(tx) = &after {
                    let _ = tx.send(());
                }
            }
        });
        Scraper {
            stop,
            last,
            thread: Some(thread),
        }
    }

    fn counts(&self) -> Counts {
        self.last
            .lock()
            .ok()
            .and_then(|l| l.as_deref().map(Counts::of))
            .unwrap_or_default()
    }
}

impl Drop for Scraper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A thread that runs `f` until stopped (on drop).
struct Background {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    fn start(f: impl FnOnce(Arc<AtomicBool>) + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        Background {
            stop,
            thread: Some(std::thread::spawn(move || f(s))),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sleeps `d`, in steps, unless `stop` is set.
fn nap(stop: &AtomicBool, d: Duration) {
    let until = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
        std::thread::sleep((until - Instant::now()).min(Duration::from_millis(50)));
    }
}

/// Where an arrangement's counts are read.
enum Seen<'a> {
    Prometheus(&'a Prometheus),
    Scraper(&'a Scraper),
}

impl Seen<'_> {
    fn counts(&self) -> anyhow::Result<Counts> {
        match self {
            Seen::Prometheus(p) => Counts::from_prometheus(p),
            Seen::Scraper(s) => Ok(s.counts()),
        }
    }
}

/// Waits until `seen` says the agent follows `schedules` schedules, then
/// measures for `window` (running `during` at its start): the row.
#[allow(clippy::too_many_arguments)]
fn measure(
    agent: &Agent,
    seen: &Seen<'_>,
    schedules: f64,
    window: Duration,
    period: Duration,
    during: impl FnOnce(),
    arrangement: String,
    note: &'static str,
) -> anyhow::Result<ReadersRow> {
    let deadline = Instant::now() + period * 10 + Duration::from_secs(60);
    let mut c0 = seen.counts()?;
    while c0.schedules < schedules {
        if Instant::now() > deadline {
            bail!(
                "{arrangement}: the agent followed {} schedules, not {schedules}",
                c0.schedules
            );
        }
        std::thread::sleep(Duration::from_millis(250));
        c0 = seen.counts()?;
    }
    // From the next reading on (the values of one scrape).
    let first = c0.scheduled;
    while c0.scheduled == first && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        c0 = seen.counts()?;
    }
    let cpu0 = agent.meter.cpu_seconds();
    let t0 = Instant::now();
    during();
    let until = t0 + window;
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(200));
    }
    // The next reading after the window.
    let mut c1 = seen.counts()?;
    let last = c1.scheduled;
    let deadline = Instant::now() + period * 2 + Duration::from_secs(10);
    while c1.scheduled == last && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        c1 = seen.counts()?;
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = agent.meter.cpu_seconds() - cpu0;
    Ok(ReadersRow {
        arrangement,
        window_s: secs,
        scheduled: c1.scheduled - c0.scheduled,
        scheduled_waited: c1.scheduled_waited - c0.scheduled_waited,
        other: c1.other - c0.other,
        other_waited: c1.other_waited - c0.other_waited,
        ahead: c1.ahead - c0.ahead,
        for_reads: c1.for_reads - c0.for_reads,
        most: (secs / period.as_secs_f64()).ceil() * schedules + 1.0,
        waits_allowed: 0.0,
        cpu_pct: cpu / secs * 100.0,
        note,
    })
}

/// Every arrangement, on `s.readers_containers` containers.
pub fn readers(ctx: &Ctx, s: &Sizes, r: &mut Report) -> anyhow::Result<()> {
    let n = s.readers_containers;
    let containers = Containers::placed(ctx, n)?;
    r.readers_containers = n;
    let runs: [(&str, Arrangement); 9] = [
        ("one Prometheus", one_prometheus),
        ("HA pair, two addresses", ha_two_addresses),
        ("HA pair behind one address", ha_one_address),
        ("interval changes", interval_changes),
        ("curl now and then", curl_now_and_then),
        ("jitter", jitter),
        ("ten reads a second", ten_a_second),
        ("64 addresses after each scrape", crowd_plain),
        ("64 addresses after each scrape, forged", crowd_forged),
    ];
    for (name, run) in runs {
        let agent = Agent::start(ctx, &s.readers_agent_args)?;
        let row = tracked(&agent, n).and_then(|()| run(&agent, s));
        match row {
            Ok(row) => {
                println!(
                    "bench: readers, {}: {} scheduled scrapes ({} waited), {} other reads ({} waited), {} + {} samples (at most {}), {:.2} % CPU",
                    row.arrangement,
                    row.scheduled,
                    row.scheduled_waited,
                    row.other,
                    row.other_waited,
                    row.ahead,
                    row.for_reads,
                    row.most,
                    row.cpu_pct
                );
                r.readers.push(row);
            }
            Err(e) => r
                .notes
                .push(format!("readers, {name}: not measured: {e:#}")),
        }
    }
    clean_up(ctx, containers);
    Ok(())
}

type Arrangement = fn(&Agent, &Sizes) -> anyhow::Result<ReadersRow>;

fn secs(d: Duration) -> u64 {
    d.as_secs()
}

fn one_prometheus(agent: &Agent, s: &Sizes) -> anyhow::Result<ReadersRow> {
    let p = s.readers_period;
    let a = Prometheus::start("a", &[agent.addr().to_string()], p)?;
    measure(
        agent,
        &Seen::Prometheus(&a),
        1.0,
        s.readers_window,
        p,
        || {},
        format!("one Prometheus, every {} s", secs(p)),
        "",
    )
}

fn ha_two_addresses(agent: &Agent, s: &Sizes) -> anyhow::Result<ReadersRow> {
    let p = s.readers_period;
    let f = Forward::start(IpAddr::from([127, 0, 0, 2]), agent.addr().parse()?)?;
    let a = Prometheus::start("a", &[agent.addr().to_string()], p)?;
    let _b = Prometheus::start("b", &[f.addr.to_string()], p)?;
    measure(
        agent,
        &Seen::Prometheus(&a),
        2.0,
        s.readers_window,
        p,
        || {},
        format!("HA pair, every {} s, from 127.0.0.1 and 127.0.0.2", secs(p)),
        "",
    )
}

fn ha_one_address(agent: &Agent, s: &Sizes) -> anyhow::Result<ReadersRow> {
    let p = s.readers_period;
    let a = Prometheus::start("a", &[agent.addr().to_string()], p)?;
    let _b = Prometheus::start("b", &[agent.addr().to_string()], p)?;
    measure(
        agent,
        &Seen::Prometheus(&a),
        2.0,
        s.readers_window,
        p,
        || {},
        format!("HA pair, every {} s, both from 127.0.0.1", secs(p)),
        "",
    )
}

/// 15 s, then 60 s for `readers_slow` (long enough for the new period to
/// be learned and followed), then 15 s again: a scrape waits at each
/// change (it could not be predicted).
fn interval_changes(agent: &Agent, s: &Sizes) -> anyhow::Result<ReadersRow> {
    let p = s.readers_period;
    let slow = p * 4;
    let a = Prometheus::start("a", &[agent.addr().to_string()], p)?;
    let seen = Seen::Prometheus(&a);
    let (tx, rx) = mpsc::channel::<anyhow::Result<()>>();
    let a_ref = &a;
    let window = s.readers_slow + s.readers_window;
    let mut row = std::thread::scope(|scope| {
        let measured = scope.spawn(move || {
            measure(
                agent,
                &seen,
                1.0,
                window,
                p,
                move || {
                    let _ = tx.send(Ok(()));
                },
                format!(
                    "one Prometheus, {} s -> {} s -> {} s",
                    secs(p),
                    secs(slow),
                    secs(p)
                ),
                "",
            )
        });
        // The window started: slow down, then back.
        if rx.recv().is_ok() {
            let _ = a_ref.set_interval(slow);
            std::thread::sleep(s.readers_slow);
            let _ = a_ref.set_interval(p);
        }
        measured
            .join()
            .unwrap_or_else(|_| bail!("the measuring thread panicked"))
    })?;
    // The schedule of the old period samples up to three times before it
    // is dropped, and each change makes one scrape wait.
    let at_slow = s.readers_slow.as_secs_f64() / slow.as_secs_f64();
    let at_fast = (row.window_s - s.readers_slow.as_secs_f64()) / p.as_secs_f64();
    row.most = (at_slow + at_fast).ceil() + 3.0 + 2.0 + 1.0;
    row.waits_allowed = 2.0;
    row.note = "a scrape waits at each change, which could not be predicted";
    Ok(row)
}

fn curl_now_and_then(agent: &Agent, s: &Sizes) -> anyhow::Result<ReadersRow> {
    let p = s.readers_period;
    let a = Prometheus::start("a", &[agent.addr().to_string()], p)?;
    let addr = agent.addr().to_string();
    let every = p * 2;
    let _curl = Background::start(move |stop| {
        let mut x: u64 = 12345;
        while !stop.load(Ordering::Relaxed) {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let f = (x >> 11) as f64 / (1u64 << 53) as f64;
            nap(&stop, every.mul_f64(0.5 + f));
            let _ = get_metrics(&addr, None, &[("User-Agent", "curl/7.88.1")]);
        }
    });
    let mut row = measure(
        agent,
        &Seen::Prometheus(&a),
        1.0,
        s.readers_window,
        p,
        || {},
        format!(
            "one Prometheus, every {} s, and curl every {}-{} s",
            secs(p),
            secs(every) / 2,
            secs(every) * 3 / 2
        ),
        "",
    )?;
    row.most += row.other;
    row.note = "a curl that finds no sample recent enough takes one";
    Ok(row)
}

fn jitter(agent: &Agent, s: &Sizes) -> anyhow::Result<ReadersRow> {
    let p = s.readers_period;
    let here = IpAddr::from([127, 0, 0, 1]);
    let a = Scraper::start(agent.addr(), here, p, Duration::ZERO, 0.1, 1, None);
    let _b = Scraper::start(agent.addr(), here, p, p.mul_f64(0.3), 0.1, 2, None);
    measure(
        agent,
        &Seen::Scraper(&a),
        2.0,
        s.readers_window,
        p,
        || {},
        format!(
            "two scrapers at one address, every {} s, +-100 ms of jitter",
            secs(p)
        ),
        "scrapers of our own with Prometheus's headers",
    )
}

fn ten_a_second(agent: &Agent, s: &Sizes) -> anyhow::Result<ReadersRow> {
    let p = s.readers_period;
    let a = Prometheus::start("a", &[agent.addr().to_string()], p)?;
    let addr = agent.addr().to_string();
    let mut hostile: Option<Background> = None;
    let mut row = measure(
        agent,
        &Seen::Prometheus(&a),
        1.0,
        s.readers_hostile,
        p,
        || {
            hostile = Some(Background::start(move |stop| {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    let _ = get_metrics(&addr, None, &[]);
                }
            }));
        },
        format!(
            "one Prometheus, every {} s, and a client reading 10 times a second",
            secs(p)
        ),
        "",
    )?;
    drop(hostile);
    // One sample per ten intervals (5 s) for every other read together.
    row.most += (row.window_s / s.other_every.as_secs_f64()).ceil() + 1.0;
    row.note = "reads no schedule explains: one sample per 5 s at most";
    Ok(row)
}

/// A scraper of our own, and 64 addresses (127.0.1.1-64) that read 50 ms
/// after each of its scrapes, with Prometheus's headers when `forged`.
fn crowd(agent: &Agent, s: &Sizes, forged: bool) -> anyhow::Result<ReadersRow> {
    let p = s.readers_period;
    let (tx, rx) = mpsc::channel();
    let a = Scraper::start(
        agent.addr(),
        IpAddr::from([127, 0, 0, 1]),
        p,
        Duration::ZERO,
        0.0,
        3,
        Some(tx),
    );
    let addr = agent.addr().to_string();
    let rx = Mutex::new(rx);
    let _crowd = Background::start(move |stop| {
        let Ok(rx) = rx.lock() else { return };
        while !stop.load(Ordering::Relaxed) {
            if rx.recv_timeout(Duration::from_millis(200)).is_err() {
                continue;
            }
            std::thread::sleep(Duration::from_millis(50));
            for i in 1..=64u8 {
                let from = IpAddr::from([127, 0, 1, i]);
                let headers: &[(&str, &str)] = if forged { &PROMETHEUS_HEADERS } else { &[] };
                let _ = get_metrics(&addr, Some(from), headers);
            }
        }
    });
    let mut row = measure(
        agent,
        &Seen::Scraper(&a),
        1.0,
        s.readers_window,
        p,
        || {},
        format!(
            "a scraper every {} s, and 64 addresses reading 50 ms after each scrape{}",
            secs(p),
            if forged {
                ", with Prometheus's headers"
            } else {
                ""
            }
        ),
        "",
    )?;
    if forged {
        // Three of them may take the free schedules: each then costs a
        // sample per scrape interval, unless the scraper's serves it.
        row.most = (row.window_s / p.as_secs_f64()).ceil() * 4.0 + 1.0;
        row.note = "forged headers: the three free schedules may be taken, not the scraper's";
    } else {
        row.note = "served the sample taken for the scrape";
    }
    Ok(row)
}

fn crowd_plain(agent: &Agent, s: &Sizes) -> anyhow::Result<ReadersRow> {
    crowd(agent, s, false)
}

fn crowd_forged(agent: &Agent, s: &Sizes) -> anyhow::Result<ReadersRow> {
    crowd(agent, s, true)
}
