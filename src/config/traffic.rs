//! The route keys that move and copy traffic (`to`, `split`, `mirror`) and
//! inject faults (`fault-abort`, `fault-delay`), as a route states them. What
//! they decide per request is `policy::traffic`'s.

use std::time::Duration;

use http::StatusCode;
use serde::Serialize;

use super::route::{KeyError, RouteError};
use crate::addr::Destination;
use crate::policy::traffic::{Share, SplitKey};
use crate::units::{parse_duration, serialize_duration};

/// A route's traffic keys; all unset on most routes.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TrafficKeys {
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "opt_dest")]
    pub to: Option<Destination>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_host: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub split: Vec<Shared>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split_key: Option<SplitKey>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorKeys>,
    /// `mirror-unsafe` as given (also folded into `mirror`, whichever came first).
    #[serde(skip)]
    pub mirror_unsafe: Option<bool>,
    #[serde(skip_serializing_if = "Faults::is_empty")]
    pub faults: Faults,
}

/// A destination and its share of the route's requests.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Shared {
    #[serde(serialize_with = "dest")]
    pub destination: Destination,
    pub percent: Share,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MirrorKeys {
    #[serde(serialize_with = "dest")]
    pub destination: Destination,
    pub percent: Share,
    /// `mirror-unsafe`: copy methods that change state too.
    #[serde(rename = "unsafe")]
    pub unsafe_methods: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Faults {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abort: Option<AbortKeys>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<DelayKeys>,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct AbortKeys {
    #[serde(serialize_with = "status")]
    pub status: StatusCode,
    pub percent: Share,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct DelayKeys {
    #[serde(serialize_with = "serialize_duration")]
    pub duration: Duration,
    pub percent: Share,
}

impl Faults {
    pub fn is_empty(&self) -> bool {
        self.abort.is_none() && self.delay.is_none()
    }
}

fn dest<S: serde::Serializer>(d: &Destination, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(d)
}

fn opt_dest<S: serde::Serializer>(d: &Option<Destination>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.collect_str(d),
        None => s.serialize_none(),
    }
}

fn status<S: serde::Serializer>(c: &StatusCode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u16(c.as_u16())
}

impl TrafficKeys {
    /// Sets `key`; `Ok(false)` when the key is not one of these.
    pub(super) fn set(&mut self, key: &str, value: &str) -> Result<bool, KeyError> {
        match key {
            "to" => self.to = Some(target(value)?),
            "keep-host" => self.keep_host = Some(parse_bool(value)?),
            "split" => self.split = split(value)?,
            "split-key" => {
                self.split_key = Some(
                    SplitKey::parse(value).ok_or_else(|| KeyError::NotASplitKey(value.into()))?,
                )
            }
            "mirror" => {
                let (destination, percent) = at(value, target, "HOST:PORT@PERCENT")?;
                self.mirror = Some(MirrorKeys {
                    destination,
                    percent,
                    unsafe_methods: self.mirror_unsafe.unwrap_or(false),
                });
            }
            "mirror-unsafe" => {
                let on = parse_bool(value)?;
                self.mirror_unsafe = Some(on);
                if let Some(m) = &mut self.mirror {
                    m.unsafe_methods = on;
                }
            }
            "fault-abort" => {
                let (status, percent) = at(value, abort_status, "STATUS@PERCENT")?;
                self.faults.abort = Some(AbortKeys { status, percent });
            }
            "fault-delay" => {
                let (duration, percent) = at(
                    value,
                    |d| parse_duration(d).map_err(KeyError::from),
                    "DURATION@PERCENT",
                )?;
                self.faults.delay = Some(DelayKeys { duration, percent });
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// A key that means nothing without another the route lacks, or two
    /// that exclude each other.
    pub fn check(&self) -> Result<(), RouteError> {
        let needs = |key, needs| Err(RouteError::Needs { key, needs });
        if self.to.is_some() && !self.split.is_empty() {
            return Err(RouteError::Excludes {
                key: "to",
                other: "split",
            });
        }
        if self.split_key.is_some() && self.split.is_empty() {
            return needs("split-key", "split");
        }
        if self.mirror_unsafe.is_some() && self.mirror.is_none() {
            return needs("mirror-unsafe", "mirror");
        }
        if self.keep_host.is_some() && !self.moves() && self.mirror.is_none() {
            return needs("keep-host", "to, split or mirror");
        }
        Ok(())
    }

    /// Whether the route moves any request elsewhere.
    pub fn moves(&self) -> bool {
        self.to.is_some() || !self.split.is_empty()
    }

    /// Whether any key is set.
    pub fn is_empty(&self) -> bool {
        !self.moves() && self.mirror.is_none() && self.faults.is_empty()
    }

    /// Every destination the route sends to, with the key that names it.
    pub fn destinations(&self) -> impl Iterator<Item = (&'static str, &Destination)> {
        let to = self.to.iter().map(|d| ("to", d));
        let split = self.split.iter().map(|s| ("split", &s.destination));
        let mirror = self.mirror.iter().map(|m| ("mirror", &m.destination));
        to.chain(split).chain(mirror)
    }
}

fn parse_bool(value: &str) -> Result<bool, KeyError> {
    match value {
        "true" | "on" | "yes" | "1" => Ok(true),
        "false" | "off" | "no" | "0" => Ok(false),
        _ => Err(KeyError::NotABool(value.into())),
    }
}

/// `HOST:PORT`: a destination to send to needs its port.
fn target(value: &str) -> Result<Destination, KeyError> {
    let bad = || KeyError::NotATarget(value.into());
    let (host, port) = super::route::split_host_port(value).map_err(|_| bad())?;
    match (host.is_empty(), port) {
        (false, Some(port)) => Ok(Destination::new(&host, port)),
        _ => Err(bad()),
    }
}

/// `VALUE@PERCENT`.
fn at<T>(
    value: &str,
    parse: impl Fn(&str) -> Result<T, KeyError>,
    form: &'static str,
) -> Result<(T, Share), KeyError> {
    let (what, share) = value
        .rsplit_once('@')
        .ok_or(KeyError::NotAShare(value.into(), form))?;
    let share = Share::parse(share).map_err(|_| KeyError::NotARate(share.into()))?;
    Ok((parse(what.trim())?, share))
}

/// `HOST:PORT@PERCENT[+HOST:PORT@PERCENT...]`, adding up to 100 % at most.
fn split(value: &str) -> Result<Vec<Shared>, KeyError> {
    let mut out: Vec<Shared> = Vec::new();
    let mut total = Share::default();
    for part in value.split('+') {
        let (destination, percent) = at(part.trim(), target, "HOST:PORT@PERCENT")?;
        if out.iter().any(|s| s.destination == destination) {
            return Err(KeyError::SplitTwice(destination.to_string()));
        }
        if Share::overflows(total, percent) {
            let sum: f64 = out.iter().map(|s| s.percent.percent()).sum::<f64>() + percent.percent();
            return Err(KeyError::SplitOver(sum));
        }
        total = total.plus(percent);
        out.push(Shared {
            destination,
            percent,
        });
    }
    Ok(out)
}

/// An abort's status: an error a client can be answered with.
fn abort_status(value: &str) -> Result<StatusCode, KeyError> {
    match value.parse::<u16>() {
        Ok(n @ 400..=599) => {
            StatusCode::from_u16(n).map_err(|_| KeyError::NotAStatus(value.into()))
        }
        _ => Err(KeyError::NotAStatus(value.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(key: &str, value: &str) -> Result<TrafficKeys, String> {
        let mut t = TrafficKeys::default();
        t.set(key, value).map_err(|e| e.to_string())?;
        Ok(t)
    }

    #[test]
    fn values_parse() {
        let t = set("split", "orders:8080@10+[::1]:9000@2.5").unwrap();
        assert_eq!(t.split.len(), 2);
        assert_eq!(t.split[1].destination.to_string(), "[::1]:9000");
        assert_eq!(t.split[1].percent.percent(), 2.5);
        let t = set("fault-abort", "503@10").unwrap();
        assert_eq!(t.faults.abort.map(|a| a.status.as_u16()), Some(503));
        let t = set("fault-delay", "250ms@50%").unwrap();
        assert_eq!(
            t.faults.delay.map(|d| d.duration),
            Some(Duration::from_millis(250))
        );
        let mut t = TrafficKeys::default();
        t.set("mirror-unsafe", "true").unwrap();
        t.set("mirror", "shadow:80@100").unwrap();
        assert!(t.mirror.as_ref().is_some_and(|m| m.unsafe_methods));
    }

    #[test]
    fn bad_values_say_why() {
        for (key, value, says) in [
            ("split", "a:1@150", "percentage"),
            ("split", "a:1@60+b:2@50", "110"),
            ("split", "a:1@10+a:1@10", "twice"),
            ("split", "a:1", "@PERCENT"),
            ("to", "orders", "HOST:PORT"),
            ("to", ":80", "HOST:PORT"),
            ("mirror", "x:1@-1", "percentage"),
            ("fault-abort", "200@10", "400"),
            ("fault-delay", "soon@10", "250ms"),
            ("split-key", "bad header", "cookie:"),
            ("keep-host", "maybe", "true or false"),
        ] {
            let e = set(key, value).expect_err(value);
            assert!(e.contains(says), "{key}={value}: {e}");
        }
    }
}
