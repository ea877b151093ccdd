//! Moving and copying a route's traffic, for a migration (the strangler fig):
//! which requests go to another destination (`to`, `split`), which are copied
//! to a shadow (`mirror`), and which are failed or slowed on purpose
//! (`fault-abort`, `fault-delay`). Pure decisions; the pipeline carries them out.
//!
//! Every share is decided by a [`Sampler`], not by coin flips: a split of 10 %
//! is 10 % of any 1,000 consecutive requests to within a request or two, where
//! independent random draws would stray by ±2 points one run in twenty.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{HeaderMap, HeaderName, Method, StatusCode, header};
use serde::Serialize;

/// Points in a whole: a share is counted in hundredths of a percent.
const WHOLE: u32 = 10_000;

/// A share of requests: 0–100 % in steps of 0.01 %.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Share(u32);

/// A share that is not a number from 0 to 100.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a percentage from 0 to 100")]
pub struct ShareError(pub String);

impl Share {
    pub const ALL: Share = Share(WHOLE);

    /// `10`, `10%`, `0.5`.
    pub fn parse(s: &str) -> Result<Share, ShareError> {
        let n: f64 = s
            .trim()
            .trim_end_matches('%')
            .parse()
            .map_err(|_| ShareError(s.into()))?;
        if !(0.0..=100.0).contains(&n) {
            return Err(ShareError(s.into()));
        }
        Ok(Share((n * 100.0).round() as u32))
    }

    pub fn percent(self) -> f64 {
        f64::from(self.0) / 100.0
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// The sum of two shares (capped at the whole: a caller that cares checks first).
    pub fn plus(self, other: Share) -> Share {
        Share((self.0 + other.0).min(WHOLE))
    }

    /// Whether `a + b` is more than the whole.
    pub fn overflows(a: Share, b: Share) -> bool {
        a.0 + b.0 > WHOLE
    }
}

impl std::fmt::Display for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}%", self.percent())
    }
}

impl Serialize for Share {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.percent())
    }
}

/// The golden ratio's fractional part as a 64-bit fraction: adding it again
/// and again (mod 1) visits [0, 1) more evenly than any other step.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// Decides which requests fall in a share: an additive recurrence
/// x(n+1) = x(n) + φ mod 1 (Weyl's sequence) from a random start, one atomic
/// add per decision. Any run of consecutive requests gets the share to within
/// a few requests, so the split a dashboard shows is the one configured.
#[derive(Debug)]
pub struct Sampler(AtomicU64);

impl Default for Sampler {
    fn default() -> Self {
        Sampler(AtomicU64::new(fastrand::u64(..)))
    }
}

impl Sampler {
    /// The next point, in [0, WHOLE).
    fn next_point(&self) -> u32 {
        point_of(self.0.fetch_add(GOLDEN, Ordering::Relaxed))
    }

    /// Whether the next request falls within `share`.
    pub fn hits(&self, share: Share) -> bool {
        !share.is_zero() && self.next_point() < share.0
    }
}

/// A 64-bit fraction of the whole, as a point in [0, WHOLE).
fn point_of(x: u64) -> u32 {
    (((x >> 32) * u64::from(WHOLE)) >> 32) as u32
}

/// Where a sticky split reads its key from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SplitKey {
    Header(HeaderName),
    Cookie(String),
}

impl SplitKey {
    /// `HEADER` or `cookie:NAME`.
    pub fn parse(s: &str) -> Option<SplitKey> {
        let s = s.trim();
        if let Some(name) = s.strip_prefix("cookie:") {
            let name = name.trim();
            let token = !name.is_empty() && HeaderName::from_bytes(name.as_bytes()).is_ok();
            return token.then(|| SplitKey::Cookie(name.to_string()));
        }
        HeaderName::from_bytes(s.as_bytes())
            .ok()
            .map(SplitKey::Header)
    }

    /// The key's value in a request, if it has one.
    pub fn value<'a>(&self, headers: &'a HeaderMap) -> Option<&'a [u8]> {
        match self {
            SplitKey::Header(name) => headers.get(name).map(|v| v.as_bytes()),
            SplitKey::Cookie(name) => headers
                .get_all(header::COOKIE)
                .iter()
                .find_map(|v| cookie(v.as_bytes(), name.as_bytes())),
        }
    }
}

impl std::fmt::Display for SplitKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SplitKey::Header(name) => f.write_str(name.as_str()),
            SplitKey::Cookie(name) => write!(f, "cookie:{name}"),
        }
    }
}

impl Serialize for SplitKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The value of cookie `name` in one `Cookie` header (`a=1; b=2`, RFC 6265 §4.2).
fn cookie<'a>(header: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    header.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        (pair[..eq].trim_ascii() == name).then(|| pair[eq + 1..].trim_ascii())
    })
}

/// FNV-1a of a key, mixed (the low bits of FNV alone are poorly spread) into
/// a point: the same key always gives the same point, in every pod.
fn point_of_key(key: &[u8]) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // The finaliser of MurmurHash3.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    point_of(h)
}

/// Shares of a route's requests moved to other destinations (`to` is one at
/// 100 %); the rest stay where they were going.
#[derive(Debug)]
pub struct Split<T> {
    targets: Vec<(T, Share)>,
    key: Option<SplitKey>,
    sampler: Sampler,
}

impl<T> Split<T> {
    /// `targets` must not add up to more than the whole (the route parser refuses that).
    pub fn new(targets: Vec<(T, Share)>, key: Option<SplitKey>) -> Self {
        Split {
            targets,
            key,
            sampler: Sampler::default(),
        }
    }

    pub fn targets(&self) -> &[(T, Share)] {
        &self.targets
    }

    /// Which target a request goes to, by index; `None`: it stays. A request
    /// with the sticky key lands where its key's hash falls, the others where
    /// the sampler's next point does.
    pub fn pick(&self, headers: &HeaderMap) -> Option<usize> {
        if let [(_, share)] = self.targets.as_slice()
            && *share == Share::ALL
        {
            return Some(0);
        }
        let point = match self.key.as_ref().and_then(|k| k.value(headers)) {
            Some(key) => point_of_key(key),
            None => self.sampler.next_point(),
        };
        let mut upto = 0;
        for (i, (_, share)) in self.targets.iter().enumerate() {
            upto += share.0;
            if point < upto {
                return Some(i);
            }
        }
        None
    }
}

/// Copies of a route's requests to a shadow destination.
#[derive(Debug)]
pub struct Mirror<T> {
    pub target: T,
    pub share: Share,
    /// `mirror-unsafe=true`: methods that change state are copied too.
    pub unsafe_methods: bool,
    sampler: Sampler,
}

/// Why a request that was due a copy did not get one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Skip {
    /// A method that changes state, without `mirror-unsafe=true`.
    UnsafeMethod,
    /// The body is larger than `retry-body-limit`, or had not been read to its
    /// end when the original was answered: there is no whole copy to send.
    BodyNotReplayable,
    /// The shadow already has `max-concurrent` copies in flight.
    ShadowBusy,
}

impl Skip {
    pub const ALL: [Skip; 3] = [
        Skip::UnsafeMethod,
        Skip::BodyNotReplayable,
        Skip::ShadowBusy,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Skip::UnsafeMethod => "unsafe-method",
            Skip::BodyNotReplayable => "body-not-replayable",
            Skip::ShadowBusy => "shadow-busy",
        }
    }
}

impl<T> Mirror<T> {
    pub fn new(target: T, share: Share, unsafe_methods: bool) -> Self {
        Mirror {
            target,
            share,
            unsafe_methods,
            sampler: Sampler::default(),
        }
    }

    /// Whether a request with `method` gets a copy: `None` when it is not in
    /// the share, else `Ok` or why it may not.
    pub fn decide(&self, method: &Method) -> Option<Result<(), Skip>> {
        if !self.sampler.hits(self.share) {
            return None;
        }
        // Safe methods only (RFC 9110 §9.2.1): an idempotent PUT or DELETE is
        // still a second write when it lands on a second system.
        if !self.unsafe_methods && !method.is_safe() {
            return Some(Err(Skip::UnsafeMethod));
        }
        Some(Ok(()))
    }
}

/// How a shadow's answer compares with the original's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compared {
    /// The same status class (2xx and 2xx, 5xx and 5xx, ...).
    Match,
    Mismatch,
}

impl Compared {
    pub fn of(original: StatusCode, shadow: StatusCode) -> Self {
        if original.as_u16() / 100 == shadow.as_u16() / 100 {
            Compared::Match
        } else {
            Compared::Mismatch
        }
    }
}

/// Failures injected on purpose, to rehearse them.
#[derive(Debug, Default)]
pub struct Faults {
    pub abort: Option<(StatusCode, Share)>,
    pub delay: Option<(Duration, Share)>,
    abort_sampler: Sampler,
    delay_sampler: Sampler,
}

/// What to do to one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Injected {
    pub delay: Option<Duration>,
    pub abort: Option<StatusCode>,
}

impl Faults {
    pub fn new(abort: Option<(StatusCode, Share)>, delay: Option<(Duration, Share)>) -> Self {
        Faults {
            abort,
            delay,
            ..Faults::default()
        }
    }

    /// This request's faults: a delay, then an abort, each in its own share
    /// (as Envoy's fault filter: a request may be delayed and then aborted).
    pub fn roll(&self) -> Injected {
        Injected {
            delay: self
                .delay
                .filter(|(_, share)| self.delay_sampler.hits(*share))
                .map(|(d, _)| d),
            abort: self
                .abort
                .filter(|(_, share)| self.abort_sampler.hits(*share))
                .map(|(s, _)| s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_parse_and_refuse() {
        assert_eq!(Share::parse("10").map(Share::percent), Ok(10.0));
        assert_eq!(Share::parse("0.5%").map(Share::percent), Ok(0.5));
        assert_eq!(Share::parse("100"), Ok(Share::ALL));
        for bad in ["-1", "100.1", "ten", "", "NaN"] {
            assert!(Share::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_sampler_hits_its_share_in_every_window() {
        let sampler = Sampler::default();
        for percent in ["1", "10", "33.3", "50", "99"] {
            let share = Share::parse(percent).unwrap();
            for _window in 0..20 {
                let hits = (0..1000).filter(|_| sampler.hits(share)).count() as f64;
                let want = share.percent() * 10.0;
                assert!((hits - want).abs() <= 3.0, "{percent}%: {hits} of 1000");
            }
        }
        assert!(!(0..1000).any(|_| sampler.hits(Share::default())));
        assert!((0..1000).all(|_| sampler.hits(Share::ALL)));
    }

    #[test]
    fn a_split_is_exact_and_sticky_by_key() {
        let p = |s| Share::parse(s).unwrap();
        let split = Split::new(vec![("a", p("20")), ("b", p("30"))], None);
        let none = HeaderMap::new();
        let mut seen = [0i32; 3];
        for _ in 0..1000 {
            seen[split.pick(&none).unwrap_or(2)] += 1;
        }
        assert!((seen[0] - 200).abs() <= 3, "{seen:?}");
        assert!((seen[1] - 300).abs() <= 3, "{seen:?}");
        let sticky = Split::new(vec![("new", p("10"))], SplitKey::parse("cookie:session"));
        let mut moved = 0;
        for user in 0..1000 {
            let mut h = HeaderMap::new();
            let c = format!("theme=dark; session=user-{user}");
            h.insert(header::COOKIE, c.parse().unwrap());
            let first = sticky.pick(&h);
            assert!((0..5).all(|_| sticky.pick(&h) == first), "user-{user}");
            moved += usize::from(first.is_some());
        }
        assert!((80..=120).contains(&moved), "{moved} of 1000 keys moved");
        let to = Split::new(vec![("only", Share::ALL)], None);
        assert!((0..100).all(|_| to.pick(&none) == Some(0)));
    }

    #[test]
    fn cookies_and_keys_parse() {
        assert_eq!(cookie(b"a=1; b = 2 ;c=3", b"b"), Some(&b"2"[..]));
        assert_eq!(cookie(b"ab=1", b"a"), None);
        assert_eq!(
            SplitKey::parse("X-User"),
            Some(SplitKey::Header(HeaderName::from_static("x-user")))
        );
        assert!(SplitKey::parse("cookie:").is_none());
        assert!(SplitKey::parse("bad header").is_none());
    }

    #[test]
    fn mirrors_copy_safe_methods_unless_told() {
        let m = Mirror::new((), Share::ALL, false);
        assert_eq!(m.decide(&Method::GET), Some(Ok(())));
        assert_eq!(m.decide(&Method::POST), Some(Err(Skip::UnsafeMethod)));
        assert_eq!(m.decide(&Method::PUT), Some(Err(Skip::UnsafeMethod)));
        let u = Mirror::new((), Share::ALL, true);
        assert_eq!(u.decide(&Method::POST), Some(Ok(())));
        assert_eq!(
            Mirror::new((), Share::default(), true).decide(&Method::GET),
            None
        );
        assert_eq!(
            Compared::of(StatusCode::OK, StatusCode::CREATED),
            Compared::Match
        );
        assert_eq!(
            Compared::of(StatusCode::OK, StatusCode::BAD_GATEWAY),
            Compared::Mismatch
        );
    }

    #[test]
    fn faults_roll_in_their_shares() {
        let f = Faults::new(
            Some((StatusCode::SERVICE_UNAVAILABLE, Share::parse("20").unwrap())),
            Some((Duration::from_millis(5), Share::parse("50").unwrap())),
        );
        let rolls: Vec<Injected> = (0..1000).map(|_| f.roll()).collect();
        let aborts = rolls.iter().filter(|r| r.abort.is_some()).count();
        let delays = rolls.iter().filter(|r| r.delay.is_some()).count();
        assert!((197..=203).contains(&aborts), "{aborts}");
        assert!((497..=503).contains(&delays), "{delays}");
        assert_eq!(Faults::default().roll(), Injected::default());
    }
}
