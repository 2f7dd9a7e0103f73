//! The dashboard's HTML: one function per page, from the domain values the
//! handlers got from the use cases. maud escapes every value it interpolates.
//!
//! Element ids and `data-` attributes are the pages' contract with the
//! browser test and with `live.js`; keep them.

use hyper::StatusCode;
use maud::{DOCTYPE, Markup, html};

use super::chart::{self};
use super::{Visit, encode_component, may_decide, may_retry, roles};
use crate::auth::Identity;
use crate::domain::{self, Cause, DeploymentStatus, Outcome, RequestStatus, Stage};

mod audit;
mod consumers;
mod models;
mod requests;

pub use audit::*;
pub use consumers::*;
pub use models::*;
pub use requests::*;

/// What every page's frame needs.
#[derive(Clone)]
pub struct Page {
    title: String,
    who: Option<Identity>,
    csrf: String,
    local: bool,
    /// The local-mode name last used in this session.
    actor: Option<String>,
    /// The SSE URL that tells this page to refresh.
    live: Option<String>,
    /// The newest sequence when the page's data was read.
    since: u64,
}

impl Page {
    /// The frame for `visit`.
    pub fn new(visit: &Visit, title: &str) -> Page {
        Page {
            title: title.to_owned(),
            who: visit.who.clone(),
            csrf: visit.session.csrf.clone(),
            local: visit.local,
            actor: visit.session.actor.clone(),
            live: None,
            since: 0,
        }
    }

    /// With a title.
    pub fn titled(mut self, title: &str) -> Page {
        self.title = title.to_owned();
        self
    }

    /// Read at sequence `since`: the live stream resumes after it.
    pub fn since(mut self, since: u64) -> Page {
        self.since = since;
        self
    }

    /// Refreshed by events from `url` (an `/events` URL).
    pub fn live(mut self, url: &str) -> Page {
        let sep = if url.contains('?') { '&' } else { '?' };
        self.live = Some(format!("{url}{sep}after={}", self.since));
        self
    }

    /// Shown as acting as `who` (the local-mode form names its actor).
    pub fn acting_as(mut self, who: &Identity) -> Page {
        self.who = Some(who.clone());
        self
    }
}

/// The frame around every page.
pub(super) fn layout(page: &Page, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (page.title) " · modelreg" }
                link rel="stylesheet" href="/assets/style.css";
                script src="/assets/live.js" defer {}
            }
            body data-live=[page.live.as_deref()] {
                header.top {
                    a.brand href="/" { "modelreg" }
                    nav {
                        a href="/" { "Models" }
                        a href="/requests" { "Approvals" }
                        a href="/audit" { "Audit log" }
                        a href="/consumers" { "Consumers" }
                    }
                    div #whoami {
                        @match &page.who {
                            Some(who) if page.local => {
                                span { "Local mode · " strong { (who.name) } }
                            }
                            Some(who) => {
                                span { strong { (who.name) } " · " (roles(who)) }
                                form.inline method="post" action="/signout" {
                                    input type="hidden" name="csrf" value=(page.csrf);
                                    button.link type="submit" { "Sign out" }
                                }
                            }
                            None => { a href="/signin" { "Sign in" } }
                        }
                    }
                }
                main {
                    h1 { (page.title) }
                    (body)
                }
                div #live-status hidden { "Updated elsewhere: " a href="" { "reload" } }
            }
        }
    }
}

/// An error page.
pub fn failure(page: &Page, status: StatusCode, message: &str) -> Markup {
    let page = Page {
        title: status.canonical_reason().unwrap_or("Error").to_owned(),
        live: None,
        ..page.clone()
    };
    layout(
        &page,
        html! {
            div #outcome.error {
                p { (message) }
            }
            p { a href="/" { "Back to the models" } }
        },
    )
}

/// The sign-in form.
pub fn signin(page: &Page, next: &str, error: Option<&str>) -> Markup {
    layout(
        page,
        html! {
            @if let Some(error) = error {
                p #outcome.error { (error) }
            }
            form #signin.card method="post" action="/signin" {
                input type="hidden" name="csrf" value=(page.csrf);
                input type="hidden" name="next" value=(next);
                @if page.local {
                    p.note { "Local mode: this server has no token file, so say who you are. Only this machine can reach it." }
                    label for="actor" { "Your name" }
                    input #actor type="text" name="actor" required maxlength="128" value=[page.actor.as_deref()] autofocus;
                } @else {
                    label for="token" { "Bearer token" }
                    input #token type="password" name="token" required autocomplete="current-password" autofocus;
                    p.note { "The token you use with " code { "modelreg --token" } "; it stays in this server's memory for the session (12 hours), never in the browser." }
                }
                button.primary type="submit" { "Sign in" }
            }
        },
    )
}

pub(super) fn request_href(id: &str) -> String {
    format!("/requests/{id}")
}

pub(super) fn stage_name(s: Stage) -> &'static str {
    match s {
        Stage::Staging => "Staging",
        Stage::Production => "Production",
        Stage::Archived => "Archived",
        Stage::None => "None",
    }
}

/// An event's stage, `—` for an event without one.
pub(super) fn event_stage_name(s: Option<Stage>) -> &'static str {
    s.map_or("—", stage_name)
}

pub(super) fn stage_class(s: Stage) -> &'static str {
    match s {
        Stage::Staging => "staging",
        Stage::Production => "production",
        Stage::Archived => "archived",
        Stage::None => "none",
    }
}

pub(super) fn cause_name(c: Option<Cause>) -> String {
    c.map_or("unspecified", Cause::as_str).to_lowercase()
}

pub(super) fn request_status(s: RequestStatus) -> String {
    let name = s.as_str().to_lowercase();
    let mut chars = name.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => "Unknown".into(),
    }
}

pub(super) fn deployment_status(s: DeploymentStatus) -> String {
    s.as_str().to_lowercase()
}

pub(super) fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Better => "better",
        Outcome::Worse => "worse",
        Outcome::Equal => "equal",
    }
}

pub(super) fn outcome_class(o: Outcome) -> &'static str {
    match o {
        Outcome::Better => "pass",
        Outcome::Worse => "fail",
        Outcome::Equal => "muted",
    }
}

/// A metric value: up to six decimals, no trailing zeros.
pub(super) fn num(v: f64) -> String {
    domain::decimal(v, 6)
}

/// A relative change as a percentage with two decimals.
pub(super) fn percent(ratio: f64) -> String {
    let p = ratio * 100.0;
    let text = format!("{p:+.2}%");
    if text == "-0.00%" || text == "+0.00%" {
        "0%".into()
    } else {
        text
    }
}

pub(super) fn signed(v: f64) -> String {
    if v > 0.0 {
        format!("+{}", num(v))
    } else {
        num(v)
    }
}

/// A time (µs since the epoch) as `2026-11-27 04:33:25 UTC`, to the second.
pub(super) fn when(micros: i64) -> String {
    let seconds = micros.div_euclid(1_000_000).saturating_mul(1_000_000);
    let text = domain::rfc3339(seconds);
    format!("{} UTC", text.trim_end_matches('Z').replacen('T', " ", 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_read_well() {
        assert_eq!(num(0.9300000001), "0.93");
        assert_eq!(num(-0.0), "0");
        assert_eq!(signed(0.02), "+0.02");
        assert_eq!(request_status(RequestStatus::Pending), "Pending");
        assert_eq!(cause_name(Some(Cause::Rollback)), "rollback");
        assert_eq!(event_stage_name(None), "—");
        assert_eq!(when(1_795_000_000_000_005), "2026-11-18 11:06:40 UTC");
    }
}
