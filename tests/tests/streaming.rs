//! Bodies stream in both directions: a 1 GiB upload and a 1 GiB download pass
//! through the real binary while its resident memory stays flat.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};

use crate::support::*;

const GIB: u64 = 1 << 30;
const CHUNK: usize = 256 * 1024;
/// Resident memory the proxy may grow by while 1 GiB passes. Buffering the body
/// whole would cost 1 GiB; streaming costs a few buffers.
const MAX_GROWTH_KIB: u64 = 32 * 1024;

/// A body of `total` bytes produced chunk by chunk, never held whole.
fn generated_body(total: u64) -> TestBody {
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    let stream = futures_util::stream::unfold(0u64, move |sent| {
        let chunk = chunk.clone();
        async move {
            if sent >= total {
                return None;
            }
            let n = (total - sent).min(CHUNK as u64) as usize;
            Some((
                Ok::<_, std::convert::Infallible>(Frame::data(chunk.slice(..n))),
                sent + n as u64,
            ))
        }
    });
    StreamBody::new(stream).map_err(|e| match e {}).boxed()
}

/// Reads a body to its end, counting bytes without keeping them.
async fn drain_body(mut body: Incoming) -> u64 {
    let mut total = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("body frame");
        if let Some(data) = frame.data_ref() {
            total += data.len() as u64;
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_each_way_keeps_the_proxy_rss_flat() {
    let received = Arc::new(AtomicU64::new(0));
    let r = received.clone();
    let app = spawn_upstream(move |req: Request<Incoming>| {
        let r = r.clone();
        async move {
            if req.uri().path() == "/upload" {
                r.store(drain_body(req.into_body()).await, Ordering::SeqCst);
                text_response(200, "stored")
            } else {
                Response::new(generated_body(GIB))
            }
        }
    })
    .await;
    let proxy = spawn_binary(app.addr, &["--threads=1"]).await;
    let pid = proxy.child.id();
    let c = client();
    // Warm up so the baseline includes pools and buffers of a served request.
    let warm = get(&c, &format!("http://{}/warm-up", proxy.addrs.inbound)).await;
    assert_eq!(warm.status, 200);
    let (_, baseline) = memory_kib(pid);

    let upload = Request::post(format!("http://{}/upload", proxy.addrs.inbound))
        .body(generated_body(GIB))
        .expect("request");
    let resp = c.request(upload).await.expect("upload response");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        received.load(Ordering::SeqCst),
        GIB,
        "every uploaded byte arrived"
    );

    let resp = c
        .request(
            Request::get(format!("http://{}/download", proxy.addrs.inbound))
                .body(full(""))
                .expect("request"),
        )
        .await
        .expect("download response");
    assert_eq!(
        drain_body(resp.into_body()).await,
        GIB,
        "every downloaded byte arrived"
    );

    let (peak, _) = memory_kib(pid);
    assert!(
        peak < baseline + MAX_GROWTH_KIB,
        "proxy RSS grew from {baseline} KiB to a peak of {peak} KiB while streaming 2 GiB"
    );
}
