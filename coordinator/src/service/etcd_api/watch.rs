//! `etcdserverpb.Watch`: many watchers per stream, each replaying history from its start
//! revision and then following every applied change. Served by any replica.

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use ballast_protocol::etcdserverpb as epb;
use ballast_protocol::etcdserverpb::watch_server::Watch;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::EtcdApi;
use super::convert::event;
use crate::auth::Caller;
use crate::kv::{EventKind, KeyRange};

/// The cancel reason of a watcher the caller may not read (etcd sends its gRPC error's text).
const PERMISSION_DENIED: &str =
    "rpc error: code = PermissionDenied desc = etcdserver: permission denied";

/// Idle watchers that asked for progress notifications get one this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Events per response, so one huge revision does not make one huge message.
const EVENTS_PER_RESPONSE: usize = 1000;

pub(crate) type WatchStream =
    Pin<Box<dyn Stream<Item = Result<epb::WatchResponse, Status>> + Send + 'static>>;
type Sender = mpsc::Sender<Result<epb::WatchResponse, Status>>;

impl EtcdApi {
    /// Runs one watcher until it is cancelled, compacted away or the stream closes.
    async fn run_watcher(self, create: epb::WatchCreateRequest, id: i64, tx: Sender) {
        let range = KeyRange {
            key: create.key.clone(),
            end: create.range_end.clone(),
        };
        let no_put = create
            .filters
            .contains(&(epb::watch_create_request::FilterType::Noput as i32));
        let no_delete = create
            .filters
            .contains(&(epb::watch_create_request::FilterType::Nodelete as i32));
        let mut revisions = self.replica.state.watch_revision();
        let current = *revisions.borrow_and_update();
        let mut after = if create.start_revision > 0 {
            create.start_revision as u64 - 1
        } else {
            current
        };
        let created = epb::WatchResponse {
            header: Some(self.header_at(current)),
            watch_id: id,
            created: true,
            ..Default::default()
        };
        if tx.send(Ok(created)).await.is_err() {
            return;
        }
        let mut last_sent = tokio::time::Instant::now();
        loop {
            let batch = {
                let fleet = self.replica.state.fleet();
                let revision = fleet.revision();
                match fleet.kv().events_after(after) {
                    Err(compacted) => Err(compacted),
                    Ok(events) => {
                        let picked: Vec<_> = events
                            .into_iter()
                            .filter(|e| range.contains(&e.kv.key))
                            .filter(|e| match e.kind {
                                EventKind::Put => !no_put,
                                EventKind::Delete => !no_delete,
                            })
                            .map(|e| event(e, create.prev_kv))
                            .collect();
                        Ok((revision, picked))
                    }
                }
            };
            match batch {
                Err(compacted) => {
                    let _ = tx
                        .send(Ok(epb::WatchResponse {
                            header: Some(self.header_at(self.replica.state.revision())),
                            watch_id: id,
                            canceled: true,
                            compact_revision: compacted as i64 + 1,
                            cancel_reason: "etcdserver: mvcc: required revision has been compacted"
                                .into(),
                            ..Default::default()
                        }))
                        .await;
                    return;
                }
                Ok((revision, events)) => {
                    after = after.max(revision);
                    for chunk in events.chunks(EVENTS_PER_RESPONSE) {
                        let response = epb::WatchResponse {
                            header: Some(self.header_at(revision)),
                            watch_id: id,
                            events: chunk.to_vec(),
                            ..Default::default()
                        };
                        if tx.send(Ok(response)).await.is_err() {
                            return;
                        }
                        last_sent = tokio::time::Instant::now();
                    }
                }
            }
            if create.progress_notify && last_sent.elapsed() >= PROGRESS_EVERY {
                let progress = epb::WatchResponse {
                    header: Some(self.header_at(after)),
                    watch_id: id,
                    ..Default::default()
                };
                if tx.send(Ok(progress)).await.is_err() {
                    return;
                }
                last_sent = tokio::time::Instant::now();
            }
            tokio::select! {
                changed = revisions.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(PROGRESS_EVERY) => {}
                _ = tx.closed() => return,
            }
        }
    }
}

#[tonic::async_trait]
impl Watch for EtcdApi {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<Streaming<epb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.replica.check_cluster(request.metadata())?;
        // Who the stream is from is read once, as etcd does; each watcher it creates is
        // checked against the users and roles as they are then.
        let caller = self.request_auth(&request)?.caller;
        Ok(Response::new(
            self.watch_stream(caller, request.into_inner()),
        ))
    }
}

impl EtcdApi {
    /// Serves one watch stream: `inbound`'s create, cancel and progress requests, answered on
    /// the returned stream, until `inbound` ends or the answers' reader goes away.
    pub(crate) fn watch_stream(
        &self,
        caller: Option<Caller>,
        mut inbound: impl Stream<Item = Result<epb::WatchRequest, Status>> + Send + Unpin + 'static,
    ) -> WatchStream {
        let (tx, rx) = mpsc::channel::<Result<epb::WatchResponse, Status>>(256);
        let api = self.clone();
        tokio::spawn(async move {
            let _open = crate::metrics::WatchStream::open("etcd");
            use epb::watch_request::RequestUnion;
            let mut watchers: HashMap<i64, tokio::task::JoinHandle<()>> = HashMap::new();
            let mut next_id: i64 = 0;
            loop {
                let message = tokio::select! {
                    message = inbound.next() => message,
                    () = tx.closed() => break,
                };
                let Some(Ok(message)) = message else {
                    break;
                };
                match message.request_union {
                    Some(RequestUnion::CreateRequest(create)) => {
                        let id = if create.watch_id != 0 {
                            create.watch_id
                        } else {
                            while watchers.contains_key(&next_id) {
                                next_id += 1;
                            }
                            next_id
                        };
                        let refusal = if create.key.is_empty() {
                            Some("etcdserver: key is not provided")
                        } else if watchers.contains_key(&id) {
                            Some("etcdserver: duplicate watch ID")
                        } else if api
                            .replica
                            .state
                            .fleet()
                            .auth()
                            .check_read(caller.as_ref(), &create.key, &create.range_end)
                            .is_err()
                        {
                            // etcd's wording: the status it would have failed a call with.
                            Some(PERMISSION_DENIED)
                        } else {
                            None
                        };
                        if let Some(reason) = refusal {
                            let _ = tx
                                .send(Ok(epb::WatchResponse {
                                    header: Some(api.header_at(api.replica.state.revision())),
                                    watch_id: id,
                                    created: true,
                                    canceled: true,
                                    cancel_reason: reason.into(),
                                    ..Default::default()
                                }))
                                .await;
                            continue;
                        }
                        let task = tokio::spawn(api.clone().run_watcher(create, id, tx.clone()));
                        watchers.insert(id, task);
                    }
                    Some(RequestUnion::CancelRequest(cancel)) => {
                        if let Some(task) = watchers.remove(&cancel.watch_id) {
                            task.abort();
                        }
                        let _ = tx
                            .send(Ok(epb::WatchResponse {
                                header: Some(api.header_at(api.replica.state.revision())),
                                watch_id: cancel.watch_id,
                                canceled: true,
                                ..Default::default()
                            }))
                            .await;
                    }
                    Some(RequestUnion::ProgressRequest(_)) => {
                        let _ = tx
                            .send(Ok(epb::WatchResponse {
                                header: Some(api.header_at(api.replica.state.revision())),
                                watch_id: -1,
                                ..Default::default()
                            }))
                            .await;
                    }
                    None => {}
                }
            }
            for (_, task) in watchers {
                task.abort();
            }
        });
        Box::pin(ReceiverStream::new(rx))
    }
}
