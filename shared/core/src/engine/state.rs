//! The stored state of a run, its events and the commands a transition asks for.
//!
//! These are the engine's data; stores persist [`RunState`] as a whole (or map it to items)
//! and apply each transition as a compare-and-set on [`RunState::version`].

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A task's or attempt's output. Shared, not copied, between the result that reported it,
/// the unit and task that hold it, the stored log and the views templates read (it is
/// stored and serialized as the plain JSON value).
pub type Output = Arc<Value>;

/// Milliseconds since the Unix epoch, as given by the runtime's clock.
pub type Millis = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
}

impl RunStatus {
    pub fn is_terminal(self) -> bool {
        !matches!(self, RunStatus::Pending | RunStatus::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Pending => "pending",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::TimedOut => "timed_out",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Pending,
    Ready,
    /// A `wait` task's unit waiting for its time (nothing runs, nothing polls).
    Waiting,
    Running,
    RetryWait,
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
}

impl TaskStatus {
    /// How many statuses there are.
    pub(crate) const COUNT: usize = TaskStatus::Cancelled as usize + 1;

    pub fn is_terminal(self) -> bool {
        matches!(self, TaskStatus::Succeeded | TaskStatus::Failed | TaskStatus::Skipped | TaskStatus::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Ready => "ready",
            TaskStatus::Waiting => "waiting",
            TaskStatus::Running => "running",
            TaskStatus::RetryWait => "retry_wait",
            TaskStatus::Succeeded => "succeeded",
            TaskStatus::Failed => "failed",
            TaskStatus::Skipped => "skipped",
            TaskStatus::Cancelled => "cancelled",
        }
    }
}

/// What a `wait` unit waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitKind {
    Sleep,
    Approval,
    Event,
    /// A `function` or `http` task with a `callback`: its call succeeded, it waits for the
    /// answer to the task token it sent.
    Callback,
}

impl WaitKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WaitKind::Sleep => "sleep",
            WaitKind::Approval => "approval",
            WaitKind::Event => "event",
            WaitKind::Callback => "callback",
        }
    }
}

/// A waiting unit's wait, as rendered when it started waiting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Waits {
    pub kind: WaitKind,
    /// When it started waiting.
    pub since: Millis,
    /// An event wait's name and correlation key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// An approval's question.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// When its timeout passes, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_at: Option<Millis>,
    /// The unit's `wake_at` is its timeout (not the end of its sleep).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub times_out: bool,
    /// A callback's `heartbeat`: it fails when no heartbeat came for this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<Millis>,
    /// When the last heartbeat recorded came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beat_at: Option<Millis>,
}

impl RunState {
    /// What attempt `id` waits for, if it waits for an answer or a time: its unit's wait, or
    /// the approval or callback of an agent's call.
    pub fn waits_at(&self, id: AttemptId) -> Option<&Waits> {
        let u = self.tasks.get(id.task)?.units.get(id.unit())?;
        match u.waits.as_ref() {
            Some(w) => Some(w),
            None => self.waiting_call(id)?.waits.as_ref(),
        }
    }

    /// The agent's call whose attempt `id` waits for an answer: its approval, or its callback.
    pub fn waiting_call(&self, id: AttemptId) -> Option<&crate::agent::CallRec> {
        let u = self.tasks.get(id.task)?.units.get(id.unit())?;
        let l = u.agent.as_deref().filter(|_| u.status == TaskStatus::Running)?;
        let (t, c) = l.answer_call(id.attempt)?;
        Some(&l.turns[t].calls[c])
    }

    /// Whether some unit waits for an answer from outside (an approval, an event, a
    /// callback), or an agent's call for its approval or its callback.
    pub fn awaits_answer(&self) -> bool {
        self.tasks.iter().flat_map(|t| &t.units).any(|u| {
            u.status == TaskStatus::Waiting
                || u.status == TaskStatus::Running
                    && u.agent.as_deref().is_some_and(|l| l.answer_owed().next().is_some())
        })
    }
}

impl Waits {
    /// The wait of a call whose `callback` is `cb`, sent at `now`.
    pub fn callback(cb: &crate::callback::CallbackWith, now: Millis) -> Waits {
        Waits {
            kind: WaitKind::Callback,
            since: now,
            event: None,
            key: None,
            prompt: None,
            timeout_at: Some(now.saturating_add(cb.timeout_ms())),
            times_out: true,
            heartbeat: cb.heartbeat_ms(),
            beat_at: None,
        }
    }

    /// Records a callback's heartbeat at `now`; `Err` (nothing recorded) when the callback
    /// takes none, or one was recorded within a tenth of the interval (at least 1 s) before:
    /// the deadline moves by little, and each is a write.
    pub fn beat(&mut self, now: Millis) -> Result<(), &'static str> {
        let Some(h) = self.heartbeat else { return Err("the callback takes no heartbeats") };
        if let Some(b) = self.beat_at
            && now < b.saturating_add((h / 10).max(1_000))
        {
            return Err("a heartbeat was recorded just before");
        }
        self.beat_at = Some(now);
        Ok(())
    }

    /// Why a callback wait that reached its deadline (`due`, the heartbeat's when `beat`)
    /// fails.
    pub fn missed(&self, due: Millis, beat: bool) -> String {
        if beat {
            format!(
                "no heartbeat came for {} (the callback's `heartbeat`)",
                crate::engine::waits::human(self.heartbeat.unwrap_or_default())
            )
        } else {
            format!("its callback did not come within {}", crate::engine::waits::human(due.saturating_sub(self.since)))
        }
    }

    /// When a callback wait fails if nothing comes: its timeout, or its heartbeat's
    /// deadline if sooner; and whether that is the heartbeat's.
    pub fn callback_due(&self) -> Option<(Millis, bool)> {
        let beat = self.heartbeat.map(|h| self.beat_at.unwrap_or(self.since).saturating_add(h));
        match (self.timeout_at, beat) {
            (Some(t), Some(b)) if b < t => Some((b, true)),
            (Some(t), _) => Some((t, false)),
            (None, Some(b)) => Some((b, true)),
            (None, None) => None,
        }
    }
}

/// One execution unit: a task, or one item of a `for_each` task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unit {
    /// `Pending` (not started, or due for retry), `Running`, `RetryWait`, or terminal.
    pub status: TaskStatus,
    /// Attempts started so far; the running attempt's number.
    pub attempt: u32,
    /// The `for_each` element, for items.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Output>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When a unit in `RetryWait` may run again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<Millis>,
    /// When a `Waiting` unit wakes (its sleep ends or its timeout passes); none for an
    /// approval or event without a timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake_at: Option<Millis>,
    /// What a `Waiting` unit waits for (kept after it ends, for people reading the run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waits: Option<Waits>,
    /// Key of the event whose transition started this attempt (or scheduled its retry): if
    /// that event is delivered again because its worker died before sending the commands,
    /// [`crate::engine::Plan::replay`] finds them here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// Key of the event whose transition started each attempt (attempt 1 first), so that
    /// [`crate::engine::Plan::replay_chain`] can follow work through finished attempts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub started_by: Vec<String>,
    /// The attempts that finished in place (`Event::AttemptFinished::in_place`): no queue
    /// message stands for them, so `replay_chain` follows work through them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub in_place: Vec<u32>,
    /// Attempts its task made before a redrive: this unit's attempts are numbered from
    /// `base + 1` (keys stay unique in the run's log) and its retries count from there.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub base: u32,
    /// What its running attempt holds of the run's budget (its worst case, see
    /// [`crate::engine::budget`]) until its result is applied. Kept when the run or the task
    /// ends while the attempt runs: the answer that comes back later still has its usage
    /// counted, once ([`crate::engine::Plan::apply`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<Estimate>,
    /// A failed unit's last error was one another attempt could help with (its retries ran
    /// out): a child run failed by it is worth retrying by its parent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub transient: bool,
    /// An agent's loop: its turns and tool calls ([`crate::agent::run`]). Each turn and each
    /// call is an attempt of this unit: while calls run, several attempts of it run at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<Box<crate::agent::AgentLoop>>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl Unit {
    pub fn new(item: Option<Value>) -> Self {
        Unit {
            status: TaskStatus::Pending,
            attempt: 0,
            item,
            output: None,
            error: None,
            retry_at: None,
            wake_at: None,
            waits: None,
            cause: None,
            started_by: Vec::new(),
            in_place: Vec::new(),
            base: 0,
            held: None,
            transient: false,
            agent: None,
        }
    }

    /// The `n`th attempt of this unit counted from its base (1 for the first).
    pub fn nth(&self, attempt: u32) -> u32 {
        attempt.saturating_sub(self.base)
    }
}

/// The state of one task of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskState {
    pub status: TaskStatus,
    /// One unit, or one per `for_each` item (created when the task becomes ready).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub units: Vec<Unit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Output>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why it was skipped or cancelled, for people reading a run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Attempts in all, over its units.
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub cost_usd: f64,
    #[serde(default)]
    pub tokens: u64,
    /// When its first attempt started (clock reading of that transition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Millis>,
    /// When it reached its terminal state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Millis>,
    /// Attempts made before the last redrive (its new units number theirs from here).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempt_base: u32,
    /// Derived: how many of its dependencies (in order) are known to have settled, so a
    /// join over thousands of tasks is not rescanned each time one of them ends.
    #[serde(default)]
    pub deps_settled: u32,
    /// Derived, in memory only: how many of `units` are in each status. Never stored and
    /// never compared; rebuilt from the units when missing.
    #[serde(skip)]
    pub(crate) tally: Tally,
}

/// How many of a task's units are in each status, and the lowest index a pending unit can
/// have, kept by the state machine as units move so that settling one item of a
/// 10,000-item `for_each` does not rescan the other 9,999 (that made such a run quadratic:
/// half of its time). `None` until first needed after the state was loaded or its units
/// were replaced; equal to every other tally, so a state compares by its stored fields.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tally(pub(crate) Option<Counts>);

#[derive(Debug, Clone, Copy)]
pub(crate) struct Counts {
    pub(crate) by_status: [u32; TaskStatus::COUNT],
    /// No unit before this index is pending.
    pub(crate) first_pending: usize,
}

impl PartialEq for Tally {
    fn eq(&self, _: &Tally) -> bool {
        true
    }
}

impl Counts {
    pub(crate) fn of(units: &[Unit]) -> Counts {
        let mut by_status = [0; TaskStatus::COUNT];
        for u in units {
            by_status[u.status as usize] += 1;
        }
        let first_pending = units.iter().position(|u| u.status == TaskStatus::Pending).unwrap_or(units.len());
        Counts { by_status, first_pending }
    }

    pub(crate) fn get(&self, s: TaskStatus) -> u32 {
        self.by_status[s as usize]
    }
}

impl TaskState {
    pub fn pending() -> Self {
        TaskState {
            status: TaskStatus::Pending,
            units: Vec::new(),
            output: None,
            error: None,
            reason: None,
            attempts: 0,
            cost_usd: 0.0,
            tokens: 0,
            started_at: None,
            ended_at: None,
            attempt_base: 0,
            deps_settled: 0,
            tally: Tally::default(),
        }
    }
}

/// The whole state of a run. `version` grows by one with every applied transition; stores
/// write a new state only if the stored version is still the one it was computed from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub run_id: String,
    /// The tenant the run belongs to (set by the start-a-run use case from the caller's
    /// token in the serverless runtime; none for embedded runs). Never changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub version: u64,
    pub status: RunStatus,
    pub inputs: serde_json::Map<String, Value>,
    pub tasks: Vec<TaskState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Millis>,
    /// The most the run may last from its start, whatever `spec.timeout` says (set when the
    /// run is created from the deployment's limit, so that every run ends before its stored
    /// items expire; fixed then, so rebuilds agree). The deadline is the earlier of the two.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_ms: Option<Millis>,
    #[serde(default)]
    pub cost_usd: f64,
    #[serde(default)]
    pub tokens: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Key of the event whose transition ended the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_by: Option<String>,
    /// Derived bookkeeping, kept so a transition costs O(what changed), not O(tasks):
    /// tasks with units waiting to start, in topological order;
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dispatchable: Vec<usize>,
    /// units running now;
    #[serde(default)]
    pub running: u32,
    /// tasks in a terminal state.
    #[serde(default)]
    pub ended_tasks: u32,
    /// Expected cost of one attempt of each task, fixed when the run was created (empty when
    /// the run has no budget or nothing is priced).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub estimates: Vec<Estimate>,
    /// The prices the run's budget is kept with, frozen when it was created (none when the
    /// run has no budget); each dispatched attempt reserves its worst case from them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prices: Option<std::sync::Arc<super::budget::PriceBook>>,
    /// Derived: the sum of what units hold (`Unit::held`): money and tokens attempts in
    /// flight may still spend.
    #[serde(default, skip_serializing_if = "Estimate::is_zero")]
    pub reserved: Estimate,
    /// Derived: what attempts cut off while they ran still hold (their unit cancelled with
    /// `held` kept): their answers may yet come and be counted, or never; either way the
    /// budget keeps it as spent (fail closed).
    #[serde(default, skip_serializing_if = "Estimate::is_zero")]
    pub unsettled: Estimate,
    /// A rerun's provenance: the run whose recorded outputs it reuses, and the task it runs
    /// again from (see [`crate::engine::Plan::rerun`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerun_of: Option<RerunOf>,
    /// Why the budget stopped the run's spending, once it did: no attempt that spends starts
    /// after it (each fails with this), the rest of the run goes on (tasks that spend nothing,
    /// `all_done` joins), and the run then ends `failed` with this error and the outputs it
    /// could render from what finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_stop: Option<String>,
    /// A child run's parent: the run and the attempt of its `workflow` task that started
    /// this run, which this run's end completes ([`crate::child`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<crate::child::Parent>,
    /// The budget a parent passed down to this child run (what its attempt holds): the run's
    /// budget is the tighter of this and `spec.budget` ([`crate::engine::Plan::budget_of`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_cap: Option<crate::model::Budget>,
}

/// What one attempt of a task is expected to spend, for budget checks before it starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    #[serde(default, skip_serializing_if = "is_zero_f64")]
    pub cost_usd: f64,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub tokens: u64,
}

fn is_zero_f64(v: &f64) -> bool {
    *v == 0.0
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

impl Estimate {
    pub fn is_zero(&self) -> bool {
        self.cost_usd == 0.0 && self.tokens == 0
    }

    pub fn add(&mut self, o: Estimate) {
        self.cost_usd += o.cost_usd;
        self.tokens += o.tokens;
    }

    /// Takes `o` off (never below zero: float sums may leave a hair).
    pub fn sub(&mut self, o: Estimate) {
        self.cost_usd = (self.cost_usd - o.cost_usd).max(0.0);
        self.tokens = self.tokens.saturating_sub(o.tokens);
        if self.cost_usd < 1e-15 {
            self.cost_usd = 0.0;
        }
    }
}

/// Token usage and cost of one finished attempt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub tokens: u64,
    pub cost_usd: f64,
}

/// How an attempt ended, as its executor reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum AttemptResult {
    Succeeded {
        output: Output,
        #[serde(default)]
        usage: Usage,
    },
    Failed {
        error: String,
        /// Timeouts, rate limits, 5xx, network errors: worth another attempt.
        retryable: bool,
        #[serde(default)]
        usage: Usage,
    },
}

/// Something that happened to a run. Every event that concerns one attempt names it, so a
/// duplicate or late delivery is recognised and ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Start the run (its inputs are already checked).
    Start,
    /// An attempt ended. `in_place`: it ran in the same invocation as the step that started
    /// it, its `Execute` never on the queue (see [`crate::engine::Plan::replay_chain`]).
    AttemptFinished {
        task: usize,
        item: Option<u32>,
        attempt: u32,
        result: AttemptResult,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        in_place: bool,
    },
    /// The retry delay of an attempt has passed.
    RetryDue { task: usize, item: Option<u32>, attempt: u32 },
    /// A `wait` task's unit is due to wake (its sleep ended or its timeout passed).
    WakeDue { task: usize, item: Option<u32>, attempt: u32 },
    /// A person or the outside world answered a waiting `approval` or `event` unit; `output`
    /// (checked by whoever accepted the answer: [`crate::engine::waits`]) becomes its output.
    /// Applied once: any later completion of the same attempt is ignored.
    Complete { task: usize, item: Option<u32>, attempt: u32, output: Output },
    /// The holder of a callback's task token reported a failure: the attempt fails with
    /// `error`, and `retry` applies when `retryable`. Applied once per attempt (as `Complete`).
    CallbackFailed { task: usize, item: Option<u32>, attempt: u32, error: String, retryable: bool },
    /// A heartbeat of a waiting callback came at `at` (the API's clock; it names the event).
    Heartbeat { task: usize, item: Option<u32>, attempt: u32, at: Millis },
    /// Cancel the run.
    Cancel,
    /// Fail the run for a reason outside the workflow (a message that could not be processed,
    /// moved to the dead-letter queue). Tasks not ended are cancelled; `on.failure` hooks run.
    Abort { reason: String },
    /// The clock moved; ends the run if its deadline has passed.
    Tick,
    /// Continue a failed or timed-out run from where it stopped: tasks that succeeded keep
    /// their outputs; every other task is decided and run again, its retries counted afresh.
    /// `after`: the version of the ended run it was asked for (a late duplicate is ignored).
    /// `inputs`: run inputs edited for the tasks that run again (checked by whoever asked:
    /// [`crate::engine::Plan::edited_inputs`]), recorded here so the log says what changed.
    Redrive {
        after: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        inputs: Option<serde_json::Map<String, Value>>,
    },
}

impl Event {
    /// An attempt ended, reported through the queue (or by the embedded driver).
    pub fn finished(task: usize, item: Option<u32>, attempt: u32, result: AttemptResult) -> Event {
        Event::AttemptFinished { task, item, attempt, result, in_place: false }
    }

    /// A key naming this event: a redelivered event has the same key.
    pub fn key(&self) -> String {
        match self {
            Event::Start => "start".into(),
            Event::AttemptFinished { task, item, attempt, .. } => finished_key(*task, *item, *attempt),
            Event::RetryDue { task, item, attempt } => attempt_key("retry", *task, *item, *attempt),
            Event::WakeDue { task, item, attempt } => attempt_key("wake", *task, *item, *attempt),
            Event::Complete { task, item, attempt, .. } => attempt_key("complete", *task, *item, *attempt),
            Event::CallbackFailed { task, item, attempt, .. } => attempt_key("failed", *task, *item, *attempt),
            Event::Heartbeat { task, item, attempt, at } => {
                format!("{}/{at}", attempt_key("beat", *task, *item, *attempt))
            }
            Event::Cancel => "cancel".into(),
            Event::Abort { .. } => "abort".into(),
            Event::Tick => "tick".into(),
            Event::Redrive { after, .. } => format!("redrive/{after}"),
        }
    }
}

/// The key of the `AttemptFinished` event of an attempt. A worker handed an `Execute` for an
/// attempt that already finished replays this key's commands (its first worker may have died
/// after storing the result and before sending what followed).
/// Where a rerun comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RerunOf {
    pub run_id: String,
    /// The task it runs again from (with everything downstream of it).
    pub from: String,
}

/// One attempt of one task (or of one `for_each` item of it): what `Execute`, `RetryDue`,
/// `AttemptFinished` and `ScheduleRetry` name. On the wire (a queue's `Attempts`) it is
/// `{"task", "item"?, "attempt"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AttemptId {
    pub task: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<u32>,
    pub attempt: u32,
}

impl AttemptId {
    /// The index of its unit in its task (0 for a task without `for_each`).
    pub fn unit(&self) -> usize {
        self.item.unwrap_or(0) as usize
    }

    /// The key of the event that finishes it ([`finished_key`]).
    pub fn finished_key(&self) -> String {
        finished_key(self.task, self.item, self.attempt)
    }

    /// The event of its result (not run in place).
    pub fn finished(self, result: AttemptResult) -> Event {
        Event::finished(self.task, self.item, self.attempt, result)
    }
}

impl Event {
    /// The attempt an `AttemptFinished` or `RetryDue` names.
    pub fn attempt_id(&self) -> Option<AttemptId> {
        match *self {
            Event::AttemptFinished { task, item, attempt, .. }
            | Event::RetryDue { task, item, attempt }
            | Event::WakeDue { task, item, attempt }
            | Event::Complete { task, item, attempt, .. }
            | Event::CallbackFailed { task, item, attempt, .. }
            | Event::Heartbeat { task, item, attempt, .. } => Some(AttemptId { task, item, attempt }),
            _ => None,
        }
    }
}

impl Command {
    /// The attempt an `Execute` or `ScheduleRetry` names.
    pub fn attempt_id(&self) -> Option<AttemptId> {
        match *self {
            Command::Execute { task, item, attempt }
            | Command::ScheduleRetry { task, item, attempt, .. }
            | Command::ScheduleWake { task, item, attempt, .. }
            | Command::Await { task, item, attempt } => Some(AttemptId { task, item, attempt }),
            _ => None,
        }
    }
}

pub fn finished_key(task: usize, item: Option<u32>, attempt: u32) -> String {
    attempt_key("done", task, item, attempt)
}

/// `<kind>/<task>/<item or ->/<attempt>`.
fn attempt_key(kind: &str, task: usize, item: Option<u32>, attempt: u32) -> String {
    match item {
        Some(k) => format!("{kind}/{task}/{k}/{attempt}"),
        None => format!("{kind}/{task}/-/{attempt}"),
    }
}

/// What the runtime must do after storing a transition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    /// Run this attempt (enqueue it).
    Execute { task: usize, item: Option<u32>, attempt: u32 },
    /// Deliver `RetryDue` for this attempt at `at`.
    ScheduleRetry { task: usize, item: Option<u32>, attempt: u32, at: Millis },
    /// Deliver `WakeDue` for this waiting unit at `at` (a delayed message, a timer).
    ScheduleWake { task: usize, item: Option<u32>, attempt: u32, at: Millis },
    /// This unit waits for an approval or an event: make it findable (by `POST /events`, by
    /// lists of waiting tasks). Idempotent; stale entries are dropped when found.
    Await { task: usize, item: Option<u32>, attempt: u32 },
    /// Running attempts of these tasks are no longer wanted.
    CancelRunning { tasks: Vec<usize> },
    /// The run ended: run the hooks of this kind, then report it (a child run: to its
    /// parent, [`RunState::report_to_parent`]).
    Finished { status: RunStatus },
    /// Cancel this child run: the parent's attempt that started it was cut off.
    CancelRun { run_id: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys are stored (units' causes, the log's `ended_by`): their text must not change.
    #[test]
    fn event_keys_keep_their_stored_form() {
        assert_eq!(finished_key(3, None, 1), "done/3/-/1");
        assert_eq!(finished_key(12, Some(0), 10), "done/12/0/10");
        let retry = Event::RetryDue { task: 7, item: Some(4_294_967_295), attempt: 2 };
        assert_eq!(retry.key(), "retry/7/4294967295/2");
        assert_eq!(
            Event::finished(
                0,
                None,
                1,
                AttemptResult::Failed { error: String::new(), retryable: false, usage: Usage::default() }
            )
            .key(),
            "done/0/-/1"
        );
        assert_eq!(Event::Start.key(), "start");
    }
}
