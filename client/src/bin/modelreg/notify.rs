//! The notifier's channels: the delivery loop each message goes through
//! (retries with backoff, refusals logged and skipped, a stop that leaves
//! the event for the next start), and mail to each model's reviewers. The
//! subscription, the filter and the webhook stay in `workers.rs`.

use std::time::Duration;

use clap::Args;
use lettre::message::Mailbox;
use modelreg_client::email::{self, PASSWORD_VAR, SmtpServer, SmtpUrl};
use modelreg_client::webhook::{Outcome, backoff};
use modelreg_client::{RegistryClient, pb};

use super::Failure;
use super::workers::{log, with_retry};

/// The notifier's name in log lines.
const WORKER: &str = "notify";

/// Sends one message over one channel (`channel` names it in log lines)
/// with `attempt` until it is delivered or refused for good. Returns false
/// when a stop came while waiting to retry: the event was not handled.
pub async fn deliver<F, Fut>(
    sequence: u64,
    channel: &str,
    max_backoff: Duration,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    mut attempt: F,
) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Outcome>,
{
    let mut attempts = 0;
    loop {
        attempts += 1;
        match attempt().await {
            Outcome::Delivered(code) => {
                log(
                    WORKER,
                    format!("event {sequence} delivered to {channel} ({code})"),
                );
                return true;
            }
            Outcome::Rejected(why) => {
                // Retrying the same message cannot help; say so loudly and move on.
                log(
                    WORKER,
                    format!("event {sequence} NOT delivered to {channel}: {why}"),
                );
                return true;
            }
            Outcome::Retry {
                reason,
                retry_after,
            } => {
                let wait = backoff(attempts, max_backoff, retry_after);
                log(
                    WORKER,
                    format!("event {sequence}: {reason}; retry {attempts} in {wait:?}"),
                );
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    // Stopping: the cursor stays before this event, so it is sent after a restart.
                    _ = stop.changed() => return false,
                }
            }
        }
    }
}

/// `notify`'s mail options.
#[derive(Args)]
pub struct EmailArgs {
    /// Mail every notification to the model's reviewers through this SMTP
    /// server: smtp://USER:PASSWORD@HOST:PORT (STARTTLS, port 587 by
    /// default) or smtps://… (implicit TLS, port 465). The password may come
    /// from MODELREG_SMTP_PASSWORD instead, and the whole URL from
    /// MODELREG_SMTP_URL, so neither shows in `ps`.
    // Parsed by `Mailer::new`, not by clap: clap repeats a refused value,
    // and this one may hold a password.
    #[arg(
        long,
        env = "MODELREG_SMTP_URL",
        hide_env_values = true,
        requires = "email_from"
    )]
    smtp: Option<String>,
    /// The sender of the mail, e.g. `modelreg <modelreg@example.com>`.
    #[arg(long, value_parser = parse_mailbox)]
    email_from: Option<Mailbox>,
    /// Who gets the mail about a model whose policy names no reviewers
    /// (repeatable).
    #[arg(long = "email-to", value_parser = parse_mailbox)]
    email_to: Vec<Mailbox>,
    /// The PEM CA to trust for the SMTP server instead of the public roots.
    #[arg(long)]
    smtp_ca_cert: Option<std::path::PathBuf>,
}

fn parse_mailbox(raw: &str) -> Result<Mailbox, String> {
    raw.parse()
        .map_err(|e| format!("{raw:?} is not a mail address: {e}"))
}

/// Mail to reviewers, set up from [`EmailArgs`].
pub struct Mailer {
    server: SmtpServer,
    from: Mailbox,
    /// `--email-to`: for models without reviewers.
    fallback: Vec<Mailbox>,
}

impl Mailer {
    /// The mailer `args` ask for, if any; the password from
    /// [`PASSWORD_VAR`] when the URL holds none.
    pub fn new(args: &EmailArgs) -> Result<Option<Mailer>, Failure> {
        let (Some(url), Some(from)) = (&args.smtp, &args.email_from) else {
            return Ok(None);
        };
        let url = SmtpUrl::parse(url)
            .and_then(|u| u.with_password(std::env::var(PASSWORD_VAR).ok()))
            .map_err(|e| Failure::Local(format!("--smtp: {e}")))?;
        let ca = match &args.smtp_ca_cert {
            Some(p) => Some(
                std::fs::read(p)
                    .map_err(|e| Failure::Local(format!("cannot read {}: {e}", p.display())))?,
            ),
            None => None,
        };
        let server = SmtpServer::new(&url, ca.as_deref(), Duration::from_secs(30))
            .map_err(Failure::Local)?;
        log(WORKER, format!("mailing through {url}"));
        Ok(Some(Mailer {
            server,
            from: from.clone(),
            fallback: args.email_to.clone(),
        }))
    }

    /// Mails event `e` to its model's reviewers (or the fallback), retrying
    /// like every channel; false when stopped before it was delivered.
    pub async fn send(
        &self,
        client: &RegistryClient,
        e: &pb::RegistryEvent,
        details: &serde_json::Value,
        link_base: Option<&str>,
        max_backoff: Duration,
        stop: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Result<bool, Failure> {
        let to = self.recipients(client, e).await?;
        if to.is_empty() {
            log(
                WORKER,
                format!(
                    "event {}: model {} has no reviewers and there is no --email-to: not mailed",
                    e.sequence, e.model
                ),
            );
            return Ok(true);
        }
        let mail = email::compose(e, details, link_base, self.from.email.domain());
        let message = email::message(&mail, &self.from, &to).map_err(Failure::Local)?;
        let channel = format!(
            "mail to {}",
            to.iter()
                .map(|m| m.email.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let sent = deliver(e.sequence, &channel, max_backoff, stop, || {
            self.server.send(&message)
        })
        .await;
        Ok(sent)
    }

    /// The reviewers of `e`'s model as its policy names them now, or the
    /// fallback when it names none.
    async fn recipients(
        &self,
        client: &RegistryClient,
        e: &pb::RegistryEvent,
    ) -> Result<Vec<Mailbox>, Failure> {
        let model = with_retry(WORKER, || {
            let mut c = client.clone();
            let req = pb::GetModelRequest {
                name: e.model.clone(),
            };
            async move { c.get_model(req).await }
        })
        .await?
        .into_inner()
        .model
        .unwrap_or_default();
        let reviewers = model
            .policy
            .and_then(|p| p.reviewers)
            .map(|l| l.reviewers)
            .unwrap_or_default();
        if reviewers.is_empty() {
            return Ok(self.fallback.clone());
        }
        let mut to = Vec::new();
        for r in reviewers {
            match r.email.parse() {
                Ok(address) => to.push(Mailbox::new(None, address)),
                Err(err) => log(
                    WORKER,
                    format!("model {}: reviewer {:?} skipped: {err}", e.model, r.email),
                ),
            }
        }
        Ok(to)
    }
}
