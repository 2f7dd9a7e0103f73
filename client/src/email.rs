//! Mail for `modelreg notify --smtp`: the message for an event and its
//! delivery to an SMTP server.
//!
//! The message says what is asked in its subject (`[modelreg] fraud v3 →
//! PRODUCTION needs your approval`) and carries the same evidence as the
//! Slack message ([`crate::summary`]) twice: as plain text, and as HTML in
//! which every user-supplied string is escaped. Its `Message-ID` is made from
//! the event, so every retry of one event (and a resend after a restart)
//! carries the same one and mail clients fold duplicates.
//!
//! Delivery speaks SMTP through `lettre` over rustls: `smtp://` requires
//! STARTTLS, `smtps://` is implicit TLS; credentials never travel in clear.
//! Its outcome uses the notifier's classes ([`Outcome`]): a 4xx answer,
//! a lost connection or a timeout is worth a retry, a 5xx answer is not.
//! Which events are mailed and to whom is the notifier's business.

use std::time::Duration;

use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::names::{cause_label, event_type_label};
use crate::pb;
use crate::summary::{Markup, escape_with, summary};
use crate::webhook::Outcome;

/// The environment variable a password may come from instead of the URL,
/// so that it stays out of `ps`.
pub const PASSWORD_VAR: &str = "MODELREG_SMTP_PASSWORD";

/// Plain text: strings as typed.
const PLAIN: Markup = Markup {
    escape: str::to_owned,
    strong: str::to_owned,
    code: str::to_owned,
    link: str::to_owned,
};

/// HTML: strings escaped, the model's name in bold, commands as code, the
/// dashboard link clickable.
const HTML: Markup = Markup {
    escape: escape_html,
    strong: |t| format!("<strong>{t}</strong>"),
    code: |t| format!("<code>{t}</code>"),
    link: |url| format!("<a href=\"{url}\">{url}</a>"),
};

/// `text` as HTML shows it literally, in element content and in quoted
/// attribute values alike.
pub fn escape_html(text: &str) -> String {
    let table = [
        ('&', "&amp;"),
        ('<', "&lt;"),
        ('>', "&gt;"),
        ('"', "&quot;"),
        ('\'', "&#39;"),
    ];
    escape_with(text, &table)
}

/// What one event's mail says, before it is addressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    /// What is asked or what happened, e.g. `[modelreg] fraud v3 → PRODUCTION needs your approval`.
    pub subject: String,
    /// The plain-text part.
    pub text: String,
    /// The HTML part, with the same lines.
    pub html: String,
    /// `<event-SEQUENCE.HASH@DOMAIN>`: the same for every attempt at one event.
    pub message_id: String,
}

/// The mail for event `e` (`details` is its `details` as JSON; `link_base`
/// the dashboard's base URL); `domain` ends its Message-ID (the sender's
/// domain, so the ID is unique to this registry's notifications).
pub fn compose(
    e: &pb::RegistryEvent,
    details: &serde_json::Value,
    link_base: Option<&str>,
    domain: &str,
) -> Mail {
    let footer = format!(
        "modelreg event {} · {}",
        e.sequence,
        event_type_label(e.r#type)
    );
    let mut text = summary(e, details, link_base, &PLAIN);
    text.extend([String::new(), footer.clone()]);
    let lines = summary(e, details, link_base, &HTML);
    let html = format!(
        "<!DOCTYPE html>\n<html><body>\n<p>{}</p>\n<p style=\"color:#666\">{}</p>\n</body></html>\n",
        lines.join("<br>\n"),
        escape_html(&footer)
    );
    // The hash names the event across registries that share a sender domain.
    let hash: String = e
        .hash
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(16)
        .collect();
    Mail {
        subject: subject(e, details),
        text: text.join("\n"),
        html,
        message_id: format!("<event-{}.{hash}@{domain}>", e.sequence),
    }
}

/// The subject: the model, version and what is asked of the reader or what
/// happened to it. Headers are encoded by the message builder.
fn subject(e: &pb::RegistryEvent, details: &serde_json::Value) -> String {
    use pb::EventType as T;
    let about = format!("{} v{}", e.model, e.version);
    let text = |key: &str| details[key].as_str().unwrap_or("?").to_owned();
    let what = match T::try_from(e.r#type).unwrap_or(T::Unspecified) {
        T::TransitionRequested => format!("{about} → {} needs your approval", text("to_stage")),
        T::TransitionApproved => format!(
            "{about}: {} approved by {}",
            e.transition_request_id, e.actor
        ),
        T::TransitionRejected => format!(
            "{about}: {} rejected by {}",
            e.transition_request_id, e.actor
        ),
        T::StageChanged if cause_label(e.cause) == "ROLLBACK" => {
            format!("{about} rolled back to PRODUCTION")
        }
        T::StageChanged => format!("{about} is now in PRODUCTION"),
        T::WorkerFailed => format!("{about}: worker {} gave up", text("worker")),
        T::DeadLettered => format!(
            "{about}: consumer {} parked a dead letter",
            text("consumer")
        ),
        T::DeploymentReported => format!("{about}: deployment to {} FAILED", text("environment")),
        other => format!("{about}: {}", event_type_label(other as i32)),
    };
    format!("[modelreg] {what}")
}

/// `mail` from `from` to `to` (one message, every recipient on its `To`).
pub fn message(mail: &Mail, from: &Mailbox, to: &[Mailbox]) -> Result<Message, String> {
    let mut builder = Message::builder()
        .from(from.clone())
        .subject(mail.subject.clone())
        .message_id(Some(mail.message_id.clone()));
    for mailbox in to {
        builder = builder.to(mailbox.clone());
    }
    builder
        .multipart(MultiPart::alternative_plain_html(
            mail.text.clone(),
            mail.html.clone(),
        ))
        .map_err(|e| format!("cannot build the message: {e}"))
}

/// A parsed `--smtp` URL: where the server is and how to speak to it.
#[derive(Clone, PartialEq, Eq)]
pub struct SmtpUrl {
    /// `smtps://`: TLS from the first byte; otherwise STARTTLS, required.
    implicit_tls: bool,
    host: String,
    port: u16,
    user: Option<String>,
    password: Option<String>,
}

impl std::fmt::Debug for SmtpUrl {
    /// Never shows the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_string())
    }
}

impl std::fmt::Display for SmtpUrl {
    /// The URL without its password, for log lines.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.implicit_tls { "smtps" } else { "smtp" };
        let user = self
            .user
            .as_deref()
            .map(|u| format!("{u}@"))
            .unwrap_or_default();
        write!(f, "{scheme}://{user}{}:{}", self.host, self.port)
    }
}

impl SmtpUrl {
    /// Parses `smtp://[USER[:PASSWORD]@]HOST[:PORT]` (STARTTLS, port 587 by
    /// default) or `smtps://…` (implicit TLS, port 465). User and password
    /// are percent-decoded. Errors never repeat the URL, which may hold a
    /// password.
    pub fn parse(raw: &str) -> Result<SmtpUrl, String> {
        let url = url::Url::parse(raw)
            .map_err(|e| format!("not a URL ({e}): use smtp://USER:PASSWORD@HOST:PORT"))?;
        let (implicit_tls, default_port) = match url.scheme() {
            "smtp" => (false, 587),
            "smtps" => (true, 465),
            other => {
                return Err(format!(
                    "{other}:// is not a mail URL: use smtp:// (STARTTLS) or smtps:// (implicit TLS)"
                ));
            }
        };
        let host = match url.host_str() {
            Some(h) if !h.is_empty() => h.trim_matches(['[', ']']).to_owned(),
            _ => return Err("the URL names no host: use smtp://USER:PASSWORD@HOST:PORT".into()),
        };
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            return Err(
                "the URL has a path, query or fragment: use smtp://USER:PASSWORD@HOST:PORT".into(),
            );
        }
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|d| d.into_owned())
                .map_err(|_| "the URL's user or password is not UTF-8 once decoded".to_owned())
        };
        let user = match url.username() {
            "" => None,
            u => Some(decode(u)?),
        };
        let password = url.password().map(decode).transpose()?;
        if password.is_some() && user.is_none() {
            return Err("the URL has a password but no user".into());
        }
        Ok(SmtpUrl {
            implicit_tls,
            host,
            port: url.port().unwrap_or(default_port),
            user,
            password,
        })
    }

    /// The URL with `password` when it carries none of its own (from
    /// [`PASSWORD_VAR`]); a password needs a user to log in as.
    pub fn with_password(mut self, password: Option<String>) -> Result<SmtpUrl, String> {
        if self.password.is_none() && password.is_some() {
            if self.user.is_none() {
                return Err(format!(
                    "{PASSWORD_VAR} is set but the URL names no user: use smtp://USER@HOST:PORT"
                ));
            }
            self.password = password;
        }
        Ok(self)
    }
}

/// An SMTP server the notifier mails through.
#[derive(Clone)]
pub struct SmtpServer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
}

impl SmtpServer {
    /// A server at `url`, trusting the Mozilla roots or only `ca_pem` when
    /// given; `timeout` bounds each network step.
    pub fn new(
        url: &SmtpUrl,
        ca_pem: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<SmtpServer, String> {
        let mut tls = TlsParameters::builder(url.host.clone());
        if let Some(pem) = ca_pem {
            let cert =
                Certificate::from_pem(pem).map_err(|e| format!("bad CA certificate: {e}"))?;
            tls = tls
                .certificate_store(CertificateStore::None)
                .add_root_certificate(cert);
        }
        let tls = tls
            .build_rustls()
            .map_err(|e| format!("TLS settings: {e}"))?;
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(url.host.clone())
            .port(url.port)
            .timeout(Some(timeout))
            .tls(if url.implicit_tls {
                Tls::Wrapper(tls)
            } else {
                Tls::Required(tls)
            });
        if let Some(user) = &url.user {
            let password = url.password.clone().unwrap_or_default();
            builder = builder.credentials(Credentials::new(user.clone(), password));
        }
        Ok(SmtpServer {
            transport: builder.build(),
        })
    }

    /// Sends `message` once: delivered on 2xx, worth a retry on a 4xx
    /// answer, a connection, TLS or timeout failure, refused on a 5xx
    /// answer (the server's own words in each reason).
    pub async fn send(&self, message: &Message) -> Outcome {
        match self.transport.send(message.clone()).await {
            Ok(response) => Outcome::Delivered(u16::from(response.code())),
            Err(e) if e.is_permanent() => {
                Outcome::Rejected(format!("the mail server refused it: {e}"))
            }
            Err(e) => Outcome::Retry {
                reason: format!("the mail server: {e}"),
                retry_after: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smtp_urls_take_tls_ports_and_credentials_from_their_scheme_and_authority() {
        let url = SmtpUrl::parse("smtp://notify%40corp:p%3Ass@mail.example.com").unwrap();
        assert_eq!(
            (
                url.implicit_tls,
                url.port,
                url.user.as_deref(),
                url.password.as_deref()
            ),
            (false, 587, Some("notify@corp"), Some("p:ss"))
        );
        assert_eq!(url.to_string(), "smtp://notify@corp@mail.example.com:587");
        let url = SmtpUrl::parse("smtps://mail.example.com:2465").unwrap();
        assert_eq!((url.implicit_tls, url.port, url.user), (true, 2465, None));
        for bad in [
            "mail.example.com",
            "http://mail.example.com",
            "smtp://",
            "smtp://:secret@mail.example.com",
            "smtp://mail.example.com/inbox",
            "smtp://mail.example.com?tls=none",
            "smtp//user:hunter2@mail",
        ] {
            let err = SmtpUrl::parse(bad).expect_err(bad);
            assert!(!err.contains("hunter2"), "{err}");
        }
        let env = SmtpUrl::parse("smtp://notify@mail.example.com")
            .unwrap()
            .with_password(Some("from-env".into()))
            .unwrap();
        assert_eq!(env.password.as_deref(), Some("from-env"));
        assert!(!format!("{env:?}").contains("from-env"));
        assert!(
            SmtpUrl::parse("smtp://mail.example.com")
                .unwrap()
                .with_password(Some("x".into()))
                .is_err()
        );
    }

    #[test]
    fn a_request_mail_asks_in_its_subject_and_escapes_user_text_in_html_only() {
        let e = pb::RegistryEvent {
            sequence: 9,
            r#type: pb::EventType::TransitionRequested as i32,
            model: "fraud".into(),
            version: 3,
            actor: "alice".into(),
            comment: "<script>alert(1)</script>".into(),
            transition_request_id: "fraud:3".into(),
            hash: "ab12cd34ef56ab12cd34ef56".into(),
            ..Default::default()
        };
        let details = serde_json::json!({"to_stage": "PRODUCTION"});
        let mail = compose(&e, &details, Some("https://reg.example/"), "example.com");
        assert_eq!(
            mail.subject,
            "[modelreg] fraud v3 → PRODUCTION needs your approval"
        );
        assert_eq!(mail.message_id, "<event-9.ab12cd34ef56ab12@example.com>");
        assert!(
            mail.text.contains("<script>alert(1)</script>"),
            "{}",
            mail.text
        );
        assert!(
            mail.text.contains("modelreg approve fraud:3"),
            "{}",
            mail.text
        );
        assert!(!mail.html.contains("<script"), "{}", mail.html);
        assert!(
            mail.html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{}",
            mail.html
        );
        assert!(
            mail.html
                .contains("<a href=\"https://reg.example/requests/fraud:3\">"),
            "{}",
            mail.html
        );
        assert_eq!(
            compose(&e, &details, None, "example.com").message_id,
            mail.message_id
        );
    }
}
