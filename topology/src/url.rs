//! Topology URLs and [`connect`], the one way components pick a backend.
//!
//! | URL | backend |
//! |---|---|
//! | `memory` | volatile in-process [`MemoryTopo`] (tests, throwaway clusters) |
//! | `file:///abs/path/topo.json` | persistent [`MemoryTopo::open`] (embedded default of `tessera up`) |
//! | `etcd://host:port[,host:port...][/prefix]` | [`EtcdTopo`] |
//! | `grpc://host:port` | [`RemoteTopo`] (the store served by a running `tessera up`) |

use std::path::PathBuf;
use std::sync::Arc;

use crate::error::TopoError;
use crate::etcd::{EtcdConfig, EtcdTopo};
use crate::memory::MemoryTopo;
use crate::remote::{DEFAULT_REMOTE_TIMEOUT, RemoteTopo};
use crate::store::{TopoStore, validate_key};

/// A parsed topology URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopoUrl {
    Memory,
    File(PathBuf),
    Etcd {
        /// `host:port` per member.
        endpoints: Vec<String>,
        /// Empty, or `/name[/name...]` without a trailing slash.
        prefix: String,
    },
    Grpc {
        /// `host:port`.
        address: String,
    },
}

const SUPPORTED: &str = "expected memory, file:///abs/path/topo.json, etcd://host:port[,host:port...][/prefix] or grpc://host:port";

impl TopoUrl {
    /// Parses and validates a topology URL, naming the problem when it is unusable.
    pub fn parse(url: &str) -> Result<TopoUrl, TopoError> {
        let invalid = |reason: String| TopoError::InvalidUrl {
            url: url.to_string(),
            reason,
        };
        if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("contains whitespace".to_string()));
        }
        if url == "memory" || url == "memory://" {
            return Ok(TopoUrl::Memory);
        }
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(invalid(SUPPORTED.to_string()));
        };
        if rest.contains(['?', '#']) {
            return Err(invalid(
                "query strings and fragments are not supported".to_string(),
            ));
        }
        match scheme {
            "file" => {
                if !rest.starts_with('/') {
                    return Err(invalid(
                        "the path must be absolute: file:///abs/path/topo.json (three slashes)"
                            .to_string(),
                    ));
                }
                if rest.ends_with('/') {
                    return Err(invalid(
                        "the path must name a file, not a directory".to_string(),
                    ));
                }
                Ok(TopoUrl::File(PathBuf::from(rest)))
            }
            "etcd" => {
                let (hosts, prefix) = match rest.find('/') {
                    Some(slash) => (&rest[..slash], &rest[slash..]),
                    None => (rest, ""),
                };
                let endpoints = hosts
                    .split(',')
                    .map(|host| parse_host_port(host).map_err(&invalid))
                    .collect::<Result<Vec<_>, _>>()?;
                let prefix = prefix.trim_end_matches('/').to_string();
                if !prefix.is_empty() {
                    validate_key(&prefix)
                        .map_err(|error| invalid(format!("bad key prefix: {error}")))?;
                }
                Ok(TopoUrl::Etcd { endpoints, prefix })
            }
            "grpc" => {
                let address = rest.strip_suffix('/').unwrap_or(rest);
                if address.contains('/') {
                    return Err(invalid("a grpc:// URL has no path".to_string()));
                }
                if address.contains(',') {
                    return Err(invalid(
                        "a grpc:// URL names exactly one server".to_string(),
                    ));
                }
                let address = parse_host_port(address).map_err(invalid)?;
                Ok(TopoUrl::Grpc { address })
            }
            other => Err(invalid(format!("unknown scheme {other:?}; {SUPPORTED}"))),
        }
    }
}

/// Validates `host:port` (or `[v6]:port`) and returns it unchanged.
fn parse_host_port(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("missing host:port".to_string());
    }
    let (host, port) = if let Some(bracketed) = text.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| format!("{text:?}: unclosed '[' in IPv6 address"))?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| format!("{text:?}: missing :port"))?;
        (host, port)
    } else {
        text.rsplit_once(':')
            .ok_or_else(|| format!("{text:?}: missing :port"))?
    };
    if host.is_empty() {
        return Err(format!("{text:?}: missing host"));
    }
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
    {
        return Err(format!("{text:?}: invalid host name"));
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("{text:?}: port must be a number in 1..=65535")),
        Ok(_) => Ok(text.to_string()),
    }
}

/// Opens the topology store a URL names. Unreachable servers fail within a few seconds with
/// `Unavailable`; bad URLs fail at once with `InvalidUrl`.
pub async fn connect(url: &str) -> Result<Arc<dyn TopoStore>, TopoError> {
    match TopoUrl::parse(url)? {
        TopoUrl::Memory => Ok(Arc::new(MemoryTopo::new())),
        TopoUrl::File(path) => Ok(Arc::new(MemoryTopo::open(path)?)),
        TopoUrl::Etcd { endpoints, prefix } => Ok(Arc::new(
            EtcdTopo::connect(EtcdConfig::new(endpoints, prefix)).await?,
        )),
        TopoUrl::Grpc { address } => Ok(Arc::new(
            RemoteTopo::connect(&address, DEFAULT_REMOTE_TIMEOUT).await?,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: every documented URL form parses to the right backend and parameters.
    #[test]
    fn good_urls_parse() {
        assert_eq!(TopoUrl::parse("memory").unwrap(), TopoUrl::Memory);
        assert_eq!(
            TopoUrl::parse("file:///var/lib/tessera/topo.json").unwrap(),
            TopoUrl::File(PathBuf::from("/var/lib/tessera/topo.json"))
        );
        assert_eq!(
            TopoUrl::parse("etcd://127.0.0.1:2379").unwrap(),
            TopoUrl::Etcd {
                endpoints: vec!["127.0.0.1:2379".into()],
                prefix: String::new()
            }
        );
        assert_eq!(
            TopoUrl::parse("etcd://a:1,b.example:2,[::1]:3/prod/eu/").unwrap(),
            TopoUrl::Etcd {
                endpoints: vec!["a:1".into(), "b.example:2".into(), "[::1]:3".into()],
                prefix: "/prod/eu".into()
            }
        );
        assert_eq!(
            TopoUrl::parse("grpc://127.0.0.1:15999").unwrap(),
            TopoUrl::Grpc {
                address: "127.0.0.1:15999".into()
            }
        );
    }

    /// Goal: each malformed URL is an InvalidUrl error whose reason names the problem.
    #[test]
    fn bad_urls_name_the_problem() {
        let cases = [
            ("", "expected memory"),
            ("bogus", "expected memory"),
            ("http://x:1", "unknown scheme"),
            ("file://relative/topo.json", "absolute"),
            ("file:///dir/", "name a file"),
            ("etcd://", "missing host:port"),
            ("etcd://host", "missing :port"),
            ("etcd://host:0", "port must be"),
            ("etcd://host:99999", "port must be"),
            ("etcd://host:x", "port must be"),
            ("etcd://:2379", "missing host"),
            ("etcd://a:1,,b:2", "missing host:port"),
            ("etcd://a:1/bad//prefix", "bad key prefix"),
            ("etcd://a:1?x=y", "query"),
            ("etcd://[::1:2379", "unclosed"),
            ("grpc://a:1/path", "no path"),
            ("grpc://a:1,b:2", "exactly one"),
            ("grpc://", "missing host:port"),
            ("memory extra", "whitespace"),
        ];
        for (url, expected) in cases {
            match TopoUrl::parse(url) {
                Err(TopoError::InvalidUrl { reason, .. }) => assert!(
                    reason.contains(expected),
                    "{url:?}: reason {reason:?} lacks {expected:?}"
                ),
                other => panic!("{url:?} gave {other:?}"),
            }
        }
    }
}
