//! The life of a run, a task and a unit on one screen: every status a run, task or unit (one
//! attempt slot of a task, or of one `for_each` item) can move between, and why. The transition
//! function changes a status only through `Transition::move_run`, `move_task` and `move_unit`,
//! which check the move against these tables (debug builds: every test and simulation run) and
//! keep the derived fields right: `running`, `ended_tasks`, a task's `attempts`, `started_at`
//! and `ended_at`, a run's `started_at`, `ended_at` and `ended_by`.

use super::state::{RunStatus, TaskStatus};

/// (from, to, why) for a run.
pub const RUN_MOVES: &[(RunStatus, RunStatus, &str)] = {
    use RunStatus::*;
    &[
        (Pending, Running, "Start"),
        (Running, Succeeded, "every task ended, none failing the run, and the outputs rendered"),
        (Running, Failed, "a task failed the run, the budget is spent, the outputs failed, or Abort"),
        (Pending, Failed, "Abort (its messages could not be processed)"),
        (Pending, Cancelled, "Cancel"),
        (Running, Cancelled, "Cancel"),
        (Running, TimedOut, "Tick past the run's deadline"),
        (Failed, Running, "Redrive"),
        (TimedOut, Running, "Redrive"),
    ]
};

/// (from, to, why) for a task. `Ready`, `Running` and `RetryWait` are derived from its units
/// (some running; else some waiting for a retry; else units left to start).
pub const TASK_MOVES: &[(TaskStatus, TaskStatus, &str)] = {
    use TaskStatus::*;
    &[
        (Pending, Ready, "its dependencies ended and its trigger rule and `when` pass: its units are made"),
        (Pending, Skipped, "its trigger rule is not met, `when` is false, or its fallback is not needed"),
        (Pending, Failed, "`when` or `for_each` could not be evaluated"),
        (Pending, Succeeded, "`for_each` over an empty list"),
        (Ready, Running, "a unit started"),
        (Ready, Waiting, "a `wait` unit started waiting, none running"),
        (Running, Waiting, "no unit running, one waiting"),
        (RetryWait, Waiting, "no unit running, one waiting"),
        (Waiting, Running, "a unit started"),
        (Waiting, RetryWait, "no unit running or waiting, one waiting for its retry"),
        (Waiting, Ready, "no unit running or waiting, units left to start"),
        (Waiting, Succeeded, "every unit succeeded"),
        (Waiting, Failed, "a unit failed for good"),
        (Waiting, Cancelled, "the run ended first"),
        (Ready, RetryWait, "no unit running, one waiting for its retry"),
        (Running, Ready, "no unit running or waiting, units left to start"),
        (Running, RetryWait, "no unit running, one waiting for its retry"),
        (RetryWait, Running, "a unit started again"),
        (RetryWait, Ready, "a retry is due, no unit running"),
        (Ready, Succeeded, "every unit succeeded"),
        (Running, Succeeded, "every unit succeeded"),
        (RetryWait, Succeeded, "every unit succeeded"),
        (Ready, Failed, "a unit failed for good (the others are cancelled)"),
        (Running, Failed, "a unit failed for good (the others are cancelled)"),
        (RetryWait, Failed, "a unit failed for good (the others are cancelled)"),
        (Pending, Cancelled, "the run ended first"),
        (Ready, Cancelled, "the run ended first"),
        (Running, Cancelled, "the run ended first (its attempts are stopped)"),
        (RetryWait, Cancelled, "the run ended first"),
        (Failed, Pending, "Redrive: it is decided and run again"),
        (Skipped, Pending, "Redrive: it is decided again"),
        (Cancelled, Pending, "Redrive: it is decided again"),
    ]
};

/// (from, to, why) for a unit.
pub const UNIT_MOVES: &[(TaskStatus, TaskStatus, &str)] = {
    use TaskStatus::*;
    &[
        (Pending, Running, "dispatched: its next attempt starts (within concurrency and budget)"),
        (Pending, Waiting, "dispatched, a `wait` task: it waits for its time, an answer or an event"),
        (Waiting, Succeeded, "WakeDue (its sleep ended, or its timeout with `on_timeout: succeed`) or Complete"),
        (
            Waiting,
            Failed,
            "WakeDue (a timeout, a missed heartbeat, or a `wait` that did not render), Complete (a rejection under `on_reject: fail`) or CallbackFailed, for good",
        ),
        (Waiting, Cancelled, "the run ended first"),
        (Running, Succeeded, "the attempt succeeded"),
        (Running, RetryWait, "the attempt failed, retryable, with attempts left"),
        (Running, Failed, "the attempt failed for good"),
        (Running, Waiting, "the call of a task with a `callback` succeeded: it waits for the token's answer"),
        (Waiting, RetryWait, "a callback failed or timed out (its heartbeat missed), retryable, with attempts left"),
        (RetryWait, Pending, "RetryDue"),
        (Running, Pending, "an agent's tool calls settled: its next turn waits for dispatch (budget and caps)"),
        (Pending, Cancelled, "another item of its task failed, or the run ended"),
        (Pending, Failed, "the budget stopped spending: an attempt that spends is refused, not started"),
        (Running, Cancelled, "another item of its task failed, or the run ended (the attempt is stopped)"),
        (RetryWait, Cancelled, "another item of its task failed, or the run ended"),
    ]
};

pub fn run_move(from: RunStatus, to: RunStatus) -> bool {
    RUN_MOVES.iter().any(|&(f, t, _)| f == from && t == to)
}

pub fn task_move(from: TaskStatus, to: TaskStatus) -> bool {
    TASK_MOVES.iter().any(|&(f, t, _)| f == from && t == to)
}

pub fn unit_move(from: TaskStatus, to: TaskStatus) -> bool {
    UNIT_MOVES.iter().any(|&(f, t, _)| f == from && t == to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_redrive_leaves_a_terminal_status() {
        for &(f, t, why) in UNIT_MOVES {
            assert!(!f.is_terminal(), "{f:?} -> {t:?}");
            assert!(!why.contains("Redrive"));
        }
        for &(f, t, why) in TASK_MOVES {
            assert_eq!(f.is_terminal(), why.starts_with("Redrive"), "{f:?} -> {t:?}");
            assert!(!f.is_terminal() || (t == TaskStatus::Pending && f != TaskStatus::Succeeded));
        }
        for &(f, t, why) in RUN_MOVES {
            assert_eq!(f.is_terminal(), why == "Redrive", "{f:?} -> {t:?}");
            assert!(t != RunStatus::Pending);
            assert!(!f.is_terminal() || matches!(f, RunStatus::Failed | RunStatus::TimedOut));
        }
    }

    #[test]
    fn every_move_is_listed_once() {
        let mut seen = std::collections::HashSet::new();
        for &(f, t, _) in TASK_MOVES {
            assert!(seen.insert(("task", f as u8, t as u8)), "{f:?} -> {t:?} twice");
        }
        for &(f, t, _) in UNIT_MOVES {
            assert!(seen.insert(("unit", f as u8, t as u8)), "{f:?} -> {t:?} twice");
        }
        assert!(!unit_move(TaskStatus::Ready, TaskStatus::Running), "units are never ready");
        assert!(task_move(TaskStatus::Pending, TaskStatus::Ready));
        assert!(!task_move(TaskStatus::Succeeded, TaskStatus::Failed));
        assert!(run_move(RunStatus::Running, RunStatus::TimedOut));
        assert!(!run_move(RunStatus::Pending, RunStatus::Succeeded));
    }
}
