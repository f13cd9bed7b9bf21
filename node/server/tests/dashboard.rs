//! The dashboard's door: login with the operator token sets an HttpOnly, SameSite=Strict
//! session cookie (no token in a URL), a wrong token is refused, logout needs the page's CSRF
//! token, and the events page shows this region's figures, escaped.

mod common;

use common::*;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::{redirect, Client, StatusCode};
use serde_json::json;

async fn page(client: &Client, n: &TestNode, cookie: Option<&str>) -> (StatusCode, String) {
    let mut r = client.get(n.url("/dashboard"));
    if let Some(c) = cookie {
        r = r.header(COOKIE, c);
    }
    let r = r.send().await.unwrap();
    (r.status(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_shows_the_events_and_logout_needs_the_csrf_token() {
    let n = TestNode::start().await;
    let mut ev = event("rock", 10, 2, 600);
    ev["name"] = json!("Rock <script>alert(1)</script>");
    n.create_event(ev).await;
    let client = Client::builder()
        .redirect(redirect::Policy::none())
        .build()
        .unwrap();

    // Not logged in: the form, and nothing of the events.
    let (s, html) = page(&client, &n, None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        html.contains("name=token") && !html.contains("Rock"),
        "{html}"
    );

    // A wrong token: refused, no cookie.
    let r = client
        .post(n.url("/dashboard/login"))
        .form(&[("token", "not-the-token")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers().get(SET_COOKIE).is_none());

    // The right one: a session cookie, HttpOnly and SameSite=Strict; back to the page.
    let r = client
        .post(n.url("/dashboard/login"))
        .form(&[("token", TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[LOCATION], "/dashboard");
    let set = r.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(!set.contains(TOKEN), "the session id is not the token");
    let cookie = set.split(';').next().unwrap().to_owned();

    let (s, html) = page(&client, &n, Some(&cookie)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(html.contains("Rock &lt;script&gt;"), "escaped: {html}");
    assert!(!html.contains("<script>alert"), "{html}");
    assert!(html.contains("0 / 12"), "{html}");
    for i in 0..3 {
        let (s, _) = n
            .post(
                "/v1/events/rock/purchases",
                json!({"pool": "floor", "quantity": 2, "customer": format!("c-{i}"), "payment_ref": "p"}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED);
    }
    let (_, html) = page(&client, &n, Some(&cookie)).await;
    assert!(html.contains("6 / 12") && html.contains("50.0%"), "{html}");

    // Live: the stream sends the figures, then each change (at most twice a second).
    let r = client.get(n.url("/dashboard/stream")).send().await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "not without a session"
    );
    let mut stream = client
        .get(n.url("/dashboard/stream"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let mut seen = String::new();
    let mut next_view = async || -> String {
        loop {
            if let Some(end) = seen.find("\n\n") {
                let frame: String = seen.drain(..end + 2).collect();
                let data: Vec<&str> = frame
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .collect();
                if !data.is_empty() {
                    assert!(frame.contains("event: view"), "{frame}");
                    return data.join("\n");
                }
                continue;
            }
            let chunk = tokio::time::timeout(std::time::Duration::from_secs(5), stream.chunk())
                .await
                .expect("an update in time")
                .unwrap()
                .unwrap();
            seen.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    };
    let view = next_view().await;
    assert!(
        view.contains("6 / 12") && view.contains("Rock &lt;script&gt;"),
        "{view}"
    );
    let (s, _) = n
        .post(
            "/v1/events/rock/purchases",
            json!({"pool": "floor", "quantity": 3, "customer": "c-9", "payment_ref": "p"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let view = next_view().await;
    assert!(view.contains("9 / 12") && view.contains("75.0%"), "{view}");
    drop(stream);

    // Logout without the page's CSRF token: refused, the session lives on.
    let r = client
        .post(n.url("/dashboard/logout"))
        .header(COOKIE, &cookie)
        .form(&[("csrf", "guessed")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(page(&client, &n, Some(&cookie)).await.1.contains("9 / 12"));
    // With it: logged out, and the old cookie opens nothing.
    let csrf = html
        .split("name=csrf value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_owned();
    let r = client
        .post(n.url("/dashboard/logout"))
        .header(COOKIE, &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(r.headers()[SET_COOKIE]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    let (_, html) = page(&client, &n, Some(&cookie)).await;
    assert!(
        html.contains("name=token") && !html.contains("9 / 12"),
        "{html}"
    );
    n.stop().await;
}

async fn login(client: &Client, n: &TestNode) -> String {
    let r = client
        .post(n.url("/dashboard/login"))
        .form(&[("token", TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let set = r.headers()[SET_COOKIE].to_str().unwrap();
    set.split(';').next().unwrap().to_owned()
}

/// Sends `r` with the session cookie if any: the status, the body and where it redirects.
async fn send(
    mut r: reqwest::RequestBuilder,
    cookie: Option<&str>,
) -> (StatusCode, String, Option<String>) {
    if let Some(c) = cookie {
        r = r.header(COOKIE, c);
    }
    let r = r.send().await.unwrap();
    let to = r
        .headers()
        .get(LOCATION)
        .map(|l| l.to_str().unwrap().to_owned());
    (r.status(), r.text().await.unwrap(), to)
}

async fn get(
    client: &Client,
    n: &TestNode,
    path: &str,
    cookie: Option<&str>,
) -> (StatusCode, String, Option<String>) {
    send(client.get(n.url(path)), cookie).await
}

fn csrf_in(html: &str) -> String {
    html.split("name=csrf value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("a CSRF field")
        .to_owned()
}

async fn sales_form(
    client: &Client,
    n: &TestNode,
    cookie: Option<&str>,
    csrf: &str,
    sales: &str,
) -> (StatusCode, Option<String>) {
    let r = client
        .post(n.url("/dashboard/events/rock/sales"))
        .form(&[("csrf", csrf), ("sales", sales)]);
    let (status, _, to) = send(r, cookie).await;
    (status, to)
}

async fn sales_state(n: &TestNode) -> String {
    let r = n.client.get(n.url("/v1/events/rock")).send().await.unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    v["sales"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_and_cluster_pages_show_every_region_and_the_buttons_need_the_csrf_token() {
    let n = TestNode::start().await;
    let mut ev = event("rock", 12, 6, 600);
    ev["allotments"] = json!({
        "floor": {"eu-west": 6, "us-east": 4, "ap-south": 2},
        "stalls": {"eu-west": 4, "us-east": 2, "ap-south": 0}
    });
    n.create_event(ev).await;
    let client = Client::builder()
        .redirect(redirect::Policy::none())
        .build()
        .unwrap();

    // Without a session: the pages send to the login form, the streams say 401, and a
    // button's form changes nothing.
    for path in ["/dashboard/events/rock", "/dashboard/cluster"] {
        let (s, _, to) = get(&client, &n, path, None).await;
        assert_eq!(
            (s, to.as_deref()),
            (StatusCode::SEE_OTHER, Some("/dashboard")),
            "{path}"
        );
    }
    for path in [
        "/dashboard/events/rock/stream",
        "/dashboard/cluster/stream",
        "/dashboard/stream",
    ] {
        let (s, _, _) = get(&client, &n, path, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{path}");
    }
    let (s, to) = sales_form(&client, &n, None, "x", "closed").await;
    assert_eq!(
        (s, to.as_deref()),
        (StatusCode::SEE_OTHER, Some("/dashboard"))
    );
    assert_eq!(sales_state(&n).await, "open");

    let cookie = login(&client, &n).await;
    for i in 0..2 {
        let (s, _) = n
            .post(
                "/v1/events/rock/purchases",
                json!({"pool": "floor", "quantity": 2, "customer": format!("c-{i}"), "payment_ref": "p"}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED);
    }
    let (s, _) = n
        .post(
            "/v1/events/rock/holds",
            json!({"pool": "stalls", "seats": ["A-1"], "customer": "c-h"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);

    let (s, html, _) = get(&client, &n, "/dashboard/events/rock", Some(&cookie)).await;
    assert_eq!(s, StatusCode::OK);
    for region in ["eu-west", "us-east", "ap-south"] {
        assert!(
            html.contains(&format!("data-region=\"{region}\"")),
            "{region}: {html}"
        );
    }
    assert!(
        html.contains("As <b>eu-west</b> sees the cluster"),
        "{html}"
    );
    // Each pool's regions add up to its capacity: here 4 sold + 2 sellable, 4 and 2 elsewhere.
    assert!(
        html.contains("12 = capacity 12") && html.contains("6 = capacity 6"),
        "{html}"
    );
    assert!(
        html.contains("<tr data-pool=\"floor\" data-region=\"eu-west\">")
            && html.contains(
                "<td class=\"n sold\">4</td><td class=n>0</td><td class=\"n sellable\">2</td>"
            ),
        "{html}"
    );
    // The seat map: eu-west's seats by state (one held, three free), the others by owner.
    assert!(html.contains("aria-label=\"seat map\""), "{html}");
    assert!(
        html.contains("fill=\"#e69f00\" fill-opacity=\"1\""),
        "the held seat: {html}"
    );
    assert!(
        html.contains("fill-opacity=\"0.45\""),
        "us-east's seats: {html}"
    );
    // A region never heard from makes the view stale, and the page says so.
    assert!(
        html.contains("This view is stale for us-east, ap-south"),
        "{html}"
    );
    assert!(html.contains("Sales per minute"), "{html}");
    let (s, _, _) = get(&client, &n, "/dashboard/events/nope", Some(&cookie)).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // The buttons: a wrong CSRF token changes nothing; the right one pauses sales.
    let csrf = csrf_in(&html);
    let (s, _) = sales_form(&client, &n, Some(&cookie), "guessed", "closed").await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(sales_state(&n).await, "open");
    let (s, _) = sales_form(&client, &n, Some(&cookie), &csrf, "sold").await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(sales_state(&n).await, "open");
    let (s, to) = sales_form(&client, &n, Some(&cookie), &csrf, "paused").await;
    assert_eq!(
        (s, to.as_deref()),
        (StatusCode::SEE_OTHER, Some("/dashboard/events/rock"))
    );
    assert_eq!(sales_state(&n).await, "paused");
    let (s, v) = n
        .post(
            "/v1/events/rock/purchases",
            json!({"pool": "floor", "quantity": 1, "customer": "c-p", "payment_ref": "p"}),
        )
        .await;
    assert_eq!(
        (s, v["type"].as_str()),
        (StatusCode::CONFLICT, Some("urn:allot:problem:sales-closed")),
        "{v}"
    );
    let (_, html, _) = get(&client, &n, "/dashboard/events/rock", Some(&cookie)).await;
    assert!(html.contains("<b class=err id=sales>paused</b>"), "{html}");
    let (s, _) = sales_form(&client, &n, Some(&cookie), &csrf, "open").await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(sales_state(&n).await, "open");

    // The cluster page: this node's readiness and durable index, a line per other region.
    let (s, html, _) = get(&client, &n, "/dashboard/cluster", Some(&cookie)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        html.contains("id=ready>ready<") && html.contains("Durable record index"),
        "{html}"
    );
    for region in ["us-east", "ap-south"] {
        assert!(
            html.contains(&format!("data-region=\"{region}\"")),
            "{region}: {html}"
        );
    }
    // Its stream and the event's answer a logged-in operator with the same fragments.
    for path in ["/dashboard/cluster/stream", "/dashboard/events/rock/stream"] {
        let mut r = client
            .get(n.url(path))
            .header(COOKIE, &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(5), r.chunk())
            .await
            .expect("a first view")
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&chunk);
        assert!(text.starts_with("event: view"), "{path}: {text}");
    }
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_sends_at_most_two_updates_a_second_and_ends_with_its_session() {
    let n = TestNode::start().await;
    n.create_event(event("rock", 100_000, 1, 600)).await;
    let client = Client::builder()
        .redirect(redirect::Policy::none())
        .build()
        .unwrap();
    let cookie = login(&client, &n).await;
    assert!(
        cookie.starts_with("allot_session_eu-west="),
        "a cookie per region: {cookie}"
    );
    let (_, html, _) = get(&client, &n, "/dashboard/events/rock", Some(&cookie)).await;
    let r = client
        .get(n.url("/dashboard/events/rock"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    let (s, _, _) = get(&client, &n, "/dashboard/events/nope/stream", Some(&cookie)).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Purchases all along: every one changes the page, yet at most two updates a second go out.
    let mut stream = client
        .get(n.url("/dashboard/events/rock/stream"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    let buyer = {
        let base = n.url("");
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            for i in 0..1_000 {
                let _ = http
                    .post(format!("{base}/v1/events/rock/purchases"))
                    .json(&json!({"pool": "floor", "quantity": 1, "customer": format!("c-{i}"), "payment_ref": "p"}))
                    .send()
                    .await;
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
    };
    let start = std::time::Instant::now();
    let mut views = 0;
    while start.elapsed() < std::time::Duration::from_secs(3) {
        let left = std::time::Duration::from_secs(3).saturating_sub(start.elapsed());
        match tokio::time::timeout(left, stream.chunk()).await {
            Ok(Ok(Some(chunk))) => {
                views += String::from_utf8_lossy(&chunk)
                    .matches("event: view")
                    .count()
            }
            _ => break,
        }
    }
    buyer.abort();
    // The first view at once, then one per 500 ms at most: 7 in 3 s.
    assert!((4..=7).contains(&views), "{views} updates in 3 s");

    // Logout: the open stream ends (within its next wake-up), and a new one is refused.
    let r = client
        .post(n.url("/dashboard/logout"))
        .header(COOKIE, &cookie)
        .form(&[("csrf", csrf_in(&html).as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while let Ok(Some(_)) = stream.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream ended with its session");
    let (s, _, _) = get(&client, &n, "/dashboard/events/rock/stream", Some(&cookie)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    n.stop().await;
}
