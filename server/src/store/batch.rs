//! Group commit's plumbing, the same for both backends: a write queued for
//! the backend's writer task ([`Job`]), what it left once it ran inside the
//! batch's transaction ([`Staged`]), and how its caller is answered: only
//! after the batch's commit, with the commit's failure if there was one.

use std::future::Future;
use std::pin::Pin;

use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};
use crate::store::WriteFuture;

/// A queued write: run it in the given transaction (or learn that none could
/// be opened) and say how it went.
pub(super) type Job<T> = Box<
    dyn for<'t> FnOnce(Result<&'t mut T>) -> Pin<Box<dyn Future<Output = Staged> + Send + 't>>
        + Send,
>;

/// Answers a staged write's caller, given the commit's failure if there was one.
type Answer = Box<dyn FnOnce(Option<&str>) + Send>;

/// A write that has run inside the batch's transaction.
pub(super) struct Staged {
    /// Whether it succeeded (its savepoint is released) or failed (rolled back).
    pub ok: bool,
    /// The last sequence it appended, if any.
    pub last_sequence: Option<u64>,
    /// Answers the caller.
    answer: Answer,
}

impl Staged {
    /// Answers the caller: its own result when the batch committed
    /// (`failure` is `None`), else the commit's failure, as retryable. A
    /// refusal is answered as a failure too then: it may have rested on
    /// what the batch undid.
    pub fn answer(self, failure: Option<&str>) {
        (self.answer)(failure)
    }
}

/// Queues `write` for the writer task behind `jobs` and waits for its
/// durable answer.
pub(super) async fn enqueue<T, R, F>(jobs: &mpsc::Sender<Job<T>>, write: F) -> Result<R>
where
    T: Send + 'static,
    R: Send + 'static,
    F: for<'t> FnOnce(&'t mut T) -> WriteFuture<'t, R> + Send + 'static,
{
    let (reply, answer) = oneshot::channel::<Result<R>>();
    let job: Job<T> = Box::new(move |tx: Result<&mut T>| {
        Box::pin(async move {
            let outcome = match tx {
                Ok(tx) => write(tx).await,
                Err(e) => Err(e),
            };
            let (ok, last_sequence, result) = match outcome {
                Ok((result, last_sequence)) => (true, last_sequence, Ok(result)),
                Err(e) => (false, None, Err(e)),
            };
            Staged {
                ok,
                last_sequence,
                answer: Box::new(move |commit_failure: Option<&str>| {
                    let _ = reply.send(match commit_failure {
                        None => result,
                        Some(e) => Err(Error::Unavailable(format!("commit failed: {e}"))),
                    });
                }),
            }
        }) as Pin<Box<dyn Future<Output = Staged> + Send + '_>>
    });
    jobs.send(job)
        .await
        .map_err(|_| Error::Unavailable("the database writer has stopped".into()))?;
    answer
        .await
        .map_err(|_| Error::Internal("the database writer dropped a write".into()))?
}

/// The statements that open a write's savepoint. A succeeded write's
/// savepoint is released together with the next write's SAVEPOINT (or by
/// COMMIT): one round trip fewer per write.
pub(super) fn open_savepoint(unreleased: bool) -> &'static str {
    if unreleased {
        "RELEASE SAVEPOINT write; SAVEPOINT write"
    } else {
        "SAVEPOINT write"
    }
}

/// The statements that undo a refused write.
pub(super) const UNDO_SAVEPOINT: &str = "ROLLBACK TO SAVEPOINT write; RELEASE SAVEPOINT write";

/// Answers a write that could not run because its batch failed.
pub(super) async fn abandon<T>(job: Job<T>) {
    abandon_with(job, "the batch failed").await;
}

/// Answers a write that could not run, as unavailable because of `why`.
pub(super) async fn abandon_with<T>(job: Job<T>, why: &str) {
    let done = job(Err(Error::Unavailable(why.to_owned()))).await;
    done.answer(None);
}

/// Fails `first` and every write queued behind it with `message`: no
/// transaction could be opened for them.
pub(super) async fn fail_queued<T>(
    first: Job<T>,
    queue: &mut mpsc::Receiver<Job<T>>,
    message: &str,
) {
    let mut failed = vec![first];
    while let Ok(job) = queue.try_recv() {
        failed.push(job);
    }
    for job in failed {
        let staged = job(Err(Error::Unavailable(message.to_owned()))).await;
        staged.answer(None);
    }
}
