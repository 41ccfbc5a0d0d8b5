//! The console's frame and the pieces of markup every page shares: the
//! navigation, the one-time message, times, amounts and the CSRF field.
//! Markup is `maud`: compiled in, and escaped unless marked otherwise.

use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use maud::{html, Markup, DOCTYPE};
use serde_json::Value;

use super::Signed;
use crate::http::auth::Role;

/// Where a page sits in the navigation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Nav {
    Overview,
    Attention,
    DeadLetters,
    Stock,
    Controls,
    Audit,
}

const NAV: [(Nav, &str, &str); 6] = [
    (Nav::Overview, "/console", "Overview"),
    (Nav::Attention, "/console/attention", "Needs attention"),
    (Nav::DeadLetters, "/console/dlq", "Dead letters"),
    (Nav::Stock, "/console/stock", "Stock"),
    (Nav::Controls, "/console/controls", "Controls"),
    (Nav::Audit, "/console/audit", "Audit log"),
];

/// A signed-in page: navigation, the last action's message, `body`.
/// `refresh` marks a page the script may reload in place.
pub(super) fn page(
    signed: &Signed,
    nav: Nav,
    title: &str,
    refresh: bool,
    body: Markup,
) -> HttpResponse {
    let operator = signed.caller.role == Role::Operator;
    let markup = html! {
        header.bar {
            a.brand href="/console" { "dropshipd" }
            nav aria-label="Console" {
                ul {
                    @for (item, href, label) in NAV {
                        @if item != Nav::Audit || operator {
                            li {
                                @if item == nav {
                                    a href=(href) aria-current="page" { (label) }
                                } @else {
                                    a href=(href) { (label) }
                                }
                            }
                        }
                    }
                }
            }
            form.sign-out method="post" action="/console/sign-out" {
                (csrf(signed))
                span.role { "Signed in as " strong { (role_name(signed.caller.role)) } }
                button type="submit" { "Sign out" }
            }
        }
        main id="main" data-refresh=[refresh.then_some("10")] {
            h1 { (title) }
            @if let Some(flash) = &signed.flash {
                @if flash.ok {
                    p.flash.ok role="status" { (flash.text) }
                } @else {
                    p.flash.error role="alert" { (flash.text) }
                }
            }
            (body)
        }
    };
    respond(StatusCode::OK, title, markup)
}

/// A page outside the signed-in frame: sign-in, and refusals.
pub(super) fn bare(status: StatusCode, title: &str, body: Markup) -> HttpResponse {
    respond(
        status,
        title,
        html! {
            main id="main" {
                h1 { (title) }
                (body)
            }
        },
    )
}

fn respond(status: StatusCode, title: &str, content: Markup) -> HttpResponse {
    let document = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · dropshipd" }
                link rel="stylesheet" href="/console/style.css";
                script src="/console/console.js" defer {}
            }
            body { (content) }
        }
    };
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        // Everything the page needs comes from this listener; no other site
        // may frame it, and nothing it links to learns where it came from.
        .insert_header((
            "Content-Security-Policy",
            "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .insert_header(("Cache-Control", "no-store"))
        .body(document.into_string())
}

/// The session's CSRF token, for every form that changes something.
pub(super) fn csrf(signed: &Signed) -> Markup {
    html! { input type="hidden" name="csrf" value=(signed.session.csrf); }
}

/// Where an action's form returns to once it has run.
pub(super) fn back(to: &str) -> Markup {
    html! { input type="hidden" name="back" value=(to); }
}

/// A time from the API (RFC 3339, UTC): shown in UTC, which the script turns
/// into the browser's local time, keeping UTC on hover.
pub(super) fn time(at: &Value) -> Markup {
    match at.as_str() {
        Some(at) => html! { time datetime=(at) title=(at) { (utc_text(at)) } },
        None => html! { "—" },
    }
}

/// `2026-12-04T03:29:26.123Z` as `2026-12-04 03:29:26 UTC`.
fn utc_text(at: &str) -> String {
    let trimmed = at.split('.').next().unwrap_or(at).trim_end_matches('Z');
    format!("{} UTC", trimmed.replacen('T', " ", 1))
}

/// Paise as rupees, grouped the Indian way: `₹12,34,567.89`.
pub(super) fn rupees(paise: i64) -> String {
    let sign = if paise < 0 { "-" } else { "" };
    let paise = paise.unsigned_abs();
    let whole = (paise / 100).to_string();
    // The last three digits, then pairs (thousands, lakhs, crores).
    let split = whole.len().saturating_sub(3);
    let (high, low) = whole.split_at(split);
    let mut grouped = String::new();
    for (i, digit) in high.chars().enumerate() {
        if i > 0 && (high.len() - i).is_multiple_of(2) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    if !high.is_empty() {
        grouped.push(',');
    }
    grouped.push_str(low);
    format!("{sign}₹{grouped}.{:02}", paise % 100)
}

/// A JSON value as text: strings bare, `—` for null.
pub(super) fn text(value: &Value) -> String {
    match value {
        Value::Null => "—".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub(super) fn role_name(role: Role) -> &'static str {
    match role {
        Role::Viewer => "viewer",
        Role::Operator => "operator",
    }
}

/// `text` as one segment of a URL path: everything but letters, digits and
/// `*-._` percent-encoded (a space as `%20`: `+` means a plus in a path).
pub(super) fn path_segment(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// A "next page" link carrying the API's cursor, if there is a next page.
pub(super) fn next_link(base: &str, next: &Value) -> Markup {
    let separator = if base.contains('?') { '&' } else { '?' };
    html! {
        @if let Some(cursor) = next.as_i64() {
            p.pager { a href={ (base) (separator) "after=" (cursor) } rel="next" { "Next page" } }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_read_as_rupees() {
        assert_eq!(rupees(0), "₹0.00");
        assert_eq!(rupees(74_900), "₹749.00");
        assert_eq!(rupees(123_456_789), "₹12,34,567.89");
        assert_eq!(rupees(99_999), "₹999.99");
        assert_eq!(rupees(100_000), "₹1,000.00");
        assert_eq!(rupees(1_000_000_000), "₹1,00,00,000.00");
        assert_eq!(rupees(-5), "-₹0.05");
    }

    #[test]
    fn times_show_in_utc_until_the_script_localises_them() {
        assert_eq!(
            utc_text("2026-12-04T03:29:26.123Z"),
            "2026-12-04 03:29:26 UTC"
        );
        let markup = time(&Value::String("2026-12-04T03:29:26.123Z".into())).into_string();
        assert!(
            markup.contains(r#"datetime="2026-12-04T03:29:26.123Z""#),
            "{markup}"
        );
        assert_eq!(time(&Value::Null).into_string(), "—");
    }

    #[test]
    fn path_segments_survive_spaces_plus_signs_and_slashes() {
        assert_eq!(path_segment("TEE-M"), "TEE-M");
        assert_eq!(path_segment("A B+C/D"), "A%20B%2BC%2FD");
    }

    #[test]
    fn next_links_carry_the_cursor_only_when_there_is_one() {
        let link = next_link("/console/dlq", &Value::from(42)).into_string();
        assert!(link.contains(r#"href="/console/dlq?after=42""#), "{link}");
        let link =
            next_link("/console/attention?state=out_of_stock", &Value::from(7)).into_string();
        assert!(link.contains("state=out_of_stock&amp;after=7"), "{link}");
        assert_eq!(next_link("/console/dlq", &Value::Null).into_string(), "");
    }
}
