//! `RunStore` on DynamoDB: create, load (snapshot + log tail), the conditional append, snapshots,
//! history and the waiter index.

use super::*;

#[async_trait]
impl RunStore for DynamoStore {
    async fn initial_state(&self, run_id: &str) -> Result<Option<RunState>, Error> {
        DynamoStore::initial_state(self, run_id).await
    }

    async fn create(&self, workflow: &str, source_name: &str, source: &str, initial: &RunState) -> Result<(), Error> {
        self.create_once(None, workflow, source_name, source, initial).await.map(|_| ())
    }

    async fn create_keyed(
        &self,
        key: Option<&StartKey>,
        workflow: &str,
        source_name: &str,
        source: &str,
        initial: &RunState,
    ) -> Result<Created, Error> {
        self.create_once(key, workflow, source_name, source, initial).await
    }

    async fn load(&self, run_id: &str) -> Result<Option<StoredRun>, Error> {
        let items = self.head_items(run_id).await?;
        let Some(meta) = items.get("META") else { return Ok(None) };
        let src = Self::source_item(&items).ok_or_else(|| other(format!("run {run_id} has no source item")))?;
        let source = self.read_payload(src, "source", "source_ref").await?;
        let snapshot: RunState = match items.get("SNAP") {
            Some(snap) => {
                let key = get_s(snap, "key").ok_or_else(|| other("snapshot item without key"))?;
                serde_json::from_slice(&self.get_blob(key).await?)?
            }
            None => serde_json::from_str(&self.read_payload(src, "init", "init_ref").await?)?,
        };
        let tail = self.log_items(run_id, snapshot.version).await?;
        Ok(Some(StoredRun {
            workflow: get_s(meta, "workflow").unwrap_or_default().to_string(),
            source_name: get_s(meta, "source_name").unwrap_or_default().to_string(),
            source,
            snapshot,
            tail,
        }))
    }

    /// Does not check that the run exists (a worker calling this kept its state): an unknown
    /// run has no transitions.
    async fn load_since(&self, run_id: &str, version: u64) -> Result<Option<Vec<Transition>>, Error> {
        Ok(Some(self.log_items(run_id, version).await?))
    }

    async fn append(&self, expected: u64, transitions: &[Transition], head: &RunState) -> Result<bool, Error> {
        let Some(first) = transitions.first() else { return Ok(true) };
        if first.version != expected + 1 {
            return Err(other(format!("transitions start at {} after version {expected}", first.version)));
        }
        let run_id = &head.run_id;
        let mut item: Item = [
            ("pk".to_string(), s(run_pk(run_id))),
            ("sk".to_string(), s(log_sk(expected + 1))),
            ("last".to_string(), n(head.version)),
            ("expires_at".to_string(), n(self.expires_at(head))),
        ]
        .into();
        let what = format!("log-{:020}", expected + 1);
        self.payloads(
            &format!("runs/{run_id}"),
            &mut item,
            vec![(&what, serde_json::to_string(transitions)?, "t", "t_ref")],
        )
        .await?;
        let wru = wru_of(&item);
        self.aws.meter.log_writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let won = if changes_summary(transitions, head) {
            let put = Put::builder()
                .table_name(&self.aws.table)
                .set_item(Some(item))
                .condition_expression("attribute_not_exists(sk)")
                .build()
                .map_err(other)?;
            // The status change's audit record goes in the same transaction: one per change.
            let record = Record {
                at: llmo_runtime::ports::now_ms(),
                tenant: tenant_key(head.tenant.as_deref()).to_string(),
                actor: "system".into(),
                role: "system".into(),
                action: "run.status".into(),
                target: Some(run_id.clone()),
                result: head.status.as_str().into(),
                run_id: Some(run_id.clone()),
            };
            let mut tx = self
                .aws
                .dynamodb
                .transact_write_items()
                .transact_items(TransactWriteItem::builder().put(put).build())
                .transact_items(TransactWriteItem::builder().update(self.summary_update(head)?).build());
            // An ended run's summary also moves when answers of attempts cut off are counted
            // after it ended: that is no status change to audit.
            let ended_here = !head.status.is_terminal()
                || transitions.iter().any(|t| head.ended_by.as_deref() == Some(&*t.event.key()));
            if ended_here {
                tx = tx.transact_items(TransactWriteItem::builder().put(self.audit.put(&record)).build());
            }
            let r = tx.return_consumed_capacity(ReturnConsumedCapacity::Total).send().await;
            match r {
                Ok(out) => {
                    self.charge(
                        out.consumed_capacity().iter().filter_map(|c| c.capacity_units()).sum(),
                        2.0 * (wru + 2.0),
                    );
                    true
                }
                Err(e) if e.as_service_error().is_some_and(|e| e.is_transaction_canceled_exception()) => {
                    self.aws.meter.add_wru(2.0 * (wru + 2.0));
                    false
                }
                Err(e) => return Err(err(e)),
            }
        } else {
            let r = self
                .aws
                .dynamodb
                .put_item()
                .table_name(&self.aws.table)
                .set_item(Some(item))
                .condition_expression("attribute_not_exists(sk)")
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
                .await;
            match r {
                Ok(out) => {
                    self.charge(out.consumed_capacity().and_then(|c| c.capacity_units()).unwrap_or(0.0), wru);
                    true
                }
                Err(e) if e.as_service_error().is_some_and(|e| e.is_conditional_check_failed_exception()) => {
                    self.aws.meter.add_wru(wru);
                    false
                }
                Err(e) => return Err(err(e)),
            }
        };
        if !won {
            self.aws.meter.lost_writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(false);
        }
        if head.version / SNAPSHOT_EVERY > expected / SNAPSHOT_EVERY && !head.status.is_terminal() {
            self.snapshot(head).await?;
        }
        Ok(true)
    }

    /// Writes the state to S3 (`runs/<id>/state/<version>.json`) and points the run's
    /// snapshot item at it if it is newer; an ended run's result goes to `result.json` too.
    async fn snapshot(&self, state: &RunState) -> Result<(), Error> {
        let key = format!("runs/{}/state/{:020}.json", state.run_id, state.version);
        self.put_blob(&key, serde_json::to_vec(state)?).await?;
        if state.status.is_terminal() {
            self.write_result(state).await?;
        }
        let r = self
            .aws
            .dynamodb
            .put_item()
            .table_name(&self.aws.table)
            .item("pk", s(run_pk(&state.run_id)))
            .item("sk", s("SNAP"))
            .item("version", n(state.version))
            .item("key", s(key))
            .item("expires_at", n(self.expires_at(state)))
            .condition_expression("attribute_not_exists(version) OR version < :v")
            .expression_attribute_values(":v", n(state.version))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await;
        match r {
            Ok(out) => self.meter_capacity(out.consumed_capacity(), true),
            // A newer snapshot is already there.
            Err(e) if e.as_service_error().is_some_and(|e| e.is_conditional_check_failed_exception()) => {
                self.aws.meter.add_wru(1.0)
            }
            Err(e) => return Err(err(e)),
        }
        Ok(())
    }

    async fn version(&self, run_id: &str) -> Result<Option<u64>, Error> {
        let out = self
            .aws
            .dynamodb
            .query()
            .table_name(&self.aws.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :log)")
            .expression_attribute_values(":pk", s(run_pk(run_id)))
            .expression_attribute_values(":log", s("LOG#"))
            .projection_expression("#l")
            .expression_attribute_names("#l", "last")
            .scan_index_forward(false)
            .limit(1)
            .consistent_read(true)
            .send()
            .await
            .map_err(err)?;
        if let Some(item) = out.items().first() {
            return Ok(get_n(item, "last").map(|v| v as u64));
        }
        Ok(self.get(run_pk(run_id), "META").await?.map(|_| 0))
    }

    async fn history(&self, run_id: &str) -> Result<Vec<Transition>, Error> {
        self.log_items(run_id, 0).await
    }

    async fn list(&self) -> Result<Vec<RunSummary>, Error> {
        Ok(self.list_page(&ListFilter { tenant: "-".into(), limit: Some(100), ..Default::default() }).await?.runs)
    }

    async fn put_waiter(&self, w: &Waiter) -> Result<(), Error> {
        let created = created_ms(&w.run_id).unwrap_or(w.since);
        let item: Item = HashMap::from([
            ("pk".to_string(), s(waiter_pk(&w.tenant))),
            ("sk".to_string(), s(waiter_sk(w))),
            ("w".to_string(), s(serde_json::to_string(w)?)),
            ("expires_at".to_string(), n(created / 1000 + self.lifetime.horizon_secs())),
        ]);
        let out = self
            .aws
            .dynamodb
            .put_item()
            .table_name(&self.aws.table)
            .set_item(Some(item))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await
            .map_err(err)?;
        self.meter_capacity(out.consumed_capacity(), true);
        Ok(())
    }

    async fn waiters(&self, tenant: &str, event: Option<(&str, &str)>, limit: usize) -> Result<Vec<Waiter>, Error> {
        let mut q = self
            .aws
            .dynamodb
            .query()
            .table_name(&self.aws.table)
            .consistent_read(true)
            .expression_attribute_values(":pk", s(waiter_pk(tenant)));
        q = match event {
            None => q.key_condition_expression("pk = :pk"),
            Some((name, key)) => q
                .key_condition_expression("pk = :pk AND begins_with(sk, :p)")
                .expression_attribute_values(":p", s(format!("event#{}#{}#", esc(name), esc(key)))),
        };
        let items = self.query_items(q, limit).await?;
        let mut out: Vec<Waiter> =
            items.iter().filter_map(|i| get_s(i, "w")).filter_map(|w| serde_json::from_str(w).ok()).collect();
        out.sort_by(|a, b| a.since.cmp(&b.since).then_with(|| a.run_id.cmp(&b.run_id)));
        out.truncate(limit);
        Ok(out)
    }

    async fn drop_waiter(&self, w: &Waiter) -> Result<(), Error> {
        let out = self
            .aws
            .dynamodb
            .delete_item()
            .table_name(&self.aws.table)
            .key("pk", s(waiter_pk(&w.tenant)))
            .key("sk", s(waiter_sk(w)))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await
            .map_err(err)?;
        self.meter_capacity(out.consumed_capacity(), true);
        Ok(())
    }
}

pub(super) fn waiter_pk(tenant: &str) -> String {
    format!("WAIT#{}", if tenant.is_empty() { "-" } else { tenant })
}

/// `<kind>#<event>#<key>#<since>#<run>#<task>#<item>#<attempt>`: an event's waiters are one
/// `begins_with` away, oldest first.
pub(super) fn waiter_sk(w: &Waiter) -> String {
    let item = w.item.map_or("-".to_string(), |i| i.to_string());
    format!(
        "{}#{}#{}#{:013}#{}#{}#{item}#{}",
        w.kind.as_str(),
        esc(&w.event),
        esc(&w.key),
        w.since,
        w.run_id,
        w.task,
        w.attempt
    )
}

/// A key part with `#` (the separator) and `%` escaped.
pub(super) fn esc(v: &str) -> String {
    v.replace('%', "%25").replace('#', "%23")
}
