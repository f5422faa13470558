//! The provider admits at most `MAX_STREAMS_PER_CONNECTION` calls per connection at once: a
//! caller's further calls wait on its side (HTTP/2 flow control), and every one is answered.

use std::time::{Duration, Instant};

use ballast_protocol::providerpb::provider_client::ProviderClient;
use ballast_protocol::providerpb::{ClaimDomainRequest, DomainGrant, FencingToken, Grant};
use ballast_provider_sim::book::{Book, Breach, Catalog};
use ballast_provider_sim::server::{MAX_STREAMS_PER_CONNECTION, SimProvider, serve};

#[tokio::test]
async fn calls_past_the_stream_limit_wait_in_the_caller_and_are_all_answered() {
    // Every mutating call sleeps this long before the book: calls admitted together finish
    // together, so two limits' worth of calls take two rounds.
    let latency = Duration::from_millis(300);
    let catalog = Catalog {
        name: "sim".into(),
        idempotency_keys: 1000,
        ..Catalog::default()
    };
    let provider = SimProvider::new(Book::new(catalog, Breach::None), None, latency);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(provider, listener, None, async {
        let _ = stopped.await;
    }));
    // One client, so one connection.
    let client = ProviderClient::connect(format!("http://{address}"))
        .await
        .unwrap();

    let calls = 2 * MAX_STREAMS_PER_CONNECTION as usize;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..calls {
        let mut client = client.clone();
        tasks.spawn(async move {
            let domain = format!("zone=a/rack={n}");
            let mut request = tonic::Request::new(ClaimDomainRequest {
                idempotency_key: format!("take/{domain}"),
                token: Some(FencingToken {
                    shard_id: "s1".into(),
                    shard_epoch: 1,
                    sequence: n as u64,
                    domain: Some(DomainGrant {
                        domain,
                        grant: Some(Grant {
                            restore_epoch: 1,
                            revision: 1,
                        }),
                    }),
                    cluster: None,
                    quota: None,
                }),
            });
            request.set_timeout(Duration::from_secs(30));
            client.claim_domain(request).await
        });
    }
    let answered = tokio::time::timeout(Duration::from_secs(60), async {
        let mut answered = 0;
        while let Some(outcome) = tasks.join_next().await {
            outcome.unwrap().expect("every call is answered");
            answered += 1;
        }
        answered
    })
    .await
    .expect("the calls finish within a minute");
    assert_eq!(answered, calls);
    let took = started.elapsed();
    // Unlimited, all of them would sleep at once and finish in one latency.
    assert!(
        took >= 2 * latency,
        "{calls} calls over one connection took {took:?}: more than {MAX_STREAMS_PER_CONNECTION} ran at once"
    );
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
