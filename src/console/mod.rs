//! The web console (`--console-token`): served by the admin server under
//! `/console`, server-rendered HTML with no external assets and no script,
//! for the person on call: endpoints and their health, a message by event
//! id with every attempt, an endpoint's recent attempts, dead deliveries,
//! and the recovery tools (replay, resend, recover, retry schedule) as
//! POST forms.
//!
//! - [`session`]: the token, the session cookie and CSRF tokens;
//! - [`store`]: its database connection and statements;
//! - [`layout`] and [`pages`]: the HTML (maud);
//! - [`form`]: urlencoded bodies;
//! - [`actions`]: what the POST forms do;
//! - [`throttle`]: how many wrong tokens sign-in takes.
//!
//! It acts with the sidecar's database role (`outbox_sidecar` may run the
//! recovery functions of 0015) and records `console` as who asked. Reach
//! it through a port-forward or an authenticating proxy (README).

pub mod actions;
pub mod form;
pub mod layout;
pub mod pages;
pub mod session;
pub mod store;
pub mod throttle;

use std::time::{Duration, Instant, SystemTime};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use maud::Markup;

pub use session::ConsoleToken;
use session::{Keys, LOGIN_COOKIE, SESSION_COOKIE, SESSION_LIFETIME};
use store::Store;
use throttle::Throttle;

use crate::db::Db;

/// The largest form body read.
const MAX_FORM: usize = 16 * 1024;

/// The console's state: its keys and its connection.
pub struct Console {
    keys: Keys,
    store: Store,
    sign_ins: Throttle,
}

impl Console {
    /// A console for `token`, reading `db`.
    pub fn new(token: &ConsoleToken, db: Db) -> Self {
        Self {
            keys: Keys::new(token),
            store: Store::new(db),
            sign_ins: Throttle::default(),
        }
    }
}

/// Whether the admin server should hand `path` to [`handle`].
pub fn owns(path: &str) -> bool {
    path == "/console" || path.starts_with("/console/")
}

/// Answers a request under `/console`; 404 when the console is off.
pub async fn handle(
    console: Option<&Console>,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let Some(console) = console else {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: the console is off (set --console-token)\n",
        );
    };
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    let cookies = request
        .headers()
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if path == "/console/login" {
        return match method {
            Method::GET => login_form(console, None, StatusCode::OK),
            Method::POST => sign_in(console, &cookies, request).await,
            _ => plain(StatusCode::METHOD_NOT_ALLOWED, "GET or POST\n"),
        };
    }
    let now = SystemTime::now();
    let session = session::cookie(&cookies, SESSION_COOKIE)
        .filter(|s| console.keys.session_valid(s, now))
        .map(str::to_owned);
    let Some(session) = session else {
        return match method {
            Method::GET => redirect("/console/login", None),
            _ => html(
                StatusCode::FORBIDDEN,
                layout::problem(
                    None,
                    "Signed out",
                    "Sign in again: the session is missing or expired.",
                ),
            ),
        };
    };
    let csrf = console.keys.csrf(&session);
    match method {
        Method::GET => {
            let query = form::parse(request.uri().query().unwrap_or(""));
            actions::show(console, &csrf, &path, &query).await
        }
        Method::POST => {
            let Some(fields) = read_form(request).await else {
                return html(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    layout::problem(Some(&csrf), "Refused", "The form is too large."),
                );
            };
            let token = form::field(&fields, "csrf").unwrap_or("");
            if !console.keys.csrf_valid(&session, token) {
                return html(
                    StatusCode::FORBIDDEN,
                    layout::problem(
                        Some(&csrf),
                        "Refused",
                        "The form's CSRF token is missing or wrong: reload the page and try again.",
                    ),
                );
            }
            if path == "/console/logout" {
                return redirect(
                    "/console/login",
                    Some(session::set_cookie(SESSION_COOKIE, "", Duration::ZERO)),
                );
            }
            actions::act(console, &csrf, &path, &fields).await
        }
        _ => plain(StatusCode::METHOD_NOT_ALLOWED, "GET or POST\n"),
    }
}

/// The sign-in form, with a fresh login cookie and its CSRF token.
fn login_form(
    console: &Console,
    problem: Option<&str>,
    status: StatusCode,
) -> Response<Full<Bytes>> {
    let nonce = console.keys.login_nonce();
    let csrf = console.keys.csrf(&format!("login:{nonce}"));
    let mut response = html(status, layout::login(&csrf, problem));
    set(
        &mut response,
        session::set_cookie(LOGIN_COOKIE, &nonce, Duration::from_secs(900)),
    );
    response
}

async fn sign_in(
    console: &Console,
    cookies: &str,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let nonce = session::cookie(cookies, LOGIN_COOKIE)
        .unwrap_or("")
        .to_owned();
    let Some(fields) = read_form(request).await else {
        return plain(StatusCode::PAYLOAD_TOO_LARGE, "form too large\n");
    };
    let csrf = form::field(&fields, "csrf").unwrap_or("");
    if nonce.is_empty() || !console.keys.csrf_valid(&format!("login:{nonce}"), csrf) {
        return login_form(
            console,
            Some("The sign-in form expired; try again."),
            StatusCode::FORBIDDEN,
        );
    }
    if let Err(wait) = console.sign_ins.check(Instant::now()) {
        let secs = wait.as_secs().max(1);
        let mut response = login_form(
            console,
            Some(&format!(
                "Too many wrong tokens; sign-in is closed for {secs} s."
            )),
            StatusCode::TOO_MANY_REQUESTS,
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return response;
    }
    let token = fields
        .iter()
        .find(|(k, _)| k == "token")
        .map_or("", |(_, v)| v.as_str());
    if !console.keys.token_matches(token) {
        console.sign_ins.failed(Instant::now());
        tracing::warn!("console sign-in with a wrong token");
        return login_form(console, Some("Wrong token."), StatusCode::UNAUTHORIZED);
    }
    let session = console.keys.new_session(SystemTime::now());
    let mut response = redirect(
        "/console",
        Some(session::set_cookie(
            SESSION_COOKIE,
            &session,
            SESSION_LIFETIME,
        )),
    );
    set(
        &mut response,
        session::set_cookie(LOGIN_COOKIE, "", Duration::ZERO),
    );
    response
}

async fn read_form(request: Request<Incoming>) -> Option<Vec<(String, String)>> {
    let body = Limited::new(request.into_body(), MAX_FORM)
        .collect()
        .await
        .ok()?
        .to_bytes();
    Some(form::parse(&String::from_utf8_lossy(&body)))
}

/// An HTML response with the console's security headers.
pub fn html(status: StatusCode, markup: Markup) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(markup.into_string())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure(headers);
    response
}

fn secure(headers: &mut hyper::HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// 303 See Other to `location`, setting `cookie` if given.
pub fn redirect(location: &'static str, cookie: Option<String>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SEE_OTHER;
    response
        .headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(location));
    secure(response.headers_mut());
    if let Some(cookie) = cookie {
        set(&mut response, cookie);
    }
    response
}

fn set(response: &mut Response<Full<Bytes>>, cookie: String) {
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
}
