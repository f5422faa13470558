//! Fleet listings read page by page: each request names the page with `after` (the last item of
//! the previous page, `""` for the first) and `limit`, each answer carries `next_after` (`""` on
//! the last page).

use std::future::Future;

use ballast_protocol::pb;
use ballast_protocol::pb::fleet_client::FleetClient;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::Context;

/// Page size for listings; large enough that a 100K-domain fleet lists in 20 round trips.
pub const PAGE: u32 = 5000;

/// One page of a listing: its header, its items and the cursor of the next page (`""` = last).
pub type Page<T> = (Option<pb::ResponseHeader>, Vec<T>, String);

/// A paged listing's request: how to ask for one page and how to take its answer apart.
pub trait Paged: Clone {
    /// The answer to one page.
    type Answer;
    /// What the listing lists.
    type Item;
    /// This request, for the `limit` items after `after`.
    fn page(&self, after: String, limit: u32) -> Self;
    /// Sends it.
    fn send(
        client: FleetClient<Channel>,
        request: Request<Self>,
    ) -> impl Future<Output = Result<Response<Self::Answer>, Status>>;
    /// The answer taken apart.
    fn split(answer: Self::Answer) -> Page<Self::Item>;
}

/// `Paged` for a request with `after` and `limit` and an answer with `header`, `next_after` and
/// its items in `$items`.
macro_rules! paged_listing {
    ($request:ty => $answer:ty, $rpc:ident, $items:ident: $item:ty) => {
        impl Paged for $request {
            type Answer = $answer;
            type Item = $item;
            fn page(&self, after: String, limit: u32) -> Self {
                Self {
                    after,
                    limit,
                    ..self.clone()
                }
            }
            async fn send(
                mut client: FleetClient<Channel>,
                request: Request<Self>,
            ) -> Result<Response<$answer>, Status> {
                client.$rpc(request).await
            }
            fn split(answer: $answer) -> Page<$item> {
                (answer.header, answer.$items, answer.next_after)
            }
        }
    };
}

paged_listing!(pb::ListDomainsRequest => pb::ListDomainsResponse, list_domains, domains: pb::DomainAssignment);
paged_listing!(pb::ListBindingsRequest => pb::ListBindingsResponse, list_bindings, bindings: pb::Binding);

/// Reads every page of `request`'s listing, [`PAGE`] items at a time from the start (its own
/// `after` and `limit` are ignored); returns the revision of the last page and all items.
pub async fn paged<R: Paged>(ctx: &Context, request: R) -> anyhow::Result<(u64, Vec<R::Item>)> {
    let mut items = Vec::new();
    let mut after = String::new();
    let mut revision = 0;
    loop {
        let page = request.page(after, PAGE);
        let answer = ctx
            .client
            .fleet(|client, req| R::send(client, req.wrap(page.clone())))
            .await?;
        let (header, chunk, next) = R::split(answer);
        revision = header.map(|h| h.revision).unwrap_or(revision);
        items.extend(chunk);
        if next.is_empty() {
            return Ok((revision, items));
        }
        after = next;
    }
}
