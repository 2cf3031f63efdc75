//! The web console over plain HTTP (sign-in, sessions, CSRF, no secrets on
//! any page) and, in `browser`, in headless Chromium.

mod browser;

use outboxd::signature::Secret;
use reqwest::StatusCode;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};

use crate::common::*;

pub const TOKEN: &str = "console-token-for-tests-0123456789";
/// Values that must never appear on a page.
pub const HEADER_VALUE: &str = "Bearer header-value-never-shown";
pub const URL_TOKEN: &str = "url-token-never-shown";

/// A database with two endpoints of tenant acme: `billing`, whose receiver
/// always fails (its delivery of `order-1001` dies), and `shipping`, which
/// takes everything; and a sidecar serving the console with [`TOKEN`].
pub struct Fixture {
    pub db: TestDb,
    pub sidecar: Sidecar,
    pub base: String,
    pub secret: String,
    _receivers: (Receiver, Receiver),
}

pub async fn fixture(token: Option<&str>) -> Fixture {
    let db = fresh_db().await;
    let failing = Receiver::start(None, |_| Reply::status(500).body("upstream says no"))
        .await
        .unwrap();
    let ok = ok_receiver(None).await;
    let secret = Secret::generate().to_whsec();
    for (id, url) in [
        ("billing", format!("{}?token={URL_TOKEN}", failing.url())),
        ("shipping", ok.url()),
    ] {
        db.client
            .execute(
                "INSERT INTO outbox.endpoints (id, url, secrets, tenant_id, headers)
                 VALUES ($1, $2, ARRAY[$3], 'acme', jsonb_build_object('authorization', $4::text))",
                &[&id, &url, &secret, &HEADER_VALUE],
            )
            .await
            .unwrap();
    }
    db.client
        .execute(
            "INSERT INTO outbox.messages (event_id, event_type, payload, tenant_id)
             VALUES ('order-1001', 'order.paid', '{\"total\": 1999}', 'acme'),
                    ('order-1002', 'order.paid', '{\"total\": 42}', 'acme')",
            &[],
        )
        .await
        .unwrap();
    let mut cfg = config(&db);
    let addr = free_addr();
    cfg.admin_addr = Some(addr);
    cfg.console_token = token.map(outboxd::console::ConsoleToken::new);
    let sidecar = spawn(cfg);
    assert!(wait_settled(&db.client, WAIT).await);
    assert_eq!(
        count_status(&db.client, "dead").await,
        2,
        "billing's two died"
    );
    Fixture {
        db,
        sidecar,
        base: format!("http://{addr}"),
        secret,
        _receivers: (failing, ok),
    }
}

impl Fixture {
    pub async fn dead_delivery(&self, event_id: &str) -> (i64, String) {
        let row = self
            .db
            .client
            .query_one(
                "SELECT d.id, d.status FROM outbox.deliveries d JOIN outbox.messages m ON m.id = d.message_id
                 WHERE m.event_id = $1 AND d.endpoint_id = 'billing'",
                &[&event_id],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    }

    /// Panics if `page` shows a secret, a header value or the URL's token.
    pub fn assert_no_secret(&self, page: &str, what: &str) {
        for secret in [&self.secret[6..], HEADER_VALUE, URL_TOKEN] {
            assert!(!page.contains(secret), "{what} shows {secret:?}");
        }
    }
}

/// `pairs` as an urlencoded form body.
fn form(pairs: &[(&str, &str)]) -> String {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", utf8_percent_encode(v, NON_ALPHANUMERIC)))
        .collect::<Vec<_>>()
        .join("&")
}

trait Form {
    fn form(self, pairs: &[(&str, &str)]) -> Self;
}

impl Form for reqwest::RequestBuilder {
    fn form(self, pairs: &[(&str, &str)]) -> Self {
        self.header("content-type", "application/x-www-form-urlencoded")
            .body(form(pairs))
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn cookie(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .and_then(|v| v.split(';').next())
        .unwrap_or_else(|| panic!("no {name} cookie"))
        .to_owned()
}

fn hidden_csrf(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
    page[at..].split('"').next().unwrap().to_owned()
}

/// Signs in over HTTP; returns the session cookie (`name=value`).
async fn sign_in(base: &str, token: &str) -> reqwest::Response {
    let http = client();
    let form = http
        .get(format!("{base}/console/login"))
        .send()
        .await
        .unwrap();
    let login = cookie(&form, "outboxd_console_login");
    let csrf = hidden_csrf(&form.text().await.unwrap());
    http.post(format!("{base}/console/login"))
        .header(COOKIE, login)
        .form(&[("token", token), ("csrf", &csrf)])
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn console_is_not_served_without_a_token() {
    let fx = fixture(None).await;
    for path in ["/console", "/console/login"] {
        let status = client()
            .get(format!("{}{path}", fx.base))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
    let metrics = client()
        .get(format!("{}/metrics", fx.base))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
    fx.sidecar.stop().await;
}

#[tokio::test]
async fn console_signs_in_with_the_token_and_refuses_posts_without_csrf() {
    let fx = fixture(Some(TOKEN)).await;
    let http = client();
    let anonymous = http
        .get(format!("{}/console", fx.base))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::SEE_OTHER);
    assert_eq!(anonymous.headers()[LOCATION], "/console/login");

    let wrong = sign_in(&fx.base, "not-the-token-at-all").await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let signed_in = sign_in(&fx.base, TOKEN).await;
    assert_eq!(signed_in.status(), StatusCode::SEE_OTHER);
    let set_cookie = signed_in
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|v| v.starts_with("outboxd_console="))
        .unwrap();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    let session = cookie(&signed_in, "outboxd_console");

    let (id, _) = fx.dead_delivery("order-1001").await;
    let mut pages = Vec::new();
    for path in [
        "/console".to_owned(),
        "/console/endpoints/billing".to_owned(),
        "/console/messages?event_id=order-1001".to_owned(),
        "/console/dead".to_owned(),
    ] {
        let page = http
            .get(format!("{}{path}", fx.base))
            .header(COOKIE, &session)
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), StatusCode::OK, "{path}");
        assert!(
            page.headers()["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("default-src 'none'")
        );
        let text = page.text().await.unwrap();
        fx.assert_no_secret(&text, &path);
        pages.push(text);
    }
    assert!(
        pages[1].contains("upstream says no"),
        "the receiver's answer is shown"
    );
    assert!(pages[1].contains("?***"), "the URL's query is masked");

    let replay = format!("{}/console/deliveries/{id}/replay", fx.base);
    for form in [vec![], vec![("csrf", "forged")]] {
        let refused = http
            .post(&replay)
            .header(COOKIE, &session)
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    }
    let no_session = http
        .post(&replay)
        .form(&[("csrf", &hidden_csrf(&pages[0]))])
        .send()
        .await
        .unwrap();
    assert_eq!(no_session.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        fx.dead_delivery("order-1001").await.1,
        "dead",
        "nothing replayed"
    );

    let replayed = http
        .post(&replay)
        .header(COOKIE, &session)
        .form(&[("csrf", &hidden_csrf(&pages[0]))])
        .send()
        .await
        .unwrap();
    assert_eq!(replayed.status(), StatusCode::OK);
    assert!(replayed.text().await.unwrap().contains("is pending again"));
    let by: String = fx
        .db
        .client
        .query_one(
            "SELECT detail->>'triggered_by' FROM outbox.events WHERE kind = 'delivery.replayed' AND delivery_id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(by, "console");
    fx.sidecar.stop().await;
}

#[tokio::test]
async fn sign_in_closes_for_a_while_after_five_wrong_tokens() {
    let fx = fixture(Some(TOKEN)).await;
    for n in 0..5 {
        let wrong = sign_in(&fx.base, &format!("wrong-token-number-{n}")).await;
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED, "try {n}");
    }
    // Closed, for the right token too, and it says for how long.
    let refused = sign_in(&fx.base, TOKEN).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert!(
        refused
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .all(|v| !v.to_str().unwrap().starts_with("outboxd_console=")),
        "no session while closed"
    );
    let page = refused.text().await.unwrap();
    assert!(page.contains("Too many wrong tokens"), "{page}");
    // The rest of the admin server goes on.
    let metrics = client()
        .get(format!("{}/metrics", fx.base))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
    fx.sidecar.stop().await;
}
