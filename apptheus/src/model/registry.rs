//! The containers the agent knows, with the indexes events need: by the
//! key of any of their starter runs, by monitoring-socket connection, and
//! an instance by its owner and name.
use std::{collections::BTreeMap, time::Instant};

use crate::model::container::{Container, Member};

#[derive(Debug, Default)]
pub struct Registry {
    /// Boxed: a map node holds eleven entries, and a container is about a
    /// kilobyte (nodes half full would waste that much per container).
    containers: BTreeMap<u64, Box<Container>>,
    /// Member key -> container key.
    members: BTreeMap<u64, u64>,
    /// Socket connection -> member key.
    conns: BTreeMap<u64, u64>,
}

impl Registry {
    /// Adds a container; false if its key is known already.
    pub fn insert(&mut self, c: Container) -> bool {
        if self.members.contains_key(&c.key) {
            return false;
        }
        for m in &c.members {
            self.members.insert(m.key, c.key);
            if let Some(conn) = m.socket {
                self.conns.insert(conn, m.key);
            }
        }
        self.containers.insert(c.key, Box::new(c));
        true
    }

    /// Adds a starter run to a container (a join of an instance); false if
    /// the container is unknown or the key taken.
    pub fn join(&mut self, container: u64, member: Member) -> bool {
        if self.members.contains_key(&member.key) {
            return false;
        }
        let Some(c) = self.containers.get_mut(&container) else {
            return false;
        };
        self.members.insert(member.key, container);
        if let Some(conn) = member.socket {
            self.conns.insert(conn, member.key);
        }
        c.members.push(member);
        true
    }

    /// Records that member `key` holds socket connection `conn`.
    pub fn set_socket(&mut self, key: u64, conn: u64) {
        let Some(c) = self
            .members
            .get(&key)
            .and_then(|c| self.containers.get_mut(c))
        else {
            return;
        };
        if let Some(m) = c.member_mut(key) {
            m.socket = Some(conn);
            self.conns.insert(conn, key);
        }
    }

    /// The member key holding connection `conn`, forgetting the connection.
    pub fn take_socket(&mut self, conn: u64) -> Option<u64> {
        let key = self.conns.remove(&conn)?;
        if let Some(m) = self
            .members
            .get(&key)
            .and_then(|c| self.containers.get_mut(c))
            .and_then(|c| c.member_mut(key))
        {
            m.socket = None;
        }
        Some(key)
    }

    pub fn get(&self, key: u64) -> Option<&Container> {
        self.containers.get(&key).map(|c| &**c)
    }

    pub fn get_mut(&mut self, key: u64) -> Option<&mut Container> {
        self.containers.get_mut(&key).map(|c| &mut **c)
    }

    /// The key of the container that member `key` belongs to.
    pub fn container_of(&self, member: u64) -> Option<u64> {
        self.members.get(&member).copied()
    }

    /// The running instance named `name` of user `uid`: the newest whose
    /// own starter runs (an instance stopped lives on while a join of it
    /// does, but is no longer there to join).
    pub fn instance(&self, uid: u32, name: &str) -> Option<u64> {
        self.containers
            .values()
            .rev()
            .find(|c| {
                c.life.is_live()
                    && !c.members[0].ended
                    && c.uid == uid
                    && c.meta.instance.as_deref() == Some(name)
            })
            .map(|c| c.key)
    }

    /// Removes the containers whose series are due to go, and their
    /// members' keys.
    pub fn expire(&mut self, now: Instant) -> Vec<Container> {
        let gone: Vec<u64> = self
            .containers
            .values()
            .filter(|c| c.life.expired(now))
            .map(|c| c.key)
            .collect();
        let removed: Vec<Container> = gone
            .iter()
            .filter_map(|k| self.containers.remove(k).map(|c| *c))
            .collect();
        for c in &removed {
            for m in &c.members {
                self.members.remove(&m.key);
                if let Some(conn) = m.socket {
                    self.conns.remove(&conn);
                }
            }
        }
        removed
    }

    pub fn iter(&self) -> impl Iterator<Item = &Container> {
        self.containers.values().map(|c| &**c)
    }

    /// Every container's key.
    pub fn keys(&self) -> Vec<u64> {
        self.containers.keys().copied().collect()
    }

    /// The keys of the containers not ended yet.
    pub fn live_keys(&self) -> Vec<u64> {
        self.containers
            .values()
            .filter(|c| c.life.is_live())
            .map(|c| c.key)
            .collect()
    }

    /// Containers shown (exported): runs not shown yet left out.
    pub fn count(&self) -> usize {
        self.containers.values().filter(|c| c.shown).count()
    }

    /// Removes a container at once (a run that never became one), and
    /// its members' keys.
    pub fn remove(&mut self, key: u64) -> Option<Container> {
        let c = *self.containers.remove(&key)?;
        for m in &c.members {
            self.members.remove(&m.key);
            if let Some(conn) = m.socket {
                self.conns.remove(&conn);
            }
        }
        Some(c)
    }

    /// Live containers (runs not shown yet included) per user.
    pub fn live_by_user(&self) -> BTreeMap<u32, u32> {
        let mut out = BTreeMap::new();
        for c in self.containers.values().filter(|c| c.life.is_live()) {
            *out.entry(c.uid).or_default() += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    fn container(key: u64, pid: u32) -> Container {
        Container::new(key, pid, SystemTime::UNIX_EPOCH)
    }

    fn member(key: u64, pid: u32) -> Member {
        Member {
            key,
            starter_pid: pid,
            socket: None,
            counters: None,
            ended: false,
        }
    }

    /// An instance stopped while a join of it runs lives on, but a join
    /// started since goes to the instance of that name started again.
    #[test]
    fn a_join_finds_the_running_instance_of_its_name() {
        let mut r = Registry::default();
        let instance = |key, pid| {
            let mut c = container(key, pid);
            c.uid = 7;
            c.meta.instance = Some("svc".into());
            c
        };
        r.insert(instance(1, 10));
        r.join(1, member(2, 20));
        assert_eq!(r.instance(7, "svc"), Some(1));
        assert_eq!(r.instance(8, "svc"), None, "another user's");
        r.get_mut(1).unwrap().members[0].ended = true;
        assert_eq!(r.instance(7, "svc"), None, "its own run ended");
        r.insert(instance(5, 50));
        assert_eq!(r.instance(7, "svc"), Some(5));
        r.insert(instance(9, 90));
        assert_eq!(r.instance(7, "svc"), Some(9), "the newest");
    }

    #[test]
    fn containers_are_found_by_any_members_key_until_they_expire() {
        let mut r = Registry::default();
        assert!(r.insert(container(1, 10)));
        assert!(!r.insert(container(1, 10)), "a key is registered once");
        assert!(r.join(1, member(5, 50)));
        assert!(!r.join(1, member(5, 50)));
        assert!(!r.join(9, member(6, 60)), "no such container");
        assert!(!r.insert(container(5, 50)), "a member's key is taken");
        assert_eq!(r.container_of(5), Some(1));
        assert_eq!(r.container_of(1), Some(1));
        assert_eq!(r.get(1).unwrap().members.len(), 2);

        let t0 = Instant::now();
        let grace = Duration::from_secs(30);
        assert!(r.get_mut(1).unwrap().life.end(t0, grace));
        assert!(r.live_keys().is_empty());
        assert!(r.expire(t0 + Duration::from_secs(29)).is_empty());
        let gone = r.expire(t0 + grace);
        assert_eq!(gone.len(), 1);
        assert_eq!(r.container_of(5), None);
        assert_eq!(r.count(), 0);
    }

    #[test]
    fn runs_not_shown_are_not_counted_and_can_go_at_once() {
        let mut r = Registry::default();
        let mut c = container(1, 10);
        c.shown = false;
        c.uid = 7;
        r.insert(c);
        r.join(1, member(2, 20));
        let mut d = container(3, 30);
        d.uid = 7;
        r.insert(d);
        assert_eq!(r.count(), 1, "only the one shown");
        assert_eq!(r.live_by_user(), BTreeMap::from([(7, 2)]));
        assert_eq!(r.remove(1).map(|c| c.key), Some(1));
        assert_eq!(r.container_of(2), None, "its members go with it");
        assert!(r.remove(1).is_none());
        assert_eq!(r.keys(), vec![3]);
    }

    #[test]
    fn sockets_map_to_members() {
        let mut r = Registry::default();
        r.insert(container(1, 10));
        r.join(1, member(2, 20));
        r.set_socket(2, 77);
        assert_eq!(r.get(1).unwrap().member(2).unwrap().socket, Some(77));
        assert_eq!(r.take_socket(77), Some(2));
        assert_eq!(r.take_socket(77), None);
        assert_eq!(r.get(1).unwrap().member(2).unwrap().socket, None);
    }

    #[test]
    fn instances_are_found_by_owner_and_name_while_live() {
        let mut r = Registry::default();
        let mut c = container(1, 10);
        c.uid = 1000;
        c.meta.instance = Some("web".into());
        r.insert(c);
        assert_eq!(r.instance(1000, "web"), Some(1));
        assert_eq!(r.instance(1001, "web"), None);
        assert_eq!(r.instance(1000, "db"), None);
        r.get_mut(1)
            .unwrap()
            .life
            .end(Instant::now(), Duration::from_secs(1));
        assert_eq!(r.instance(1000, "web"), None);
    }
}
