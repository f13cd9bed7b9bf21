//! The dashboard in a real browser: Debian's headless Chromium, driven through chromedriver
//! (WebDriver), against a running three-region `allot demo`. A wrong token is refused; the
//! right one opens the event's page, which shows the three regions and follows purchases made
//! through the API (in this region and, by gossip, in another) without a reload. A screenshot
//! is kept under the test's output folder.
//!
//! Needs `chromium` and `chromium-driver` (`.ci/run` installs them and sets
//! `ALLOT_BROWSER_TEST=required`, so there a missing browser fails the test instead of
//! skipping it).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, NodeProcess};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

const DEMO_TOKEN: &str = "browser-test-operator-token";

fn chromedriver_present() -> bool {
    Command::new("chromedriver")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts `allot demo` without generated load; returns it and each region's HTTP base URL,
/// read from what it prints.
fn start_demo() -> (NodeProcess, Vec<(String, String)>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_allot"))
        .args(["demo", "--rate", "0", "--seconds", "600"])
        .env("ALLOT_ADMIN_TOKEN", DEMO_TOKEN)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start allot demo");
    let stdout = child.stdout.take().unwrap();
    let demo = NodeProcess::from(child);
    let mut regions = Vec::new();
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line.expect("the demo's output");
        // "  eu-west   dashboard http://127.0.0.1:PORT/dashboard · ..."
        if let Some((name, rest)) = line.trim().split_once(" dashboard ") {
            let url = rest.split_whitespace().next().unwrap();
            let base = url.strip_suffix("/dashboard").unwrap().to_owned();
            regions.push((name.trim().to_owned(), base));
        }
        if line.contains("operator token") {
            assert!(
                line.contains("ALLOT_ADMIN_TOKEN") && !line.contains(DEMO_TOKEN),
                "the demo uses ALLOT_ADMIN_TOKEN and does not print it: {line}"
            );
            break;
        }
    }
    assert_eq!(regions.len(), 3, "three regions: {regions:?}");
    // The rest of its output is read (and dropped), so its prints never meet a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (demo, regions)
}

async fn start_browser() -> (NodeProcess, Client) {
    let port = free_port();
    let driver = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let driver = NodeProcess::from(driver);
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,1800"]}),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match ClientBuilder::new(connector.clone())
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(c) => return (driver, c),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("chromedriver: {e}"),
        }
    }
}

/// The element's text. The live stream replaces the page's view as the figures change, so an
/// element found may be stale by the time its text is read: find it again, a few times.
async fn text(c: &Client, css: &str) -> String {
    let mut last = None;
    for _ in 0..20 {
        match c.find(Locator::Css(css)).await {
            Ok(e) => match e.text().await {
                Ok(t) => return t,
                Err(err) => last = Some(err),
            },
            Err(err) => last = Some(err),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{css}: {last:?}")
}

/// Waits until the element's text is `want`, without reloading the page.
async fn wait_text(c: &Client, css: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = c.find(Locator::Css(css)).await.ok();
        let seen = match now {
            Some(e) => e.text().await.unwrap_or_default(),
            None => String::new(),
        };
        if seen == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{css}: {seen:?}, waited for {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for an element to appear. A form's submit navigates, and chromedriver may answer a
/// find made during that navigation with an error ("aborted by navigation") rather than "no
/// such element", which fantoccini's own wait gives up on. Those two are retried until the
/// deadline (and a find that hangs is cut off by it); any other error fails at once.
async fn wait_for(c: &Client, locator: Locator<'_>, what: &str) -> fantoccini::elements::Element {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let err = match tokio::time::timeout(left, c.find(locator)).await {
            Ok(Ok(e)) => return e,
            Ok(Err(err)) => err,
            Err(_) => panic!("{what}: no answer from the browser within 30 s"),
        };
        let passing = err.is_no_such_element() || err.to_string().contains("navigation");
        if !passing || Instant::now() >= deadline {
            panic!("{what}: {err}");
        }
        if !err.is_no_such_element() {
            eprintln!("{what}: {err}; looking again");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn buy(http: &reqwest::Client, base: &str, quantity: u64, n: u32) {
    let r = http
        .post(format!("{base}/v1/events/rock-2027/purchases"))
        .header("Idempotency-Key", format!("browser-{n}"))
        .json(&json!({"pool": "floor", "quantity": quantity, "customer": format!("b-{n}"), "payment_ref": "p"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::CREATED);
}

async fn log_in(c: &Client, token: &str) {
    c.find(Locator::Css("input[name=token]"))
        .await
        .unwrap()
        .send_keys(token)
        .await
        .unwrap();
    c.find(Locator::Css("form[action='/dashboard/login'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_logs_in_and_watches_sales_move_without_a_reload() {
    if !chromedriver_present() {
        assert!(
            std::env::var("ALLOT_BROWSER_TEST").as_deref() != Ok("required"),
            "chromedriver is missing (apt-get install chromium chromium-driver)"
        );
        eprintln!("SKIPPED: no chromedriver (apt-get install chromium chromium-driver)");
        return;
    }
    let (_demo, regions) = start_demo();
    let (eu, us) = (&regions[0].1, &regions[1].1);
    let http = reqwest::Client::new();
    common::wait_ready(&http, eu).await;
    let (_driver, c) = start_browser().await;
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser");
    std::fs::create_dir_all(&out).unwrap();

    // A wrong token: the form again, saying so, and no session cookie.
    c.goto(&format!("{eu}/dashboard")).await.unwrap();
    log_in(&c, "not-the-token").await;
    wait_for(&c, Locator::Css("p.err"), "the form again").await;
    assert_eq!(text(&c, "p.err").await, "Wrong operator token.");
    assert!(c.get_all_cookies().await.unwrap().is_empty());

    // The right one: the events page, then the event's.
    log_in(&c, DEMO_TOKEN).await;
    let event_link = wait_for(
        &c,
        Locator::LinkText("Rock in the Park"),
        "the demo's event on the events page",
    )
    .await;
    let cookies = c.get_all_cookies().await.unwrap();
    assert_eq!(
        cookies.len(),
        1,
        "{cookies:?} {}",
        c.source().await.unwrap()
    );
    assert_eq!(cookies[0].http_only(), Some(true));
    // The live stream may replace the page's view between finding the link and clicking it
    // (the link found is then stale): find it again and retry.
    let mut link = Some(event_link);
    for attempt in 0.. {
        let l = match link.take() {
            Some(l) => l,
            None => c.find(Locator::LinkText("Rock in the Park")).await.unwrap(),
        };
        match l.click().await {
            Ok(()) => break,
            Err(e) if attempt < 20 => {
                eprintln!("clicking the event's link again: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the event's link could not be clicked: {e}"),
        }
    }
    wait_for(&c, Locator::Css("tr[data-pool]"), "the event's page").await;
    assert!(c
        .current_url()
        .await
        .unwrap()
        .path()
        .ends_with("/dashboard/events/rock-2027"));
    wait_text(&c, "#live", "live").await;
    for (name, _) in &regions {
        let row = text(&c, &format!("#view table tr[data-region='{name}'] td")).await;
        assert!(row.contains(name), "{name}: {row}");
    }
    let sold = |region: &str| format!("tr[data-pool='floor'][data-region='{region}'] td.sold");
    assert_eq!(text(&c, &sold("eu-west")).await, "0");

    // Purchases through the API: the page follows, and it is the same page (no reload).
    c.execute("window.allotNoReload = 42; return true;", vec![])
        .await
        .unwrap();
    for n in 0..3 {
        buy(&http, eu, 2, n).await;
    }
    wait_text(&c, &sold("eu-west"), "6").await;
    // Another region's sale reaches this region's page by gossip.
    buy(&http, us, 3, 10).await;
    wait_text(&c, &sold("us-east"), "3").await;
    let same_page = c
        .execute("return window.allotNoReload === 42;", vec![])
        .await
        .unwrap();
    assert_eq!(same_page, json!(true), "the page was not reloaded");
    assert!(text(&c, "#view").await.contains("3000 = capacity 3000"));
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    std::fs::write(out.join("event-page.png"), &png).unwrap();

    // The cluster page shows both links up, as eu-west sees them.
    c.goto(&format!("{eu}/dashboard/cluster")).await.unwrap();
    wait_text(&c, "tr[data-region='us-east'] td.link", "connected").await;
    wait_text(&c, "tr[data-region='ap-south'] td.link", "connected").await;
    std::fs::write(out.join("cluster-page.png"), c.screenshot().await.unwrap()).unwrap();
    eprintln!("screenshots in {}", out.display());
    c.close().await.unwrap();
    // SIGTERM, so the demo stops its nodes and removes its temp dir.
    let (mut demo, _driver) = (_demo, _driver);
    Command::new("kill")
        .args(["-TERM", &demo.id().to_string()])
        .status()
        .unwrap();
    let status = demo.wait().unwrap();
    assert!(
        status.success(),
        "the demo stops cleanly on SIGTERM: {status}"
    );
}
