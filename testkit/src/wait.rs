//! Waiting for a condition: polling with a deadline that bounds a hung test.

use std::time::{Duration, Instant};

/// Polls `probe` every 50 ms until it yields a value; panics with `what` after `limit`.
/// The limits are generous on purpose: they bound a hung test, they do not measure speed.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if started.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
