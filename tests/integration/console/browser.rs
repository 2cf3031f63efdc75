//! The console in a real browser: Debian's Chromium, headless, driven over
//! WebDriver by Debian's chromedriver on loopback. Skipped, with a line on
//! stderr, when either is missing (`.ci/install-browser` installs them).
//! With `OUTBOXD_UPDATE_SCREENSHOTS=1` the main pages are saved as
//! `docs/console/*.png` for the README.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;

use super::{TOKEN, fixture};
use crate::common::*;

/// chromedriver on a free loopback port, stopped when dropped.
struct Driver {
    url: String,
    _process: tokio::process::Child,
    profiles: PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.profiles);
    }
}

fn installed(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

async fn driver() -> Option<Driver> {
    if !installed("chromium") || !installed("chromedriver") {
        eprintln!("skipped: chromium or chromedriver not installed (bash .ci/install-browser)");
        return None;
    }
    let addr = free_addr();
    let process = tokio::process::Command::new("chromedriver")
        .arg(format!("--port={}", addr.port()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("starting chromedriver");
    let ready = eventually(WAIT, || async {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;
    assert!(ready, "chromedriver listens");
    let profiles = std::env::temp_dir().join(format!(
        "outboxd-chromium-{}-{}",
        std::process::id(),
        addr.port()
    ));
    Some(Driver {
        url: format!("http://{addr}"),
        _process: process,
        profiles,
    })
}

async fn browser(driver: &Driver, javascript: bool) -> Client {
    let profile = driver.profiles.join(if javascript { "js" } else { "nojs" });
    std::fs::create_dir_all(&profile).unwrap();
    let mut prefs = serde_json::Map::new();
    if !javascript {
        prefs.insert(
            "profile.managed_default_content_settings.javascript".into(),
            json!(2),
        );
    }
    let options = json!({
        "binary": "/usr/bin/chromium",
        "args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--disable-quic", "--window-size=1280,900",
            format!("--user-data-dir={}", profile.display()),
        ],
        "prefs": prefs,
    });
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("browserName".into(), json!("chrome"));
    capabilities.insert("goog:chromeOptions".into(), options);
    ClientBuilder::new(HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

async fn screenshot(browser: &Client, name: &str) {
    if std::env::var_os("OUTBOXD_UPDATE_SCREENSHOTS").is_none() {
        return;
    }
    let png = browser.screenshot().await.unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/console");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

async fn sign_in(browser: &Client, base: &str) {
    browser.goto(&format!("{base}/console")).await.unwrap();
    let url = browser.current_url().await.unwrap();
    assert_eq!(url.path(), "/console/login", "redirected to sign in");
    browser
        .find(Locator::Css("input[name=token]"))
        .await
        .unwrap()
        .send_keys(TOKEN)
        .await
        .unwrap();
    browser
        .find(Locator::Css("form.login button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait()
        .for_element(Locator::Css("table#endpoints"))
        .await
        .unwrap();
}

async fn search(browser: &Client, event_id: &str) {
    let field = browser
        .find(Locator::Css("main input[name=event_id]"))
        .await
        .unwrap();
    field.send_keys(event_id).await.unwrap();
    browser
        .find(Locator::Css("main form button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let shown = browser
        .wait()
        .for_element(Locator::Css("#event-id"))
        .await
        .unwrap();
    assert_eq!(shown.text().await.unwrap(), event_id);
}

#[tokio::test]
async fn browser_signs_in_finds_a_message_and_replays_a_dead_delivery() {
    let Some(driver) = driver().await else { return };
    let fx = fixture(Some(TOKEN)).await;
    let browser = browser(&driver, true).await;
    sign_in(&browser, &fx.base).await;
    let list = browser.source().await.unwrap();
    assert!(list.contains("billing") && list.contains("acme"));
    fx.assert_no_secret(&list, "the endpoint list");
    screenshot(&browser, "endpoints").await;

    search(&browser, "order-1001").await;
    let message = browser.source().await.unwrap();
    assert!(message.contains("upstream says no") && message.contains("shipping"));
    fx.assert_no_secret(&message, "the message page");
    screenshot(&browser, "message").await;

    browser
        .find(Locator::LinkText("billing"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait()
        .for_element(Locator::Css("table.attempts"))
        .await
        .unwrap();
    let endpoint = browser.source().await.unwrap();
    assert!(endpoint.contains("Recent attempts") && endpoint.contains("order-1002"));
    fx.assert_no_secret(&endpoint, "the endpoint page");
    screenshot(&browser, "endpoint").await;

    browser
        .goto(&format!("{}/console/dead", fx.base))
        .await
        .unwrap();
    let dead = browser.source().await.unwrap();
    fx.assert_no_secret(&dead, "the dead deliveries");
    screenshot(&browser, "dead").await;

    // A form whose CSRF token was removed is refused, and changes nothing.
    let (id, _) = fx.dead_delivery("order-1002").await;
    browser
        .execute(
            "document.querySelectorAll('input[name=csrf]').forEach(e => e.remove())",
            vec![],
        )
        .await
        .unwrap();
    let replay = format!("form[action='/console/deliveries/{id}/replay'] button");
    browser
        .find(Locator::Css(&replay))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let refused = browser
        .wait()
        .for_element(Locator::Css("p.err"))
        .await
        .unwrap();
    assert!(refused.text().await.unwrap().contains("CSRF"));
    assert_eq!(fx.dead_delivery("order-1002").await.1, "dead");

    // With it, the replay goes through.
    browser
        .goto(&format!("{}/console/dead", fx.base))
        .await
        .unwrap();
    browser
        .find(Locator::Css(&replay))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let notice = browser
        .wait()
        .for_element(Locator::Css("p.notice"))
        .await
        .unwrap();
    assert!(notice.text().await.unwrap().contains("is pending again"));
    // The receiver still fails, so the delivery may be dead again by now:
    // what the replay left is the restarted schedule and its event.
    let row = fx
        .db
        .client
        .query_one(
            "SELECT d.replay_base, (SELECT e.detail->>'triggered_by' FROM outbox.events e
                                    WHERE e.kind = 'delivery.replayed' AND e.delivery_id = d.id)
             FROM outbox.deliveries d WHERE d.id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, i32>(0),
        3,
        "the schedule restarts after the 3 attempts"
    );
    assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some("console"));
    browser.close().await.unwrap();
    fx.sidecar.stop().await;
}

#[tokio::test]
async fn browser_signs_in_and_searches_with_javascript_off() {
    let Some(driver) = driver().await else { return };
    let fx = fixture(Some(TOKEN)).await;
    let browser = browser(&driver, false).await;
    browser.goto("data:text/html,<p id=x>static</p><script>document.getElementById('x').textContent='ran'</script>").await.unwrap();
    let probe = browser
        .find(Locator::Css("#x"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(probe, "static", "JavaScript is off in this browser");
    sign_in(&browser, &fx.base).await;
    search(&browser, "order-1001").await;
    let message = browser.source().await.unwrap();
    assert!(message.contains("billing"));
    fx.assert_no_secret(&message, "the message page without JavaScript");
    browser.close().await.unwrap();
    fx.sidecar.stop().await;
}
