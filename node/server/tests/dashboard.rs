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
    let mut next_rows = async || -> serde_json::Value {
        loop {
            if let Some(end) = seen.find("\n\n") {
                let frame: String = seen.drain(..end + 2).collect();
                if let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data: ")) {
                    assert!(frame.contains("event: events"), "{frame}");
                    return serde_json::from_str(data).unwrap();
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
    let rows = next_rows().await;
    assert_eq!(
        (rows[0]["id"].as_str(), rows[0]["sold"].as_u64()),
        (Some("rock"), Some(6))
    );
    let (s, _) = n
        .post(
            "/v1/events/rock/purchases",
            json!({"pool": "floor", "quantity": 3, "customer": "c-9", "payment_ref": "p"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let rows = next_rows().await;
    assert_eq!(rows[0]["sold"], 9, "{rows}");
    assert_eq!(rows[0]["pct"], 75.0, "{rows}");
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
