//! [`CoalitionClient`]: one device's store, and everything an app does with it.
//!
//! Every call that touches the store or the network is `async` and does its work on the
//! library's threads (see [`crate::sync`]); the caller's thread only awaits. Edits are
//! checked against the user's role and the domain's hard rules before anything is written,
//! and return once the change is durable.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{NaiveDate, Utc};
use coalition_core::model::{self, keys, DocKind};
use coalition_core::report::{self as core_report, Report, State};
use coalition_core::store::Store;
use coalition_core::sync::DocumentId;
use coalition_core::transport;
use coalition_core::{ids, Coalition, Edit, Identity};

use crate::error::{CoalitionError, Result};
use crate::sync::{self, blocking, Background, SyncListener};
use crate::types::*;

/// A device's coalition store, opened at a directory the app owns (e.g. Android's
/// `filesDir`, iOS's Application Support). Open one per store and keep it for the app's
/// lifetime; it is safe to call from any thread.
#[derive(uniffi::Object)]
pub struct CoalitionClient {
    dir: PathBuf,
    /// The connection edits and reads go through, one call at a time. Syncs use their own.
    store: Arc<Mutex<Store>>,
    background: Mutex<Option<Background>>,
}

impl std::fmt::Debug for CoalitionClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoalitionClient")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Locks a mutex; a panic while it was held leaves the store usable (SQLite transactions
/// are atomic), so a poisoned lock is taken over rather than failing every later call.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn now() -> i64 {
    Utc::now().timestamp()
}

fn today() -> String {
    Utc::now().date_naive().to_string()
}

fn parse_coalition(id: &str) -> Result<DocumentId> {
    DocumentId::parse_id_or_url(id)
        .map_err(|e| CoalitionError::invalid("coalition_id", e.to_string()))
}

fn parse_date(field: &str, text: &str) -> Result<NaiveDate> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map_err(|_| CoalitionError::invalid(field, format!("`{text}` is not a date (YYYY-MM-DD)")))
}

fn identity(store: &Store) -> Result<Identity> {
    store
        .identity()?
        .ok_or_else(|| CoalitionError::NotEnrolled {
            detail: "this device has no identity yet: enroll it with an invite first".into(),
        })
}

/// An entity that must exist for an edit of it.
fn require<T: serde::de::DeserializeOwned>(
    coalition: &Coalition,
    kind: DocKind,
    collection: &str,
    id: &str,
    what: &str,
) -> Result<T> {
    coalition
        .find_entity(kind, collection, id)?
        .ok_or_else(|| CoalitionError::not_found(what, id))
}

fn json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| CoalitionError::Data {
        detail: format!("cannot encode as JSON: {e}"),
    })
}

fn release_entry(
    id: String,
    operator: String,
    input: LandReleaseInput,
    amends: Option<String>,
    voids: Option<String>,
    reason: Option<String>,
) -> model::LandReleaseEntry {
    model::LandReleaseEntry {
        id,
        area_id: input.area_id,
        task_id: input.task_id,
        operator,
        method: input.method.into(),
        cancelled_m2: input.cancelled_m2,
        reduced_m2: input.reduced_m2,
        cleared_m2: input.cleared_m2,
        items: input.items.into_iter().collect(),
        date_of_information: input.date_of_information,
        location: input.location,
        amends,
        voids,
        reason,
    }
}

impl CoalitionClient {
    /// Runs `work` with the client's store on a blocking-pool thread.
    async fn with_store<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> Result<T> + Send + 'static,
    {
        let store = self.store.clone();
        blocking(move || work(&mut lock(&store))).await
    }

    /// Runs `read` on a coalition loaded from the store.
    async fn read<T, F>(&self, coalition_id: String, read: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Coalition) -> Result<T> + Send + 'static,
    {
        self.with_store(move |store| {
            let id = parse_coalition(&coalition_id)?;
            let mut coalition = store.load(&id)?;
            read(&mut coalition)
        })
        .await
    }

    /// Makes an edit as this device's user and saves it durably; returns the entity id.
    /// `make` builds the edit from the current coalition (for edits of existing entities).
    async fn edit<F>(&self, coalition_id: String, make: F) -> Result<String>
    where
        F: FnOnce(&Coalition, &Identity) -> Result<Edit> + Send + 'static,
    {
        let listener = self.listener();
        let (entity_id, changed) = self
            .with_store(move |store| {
                let who = identity(store)?;
                let id = parse_coalition(&coalition_id)?;
                let mut coalition = store.load(&id)?;
                let edit = make(&coalition, &who)?;
                let committed = coalition.apply(&who, edit, now())?;
                store.save(&mut coalition, &committed.docs)?;
                let changed: Vec<DocumentChange> = committed
                    .docs
                    .iter()
                    .filter_map(|d| coalition.doc(d))
                    .map(|d| DocumentChange {
                        coalition_id: Some(id.to_string()),
                        document_id: d.id.to_string(),
                        kind: Some(d.kind.to_string()),
                        owner: d.owner.clone(),
                        changes: 0,
                        authors: vec![format!("{} ({})", who.user, who.org)],
                        remote: false,
                    })
                    .collect();
                Ok((committed.entity_id, changed))
            })
            .await?;
        if let Some(listener) = listener {
            for change in changed {
                listener.on_document_changed(change);
            }
        }
        Ok(entity_id)
    }

    /// The listener of the running background sync, if any.
    fn listener(&self) -> Option<Arc<dyn SyncListener>> {
        lock(&self.background).as_ref().map(|b| b.listener.clone())
    }
}

#[uniffi::export]
impl CoalitionClient {
    /// Opens (creating if needed) the store in the directory `store_path`. Fast: it opens
    /// one SQLite file; everything slower is an async call.
    #[uniffi::constructor]
    pub fn open(store_path: String) -> Result<Arc<Self>> {
        if store_path.trim().is_empty() {
            return Err(CoalitionError::invalid(
                "store_path",
                "the store path is empty",
            ));
        }
        let dir = PathBuf::from(store_path);
        let store = Store::open(&dir)?;
        Ok(Arc::new(CoalitionClient {
            dir,
            store: Arc::new(Mutex::new(store)),
            background: Mutex::new(None),
        }))
    }

    /// Enrolls this device with an invite from a coordinator: asks the relay at `server`
    /// (`https://...`) for a device credential and stores it with the user's identity and
    /// the coalitions to sync. `device_name` is shown to coordinators. Call `sync_now` next
    /// to fetch the coalitions.
    pub async fn enroll(
        &self,
        server: String,
        invite: String,
        device_name: Option<String>,
    ) -> Result<Enrollment> {
        let dir = self.dir.clone();
        blocking(move || {
            // Its own connection: the HTTP call may take up to 30 s and must not hold up
            // reads and edits.
            let store = Store::open(&dir)?;
            let enrolled = transport::enroll(
                &store,
                &server,
                invite.trim(),
                device_name.as_deref().filter(|d| !d.trim().is_empty()),
            )?;
            Ok(enrolled.into())
        })
        .await
    }

    /// Who uses this device, once enrolled.
    pub async fn identity(&self) -> Result<Option<DeviceIdentity>> {
        self.with_store(|store| Ok(store.identity()?.map(Into::into)))
            .await
    }

    /// The device's sync status, without the network: enrolled, last sync, last error,
    /// documents with changes not yet on the relay.
    pub async fn status(&self) -> Result<DeviceStatus> {
        self.with_store(|store| Ok(transport::status(store)?.into()))
            .await
    }

    /// The coalitions on this device and those it syncs (before the first sync these have
    /// no name yet).
    pub async fn coalitions(&self) -> Result<Vec<CoalitionSummary>> {
        self.with_store(|store| {
            let synced = transport::synced_coalitions(store)?;
            let mut out = Vec::new();
            for stored in store.coalitions()? {
                let info = store.load(&stored.id).ok().and_then(|c| c.info().ok());
                out.push(CoalitionSummary {
                    id: stored.id.to_string(),
                    name: info.as_ref().map(|i| i.name.clone()),
                    affected_state: info.map(|i| i.affected_state),
                    documents: count(stored.documents),
                    synced: synced.contains(&stored.id),
                });
            }
            for id in synced {
                let id = id.to_string();
                if !out.iter().any(|c| c.id == id) {
                    out.push(CoalitionSummary {
                        id,
                        name: None,
                        affected_state: None,
                        documents: 0,
                        synced: true,
                    });
                }
            }
            Ok(out)
        })
        .await
    }

    /// The consolidated report of a coalition as of a date (`YYYY-MM-DD`; today if absent):
    /// progress, funding gap, deadline risk, flags, and the whole report as JSON.
    pub async fn report(
        &self,
        coalition_id: String,
        as_of: Option<String>,
    ) -> Result<CoalitionReport> {
        let date = match as_of.as_deref() {
            Some(text) => parse_date("as_of", text)?,
            None => Utc::now().date_naive(),
        };
        self.read(coalition_id, move |coalition| {
            let report = Report::build(coalition, date)?;
            CoalitionReport::of(&report).map_err(|e| CoalitionError::Data {
                detail: format!("cannot encode the report: {e}"),
            })
        })
        .await
    }

    /// Fields that devices wrote concurrently with different values, with each value's
    /// author and time. Writing the field again resolves the conflict.
    pub async fn conflicts(&self, coalition_id: String) -> Result<Vec<Conflict>> {
        self.read(coalition_id, |coalition| {
            Ok(core_report::conflicts(coalition)?
                .into_iter()
                .map(Into::into)
                .collect())
        })
        .await
    }

    /// Who changed what, when: the changes that match `filter`, oldest first.
    pub async fn history(
        &self,
        coalition_id: String,
        filter: HistoryFilter,
    ) -> Result<Vec<HistoryEntry>> {
        self.read(coalition_id, move |coalition| {
            let mut list = core_report::history(coalition, &(&filter).into())?;
            if let Some(n) = filter.last {
                let skip = list.len().saturating_sub(n as usize);
                list.drain(..skip);
            }
            Ok(list.into_iter().map(Into::into).collect())
        })
        .await
    }

    /// Every entity of the coalition (the consolidated state) as JSON: for screens the typed
    /// calls do not cover.
    pub async fn state_json(&self, coalition_id: String) -> Result<String> {
        self.read(coalition_id, |coalition| json(&State::of(coalition)?))
            .await
    }

    /// The hazard areas, by code.
    pub async fn hazard_areas(&self, coalition_id: String) -> Result<Vec<HazardArea>> {
        self.read(coalition_id, |coalition| {
            let state = State::of(coalition)?;
            let mut areas: Vec<HazardArea> = state.hazard_areas.values().map(Into::into).collect();
            areas.sort_by(|a, b| (&a.fields.code, &a.id).cmp(&(&b.fields.code, &b.id)));
            Ok(areas)
        })
        .await
    }

    /// The land release entries with their approval, oldest information first.
    pub async fn land_release_entries(
        &self,
        coalition_id: String,
    ) -> Result<Vec<LandReleaseEntry>> {
        self.read(coalition_id, |coalition| {
            let state = State::of(coalition)?;
            let mut entries: Vec<LandReleaseEntry> = state
                .releases
                .values()
                .map(|e| LandReleaseEntry::of(e, state.approvals.get(&e.id)))
                .collect();
            entries.sort_by(|a, b| {
                (&a.figures.date_of_information, &a.id)
                    .cmp(&(&b.figures.date_of_information, &b.id))
            });
            Ok(entries)
        })
        .await
    }

    /// The pledges, with the status merging settled on.
    pub async fn pledges(&self, coalition_id: String) -> Result<Vec<Pledge>> {
        self.read(coalition_id, |coalition| {
            let state = State::of(coalition)?;
            Ok(state.pledges.values().map(Into::into).collect())
        })
        .await
    }

    /// Operator: records a land release entry from the field, for the user's organisation.
    /// Entries are immutable: correct one with `amend_land_release` or `void_land_release`.
    /// Returns the entry's id.
    pub async fn record_land_release(
        &self,
        coalition_id: String,
        entry: LandReleaseInput,
    ) -> Result<String> {
        self.edit(coalition_id, move |_, who| {
            Ok(Edit::RecordRelease(release_entry(
                ids::new_entity_id(),
                who.org.clone(),
                entry,
                None,
                None,
                None,
            )))
        })
        .await
    }

    /// Operator: corrects an entry of the user's organisation with new figures; the
    /// correction replaces the original's figures once approved. Returns the new entry's id.
    pub async fn amend_land_release(
        &self,
        coalition_id: String,
        entry_id: String,
        corrected: LandReleaseInput,
        reason: String,
    ) -> Result<String> {
        self.edit(coalition_id, move |_, who| {
            Ok(Edit::RecordRelease(release_entry(
                ids::new_entity_id(),
                who.org.clone(),
                corrected,
                Some(entry_id),
                None,
                Some(reason),
            )))
        })
        .await
    }

    /// Operator: voids an entry of the user's organisation (recorded in error); once the
    /// void is approved the entry no longer counts. `date` defaults to today. Returns the
    /// void entry's id.
    pub async fn void_land_release(
        &self,
        coalition_id: String,
        entry_id: String,
        reason: String,
        date: Option<String>,
    ) -> Result<String> {
        self.edit(coalition_id, move |coalition, who| {
            let original: model::LandReleaseEntry = require(
                coalition,
                DocKind::Operator,
                keys::RELEASES,
                &entry_id,
                "land release entry",
            )?;
            let date = date.unwrap_or_else(today);
            Ok(Edit::RecordRelease(model::LandReleaseEntry {
                id: ids::new_entity_id(),
                area_id: original.area_id,
                task_id: original.task_id,
                operator: who.org.clone(),
                method: original.method,
                cancelled_m2: 0,
                reduced_m2: 0,
                cleared_m2: 0,
                items: Default::default(),
                // Never before the original: the fold applies entries in this order.
                date_of_information: date.max(original.date_of_information),
                location: None,
                amends: None,
                voids: Some(entry_id),
                reason: Some(reason),
            }))
        })
        .await
    }

    /// Mine action centre: approves a land release entry; it then counts in the figures.
    /// `date` defaults to today. Returns the entry's id.
    pub async fn approve_land_release(
        &self,
        coalition_id: String,
        entry_id: String,
        note: Option<String>,
        date: Option<String>,
    ) -> Result<String> {
        self.decide(coalition_id, entry_id, Decision::Approved, note, date)
            .await
    }

    /// Mine action centre: rejects a land release entry, saying why; it is kept and never
    /// counts. `date` defaults to today. Returns the entry's id.
    pub async fn reject_land_release(
        &self,
        coalition_id: String,
        entry_id: String,
        note: String,
        date: Option<String>,
    ) -> Result<String> {
        self.decide(coalition_id, entry_id, Decision::Rejected, Some(note), date)
            .await
    }

    /// Mine action centre: adds a hazard area. Returns its id.
    pub async fn add_hazard_area(
        &self,
        coalition_id: String,
        area: HazardAreaInput,
    ) -> Result<String> {
        self.edit(coalition_id, move |_, _| {
            Ok(Edit::PutHazardArea(model::HazardArea {
                id: ids::new_entity_id(),
                code: area.code,
                name: area.name,
                admin_area: area.admin_area,
                geometry: area.geometry,
                class: area.hazard_class.into(),
                baseline_m2: area.baseline_m2,
                hazard_types: area.hazard_types,
                priority: area.priority,
                status: area.status.into(),
            }))
        })
        .await
    }

    /// Mine action centre: changes the given fields of a hazard area. Returns its id.
    pub async fn edit_hazard_area(
        &self,
        coalition_id: String,
        area_id: String,
        changes: HazardAreaChanges,
    ) -> Result<String> {
        self.edit(coalition_id, move |coalition, _| {
            let mut a: model::HazardArea = require(
                coalition,
                DocKind::Plan,
                keys::HAZARD_AREAS,
                &area_id,
                "hazard area",
            )?;
            let HazardAreaChanges {
                code,
                name,
                admin_area,
                geometry,
                hazard_class,
                hazard_types,
                priority,
                status,
            } = changes;
            a.code = code.unwrap_or(a.code);
            a.name = name.unwrap_or(a.name);
            a.admin_area = admin_area.unwrap_or(a.admin_area);
            a.geometry = geometry.unwrap_or(a.geometry);
            a.class = hazard_class.map(Into::into).unwrap_or(a.class);
            a.hazard_types = hazard_types.unwrap_or(a.hazard_types);
            a.priority = priority.unwrap_or(a.priority);
            a.status = status.map(Into::into).unwrap_or(a.status);
            Ok(Edit::PutHazardArea(a))
        })
        .await
    }

    /// Mine action centre: changes a hazard area's baseline, keeping the old one in its
    /// history. Returns the area's id.
    pub async fn rebaseline_hazard_area(
        &self,
        coalition_id: String,
        area_id: String,
        baseline_m2: i64,
        date: String,
        reason: String,
    ) -> Result<String> {
        self.edit(coalition_id, move |_, _| {
            Ok(Edit::Rebaseline {
                area_id,
                baseline_m2,
                date,
                reason,
            })
        })
        .await
    }

    /// Operator: reports progress on a task of its own. Returns the task's id.
    pub async fn report_task_progress(
        &self,
        coalition_id: String,
        task_id: String,
        status: TaskStatus,
        started: Option<String>,
        ended: Option<String>,
    ) -> Result<String> {
        self.edit(coalition_id, move |coalition, _| {
            let current: Option<model::TaskProgress> =
                coalition.find_entity(DocKind::Operator, keys::TASK_PROGRESS, &task_id)?;
            let mut p = current.unwrap_or(model::TaskProgress {
                task_id,
                status: status.into(),
                actual_start: None,
                actual_end: None,
            });
            p.status = status.into();
            if started.is_some() {
                p.actual_start = started;
            }
            if ended.is_some() {
                p.actual_end = ended;
            }
            Ok(Edit::PutTaskProgress(p))
        })
        .await
    }

    /// Donor: adds a pledge of the user's organisation. Returns its id.
    pub async fn add_pledge(&self, coalition_id: String, pledge: PledgeInput) -> Result<String> {
        self.edit(coalition_id, move |_, who| {
            let status: model::PledgeStatus = pledge.status.into();
            Ok(Edit::PutPledge(model::Pledge {
                id: ids::new_entity_id(),
                donor: who.org.clone(),
                need_id: pledge.need_id,
                pillar: pledge.pillar.into(),
                amount: pledge.amount,
                currency: pledge.currency,
                start_year: pledge.start_year,
                end_year: pledge.end_year,
                channel: pledge.channel,
                status,
                committed_on: status.covers_need().then(today),
            }))
        })
        .await
    }

    /// Donor: moves a pledge of its own forward (announced → committed → disbursed) or
    /// cancels it. `date` (default today) is recorded as the commitment date when it becomes
    /// committed. Returns the pledge's id.
    pub async fn set_pledge_status(
        &self,
        coalition_id: String,
        pledge_id: String,
        status: PledgeStatus,
        date: Option<String>,
    ) -> Result<String> {
        self.edit(coalition_id, move |coalition, _| {
            let mut p: model::Pledge = require(
                coalition,
                DocKind::Partner,
                keys::PLEDGES,
                &pledge_id,
                "pledge",
            )?;
            let status: model::PledgeStatus = status.into();
            if status.covers_need() && p.committed_on.is_none() {
                p.committed_on = Some(date.unwrap_or_else(today));
            }
            p.status = status;
            Ok(Edit::PutPledge(p))
        })
        .await
    }

    /// Donor: records a disbursement of a pledge of its own (`currency` defaults to the
    /// pledge's). Returns the disbursement's id.
    pub async fn disburse_pledge(
        &self,
        coalition_id: String,
        pledge_id: String,
        amount: i64,
        currency: Option<String>,
        date: String,
    ) -> Result<String> {
        self.edit(coalition_id, move |coalition, _| {
            let p: model::Pledge = require(
                coalition,
                DocKind::Partner,
                keys::PLEDGES,
                &pledge_id,
                "pledge",
            )?;
            Ok(Edit::AddDisbursement(model::Disbursement {
                id: ids::new_entity_id(),
                pledge_id,
                amount,
                currency: currency.unwrap_or(p.currency),
                date,
            }))
        })
        .await
    }

    /// Any member: adds a comment, field note or meeting decision, optionally about an
    /// entity (by id). Returns the comment's id.
    pub async fn add_comment(
        &self,
        coalition_id: String,
        kind: CommentKind,
        about: Option<String>,
        text: String,
    ) -> Result<String> {
        self.edit(coalition_id, move |_, who| {
            Ok(Edit::AddComment(model::Comment {
                id: ids::new_entity_id(),
                kind: kind.into(),
                about,
                text,
                org: who.org.clone(),
                user: who.user.clone(),
                at: now(),
            }))
        })
        .await
    }

    /// Ministry or coordinator: rewrites a narrative section. Concurrent rewrites merge as
    /// text. Returns the section's name.
    pub async fn set_narrative(
        &self,
        coalition_id: String,
        section: NarrativeSection,
        text: String,
    ) -> Result<String> {
        self.edit(coalition_id, move |_, _| {
            Ok(Edit::SetNarrative {
                section: section.into(),
                text,
            })
        })
        .await
    }

    /// Syncs once with the relay: sends what this device has that the relay lacks, receives
    /// the rest, and returns when every document is answered and the link is quiet. Fails
    /// with `Network` (local work kept, try later), `CredentialRefused` or `NotEnrolled`.
    /// Reports document changes to the background sync's listener, if one runs.
    pub async fn sync_now(&self) -> Result<SyncSummary> {
        sync::sync_now(self.dir.clone(), self.listener()).await
    }

    /// Starts syncing in the background on the library's own thread: stays connected,
    /// applies remote changes as they arrive, pushes this device's edits within half a
    /// second, and reconnects by itself. `listener` hears of document changes and status
    /// changes. Returns at once; a second call while running replaces nothing and returns
    /// false.
    pub fn start_background_sync(&self, listener: Arc<dyn SyncListener>) -> Result<bool> {
        let mut slot = lock(&self.background);
        if let Some(running) = slot.as_ref() {
            if !running.is_finished() {
                return Ok(false);
            }
        }
        *slot = Some(Background::start(self.dir.clone(), listener)?);
        Ok(true)
    }

    /// Stops background sync: the connection closes and the listener hears `Stopped`.
    /// Returns at once (false if it was not running); local data is never touched.
    pub fn stop_background_sync(&self) -> bool {
        let running = lock(&self.background).take();
        match running {
            Some(background) => {
                // The thread ends within the close handshake's two seconds; nobody needs to
                // wait for it.
                drop(background.stop());
                true
            }
            None => false,
        }
    }

    /// Whether background sync is running.
    pub fn is_background_sync_running(&self) -> bool {
        lock(&self.background)
            .as_ref()
            .is_some_and(|b| !b.is_finished())
    }
}

impl CoalitionClient {
    async fn decide(
        &self,
        coalition_id: String,
        entry_id: String,
        decision: Decision,
        note: Option<String>,
        date: Option<String>,
    ) -> Result<String> {
        self.edit(coalition_id, move |_, _| {
            Ok(Edit::Approve(model::Approval {
                entry_id,
                decision: decision.into(),
                decided_on: date.unwrap_or_else(today),
                note,
            }))
        })
        .await
    }
}

impl Drop for CoalitionClient {
    fn drop(&mut self) {
        // Background sync holds no reference to the client; without this it would run on.
        if let Some(background) = lock(&self.background).take() {
            drop(background.stop());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        sync::runtime().expect("runtime").block_on(f)
    }

    #[derive(Default)]
    struct Recorder(Mutex<Vec<SyncStatus>>);

    impl SyncListener for Recorder {
        fn on_document_changed(&self, _change: DocumentChange) {}
        fn on_sync_status(&self, status: SyncStatus) {
            lock(&self.0).push(status);
        }
    }

    #[test]
    fn a_device_that_never_enrolled_is_told_to_enroll() {
        let dir = tempfile::tempdir().expect("tempdir");
        let client = CoalitionClient::open(dir.path().display().to_string()).expect("open");
        assert_eq!(block_on(client.coalitions()).expect("list"), vec![]);
        let coalition = DocumentId::new_random().to_string();
        let err = block_on(client.add_comment(
            coalition.clone(),
            CommentKind::Comment,
            None,
            "hi".into(),
        ))
        .expect_err("no identity");
        assert!(matches!(err, CoalitionError::NotEnrolled { .. }), "{err:?}");
        let err = block_on(client.sync_now()).expect_err("not enrolled");
        assert!(matches!(err, CoalitionError::NotEnrolled { .. }), "{err:?}");
        let err = block_on(client.report(coalition.clone(), Some("2026-13-01".into())))
            .expect_err("bad date");
        assert!(
            matches!(err, CoalitionError::Invalid { ref field, .. } if field == "as_of"),
            "{err:?}"
        );
        let err = block_on(client.report("not an id".into(), None)).expect_err("bad id");
        assert!(
            matches!(err, CoalitionError::Invalid { ref field, .. } if field == "coalition_id"),
            "{err:?}"
        );
        let err = block_on(client.report(coalition, None)).expect_err("unknown");
        assert!(
            matches!(err, CoalitionError::NotFound { ref what, .. } if what == "coalition"),
            "{err:?}"
        );
    }

    #[test]
    fn background_sync_that_cannot_start_reports_why_and_stops() {
        let dir = tempfile::tempdir().expect("tempdir");
        let client = CoalitionClient::open(dir.path().display().to_string()).expect("open");
        let recorder = Arc::new(Recorder::default());
        assert!(client
            .start_background_sync(recorder.clone())
            .expect("start"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !lock(&recorder.0)
            .iter()
            .any(|s| s.state == SyncState::Stopped)
        {
            assert!(Instant::now() < deadline, "no Stopped status");
            std::thread::sleep(Duration::from_millis(20));
        }
        let statuses = lock(&recorder.0).clone();
        let states: Vec<SyncState> = statuses.iter().map(|s| s.state).collect();
        assert_eq!(
            states,
            vec![SyncState::Connecting, SyncState::Failed, SyncState::Stopped]
        );
        assert!(
            statuses[1]
                .detail
                .as_deref()
                .unwrap_or("")
                .contains("enroll"),
            "{statuses:?}"
        );
        assert!(!client.is_background_sync_running());
    }
}
