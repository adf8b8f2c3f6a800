//! Waiting for conditions: poll with a deadline, never a bare sleep.

use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Calls `probe` until it returns `Ok`, or fails with [`Error::Timeout`] after `timeout`.
///
/// `probe` returns `Err(observation)` while the condition does not hold yet; the last
/// observation ends up in the timeout error so a failing test says what it saw.
/// The interval between probes starts at 50 ms and grows to 500 ms.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> Result<T> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut interval = Duration::from_millis(50);
    loop {
        let last = match probe() {
            Ok(value) => return Ok(value),
            Err(observation) => observation,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(Error::Timeout {
                what: what.to_owned(),
                after: now - start,
                last,
            });
        }
        std::thread::sleep(interval.min(deadline - now));
        interval = (interval * 2).min(Duration::from_millis(500));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_for_returns_the_first_success() {
        let mut calls = 0;
        let got = wait_for("third call", Duration::from_secs(5), || {
            calls += 1;
            if calls == 3 {
                Ok(calls)
            } else {
                Err(format!("call {calls}"))
            }
        });
        assert_eq!(got.ok(), Some(3));
    }

    #[test]
    fn wait_for_times_out_with_the_last_observation() {
        let err = wait_for::<()>("never", Duration::from_millis(120), || {
            Err("still no".to_owned())
        })
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("waiting for never"), "{err}");
        assert!(err.contains("still no"), "{err}");
    }
}
