//! Reading the agent's HTTP endpoints and its exposition text.
use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    time::Duration,
};

use crate::host::scaled;

/// A plain HTTP/1.0 GET with extra `headers`: (status, body). The reply
/// may take [`scaled`] 10 s.
pub fn http_get(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String)> {
    http_get_within(addr, path, headers, scaled(Duration::from_secs(10)))
}

/// [`http_get`], the reply given `timeout` (not scaled).
pub fn http_get_within(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let raw = http_get_on(TcpStream::connect(addr)?, addr, path, headers, timeout)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// An HTTP/1.0 GET of `path` from `addr` over the connection `s`: the
/// whole answer as it came (status line, headers, body), given `timeout`.
pub fn http_get_on(
    mut s: TcpStream,
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> std::io::Result<Vec<u8>> {
    s.set_read_timeout(Some(timeout))?;
    let mut req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    Ok(raw)
}

/// The value of the first sample of `name` whose labels contain every
/// `key="value"` of `labels`.
pub fn value(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (series, v) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            if n != name {
                return None;
            }
            labels
                .iter()
                .all(|(k, want)| rest.contains(&format!("{k}=\"{want}\"")))
                .then(|| v.parse().ok())
                .flatten()
        })
}

/// The container_id of the container whose info has `label="value"`.
pub fn container_id(metrics: &str, label: &str, want: &str) -> Option<String> {
    metrics
        .lines()
        .filter(|l| l.starts_with("apptheus_container_info{"))
        .find(|l| l.contains(&format!("{label}=\"{want}\"")))
        .and_then(|l| l.split("container_id=\"").nth(1))
        .and_then(|s| s.split('"').next())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP x y\n\
        apptheus_container_info{container_id=\"7-1\",name=\"a\"} 1\n\
        apptheus_container_tasks{container_id=\"7-1\"} 3\n\
        apptheus_up 1\n";

    #[test]
    fn values_by_name_and_labels() {
        assert_eq!(value(TEXT, "apptheus_up", &[]), Some(1.0));
        assert_eq!(
            value(TEXT, "apptheus_container_tasks", &[("container_id", "7-1")]),
            Some(3.0)
        );
        assert_eq!(
            value(TEXT, "apptheus_container_tasks", &[("container_id", "8-1")]),
            None
        );
        assert_eq!(container_id(TEXT, "name", "a").as_deref(), Some("7-1"));
    }
}
