//! The retry budget of one destination, as in Finagle and linkerd: retries may
//! add at most a percentage of the request rate, plus a small floor per second,
//! over a sliding ten-second window. Unlike a fixed retry count, a budget cannot
//! multiply load during an outage: when every request fails, retries stop at
//! the budget instead of tripling the traffic (tower's essay on budgets says why).

use std::time::Duration;

use tower::retry::budget::{Budget, TpsBudget};

/// How far back the budget looks.
const WINDOW: Duration = Duration::from_secs(10);

pub struct RetryBudget {
    inner: TpsBudget,
}

impl RetryBudget {
    /// `percent` is validated to 0..=1000 and `min_per_sec` below `i32::MAX` at
    /// start-up; tower asserts both.
    pub fn new(percent: f32, min_per_sec: u32) -> Self {
        RetryBudget {
            inner: TpsBudget::new(WINDOW, min_per_sec, percent / 100.0),
        }
    }

    /// Records a request: it earns a share of a retry.
    pub fn deposit(&self) {
        self.inner.deposit();
    }

    /// Takes one retry from the budget, if there is one.
    pub fn withdraw(&self) -> bool {
        self.inner.withdraw()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_outage_is_held_to_the_percentage_plus_the_floor() {
        let budget = RetryBudget::new(20.0, 0);
        let mut retries = 0;
        for _ in 0..1000 {
            budget.deposit();
            if budget.withdraw() {
                retries += 1;
            }
        }
        assert!(
            (195..=205).contains(&retries),
            "{retries} retries for 1000 requests"
        );
    }

    #[test]
    fn the_floor_allows_retries_at_low_traffic() {
        let budget = RetryBudget::new(20.0, 10);
        // Ten per second over a ten-second window: a reserve of 100 retries.
        let granted = (0..150).filter(|_| budget.withdraw()).count();
        assert_eq!(granted, 100);
    }
}
