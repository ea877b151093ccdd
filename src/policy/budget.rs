//! The retry budget of one destination, as in Finagle and linkerd: retries may
//! add at most a percentage of the request rate, plus a small floor per second,
//! over a sliding ten-second window. Unlike a fixed retry count, a budget cannot
//! multiply load during an outage: when every request fails, retries stop at
//! the budget instead of tripling the traffic.
//!
//! Written here rather than taken from tower's `TpsBudget`: tower 0.5.3 expires
//! its slots one step behind once more than a slot's time has passed (always, on
//! a real clock), so its window is about half as long as asked and the floor
//! counts about twice. This one keeps one-second buckets keyed by the second they
//! belong to, so a stale bucket can never be read as a current one.

use std::sync::Mutex;

use tokio::time::Instant;

/// Seconds the budget looks back.
const WINDOW_SECS: u64 = 10;

pub struct RetryBudget {
    /// Retries a request earns, as a fraction (20 % → 0.2).
    ratio: f64,
    /// Retries always allowed per second.
    min_per_sec: u32,
    epoch: Instant,
    window: Mutex<Window>,
}

/// Per-second counts in a ring; `second` says which second a bucket holds.
#[derive(Default)]
struct Window {
    buckets: [Bucket; WINDOW_SECS as usize],
}

#[derive(Clone, Copy, Default)]
struct Bucket {
    second: u64,
    requests: u32,
    retries: u32,
}

impl RetryBudget {
    pub fn new(percent: f32, min_per_sec: u32) -> Self {
        RetryBudget {
            ratio: f64::from(percent) / 100.0,
            min_per_sec,
            epoch: Instant::now(),
            window: Mutex::new(Window::default()),
        }
    }

    /// Retries the budget would allow now, before any is taken.
    pub fn left(&self, now: Instant) -> u64 {
        let second = self.second(now);
        let w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let (requests, retries) = w.totals(second);
        let allowed =
            f64::from(self.min_per_sec) * WINDOW_SECS as f64 + self.ratio * f64::from(requests);
        (allowed - f64::from(retries)).max(0.0) as u64
    }

    /// Takes one retry from the budget, if there is one.
    pub fn withdraw(&self) -> bool {
        self.withdraw_at(Instant::now())
    }

    fn second(&self, now: Instant) -> u64 {
        // Second 0 is never a real bucket's second: default buckets read empty.
        now.saturating_duration_since(self.epoch).as_secs() + 1
    }

    /// Records a request, at the caller's clock reading `now`: it earns a share
    /// of a retry.
    pub fn deposit_at(&self, now: Instant) {
        let second = self.second(now);
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        w.current(second).requests += 1;
    }

    fn withdraw_at(&self, now: Instant) -> bool {
        let second = self.second(now);
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let (requests, retries) = w.totals(second);
        let allowed =
            f64::from(self.min_per_sec) * WINDOW_SECS as f64 + self.ratio * f64::from(requests);
        if f64::from(retries) + 1.0 > allowed {
            return false;
        }
        w.current(second).retries += 1;
        true
    }
}

impl Window {
    fn current(&mut self, second: u64) -> &mut Bucket {
        let bucket = &mut self.buckets[(second % WINDOW_SECS) as usize];
        if bucket.second != second {
            *bucket = Bucket {
                second,
                ..Bucket::default()
            };
        }
        bucket
    }

    /// Requests and retries of the last `WINDOW_SECS` seconds, this one included.
    fn totals(&self, second: u64) -> (u32, u32) {
        self.buckets
            .iter()
            .filter(|b| b.second != 0 && b.second + WINDOW_SECS > second && b.second <= second)
            .fold((0, 0), |(q, r), b| (q + b.requests, r + b.retries))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_full_outage_is_held_to_the_percentage_plus_the_floor() {
        let budget = RetryBudget::new(20.0, 0);
        let now = Instant::now();
        let retries = (0..1000)
            .filter(|_| {
                budget.deposit_at(now);
                budget.withdraw_at(now)
            })
            .count();
        assert_eq!(retries, 200);
    }

    #[test]
    fn the_floor_allows_retries_at_low_traffic() {
        let budget = RetryBudget::new(20.0, 10);
        // Ten per second over a ten-second window.
        let now = Instant::now();
        let granted = (0..150).filter(|_| budget.withdraw_at(now)).count();
        assert_eq!(granted, 100);
    }

    #[test]
    fn a_steady_outage_over_time_stays_at_rate_plus_floor() {
        // 200 requests a second for 30 s, all failing, with uneven spacing as a
        // real clock gives: retries settle at 20 % + 10/s = 25 % of requests.
        let budget = RetryBudget::new(20.0, 10);
        let start = Instant::now();
        let (mut requests, mut retries) = (0u32, 0u32);
        let step = Duration::from_micros(5_001);
        for i in 0..6000u32 {
            let now = start + step * i;
            budget.deposit_at(now);
            requests += 1;
            if budget.withdraw_at(now) {
                retries += 1;
            }
        }
        // The first window also spends the initial floor reserve.
        let ratio = f64::from(retries) / f64::from(requests);
        assert!(
            (0.24..=0.26).contains(&ratio),
            "{retries} retries for {requests} requests ({ratio:.3})"
        );
    }

    #[test]
    fn old_seconds_drop_out_of_the_window() {
        let budget = RetryBudget::new(100.0, 0);
        let start = Instant::now();
        for _ in 0..50 {
            budget.deposit_at(start);
        }
        assert!(budget.withdraw_at(start + Duration::from_secs(9)));
        assert!(
            !budget.withdraw_at(start + Duration::from_secs(11)),
            "the deposits are 11 s old"
        );
    }
}
