//! A TCP forwarder whose connections to the target come from a chosen
//! address: a scraper "behind" another address (as behind NAT or a
//! proxy), on one host. Stopped on drop.
use std::{
    io,
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::fd::OwnedFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, SockaddrIn, SockaddrIn6, bind, connect, socket,
};

/// Connects to `to` from `from` (port chosen by the kernel).
pub fn connect_from(from: IpAddr, to: SocketAddr) -> io::Result<TcpStream> {
    let family = if to.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd: OwnedFd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    match (from, to) {
        (IpAddr::V4(f), SocketAddr::V4(t)) => {
            bind(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                &SockaddrIn::from(std::net::SocketAddrV4::new(f, 0)),
            )?;
            connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(t))?;
        }
        (IpAddr::V6(f), SocketAddr::V6(t)) => {
            bind(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                &SockaddrIn6::from(std::net::SocketAddrV6::new(f, 0, 0, 0)),
            )?;
            connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn6::from(t))?;
        }
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "source and target addresses of different families",
            ));
        }
    }
    Ok(TcpStream::from(fd))
}

/// Listens on a loopback port and forwards every connection to the
/// target, connecting from `from`.
pub struct Forward {
    /// Where to connect to be forwarded.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Forward {
    pub fn start(from: IpAddr, to: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        if let Ok(server) = connect_from(from, to) {
                            pipe(client, server);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
        Ok(Forward {
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

/// Copies both ways until either side closes.
fn pipe(a: TcpStream, b: TcpStream) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let one = move |mut from: TcpStream, mut to: TcpStream| {
        let _ = io::copy(&mut from, &mut to);
        let _ = to.shutdown(std::net::Shutdown::Write);
    };
    std::thread::spawn(move || one(a, b2));
    std::thread::spawn(move || one(b, a2));
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};

    use super::*;

    #[test]
    fn connections_come_from_the_address_chosen() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let to = server.local_addr().unwrap();
        let f = Forward::start(IpAddr::from([127, 0, 0, 2]), to).unwrap();
        let mut c = TcpStream::connect(f.addr).unwrap();
        let (mut s, peer) = server.accept().unwrap();
        assert_eq!(peer.ip(), IpAddr::from([127, 0, 0, 2]));
        c.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
    }
}
