//! A callback's wait inside the transition function: the call's success starts it, a
//! heartbeat moves its deadline, a wake ends it (or re-arms itself when a heartbeat moved the
//! deadline), an answer (`Complete`, `CallbackFailed`) ends it once.

use super::*;

impl Transition<'_, '_> {
    /// The call of attempt `id` succeeded: it waits for its token's answer, holding nothing,
    /// until its timeout or its heartbeat's deadline.
    pub(super) fn await_callback(&mut self, id: AttemptId) {
        let cb = self.plan.callbacks[id.task].clone().unwrap_or_default();
        let waits = Waits::callback(&cb, self.now);
        let (at, _) = waits.callback_due().expect("a callback wait has a timeout");
        let cause = self.cause.clone();
        self.move_unit(id.task, id.unit(), TaskStatus::Waiting);
        let u = self.unit_mut(id);
        u.waits = Some(waits);
        u.wake_at = Some(at);
        u.error = None;
        u.cause = Some(cause);
        self.cmds.push(Command::Await { task: id.task, item: id.item, attempt: id.attempt });
        self.cmds.push(Command::ScheduleWake { task: id.task, item: id.item, attempt: id.attempt, at });
    }

    /// Unit `id` is waiting for its callback, this attempt.
    pub(super) fn waiting_callback(&self, id: AttemptId) -> Result<&Waits, Ignored> {
        let unit = self.unit(id)?;
        match unit.waits.as_ref() {
            Some(w)
                if unit.status == TaskStatus::Waiting && unit.attempt == id.attempt && w.kind == WaitKind::Callback =>
            {
                Ok(w)
            }
            _ => Err(Ignored("not waiting for a callback (answered, timed out, or late)")),
        }
    }

    /// A wake of a callback wait: past its deadline it fails the attempt (`retry` applies);
    /// before it (a heartbeat moved the deadline, or the timer came early) it arms the wake
    /// again for the deadline.
    pub(super) fn callback_wake(&mut self, id: AttemptId) -> Result<(), Ignored> {
        let w = self.waiting_callback(id)?;
        let (due, beat) = w.callback_due().ok_or(Ignored("this wait has no time to wake"))?;
        if self.now < due {
            let cause = self.cause.clone();
            let u = self.unit_mut(id);
            u.wake_at = Some(due);
            u.cause = Some(cause);
            self.cmds.push(Command::ScheduleWake { task: id.task, item: id.item, attempt: id.attempt, at: due });
            return Ok(());
        }
        let error = w.missed(due, beat);
        self.fail_attempt(id, &error, true);
        self.settle(id.task);
        self.advance();
        Ok(())
    }

    /// A heartbeat of the callback wait of `id`: its deadline moves. Heartbeats closer than a
    /// tenth of the interval (at least 1 s) to the last one recorded are not recorded (the
    /// deadline moves by little; each is a write).
    pub(super) fn heartbeat(&mut self, id: AttemptId) -> Result<(), Ignored> {
        self.waiting_callback(id)?;
        let now = self.now;
        let w = self.unit_mut(id).waits.as_mut().ok_or(Ignored("no wait"))?;
        w.beat(now).map_err(Ignored)
    }
}
