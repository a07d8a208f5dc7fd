//! Dead letters: what fails the work of a message that could not be processed (delivered
//! too often, or unreadable). The `dlq` function (SQS's dead-letter queues) and `llmo serve`
//! (its SQLite queue's receive limit) both end here.

use llmo_core::engine::Event;

use super::{Error, Outcome, Worker};
use crate::queue::{Delivery, Message};

impl Worker {
    /// Fails the work `message` was about with `reason`: an attempt fails through the engine
    /// (its retries and fallbacks follow as for any failure); a run that no longer loads (its
    /// workflow does not validate, its log does not replay), or a message that names no
    /// attempt, aborts the run.
    pub async fn dead_letter(&self, message: Message, reason: String) -> Result<Outcome, Error> {
        let run = message.run_id().to_string();
        match message {
            Message::Event { event: Event::Abort { .. }, .. } => {
                crate::meter::dead_letter("unreadable");
                self.abort(&run, reason).await
            }
            message => {
                let kind = if matches!(message, Message::Events { .. }) { "attempt" } else { "run" };
                crate::meter::dead_letter(kind);
                let trace = crate::telemetry::traceparent();
                let d = Delivery { receipt: String::new(), message, receive_count: 1, trace };
                match self.handle(&d).await {
                    Err(Error::BadWorkflow { .. } | Error::Store(crate::store::Error::Corrupt { .. })) => {
                        self.abort(&run, reason).await
                    }
                    other => other,
                }
            }
        }
    }
}

/// What fails the work a dead letter with `body` was about: each attempt it names (an
/// `execute`, or every attempt of an `attempts`) fails with `reason`; anything else aborts its
/// run. Read field by field, so a message that does not decode as a whole (a newer producer's)
/// still fails what it names. `None`: it names no run.
pub fn dead_letter_verdict(body: &str, reason: &str) -> Option<Message> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let run_id = v.get("run_id")?.as_str()?.to_string();
    let failed = |a: &serde_json::Value| -> Option<Event> {
        let task = usize::try_from(a.get("task")?.as_u64()?).ok()?;
        let item = a.get("item").and_then(|i| i.as_u64()).and_then(|i| u32::try_from(i).ok());
        let attempt = u32::try_from(a.get("attempt")?.as_u64()?).ok()?;
        let result = crate::executor::failed(llmo_core::engine::builtin::TaskError::fatal(reason.to_string()));
        Some(Event::finished(task, item, attempt, result))
    };
    let events: Vec<Event> = match v.get("kind").and_then(|k| k.as_str()) {
        Some("execute") => vec![failed(&v)?],
        // More than a message may name was never sent by a worker: the run is aborted.
        Some("attempts") => match v.get("attempts")?.as_array()? {
            named if named.len() <= crate::queue::MAX_ATTEMPTS_PER_MESSAGE => {
                named.iter().map(failed).collect::<Option<_>>()?
            }
            _ => vec![],
        },
        _ => vec![],
    };
    Some(if events.is_empty() {
        Message::Event { run_id, event: Event::Abort { reason: reason.to_string() } }
    } else {
        Message::Events { run_id, events }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::Message;
    use llmo_core::engine::AttemptResult;
    use llmo_core::engine::Event;

    fn failures(m: &Message) -> Vec<(usize, Option<u32>, u32, String)> {
        let Message::Events { events, .. } = m else { panic!("not the attempts' failures: {m:?}") };
        events
            .iter()
            .map(|e| match e {
                Event::AttemptFinished {
                    task,
                    item,
                    attempt,
                    result: AttemptResult::Failed { error, retryable, .. },
                    ..
                } => {
                    assert!(!retryable, "a dead letter's attempt fails for good");
                    (*task, *item, *attempt, error.clone())
                }
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_dead_letter_fails_each_attempt_it_names_or_else_aborts_its_run() {
        let why = "message moved to the dead-letter queue: delivered 5 times";
        let one = r#"{"v":1,"kind":"execute","run_id":"r","task":2,"item":1,"attempt":3}"#;
        assert_eq!(failures(&dead_letter_verdict(one, why).unwrap()), vec![(2, Some(1), 3, why.to_string())]);
        let packed = r#"{"v":3,"kind":"attempts","run_id":"r","attempts":[{"task":2,"attempt":1},{"task":3,"item":7,"attempt":2}]}"#;
        let m = dead_letter_verdict(packed, why).unwrap();
        assert_eq!(m.run_id(), "r");
        assert_eq!(failures(&m), vec![(2, None, 1, why.to_string()), (3, Some(7), 2, why.to_string())]);
        // A newer producer's message still fails what it names.
        let newer = packed.replace("\"v\":3", "\"v\":9");
        assert_eq!(failures(&dead_letter_verdict(&newer, why).unwrap()).len(), 2);
        let aborts = |body: &str| matches!(dead_letter_verdict(body, why), Some(Message::Event { event: Event::Abort { .. }, ref run_id }) if run_id == "r");
        assert!(aborts(r#"{"v":1,"kind":"event","run_id":"r","event":{"type":"start"}}"#));
        assert!(aborts(r#"{"v":3,"kind":"attempts","run_id":"r","attempts":[]}"#));
        let too_many = format!(
            r#"{{"v":3,"kind":"attempts","run_id":"r","attempts":[{}]}}"#,
            vec![r#"{"task":1,"attempt":1}"#; 101].join(",")
        );
        assert!(aborts(&too_many), "more attempts than a worker sends in a message: the run is aborted");
        assert!(dead_letter_verdict(r#"{"v":1,"kind":"execute","task":1}"#, why).is_none(), "names no run");
        assert!(dead_letter_verdict("not json", why).is_none());
    }
}
