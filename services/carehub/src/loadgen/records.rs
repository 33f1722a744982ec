//! Records scenarios, and the charts they need, seeded through records' public RPCs as the
//! gateway workload: each patient of the identity seed (signed in, their access token) enters
//! the entries of their own chart with CreateEntry — conditions, medications and allergies,
//! what a patient may enter (lab results are the care team's).
//!
//! Nothing is deleted afterwards: records has no RPC that deletes an entry (a chart keeps every
//! version), and the patients are the load generator's own, distinct in every run.

use std::sync::Arc;

use anyhow::Context as _;
use carehub_proto::records::v1::entry_content::Content;
use carehub_proto::records::v1::records_service_client::RecordsServiceClient;
use carehub_proto::records::v1::{
    Allergy, AllergySeverity, AllergyStatus, Coding, Condition, ConditionStatus,
    CreateEntryRequest, Entry, EntryContent, GetChartRequest, GetEntryRequest, Medication,
    MedicationStatus, UpdateEntryRequest,
};
use tonic::transport::Channel;

use super::engine::{Op, OpFuture};
use super::identity::{bearer, retrying, SeededUser};

/// Entries each seeded chart starts with (more when the update slots need them).
pub const ENTRIES_PER_CHART: usize = 10;

const ICD10CM: &str = "http://hl7.org/fhir/sid/icd-10-cm";
const SNOMED: &str = "http://snomed.info/sct";
const RXNORM: &str = "http://www.nlm.nih.gov/research/umls/rxnorm";

/// A seeded patient and their chart.
#[derive(Clone, Debug)]
pub struct Patient {
    pub user_id: String,
    pub access_token: String,
    /// The entries seeded into the chart, in the order they were created.
    pub entries: Vec<String>,
}

/// The entry one update slot owns, at its current version.
#[derive(Debug)]
struct Owned {
    patient: usize,
    entry_id: String,
    etag: String,
    content: EntryContent,
    updates: u64,
}

/// Seeded data shared by the records scenarios.
pub struct Seed {
    pub patients: Vec<Patient>,
    pub entries_per_chart: usize,
    /// One per request in flight, each its own entry: a closed loop's slot `w` (whose calls are
    /// numbered `w` modulo the slots) always updates `owned[w]` with the etag its previous
    /// update returned, so it never races another writer and never gets ABORTED.
    owned: Vec<tokio::sync::Mutex<Owned>>,
}

fn clients(channels: &[Channel]) -> Vec<RecordsServiceClient<Channel>> {
    channels
        .iter()
        .map(|c| RecordsServiceClient::new(c.clone()))
        .collect()
}

fn coding(system: &str, code: &str, display: &str) -> Option<Coding> {
    Some(Coding {
        system: system.to_owned(),
        code: code.to_owned(),
        display: display.to_owned(),
    })
}

fn condition(code: &str, display: &str) -> EntryContent {
    EntryContent {
        content: Some(Content::Condition(Condition {
            code: coding(ICD10CM, code, display),
            clinical_status: ConditionStatus::Active as i32,
            onset_date: None,
            note: "entered by the patient".to_owned(),
        })),
    }
}

fn medication(code: &str, display: &str, dose: &str, frequency: &str) -> EntryContent {
    EntryContent {
        content: Some(Content::Medication(Medication {
            code: coding(RXNORM, code, display),
            dose: dose.to_owned(),
            route: "oral".to_owned(),
            frequency: frequency.to_owned(),
            status: MedicationStatus::Active as i32,
        })),
    }
}

fn allergy(system: &str, code: &str, display: &str, reaction: &str) -> EntryContent {
    EntryContent {
        content: Some(Content::Allergy(Allergy {
            substance: coding(system, code, display),
            reaction: reaction.to_owned(),
            severity: AllergySeverity::Moderate as i32,
            status: AllergyStatus::Active as i32,
        })),
    }
}

/// The `i`-th entry of a patient's chart (a cycle of ten: 4 conditions, 4 medications,
/// 2 allergies).
fn content(i: usize) -> EntryContent {
    match i % 10 {
        0 => condition("E11.9", "Type 2 diabetes mellitus without complications"),
        1 => condition("I10", "Essential (primary) hypertension"),
        2 => condition("E78.5", "Hyperlipidemia, unspecified"),
        3 => condition("J45.909", "Unspecified asthma, uncomplicated"),
        4 => medication(
            "860975",
            "metformin 500 MG Oral Tablet",
            "500 mg",
            "twice daily",
        ),
        5 => medication(
            "314076",
            "lisinopril 10 MG Oral Tablet",
            "10 mg",
            "once daily",
        ),
        6 => medication(
            "617310",
            "atorvastatin 20 MG Oral Tablet",
            "20 mg",
            "once daily at night",
        ),
        7 => medication(
            "745679",
            "albuterol 90 MCG/ACTU Metered Dose Inhaler",
            "2 puffs",
            "as needed",
        ),
        8 => allergy(RXNORM, "7980", "penicillin G", "hives"),
        _ => allergy(
            SNOMED,
            "256349002",
            "Peanut (substance)",
            "swelling of the lips",
        ),
    }
}

/// `content` changed in one field, so that every update makes a different version.
fn revised(content: &EntryContent, n: u64) -> EntryContent {
    let mut out = content.clone();
    match out.content.as_mut() {
        Some(Content::Condition(c)) => c.note = format!("revised by the patient ({n})"),
        Some(Content::Medication(m)) => m.frequency = format!("{} (revision {n})", m.frequency),
        Some(Content::Allergy(a)) => a.reaction = format!("{} (revision {n})", a.reaction),
        Some(Content::LabResult(_)) | None => {}
    }
    out
}

/// `msg` with the patient's token and a fresh (or the given) idempotency key.
fn mutating<T>(msg: T, token: &str, key: Option<&str>) -> Result<tonic::Request<T>, tonic::Status> {
    let mut req = bearer(msg, token)?;
    let key = key.map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
    req.metadata_mut().insert(
        "idempotency-key",
        key.parse()
            .map_err(|_| tonic::Status::internal("idempotency key"))?,
    );
    Ok(req)
}

/// Gives each of `users` a chart of at least [`ENTRIES_PER_CHART`] entries through CreateEntry
/// (enough for `slots` update slots to own one entry each), `parallel` at a time.
pub async fn seed(
    channels: &[Channel],
    users: &[SeededUser],
    slots: usize,
    parallel: usize,
) -> anyhow::Result<Seed> {
    anyhow::ensure!(!users.is_empty(), "no seeded patients");
    let clients = clients(channels);
    let per_chart = ENTRIES_PER_CHART.max(slots.div_ceil(users.len()));
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (p, user) in users.iter().enumerate() {
        for i in 0..per_chart {
            let client = clients[(p * per_chart + i) % clients.len()].clone();
            let (patient_id, token) = (user.user_id.clone(), user.access_token.clone());
            let sem = sem.clone();
            tasks.spawn(async move {
                let _permit = sem.acquire_owned().await?;
                // One key for every retry: a retry after a lost answer creates nothing twice.
                let key = uuid::Uuid::new_v4().to_string();
                let entry = retrying("CreateEntry", || {
                    let mut client = client.clone();
                    let msg = CreateEntryRequest {
                        patient_id: patient_id.clone(),
                        content: Some(content(i)),
                        ..CreateEntryRequest::default()
                    };
                    let req = mutating(msg, &token, Some(&key));
                    async move { client.create_entry(req?).await }
                })
                .await?
                .into_inner();
                Ok::<_, anyhow::Error>((p, i, entry))
            });
        }
    }
    let mut created: Vec<(usize, usize, Entry)> = Vec::with_capacity(users.len() * per_chart);
    while let Some(r) = tasks.join_next().await {
        created.push(r.context("seeding task")??);
    }
    created.sort_by_key(|(p, i, _)| (*p, *i));
    let mut patients: Vec<Patient> = users
        .iter()
        .map(|u| Patient {
            user_id: u.user_id.clone(),
            access_token: u.access_token.clone(),
            entries: Vec::with_capacity(per_chart),
        })
        .collect();
    let mut by_slot: Vec<Option<Owned>> = (0..slots).map(|_| None).collect();
    for (p, i, entry) in created {
        // Slot s owns entry s / users of patient s % users: distinct for every slot.
        let slot = i * users.len() + p;
        if let Some(owned) = by_slot.get_mut(slot) {
            *owned = Some(Owned {
                patient: p,
                entry_id: entry.id.clone(),
                etag: entry.etag.clone(),
                content: content(i),
                updates: 0,
            });
        }
        patients[p].entries.push(entry.id);
    }
    let owned = by_slot
        .into_iter()
        .map(|o| o.map(tokio::sync::Mutex::new))
        .collect::<Option<Vec<_>>>()
        .context("an update slot without its entry")?;
    Ok(Seed {
        patients,
        entries_per_chart: per_chart,
        owned,
    })
}

/// A records scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    ChartRead,
    ChartUpdate,
    ClinicMixed,
}

/// The operation of `kind` over `channels`.
pub fn op(kind: Kind, channels: &[Channel], seed: Arc<Seed>) -> Op {
    let clients = Arc::new(clients(channels));
    Arc::new(move |seq| -> OpFuture {
        let client = clients[(seq as usize) % clients.len()].clone();
        let seed = seed.clone();
        Box::pin(async move {
            match kind {
                Kind::ChartRead => chart_read(client, &seed, seq).await,
                Kind::ChartUpdate => chart_update(client, &seed, seq).await,
                // 6 chart reads : 2 entry reads : 1 update : 1 create.
                Kind::ClinicMixed => match seq % 10 {
                    0..=5 => chart_read(client, &seed, seq).await,
                    6 | 7 => entry_read(client, &seed, seq).await,
                    8 => chart_update(client, &seed, seq).await,
                    _ => entry_create(client, &seed, seq).await,
                },
            }
        })
    })
}

fn patient(seed: &Seed, seq: u64) -> Result<&Patient, tonic::Status> {
    let n = seed.patients.len().max(1) as u64;
    seed.patients
        .get((seq % n) as usize)
        .ok_or_else(|| tonic::Status::internal("no seeded charts"))
}

async fn chart_read(
    mut c: RecordsServiceClient<Channel>,
    seed: &Seed,
    seq: u64,
) -> Result<(), tonic::Status> {
    let p = patient(seed, seq)?;
    let msg = GetChartRequest {
        patient_id: p.user_id.clone(),
    };
    c.get_chart(bearer(msg, &p.access_token)?).await.map(|_| ())
}

async fn entry_read(
    mut c: RecordsServiceClient<Channel>,
    seed: &Seed,
    seq: u64,
) -> Result<(), tonic::Status> {
    let p = patient(seed, seq)?;
    let n = seed.patients.len().max(1) as u64;
    let entries = p.entries.len().max(1) as u64;
    let entry_id = p
        .entries
        .get(((seq / n) % entries) as usize)
        .ok_or_else(|| tonic::Status::internal("a seeded chart without entries"))?;
    let msg = GetEntryRequest {
        patient_id: p.user_id.clone(),
        entry_id: entry_id.clone(),
    };
    c.get_entry(bearer(msg, &p.access_token)?).await.map(|_| ())
}

async fn entry_create(
    mut c: RecordsServiceClient<Channel>,
    seed: &Seed,
    seq: u64,
) -> Result<(), tonic::Status> {
    let p = patient(seed, seq)?;
    let n = seed.patients.len().max(1) as u64;
    let msg = CreateEntryRequest {
        patient_id: p.user_id.clone(),
        content: Some(content((seq / n) as usize)),
        ..CreateEntryRequest::default()
    };
    c.create_entry(mutating(msg, &p.access_token, None)?)
        .await
        .map(|_| ())
}

async fn chart_update(
    mut c: RecordsServiceClient<Channel>,
    seed: &Seed,
    seq: u64,
) -> Result<(), tonic::Status> {
    let n = seed.owned.len() as u64;
    let slot = seed
        .owned
        .get((seq % n.max(1)) as usize)
        .ok_or_else(|| tonic::Status::internal("no update slots seeded"))?;
    let mut owned = slot.lock().await;
    let p = seed
        .patients
        .get(owned.patient)
        .ok_or_else(|| tonic::Status::internal("an update slot without its patient"))?;
    owned.updates += 1;
    let msg = UpdateEntryRequest {
        patient_id: p.user_id.clone(),
        entry_id: owned.entry_id.clone(),
        content: Some(revised(&owned.content, owned.updates)),
        etag: owned.etag.clone(),
        // No sensitivity labels: the entry stays as the seed made it.
        ..UpdateEntryRequest::default()
    };
    match c.update_entry(mutating(msg, &p.access_token, None)?).await {
        Ok(answer) => {
            owned.etag = answer.into_inner().etag;
            Ok(())
        }
        Err(status) => {
            // The outcome may be unknown (a timeout after the commit): take the current etag
            // again so that one failure does not turn every later update into ABORTED.
            let msg = GetEntryRequest {
                patient_id: p.user_id.clone(),
                entry_id: owned.entry_id.clone(),
            };
            if let Ok(entry) = c.get_entry(bearer(msg, &p.access_token)?).await {
                owned.etag = entry.into_inner().etag;
            }
            Err(status)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_cycles_through_what_a_patient_may_enter_and_revisions_change_it() {
        for i in 0..ENTRIES_PER_CHART {
            let c = content(i);
            assert!(
                !matches!(c.content, Some(Content::LabResult(_)) | None),
                "{c:?}"
            );
            assert_ne!(revised(&c, 1), c);
            assert_ne!(revised(&c, 1), revised(&c, 2));
        }
    }
}
