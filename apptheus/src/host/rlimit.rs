//! The process's descriptor limit (RLIMIT_NOFILE): read, and raised to
//! the hard limit at start-up.

/// The soft descriptor limit (RLIMIT_NOFILE), if it can be read.
pub(crate) fn fd_limit() -> Option<u64> {
    rlimit_nofile().ok().map(|l| l.rlim_cur)
}

/// Raises the soft descriptor limit to the hard one, as servers of many
/// connections do (service managers often start daemons with a soft limit
/// of 1,024), and returns it. Call it once at start-up, before the
/// servers start.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    let mut l = rlimit_nofile()?;
    if l.rlim_cur < l.rlim_max {
        l.rlim_cur = l.rlim_max;
        // SAFETY: setrlimit reads one rlimit from `l`, which lives across
        // the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &l) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(l.rlim_cur)
}

fn rlimit_nofile() -> std::io::Result<libc::rlimit> {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `l`, which we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_the_descriptor_limit_reaches_the_hard_limit() {
        let soft = raise_fd_limit().unwrap();
        let l = rlimit_nofile().unwrap();
        assert_eq!((soft, l.rlim_cur), (l.rlim_max, l.rlim_max));
        assert_eq!(fd_limit(), Some(soft));
    }
}
