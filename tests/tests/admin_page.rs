//! The admin page at `GET /`, loaded in a real browser: headless Chromium opens
//! it against a breakwater whose upstream fails, and the test reads the DOM the
//! page's script rendered from `/upstreams` (the destination listed, its circuit
//! open, the failures by reason). A screenshot is left under the target
//! directory as CI's artefact. Chromium is Debian's `chromium` package
//! (.ci/programs): without it the test fails under CI=true and is skipped
//! elsewhere.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Request;

use crate::kubernetes::missing;
use crate::support::*;

const CHROMIUM: &str = "chromium";

fn have_chromium() -> bool {
    let found = std::process::Command::new(CHROMIUM)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    !missing(found, "chromium (apt-get install chromium)")
}

/// Headless Chromium on `url` with `mode` (`--dump-dom` or `--screenshot=…`),
/// given a few seconds of the page's own time to poll and render. Its profile
/// lives in `profile` so that runs share nothing.
async fn chromium(url: &str, profile: &Path, mode: &str) -> String {
    let mut cmd = std::process::Command::new(CHROMIUM);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,600",
        "--virtual-time-budget=3000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg(mode)
    .arg(url);
    // On a thread of its own: the proxy it loads runs on this runtime.
    let out = tokio::task::spawn_blocking(move || finish(cmd, Duration::from_secs(60)))
        .await
        .expect("chromium ran");
    assert!(out.succeeded(), "chromium {mode}: {}", out.stderr);
    out.stdout
}

/// The opening tag of the first element of `dom` with `attribute`, and what
/// follows it up to the next row: the element a test asserts on.
fn element<'a>(dom: &'a str, attribute: &str) -> &'a str {
    let at = dom
        .find(attribute)
        .unwrap_or_else(|| panic!("{attribute} not in the page:\n{dom}"));
    let start = dom[..at].rfind('<').unwrap_or(at);
    let end = dom[at..].find("</tr>").map_or(dom.len(), |e| at + e);
    &dom[start..end]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_page_shows_a_failing_destination_with_its_circuit_open_in_a_browser() {
    if !have_chromium() {
        return;
    }
    let (app, proxy) = circuit_opened_by_503s().await;
    let host = app.addr.to_string();
    assert_eq!(app.hits(), 3, "the circuit opened after three failures");

    let profile = TestDir::new("admin-page-chromium");
    let dom = chromium(&proxy.admin("/"), &profile.0, "--dump-dom").await;
    assert!(
        dom.contains(r#"data-loaded="true""#),
        "the script rendered the data:\n{dom}"
    );
    let row = element(&dom, &format!(r#"data-destination="{host}""#));
    assert!(row.contains(r#"data-direction="outbound""#), "{row}");
    assert!(row.contains(r#"data-circuit="open""#), "{row}");
    assert!(
        row.contains("circuit open"),
        "the open circuit is tagged: {row}"
    );
    assert!(row.contains("0.0%"), "every request failed: {row}");
    let endpoint = element(&dom, &format!(r#"data-endpoint="{host}""#));
    assert!(endpoint.contains(r#"data-circuit="open""#), "{endpoint}");
    assert!(dom.contains("circuit-open 7"), "failures by reason:\n{dom}");
    assert!(dom.contains("5xx 3"), "failures by reason:\n{dom}");
    assert!(
        dom.contains("1 with an open circuit"),
        "the summary counts it:\n{dom}"
    );
    let banner = element(&dom, r#"id="banner""#);
    let banner = &banner[..banner.find("</div>").unwrap_or(banner.len())];
    assert!(banner.ends_with('>'), "no error banner: {banner}");

    let shot = screenshot_path();
    let _ = std::fs::remove_file(&shot);
    chromium(
        &proxy.admin("/"),
        &profile.0,
        &format!("--screenshot={}", shot.display()),
    )
    .await;
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 10_000,
        "a screenshot at {} ({size} bytes)",
        shot.display()
    );
    eprintln!("admin page screenshot: {}", shot.display());
}

/// Where CI collects the screenshot: `target/admin-page.png` beside the builds.
fn screenshot_path() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join("admin-page.png")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_page_is_one_safe_document_and_leaves_the_other_paths_alone() {
    let app = spawn_echo().await;
    let proxy = spawn_proxy(app.addr, |_| {}).await;
    let c = client();

    let page = get(&c, &proxy.admin("/")).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    let csp = page.headers["content-security-policy"]
        .to_str()
        .unwrap_or_default();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    assert_eq!(page.headers["x-content-type-options"], "nosniff");
    assert!(page.body.contains("<html"), "an HTML document");
    assert!(
        page.body.contains(env!("CARGO_PKG_VERSION")),
        "names its version"
    );

    // HEAD reads it; anything else is refused: the page is read-only.
    for (method, status) in [(http::Method::HEAD, 200), (http::Method::POST, 405)] {
        let req = Request::builder()
            .method(method.clone())
            .uri(proxy.admin("/"));
        let answer = send(&c, req.body(full("")).expect("request")).await;
        assert_eq!(answer.status, status, "{method} /");
    }

    // The paths the page polls, and the others, answer as before.
    for path in [
        "/upstreams",
        "/ready?verbose",
        "/metrics",
        "/config",
        "/live",
    ] {
        let a = get(&c, &proxy.admin(path)).await;
        assert!(a.status == 200 || a.status == 503, "{path}: {}", a.status);
    }
    let upstreams = get(&c, &proxy.admin("/upstreams")).await;
    assert!(serde_json::from_str::<serde_json::Value>(&upstreams.body).is_ok());
    let ready = get(&c, &proxy.admin("/ready?verbose")).await;
    let ready: serde_json::Value = serde_json::from_str(&ready.body).expect("verbose JSON");
    assert!(ready["ready"].is_boolean(), "{ready}");
    let missing = get(&c, &proxy.admin("/index.html")).await;
    assert_eq!(missing.status, 404);
    assert!(
        missing.body.contains("try / (the page)"),
        "{}",
        missing.body
    );
}
