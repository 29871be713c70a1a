//! One ingest request, from component outcome to committed rows: the plans
//! are checked against the tables the component declared, written through
//! the tenant's batching writer, and tallied per event.

use crate::db::writer::{CheckedPlan, WriteError, Writer};
use crate::runtime::{ComponentFailure, Normalizer, Runtime};
use serde::Serialize;
use sluice_sdk::sql::Upsert;
use sluice_sdk::{Conflict, Request, RequestError, Table, UpsertPlan, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// A tenant: who sends, which component normalizes, where rows go.
pub struct Tenant {
    pub id: String,
    pub normalizer: Arc<Normalizer>,
    pub schema: String,
    pub writer: Writer,
    /// Statements by plan shape, built once.
    upserts: Mutex<HashMap<(String, Vec<String>, Conflict), Arc<Upsert>>>,
}

/// What the response says about a request's events.
#[derive(Debug, Serialize, PartialEq)]
pub struct Tally {
    /// Events in the request.
    pub events: u32,
    /// Events with at least one row newly written.
    pub inserted: u32,
    /// Events whose rows were all there already.
    pub duplicates: u32,
    /// Events refused, with why.
    pub rejected: Vec<Rejected>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Rejected {
    /// The event's position in the request, from 0.
    pub index: u32,
    pub reason: String,
}

#[derive(Debug)]
pub enum IngestError {
    Request(RequestError),
    Component(ComponentFailure),
    Write(WriteError),
}

impl Tenant {
    pub fn new(id: &str, normalizer: Arc<Normalizer>, schema: &str, writer: Writer) -> Tenant {
        Tenant { id: id.to_owned(), normalizer, schema: schema.to_owned(), writer, upserts: Mutex::default() }
    }

    /// Normalizes and writes one request; answers after the rows commit.
    pub async fn ingest(&self, runtime: &Arc<Runtime>, request: Request) -> Result<Tally, IngestError> {
        let outcome = runtime
            .handle(self.normalizer.clone(), request)
            .await
            .map_err(IngestError::Component)?
            .map_err(IngestError::Request)?;
        let mut rejected: BTreeMap<u32, String> = BTreeMap::new();
        for rejection in outcome.rejections {
            if rejection.index < outcome.events {
                rejected.entry(rejection.index).or_insert(rejection.reason);
            }
        }
        let (plans, row_events): (Vec<CheckedPlan>, Vec<Vec<u32>>) =
            self.check(outcome.plans, outcome.events, &mut rejected).into_iter().unzip();
        let written = self.writer.write(plans).await.map_err(IngestError::Write)?;

        // An event counts as inserted when any of its rows was written.
        let mut stored: BTreeMap<u32, bool> = BTreeMap::new();
        for (events, rows) in row_events.iter().zip(&written) {
            for (event, was_written) in events.iter().zip(rows) {
                *stored.entry(*event).or_default() |= *was_written;
            }
        }
        Ok(Tally {
            events: outcome.events,
            inserted: stored.values().filter(|w| **w).count() as u32,
            duplicates: stored.values().filter(|w| !**w).count() as u32,
            rejected: rejected.into_iter().map(|(index, reason)| Rejected { index, reason }).collect(),
        })
    }

    /// Checks each plan against the declared tables and each row against
    /// its columns. An event with any bad row is rejected whole: none of its
    /// rows are written. Returns the plans with each row's event.
    fn check(&self, plans: Vec<UpsertPlan>, events: u32, rejected: &mut BTreeMap<u32, String>) -> Vec<(CheckedPlan, Vec<u32>)> {
        let mut checked = Vec::with_capacity(plans.len());
        for plan in plans {
            let upsert = self.upsert(&plan);
            for row in &plan.rows {
                let problem = if row.event >= events {
                    Some(format!("the component tied a row to event {} of {events}", row.event))
                } else {
                    match &upsert {
                        Err(e) => Some(format!("the component's plan is invalid: {e}")),
                        Ok((_, table)) => check_row(table, &plan, &row.values).err(),
                    }
                };
                if let Some(reason) = problem {
                    rejected.entry(row.event.min(events.saturating_sub(1))).or_insert(reason);
                }
            }
            if let Ok((upsert, _)) = upsert {
                checked.push((upsert, plan));
            }
        }
        checked
            .into_iter()
            .map(|(upsert, mut plan)| {
                plan.rows.retain(|row| !rejected.contains_key(&row.event));
                let events = plan.rows.iter().map(|r| r.event).collect();
                (CheckedPlan { upsert, plan }, events)
            })
            .filter(|(p, _)| !p.plan.rows.is_empty())
            .collect()
    }

    fn upsert(&self, plan: &UpsertPlan) -> Result<(Arc<Upsert>, &Table), String> {
        let table = self
            .normalizer
            .tables
            .iter()
            .find(|t| t.name == plan.table)
            .ok_or_else(|| format!("it writes table {:?}, which it does not declare", plan.table))?;
        let key = (plan.table.clone(), plan.columns.clone(), plan.conflict.clone());
        let mut cache = self.upserts.lock().unwrap();
        if let Some(upsert) = cache.get(&key) {
            return Ok((upsert.clone(), table));
        }
        let upsert = Arc::new(Upsert::new(&self.schema, table, &plan.columns, &plan.conflict)?);
        cache.insert(key, upsert.clone());
        Ok((upsert, table))
    }
}

fn check_row(table: &Table, plan: &UpsertPlan, values: &[Value]) -> Result<(), String> {
    if values.len() != plan.columns.len() {
        return Err(format!(
            "the component gave a row {} values for {} columns of table {:?}",
            values.len(),
            plan.columns.len(),
            table.name
        ));
    }
    for (name, value) in plan.columns.iter().zip(values) {
        let column = table.column(name).expect("checked with the plan");
        match value.column_type() {
            None if !column.nullable => {
                return Err(format!("column {name:?} of table {:?} may not be null", table.name));
            }
            Some(ty) if ty != column.data_type => {
                return Err(format!(
                    "the component gave column {name:?} of table {:?} a {} value; it is declared {}",
                    table.name,
                    ty.sql_name(),
                    column.data_type.sql_name()
                ));
            }
            _ => {}
        }
    }
    Ok(())
}
