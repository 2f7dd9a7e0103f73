//! `modelreg consumers …`: durable consumers, their members, assignments,
//! lag and dead letters, and retrying a dead letter.

use clap::Subcommand;
use modelreg_client::json::to_json;
use modelreg_client::names::event_type_label;
use modelreg_client::{RegistryClient, pb};

use super::{Failure, all_pages, print_fields, print_json, print_line, print_list, print_table};

/// `consumers …`.
#[derive(Subcommand)]
pub enum ConsumersCmd {
    /// List consumers with their members, lag and parked dead letters.
    List,
    /// One consumer: its spec, members and each model's assignment.
    Show {
        /// The consumer.
        name: String,
    },
    /// A consumer's dead letters (parked and retrying; --all adds resolved).
    DeadLetters {
        /// The consumer.
        name: String,
        /// Also the ones retried and acknowledged since.
        #[arg(long)]
        all: bool,
    },
    /// Deliver a parked dead letter again (approvers and admins).
    Retry {
        /// The consumer.
        name: String,
        /// The parked event's sequence.
        sequence: u64,
    },
    /// Delete a consumer and its state (admins).
    Delete {
        /// The consumer.
        name: String,
    },
}

fn filter_text(spec: &Option<pb::ConsumerSpec>) -> String {
    let Some(s) = spec else {
        return String::new();
    };
    let mut parts = Vec::new();
    if !s.models.is_empty() {
        parts.push(format!("models {}", s.models.join(",")));
    }
    if !s.types.is_empty() {
        let t: Vec<String> = s.types.iter().map(|t| event_type_label(*t)).collect();
        parts.push(format!("types {}", t.join(",")));
    }
    if !s.to_stages.is_empty() {
        let t: Vec<String> = s
            .to_stages
            .iter()
            .map(|t| modelreg_client::names::stage_label(*t))
            .collect();
        parts.push(format!("to {}", t.join(",")));
    }
    if parts.is_empty() {
        "every event".into()
    } else {
        parts.join("; ")
    }
}

fn dead_letter_state(raw: i32) -> String {
    pb::DeadLetterState::try_from(raw)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("DEAD_LETTER_STATE_")
                .to_owned()
        })
        .unwrap_or_else(|_| raw.to_string())
}

fn seconds(d: &Option<prost_types::Duration>) -> String {
    d.as_ref()
        .map(|d| format!("{}s", d.seconds as f64 + f64::from(d.nanos) / 1e9))
        .unwrap_or_default()
}

/// Runs `consumers …`.
pub async fn consumers_cmd(
    client: &mut RegistryClient,
    cmd: ConsumersCmd,
    json: bool,
) -> Result<(), Failure> {
    match cmd {
        ConsumersCmd::List => {
            let items = all_pages(client, pb::ListConsumersRequest::default()).await?;
            print_list(
                &items,
                "modelreg.v1.Consumer",
                json,
                &["NAME", "MEMBERS", "MODELS", "LAG", "DEAD LETTERS", "FILTER"],
                |c| {
                    vec![
                        c.name.clone(),
                        c.members.len().to_string(),
                        c.assignments.len().to_string(),
                        c.lag_events.to_string(),
                        c.dead_letters.to_string(),
                        filter_text(&c.spec),
                    ]
                },
            );
        }
        ConsumersCmd::Show { name } => {
            let c = client
                .get_consumer(pb::GetConsumerRequest { name })
                .await?
                .into_inner()
                .consumer
                .unwrap_or_default();
            if json {
                print_json(&to_json(&c, "modelreg.v1.Consumer"));
                return Ok(());
            }
            let spec = c.spec.clone().unwrap_or_default();
            print_fields(&[
                ("name", c.name.clone()),
                ("filter", filter_text(&c.spec)),
                ("lease", seconds(&spec.lease)),
                ("max deliveries", spec.max_deliveries.to_string()),
                ("backoff", seconds(&spec.backoff)),
                (
                    "on dead letter",
                    pb::OnDeadLetter::try_from(spec.on_dead_letter)
                        .map(|o| {
                            o.as_str_name()
                                .trim_start_matches("ON_DEAD_LETTER_")
                                .to_owned()
                        })
                        .unwrap_or_default(),
                ),
                ("creator", c.creator.clone()),
                ("lag", c.lag_events.to_string()),
                ("dead letters", c.dead_letters.to_string()),
            ]);
            print_line("");
            print_table(
                &["MEMBER", "IDENTITY", "MODELS", "LEASE UNTIL"],
                c.members
                    .iter()
                    .map(|m| {
                        vec![
                            m.member.clone(),
                            m.identity.clone(),
                            m.models.to_string(),
                            m.lease_expire_time
                                .map(|t| t.to_string())
                                .unwrap_or_default(),
                        ]
                    })
                    .collect(),
            );
            print_line("");
            print_table(
                &[
                    "MODEL",
                    "MEMBER",
                    "EPOCH",
                    "ACKED",
                    "PENDING",
                    "IN FLIGHT",
                    "DELIVERIES",
                    "BLOCKED",
                ],
                c.assignments
                    .iter()
                    .map(|a| {
                        vec![
                            a.model.clone(),
                            a.member.clone(),
                            a.epoch.to_string(),
                            a.acked_sequence.to_string(),
                            a.pending.to_string(),
                            a.in_flight_sequence.to_string(),
                            a.deliveries.to_string(),
                            if a.blocked { "yes" } else { "" }.to_owned(),
                        ]
                    })
                    .collect(),
            );
        }
        ConsumersCmd::DeadLetters { name, all } => {
            let request = pb::ListDeadLettersRequest {
                consumer: name,
                include_resolved: all,
                ..Default::default()
            };
            let items = all_pages(client, request).await?;
            print_list(
                &items,
                "modelreg.v1.DeadLetter",
                json,
                &[
                    "SEQUENCE",
                    "MODEL",
                    "VERSION",
                    "TYPE",
                    "DELIVERIES",
                    "STATE",
                    "REASON",
                ],
                |d| {
                    let e = d.event.clone().unwrap_or_default();
                    vec![
                        e.sequence.to_string(),
                        e.model,
                        e.version.to_string(),
                        event_type_label(e.r#type),
                        d.deliveries.to_string(),
                        dead_letter_state(d.state),
                        d.reason.lines().next().unwrap_or_default().to_owned(),
                    ]
                },
            );
        }
        ConsumersCmd::Retry { name, sequence } => {
            let d = client
                .retry_dead_letter(pb::RetryDeadLetterRequest {
                    consumer: name.clone(),
                    sequence,
                })
                .await?
                .into_inner()
                .dead_letter
                .unwrap_or_default();
            if json {
                print_json(&to_json(&d, "modelreg.v1.DeadLetter"));
            } else {
                print_line(&format!(
                    "dead letter {sequence} of consumer {name} is {}: it is delivered again",
                    dead_letter_state(d.state)
                ));
            }
        }
        ConsumersCmd::Delete { name } => {
            client
                .delete_consumer(pb::DeleteConsumerRequest { name: name.clone() })
                .await?;
            if !json {
                print_line(&format!("consumer {name} deleted"));
            }
        }
    }
    Ok(())
}
