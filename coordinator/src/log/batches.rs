//! Batches from a queue, for the two places that turn many small requests into few large
//! ones: the leader's proposal groups ([`super::raft::proposer`]) and a follower's forwarded
//! writes ([`super::forward`]). A batch goes out as soon as a slot is free; whatever queued
//! while earlier batches were on their way joins it, so a lone request goes at once, alone,
//! and under load the batches grow by themselves.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::error::ReplicaError;

/// Queues `item` for the next batch and waits for the answer `outcome` brings; a closed queue
/// or a dropped answer means the replica is shutting down.
pub async fn queue_and_wait<T, R>(
    queue: &mpsc::Sender<T>,
    item: T,
    outcome: oneshot::Receiver<Result<R, ReplicaError>>,
) -> Result<R, ReplicaError> {
    let stopping = || ReplicaError::retry("the replica is shutting down");
    queue.send(item).await.map_err(|_| stopping())?;
    outcome.await.map_err(|_| stopping())?
}

/// How big batches get and how many are on their way at once.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Batches on their way at once; more items wait and join the next batch.
    pub in_flight: usize,
    /// Most items in one batch.
    pub items: usize,
    /// Most bytes in one batch, as `size` counts them.
    pub bytes: usize,
}

/// How a batch sizes and sorts its items.
pub struct Items<T> {
    /// An item's size in bytes.
    pub size: fn(&T) -> usize,
    /// Whether an item (second) may join a batch that begins with another (first); one that
    /// may not starts the next batch.
    pub together: fn(&T, &T) -> bool,
}

/// Sends what arrives on `queue` in batches through `send` (each on a task of its own) until
/// the queue closes.
pub async fn run<T, S, F>(
    mut queue: mpsc::Receiver<T>,
    limits: Limits,
    Items { size, together }: Items<T>,
    send: impl Fn(Vec<T>) -> F,
) where
    T: Send + 'static,
    F: Future<Output = S> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.in_flight));
    let mut carried = None;
    loop {
        let first = match carried.take() {
            Some(first) => first,
            None => match queue.recv().await {
                Some(first) => first,
                None => return,
            },
        };
        // Wait for a free slot first: items arriving meanwhile join this batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = size(&first);
        let mut batch = vec![first];
        while batch.len() < limits.items {
            match queue.try_recv() {
                Ok(next) if bytes + size(&next) <= limits.bytes && together(&batch[0], &next) => {
                    bytes += size(&next);
                    batch.push(next);
                }
                Ok(next) => {
                    carried = Some(next);
                    break;
                }
                Err(_) => break,
            }
        }
        let sent = send(batch);
        tokio::spawn(async move {
            let _slot = slot;
            sent.await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn items_queued_together_go_in_one_batch_split_by_the_limits_and_by_kind() {
        let (queue, pending) = mpsc::channel(64);
        // Queued before the loop starts, so all of them are waiting when the first goes.
        for item in [(1, 'a'), (1, 'a'), (1, 'a'), (5, 'a'), (1, 'b'), (1, 'b')] {
            queue.send(item).await.expect("queued");
        }
        drop(queue);
        let (batches, mut sent) = mpsc::unbounded_channel();
        run(
            pending,
            Limits {
                in_flight: 1,
                items: 2,
                bytes: 4,
            },
            Items {
                size: |item: &(usize, char)| item.0,
                together: |a, b| a.1 == b.1,
            },
            move |batch| {
                let batches = batches.clone();
                async move {
                    let _ = batches.send(batch);
                }
            },
        )
        .await;
        let mut seen = Vec::new();
        while let Some(batch) = sent.recv().await {
            seen.push(batch);
        }
        assert_eq!(
            seen,
            vec![
                vec![(1, 'a'), (1, 'a')],
                vec![(1, 'a')],
                vec![(5, 'a')],
                vec![(1, 'b'), (1, 'b')],
            ]
        );
    }
}
