//! What HTTP clients can make the agent hold: connections per client
//! address and in total, shared fairly, and how long a connection may wait
//! for its request. Pure bookkeeping, no I/O: the server (`conn.rs`) acts
//! on what it decides.
//!
//! The policy, and why (docs/security.md, "The HTTP endpoint"):
//! - Accepting never stops. A newcomer over its address's cap is refused at
//!   once (reset), whatever the other addresses do.
//! - When every slot is taken, a newcomer from an address that holds fewer
//!   connections than the heaviest address takes the slot of that address's
//!   oldest connection, which is closed; otherwise it is refused. One
//!   address, or a few, can never hold the slots another address needs.
//! - Connections beyond an address's fair share, or made while the pool is
//!   three quarters full, get short timeouts for their first byte and their
//!   headers, so that what an abuser holds is dropped within a second or two.
use std::{
    cmp::Reverse,
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, Ipv6Addr},
    time::Duration,
};

/// Bounds on HTTP connections; see the module's documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PoolLimits {
    /// Open connections in all, every listener together. Fitted under the
    /// descriptor limit by [`PoolLimits::fitted_to`]. A connection in the
    /// middle of a request holds about 30 KiB (hyper's buffers and state):
    /// 512 keep a full table within about 16 MiB, and are far more than
    /// the scrapers of a node need.
    pub max_connections: usize,
    /// Open connections of one client address (an IPv6 client: its /64).
    pub max_per_address: usize,
    /// Connections of an address beyond this many get the short timeouts.
    pub fair_share: usize,
    /// Answers of one address being sent at once (each holds a copy of
    /// what it sends until it is written); more requests get 429.
    pub max_responses_per_address: usize,
    /// Time for a new connection's first byte.
    pub first_byte: Duration,
    /// Time from accepting a connection to its request's headers (the TLS
    /// handshake included); also how long a kept-alive connection may wait
    /// for its next request.
    pub headers: Duration,
    /// The same two, under pressure.
    pub first_byte_short: Duration,
    pub headers_short: Duration,
    /// A response write that makes no progress for this long is cut (a
    /// client that does not read).
    pub write_stall: Duration,
    /// A connection, however busy, is closed after this.
    pub lifetime: Duration,
}

impl Default for PoolLimits {
    fn default() -> Self {
        Self {
            max_connections: 512,
            max_per_address: 32,
            fair_share: 8,
            max_responses_per_address: 4,
            first_byte: Duration::from_secs(5),
            headers: Duration::from_secs(10),
            first_byte_short: Duration::from_secs(1),
            headers_short: Duration::from_secs(2),
            write_stall: Duration::from_secs(10),
            lifetime: Duration::from_secs(60),
        }
    }
}

/// Descriptors kept for the rest of the agent when the connection cap is
/// fitted to the descriptor limit; the monitoring socket fits its own cap
/// the same way.
const FD_RESERVE: u64 = 256;

impl PoolLimits {
    /// These limits with `max_connections` lowered, if need be, to a
    /// quarter of what a soft descriptor limit of `soft` leaves after
    /// [`FD_RESERVE`] (the monitoring socket may take much of the rest);
    /// `None` when they already fit.
    pub(crate) fn fitted_to(&self, soft: u64) -> Option<Self> {
        let room =
            usize::try_from((soft.saturating_sub(FD_RESERVE) / 4).max(16)).unwrap_or(usize::MAX);
        (self.max_connections > room).then(|| Self {
            max_connections: room,
            max_per_address: self.max_per_address.min(room),
            ..self.clone()
        })
    }
}

/// The address a client is counted under: an IPv4 address as it is (an
/// IPv4-mapped IPv6 address as the IPv4 one), an IPv6 address by its /64,
/// the block one host usually gets.
pub(crate) fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Its address already holds [`PoolLimits::max_per_address`] connections.
    PerAddress,
    /// Every slot is taken, and no address holds more than its own.
    Total,
}

impl Refusal {
    /// The `reason` label of `apptheus_http_connections_rejected_total`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::PerAddress => "per_address_limit",
            Self::Total => "total_limit",
        }
    }
}

/// How long an admitted connection may wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timeouts {
    pub first_byte: Duration,
    pub headers: Duration,
}

/// A connection taken in.
#[derive(Debug)]
pub(crate) struct Admitted<H> {
    pub id: u64,
    pub timeouts: Timeouts,
    /// The connection whose slot was given to this one: close it.
    pub evicted: Option<H>,
}

/// Open connections by client address. `H` is what the server needs to
/// close an evicted connection.
#[derive(Debug)]
pub(crate) struct Pool<H> {
    limits: PoolLimits,
    total: usize,
    next_id: u64,
    /// Each address's connections, oldest (smallest id) first.
    by_key: HashMap<IpAddr, BTreeMap<u64, H>>,
    /// (connections, address), to find the heaviest address; among equals
    /// the lowest address (arbitrary, but stable).
    heaviest: BTreeSet<(usize, Reverse<IpAddr>)>,
    /// Answers being sent, by address.
    responses: HashMap<IpAddr, usize>,
}

impl<H> Pool<H> {
    pub(crate) fn new(limits: PoolLimits) -> Self {
        Self {
            limits,
            total: 0,
            next_id: 0,
            by_key: HashMap::new(),
            heaviest: BTreeSet::new(),
            responses: HashMap::new(),
        }
    }

    pub(crate) fn limits(&self) -> &PoolLimits {
        &self.limits
    }

    /// Open connections in all.
    pub(crate) fn open(&self) -> usize {
        self.total
    }

    /// Open connections of `key`.
    pub(crate) fn open_of(&self, key: IpAddr) -> usize {
        self.by_key.get(&key).map_or(0, BTreeMap::len)
    }

    #[cfg(test)]
    /// Client addresses with at least one open connection.
    pub(crate) fn addresses(&self) -> usize {
        self.by_key.len()
    }

    /// Takes a slot for a new connection of `key` (see [`client_key`]),
    /// evicting another address's oldest connection when the pool is full
    /// and that address holds more than `key` does.
    pub(crate) fn admit(&mut self, key: IpAddr, handle: H) -> Result<Admitted<H>, Refusal> {
        let mine = self.open_of(key);
        if mine >= self.limits.max_per_address {
            return Err(Refusal::PerAddress);
        }
        let mut evicted = None;
        if self.total >= self.limits.max_connections {
            let &(heaviest, Reverse(victim)) = self.heaviest.last().ok_or(Refusal::Total)?;
            if heaviest <= mine {
                return Err(Refusal::Total);
            }
            let oldest = self
                .by_key
                .get(&victim)
                .and_then(|conns| conns.keys().next().copied())
                .ok_or(Refusal::Total)?;
            evicted = self.remove(victim, oldest);
        }
        // Pressure is judged before this connection counts.
        let crowded = self.total * 4 >= self.limits.max_connections * 3;
        let over_share = mine >= self.limits.fair_share;
        let timeouts = if crowded || over_share {
            Timeouts {
                first_byte: self.limits.first_byte_short,
                headers: self.limits.headers_short,
            }
        } else {
            Timeouts {
                first_byte: self.limits.first_byte,
                headers: self.limits.headers,
            }
        };
        let id = self.next_id;
        self.next_id += 1;
        let conns = self.by_key.entry(key).or_default();
        let before = conns.len();
        conns.insert(id, handle);
        self.reindex(key, before, before + 1);
        self.total += 1;
        Ok(Admitted {
            id,
            timeouts,
            evicted,
        })
    }

    /// Frees the slot of connection `id` of `key`; `None` when it is no
    /// longer there (it was evicted).
    pub(crate) fn remove(&mut self, key: IpAddr, id: u64) -> Option<H> {
        let conns = self.by_key.get_mut(&key)?;
        let before = conns.len();
        let handle = conns.remove(&id)?;
        if conns.is_empty() {
            self.by_key.remove(&key);
        }
        self.reindex(key, before, before - 1);
        self.total -= 1;
        Some(handle)
    }

    /// Counts an answer of `key` starting; false (nothing counted) when
    /// `key` already has [`PoolLimits::max_responses_per_address`] under way.
    pub(crate) fn start_response(&mut self, key: IpAddr) -> bool {
        let n = self.responses.entry(key).or_default();
        if *n >= self.limits.max_responses_per_address {
            return false;
        }
        *n += 1;
        true
    }

    /// Counts an answer of `key` sent (or abandoned).
    pub(crate) fn end_response(&mut self, key: IpAddr) {
        if let Some(n) = self.responses.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.responses.remove(&key);
            }
        }
    }

    fn reindex(&mut self, key: IpAddr, before: usize, after: usize) {
        if before > 0 {
            self.heaviest.remove(&(before, Reverse(key)));
        }
        if after > 0 {
            self.heaviest.insert((after, Reverse(key)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn limits(total: usize, per_address: usize, share: usize) -> PoolLimits {
        PoolLimits {
            max_connections: total,
            max_per_address: per_address,
            fair_share: share,
            ..PoolLimits::default()
        }
    }

    #[test]
    fn one_address_is_capped_and_others_still_get_in() {
        let mut p = Pool::new(limits(100, 3, 2));
        let a = ip("127.0.0.1");
        for _ in 0..3 {
            p.admit(a, ()).unwrap();
        }
        assert_eq!(p.admit(a, ()).unwrap_err(), Refusal::PerAddress);
        assert!(p.admit(ip("127.0.0.2"), ()).is_ok());
        assert_eq!((p.open(), p.open_of(a), p.addresses()), (4, 3, 2));
    }

    #[test]
    fn a_full_pool_gives_the_heaviest_addresss_oldest_slot_to_a_lighter_one() {
        let mut p = Pool::new(limits(4, 4, 4));
        let heavy = ip("10.0.0.1");
        let light = ip("10.0.0.2");
        let first = p.admit(heavy, "h0").unwrap().id;
        p.admit(heavy, "h1").unwrap();
        p.admit(heavy, "h2").unwrap();
        p.admit(light, "l0").unwrap();
        let a = p.admit(ip("10.0.0.3"), "n0").unwrap();
        assert_eq!(a.evicted, Some("h0"), "the oldest of the heaviest");
        assert_eq!(p.open(), 4);
        assert_eq!(p.remove(heavy, first), None, "already gone");
        // light (1) and the newcomer (1) against heavy (2): heavy again.
        assert_eq!(p.admit(light, "l1").unwrap().evicted, Some("h1"));
        // Now light holds 2, as many as anyone: a third of its own is refused.
        assert_eq!(p.admit(light, "l2").unwrap_err(), Refusal::Total);
        assert_eq!(p.open(), 4);
    }

    #[test]
    fn the_heaviest_address_itself_is_refused_when_full() {
        let mut p = Pool::new(limits(2, 5, 5));
        let a = ip("::1");
        p.admit(a, ()).unwrap();
        p.admit(a, ()).unwrap();
        assert_eq!(p.admit(a, ()).unwrap_err(), Refusal::Total);
        // Equal shares: nobody is evicted for a newcomer holding as many.
        let mut p = Pool::new(limits(2, 5, 5));
        p.admit(ip("1.1.1.1"), ()).unwrap();
        p.admit(ip("1.1.1.2"), ()).unwrap();
        let e = p.admit(ip("1.1.1.3"), ()).unwrap().evicted;
        assert!(e.is_some(), "1 > 0: a newcomer takes a slot");
        assert_eq!(p.open_of(ip("1.1.1.1")), 0, "the lowest of the equals");
        assert_eq!(p.admit(ip("1.1.1.2"), ()).unwrap_err(), Refusal::Total);
    }

    #[test]
    fn short_timeouts_beyond_the_fair_share_and_under_pressure() {
        let l = limits(8, 8, 2);
        let mut p = Pool::new(l.clone());
        let a = ip("127.0.0.1");
        let t: Vec<Timeouts> = (0..4).map(|_| p.admit(a, ()).unwrap().timeouts).collect();
        assert_eq!(t[0].headers, l.headers);
        assert_eq!(t[1].first_byte, l.first_byte);
        assert_eq!(t[2].headers, l.headers_short);
        assert_eq!(t[3].first_byte, l.first_byte_short);
        // 4 of 8 open: not crowded yet for another address.
        let b = ip("127.0.0.2");
        assert_eq!(p.admit(b, ()).unwrap().timeouts.headers, l.headers);
        p.admit(ip("127.0.0.3"), ()).unwrap();
        // 6 of 8 open: three quarters, so short for everyone.
        assert_eq!(
            p.admit(ip("127.0.0.4"), ()).unwrap().timeouts.headers,
            l.headers_short
        );
    }

    #[test]
    fn slots_come_back_and_empty_addresses_are_forgotten() {
        let mut p = Pool::new(limits(10, 2, 2));
        let a = ip("192.0.2.7");
        let x = p.admit(a, ()).unwrap().id;
        let y = p.admit(a, ()).unwrap().id;
        assert_eq!(p.admit(a, ()).unwrap_err(), Refusal::PerAddress);
        assert_eq!(p.remove(a, x), Some(()));
        assert!(p.admit(a, ()).is_ok());
        p.remove(a, y);
        p.remove(a, x + 2);
        assert_eq!((p.open(), p.addresses()), (0, 0));
        assert!(p.heaviest.is_empty());
    }

    #[test]
    fn answers_under_way_are_capped_per_address() {
        let mut p: Pool<()> = Pool::new(PoolLimits {
            max_responses_per_address: 2,
            ..PoolLimits::default()
        });
        let (a, b) = (ip("127.0.0.1"), ip("127.0.0.2"));
        assert!(p.start_response(a) && p.start_response(a));
        assert!(!p.start_response(a), "a third at once");
        assert!(p.start_response(b), "another address is not concerned");
        p.end_response(a);
        assert!(p.start_response(a));
        for _ in 0..3 {
            p.end_response(a);
            p.end_response(b);
        }
        assert!(p.responses.is_empty(), "counts are forgotten at zero");
    }

    #[test]
    fn ipv6_clients_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(
            client_key(ip("2001:db8:1:2:aaaa::1")),
            client_key(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            client_key(ip("2001:db8:1:2::1")),
            client_key(ip("2001:db8:1:3::1"))
        );
        assert_eq!(client_key(ip("::ffff:127.0.0.2")), ip("127.0.0.2"));
        assert_eq!(client_key(ip("127.0.0.2")), ip("127.0.0.2"));
    }

    #[test]
    fn the_cap_is_fitted_under_the_descriptor_limit() {
        let l = PoolLimits::default();
        assert_eq!(l.fitted_to(1 << 20), None);
        let f = l.fitted_to(1024).unwrap();
        assert_eq!(f.max_connections, (1024 - 256) / 4);
        assert_eq!(l.fitted_to(10).unwrap().max_connections, 16);
        assert_eq!(l.fitted_to(10).unwrap().max_per_address, 16);
    }
}
