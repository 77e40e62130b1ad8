//! Pushing to a Prometheus Pushgateway: PUT of the text exposition to
//! `/metrics/job/apptheus/instance/<instance>`, which replaces the whole
//! group, so series of ended containers go away there too.
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request};
use prometheus::proto::MetricFamily;
use url::Url;

use super::{JOB, PushError, request, without_target_labels};
use crate::export::exposition::{self, Format};

pub(crate) struct Pushgateway {
    url: Url,
    display: String,
}

impl Pushgateway {
    pub(crate) fn new(base: &Url, instance: &str) -> Self {
        let url = group_url(base, instance);
        let mut display = url.clone();
        let _ = display.set_password(None);
        Self {
            url,
            display: display.to_string(),
        }
    }

    /// The group's URL, without any password.
    pub(crate) fn url(&self) -> &str {
        &self.display
    }

    pub(crate) fn request(
        &self,
        families: &[MetricFamily],
    ) -> Result<Request<Full<Bytes>>, PushError> {
        let body = exposition::encode(&without_target_labels(families), Format::Text)
            .map_err(|e| PushError::Encode(e.to_string()))?;
        request(Method::PUT, &self.url, exposition::TEXT_CONTENT_TYPE)
            .body(Full::new(Bytes::from(body)))
            .map_err(|source| PushError::Request {
                url: self.display.clone(),
                source,
            })
    }
}

/// `<base>/metrics/job/apptheus/instance/<instance>`; a value that cannot be
/// a path segment is sent base64url-encoded (`instance@base64/...`), which
/// the Pushgateway understands.
pub(crate) fn group_url(base: &Url, instance: &str) -> Url {
    let mut url = base.clone();
    let mut path = url.path().trim_end_matches('/').to_string();
    path.push_str("/metrics/job/");
    path.push_str(JOB);
    if instance.is_empty()
        || instance.contains('/')
        || !instance
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
    {
        path.push_str("/instance@base64/");
        path.push_str(&base64::engine::general_purpose::URL_SAFE.encode(instance));
        // An empty value must be "=" rather than nothing.
        if instance.is_empty() {
            path.push('=');
        }
    } else {
        path.push_str("/instance/");
        path.push_str(instance);
    }
    url.set_path(&path);
    url.set_query(None);
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_urls() {
        let base = Url::parse("http://gw:9091").unwrap();
        assert_eq!(
            group_url(&base, "node-1.cluster").as_str(),
            "http://gw:9091/metrics/job/apptheus/instance/node-1.cluster"
        );
        let base = Url::parse("https://gw/prefix/").unwrap();
        assert_eq!(
            group_url(&base, "a/b").as_str(),
            "https://gw/prefix/metrics/job/apptheus/instance@base64/YS9i"
        );
        assert_eq!(
            group_url(&base, "").as_str(),
            "https://gw/prefix/metrics/job/apptheus/instance@base64/="
        );
    }

    #[test]
    fn the_body_is_the_text_exposition() {
        let m = crate::export::metrics::AgentMetrics::new();
        let p = Pushgateway::new(&Url::parse("http://u:secret@gw:9091").unwrap(), "n1");
        assert_eq!(p.url(), "http://u@gw:9091/metrics/job/apptheus/instance/n1");
        let r = p.request(&m.gather()).unwrap();
        assert_eq!(r.method(), Method::PUT);
        assert_eq!(
            r.headers()["content-type"],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        assert!(r.headers().contains_key("authorization"));
    }
}
