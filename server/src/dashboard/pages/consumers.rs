//! Durable consumers: the list with lag and parked dead letters, one
//! consumer's members, assignments and dead letters with Retry, and what a
//! retry came to.

use maud::{Markup, html};

use crate::app::ConsumerView;
use crate::domain::{
    ConsumerSettings, DeadLetterRecord, DeadLetterState, Event, MemberRecord, OnDeadLetter,
};

use super::{encode_component, may_retry, roles};

use super::*;

/// The link to a consumer's page.
pub(super) fn consumer_href(name: &str) -> String {
    format!("/consumers/{}", encode_component(name))
}

/// The members whose lease has not run out when the view was read: the
/// ones GetConsumer shows.
fn live_members(v: &ConsumerView) -> impl Iterator<Item = &MemberRecord> {
    v.state
        .members
        .iter()
        .filter(move |m| m.expire_time >= v.now)
}

/// A consumer's filter in one line: `all events`, or each list it narrows by.
pub(super) fn filter_text(s: &ConsumerSettings) -> String {
    let parts: Vec<String> = [
        ("models", &s.models),
        ("types", &s.types),
        ("to stages", &s.to_stages),
    ]
    .into_iter()
    .filter(|(_, list)| !list.is_empty())
    .map(|(label, list)| format!("{label}: {}", list.join(", ")))
    .collect();
    if parts.is_empty() {
        "all events".into()
    } else {
        parts.join(" · ")
    }
}

fn after_dead_letter(o: OnDeadLetter) -> &'static str {
    match o {
        OnDeadLetter::Block => "wait (block)",
        OnDeadLetter::Skip => "go on (skip)",
    }
}

fn dead_letter_state(s: DeadLetterState) -> &'static str {
    match s {
        DeadLetterState::Parked => "Parked",
        DeadLetterState::Retrying => "Retrying",
        DeadLetterState::Resolved => "Resolved",
    }
}

/// Every consumer with its lag and parked dead letters.
pub fn consumers(page: &Page, views: &[ConsumerView]) -> Markup {
    layout(
        page,
        html! {
            @if views.is_empty() {
                p.empty { "No consumer has joined yet. Workers create one with " code { "--consumer NAME" } "." }
            } @else {
                table #consumers {
                    thead { tr { th { "Consumer" } th { "Filter" } th { "Live members" } th { "Lag (events)" } th { "Dead letters" } } }
                    tbody {
                        @for v in views {
                            @let r = &v.state.record;
                            tr data-consumer=(r.name) {
                                td { a href=(consumer_href(&r.name)) { (r.name) } }
                                td { (filter_text(&r.settings)) }
                                td.num data-field="members" { (live_members(v).count()) }
                                td.num data-field="lag" { (v.lag) }
                                td data-field="dead-letters" class=(if v.state.parked > 0 { "num fail" } else { "num muted" }) { (v.state.parked) }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// One consumer: its settings, live members, each model's assignment, and
/// its dead letters with Retry for those whose click would be accepted.
pub fn consumer(page: &Page, v: &ConsumerView, dead: &[(DeadLetterRecord, Event)]) -> Markup {
    let r = &v.state.record;
    let s = &r.settings;
    layout(
        page,
        html! {
            section #consumer {
                dl.facts {
                    dt { "Filter" } dd { (filter_text(s)) }
                    dt { "Retries" } dd { "up to " (s.max_deliveries) " deliveries, backoff from " (s.backoff_ms) " ms; after a dead letter the model's later events " (after_dead_letter(s.on_dead_letter)) }
                    dt { "Lease" } dd { (s.lease_ms) " ms" }
                    dt { "Created" } dd { "by " (r.creator) " " span.muted { (when(r.create_time)) } }
                    dt { "Lag" } dd #lag { (v.lag) " events" }
                    dt { "Scanned to" } dd { "sequence " (r.scanned_sequence) }
                    dt { "Parked dead letters" } dd #parked { (v.state.parked) }
                }
            }
            h2 { "Members" }
            (members_table(v))
            h2 { "Assignments" }
            (assignments_table(v))
            h2 { "Dead letters" }
            (dead_letters_table(page, &r.name, dead))
        },
    )
}

fn members_table(v: &ConsumerView) -> Markup {
    let live: Vec<&MemberRecord> = live_members(v).collect();
    html! {
        @if live.is_empty() {
            p.empty #no-members { "No live member: models wait for a worker to join." }
        } @else {
            table #members {
                thead { tr { th { "Member" } th { "Identity" } th { "Joined" } th { "Lease expires" } } }
                tbody {
                    @for m in live {
                        tr data-member=(m.member) {
                            td { code { (m.member) } }
                            td { (m.identity) }
                            td { (when(m.join_time)) }
                            td { (when(m.expire_time)) }
                        }
                    }
                }
            }
        }
    }
}

fn assignments_table(v: &ConsumerView) -> Markup {
    html! {
        @if v.state.slots.is_empty() {
            p.empty #no-assignments { "No matching event yet." }
        } @else {
            table #assignments {
                thead { tr { th { "Model" } th { "Member" } th { "Epoch" } th { "Acked" } th { "Pending" } th { "In flight" } th { "Deliveries" } th { "Blocked" } th { "Last error" } } }
                tbody {
                    @for a in &v.state.slots {
                        tr data-model=(a.model) {
                            td { a href=(format!("/models/{}", a.model)) { (a.model) } }
                            td { @match &a.owner { Some(o) => code { (o) }, None => span.muted { "none" } } }
                            td.num { (a.epoch) }
                            td.num { (a.acked) }
                            td.num data-field="pending" { (a.pending) }
                            td.num { @if a.inflight == 0 { span.muted { "—" } } @else { (a.inflight) } }
                            td.num { (a.deliveries) }
                            td data-field="blocked" { @if a.blocked { span.fail { "blocked" } } @else { span.muted { "no" } } }
                            td { @if a.last_error.is_empty() { span.muted { "—" } } @else { (a.last_error) } }
                        }
                    }
                }
            }
        }
    }
}

fn dead_letters_table(page: &Page, consumer: &str, dead: &[(DeadLetterRecord, Event)]) -> Markup {
    let retry = page.who.as_ref().is_some_and(may_retry);
    html! {
        @if dead.is_empty() {
            p.empty #no-dead-letters { "No dead letters." }
        } @else {
            @if let Some(who) = page.who.as_ref().filter(|w| !page.local && !may_retry(w)) {
                p.note #no-retry { "Retrying a dead letter needs the approver role; " (who.name) " has " (roles(who)) "." }
            }
            table #dead-letters {
                thead { tr { th { "Event" } th { "Model" } th { "Version" } th { "Type" } th { "Deliveries" } th { "Reason" } th { "Parked" } th { "State" } th { "" } } }
                tbody {
                    @for (d, e) in dead {
                        tr data-sequence=(d.sequence) {
                            td.num { (d.sequence) }
                            td { a href=(format!("/models/{}", d.model)) { (d.model) } }
                            td { @if e.version > 0 { "v" (e.version) } @else { span.muted { "—" } } }
                            td { code { (e.kind.as_str()) } }
                            td.num { (d.deliveries) }
                            td { (d.reason) }
                            td { (when(d.park_time)) }
                            td data-field="state" { (dead_letter_state(d.state)) }
                            td {
                                @if retry && d.state == DeadLetterState::Parked {
                                    (retry_form(page, consumer, d.sequence))
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn retry_form(page: &Page, consumer: &str, sequence: u64) -> Markup {
    html! {
        form.inline.retry method="post" action=(format!("{}/retry", consumer_href(consumer))) {
            input type="hidden" name="csrf" value=(page.csrf);
            input type="hidden" name="sequence" value=(sequence);
            @if page.local {
                input type="text" name="actor" required maxlength="128" placeholder="Acting as" aria-label="Acting as" value=[page.actor.as_deref()];
            }
            button.approve type="submit" { "Retry" }
        }
    }
}

/// The page after a retry the registry accepted.
pub fn retried(page: &Page, consumer: &str, d: &DeadLetterRecord) -> Markup {
    let page = Page {
        title: format!("Consumer {consumer}"),
        live: None,
        ..page.clone()
    };
    layout(
        &page,
        html! {
            div #outcome.ok {
                p { "Retrying: event " (d.sequence) " of " (d.model) " goes to " (consumer) " again, before the model's later events." }
            }
            p { a href=(consumer_href(consumer)) { "Back to the consumer" } }
        },
    )
}

/// The page after a retry the registry refused.
pub fn retry_refused(page: &Page, consumer: &str, message: &str) -> Markup {
    let page = Page {
        title: format!("Consumer {consumer}"),
        live: None,
        ..page.clone()
    };
    layout(
        &page,
        html! {
            div #outcome.error { p { "Not done: " (message) } }
            p { a href=(consumer_href(consumer)) { "Back to the consumer" } }
        },
    )
}
