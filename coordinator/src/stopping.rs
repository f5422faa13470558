//! Waiting in the replica's background loops, which end when the replica stops.

use std::time::Duration;

use tokio::sync::watch;

/// Sleeps for `duration`; true when the replica stopped meanwhile (or had stopped), and the
/// caller's loop should end.
pub async fn pause(duration: Duration, stopped: &mut watch::Receiver<bool>) -> bool {
    let slept = tokio::select! {
        _ = tokio::time::sleep(duration) => true,
        _ = stopped.wait_for(|s| *s) => false,
    };
    !slept || *stopped.borrow()
}
