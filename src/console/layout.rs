//! The console's frame: the page layout and its inline style sheet (no
//! external assets, no script), the sign-in page, result and error pages,
//! and the POST form every action uses (with its CSRF token).

use maud::{DOCTYPE, Markup, PreEscaped, html};

/// Inline, so that the console works offline and under a strict CSP.
const STYLE: &str = "
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d232b;background:#f6f7f9}
header{background:#1d2a3a;color:#fff;padding:.6em 1.2em;display:flex;gap:1.5em;align-items:center}
header a{color:#dce6f2;text-decoration:none}header a:hover{text-decoration:underline}
header .brand{font-weight:600;color:#fff}header form{margin-left:auto}
main{padding:1em 1.2em;max-width:1200px}
h1{font-size:1.35em;margin:.2em 0 .6em}h2{font-size:1.1em;margin:1.4em 0 .5em}
table{border-collapse:collapse;width:100%;background:#fff;margin-bottom:1em}
th,td{border-bottom:1px solid #e3e6ea;padding:.35em .6em;text-align:left;vertical-align:top}
th{background:#eef1f4;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
code,pre{font:12px/1.4 ui-monospace,monospace}pre{white-space:pre-wrap;word-break:break-all;margin:0;max-height:8em;overflow:auto}
.s{display:inline-block;padding:0 .5em;border-radius:.8em;font-size:.9em;background:#e3e6ea}
.s-delivered,.s-enabled{background:#d6f2dd}.s-dead,.s-disabled{background:#f8d7d7}
.s-pending,.s-in_flight{background:#fdf0c8}.s-cancelled{background:#e3e6ea}
.err{color:#9b1c1c}.muted{color:#66707c}
form.inline{display:inline;margin:0}
button{font:inherit;padding:.15em .7em;border:1px solid #8796a8;border-radius:3px;background:#fff;cursor:pointer}
button.primary{background:#1d5fbf;border-color:#1d5fbf;color:#fff}
input[type=text],input[type=password]{font:inherit;padding:.25em .4em;border:1px solid #aab4c0;border-radius:3px}
fieldset{border:1px solid #d5dae0;background:#fff;margin:0 0 1em;padding:.6em 1em}
fieldset label{margin-right:1em}
.notice{background:#e7f0fd;border:1px solid #b8cff5;padding:.6em 1em;margin-bottom:1em}
.login{max-width:360px;margin:4em auto;background:#fff;padding:1.5em;border:1px solid #d5dae0}
.login input{width:100%;box-sizing:border-box;margin:.4em 0 1em}
";

/// A whole page. `csrf` is the session's token (`None` before sign-in:
/// no navigation then).
pub fn page(title: &str, csrf: Option<&str>, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { (title) " · outboxd console" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    span.brand { "outboxd console" }
                    @if let Some(csrf) = csrf {
                        a href="/console" { "Endpoints" }
                        a href="/console/dead" { "Dead deliveries" }
                        form.inline method="get" action="/console/messages" {
                            input type="text" name="event_id" placeholder="event id" aria-label="event id" size="28";
                            " "
                            button type="submit" { "Find" }
                        }
                        (post_form("/console/logout", csrf, "Sign out", &[]))
                    }
                }
                main { (content) }
            }
        }
    }
}

/// A POST form of one button, with the CSRF token and `fields` hidden.
pub fn post_form(action: &str, csrf: &str, label: &str, fields: &[(&str, &str)]) -> Markup {
    html! {
        form.inline method="post" action=(action) {
            input type="hidden" name="csrf" value=(csrf);
            @for (name, value) in fields {
                input type="hidden" name=(name) value=(value);
            }
            button type="submit" { (label) }
        }
    }
}

/// The sign-in form; `login_csrf` ties it to the browser's login cookie.
pub fn login(login_csrf: &str, problem: Option<&str>) -> Markup {
    page(
        "Sign in",
        None,
        html! {
            form.login method="post" action="/console/login" {
                h1 { "Sign in" }
                @if let Some(problem) = problem {
                    p.err { (problem) }
                }
                label for="token" { "Console token" }
                input #token type="password" name="token" autocomplete="current-password" required autofocus;
                input type="hidden" name="csrf" value=(login_csrf);
                button.primary type="submit" { "Sign in" }
                p.muted { "The token is the sidecar's --console-token (OUTBOXD_CONSOLE_TOKEN)." }
            }
        },
    )
}

/// The page after an action: what happened, and the way back.
pub fn done(csrf: &str, title: &str, what: &str, back: &str) -> Markup {
    page(
        title,
        Some(csrf),
        html! {
            h1 { (title) }
            p.notice { (what) }
            p { a href=(back) { "Back" } }
        },
    )
}

/// An error page (the status code is the caller's).
pub fn problem(csrf: Option<&str>, title: &str, what: &str) -> Markup {
    page(
        title,
        csrf,
        html! {
            h1 { (title) }
            p.err { (what) }
            p { a href="/console" { "Endpoints" } }
        },
    )
}

/// A status as a coloured badge.
pub fn status(status: &str) -> Markup {
    html! { span class={ "s s-" (status) } { (status) } }
}
