//! What every agent request reads, kept in memory: the device row, the gateway row (of a
//! request a gateway forwarded), and the fact that a device has no pending (or no open) task.
//!
//! An unchanged agent's cycle through a gateway (a check-in, then a long-poll until the next
//! one) read its gateway twice, its device twice and probed its tasks twice: six round trips
//! to SQLite's worker threads, about a third of the server's CPU in the 100,000-agent run
//! (BENCHMARKS.md, round 7). With these caches it reads nothing once each row was read once.
//!
//! **Invariant: this process is the database's only writer** (the server holds
//! `run/server.lock`), and every write that changes a cached row goes through
//! [`crate::SqliteStore`], which announces it before it starts ([`Cache::begin_write`]) and
//! when it ends, committed or not ([`Cache::end_write`]). It runs such writes on tasks of
//! their own, so a caller that stops waiting cannot let a write commit unannounced. A write
//! made behind the store's back (`sqlite3` by hand) is not seen until the server restarts.
//!
//! - While a write to a row is in progress, that row is read from the database and not
//!   cached: no read sees the write's commit elsewhere (another table, another request) and
//!   then the row from before it here.
//! - A read that missed fills the cache only if no write to the table ended while it read (a
//!   generation count, compared under the lock the writes take): the older value a read found
//!   cannot outlive a write that committed after the read began.
//! - Only negative task facts are kept ("no pending task", "no open task"). Only creating a
//!   task makes one pending or running, so only creating one falsifies them; taking a task
//!   or storing its result never does.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use crate::{Device, GatewayRecord, Seen};

/// Devices kept at most. A cached device is about half a kilobyte, so this bounds the cache
/// near 125 MB; a fleet larger than this keeps the first devices read and reads the rest.
pub(crate) const MAX_DEVICES: usize = 250_000;
/// Gateways kept at most.
const MAX_GATEWAYS: usize = 4_096;
/// Devices whose task facts are kept at most (each set); past it a set starts again empty.
pub(crate) const MAX_TASK_FACTS: usize = 500_000;

/// The caches (one lock: every operation is a map lookup or update).
#[derive(Debug, Default)]
pub(crate) struct Cache {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Devices as stored (last-seen as flushed, without the unflushed sightings).
    devices: Rows<Device>,
    /// Gateways as stored (each forwarded agent request reads its gateway).
    gateways: Rows<GatewayRecord>,
    /// Bumped whenever a task is created.
    task_generation: u64,
    /// Devices known to have no task in state `pending`.
    no_pending: HashSet<String>,
    /// Devices known to have no task in state `pending` or `running`.
    no_open: HashSet<String>,
}

/// Cached rows of one table, by ID.
#[derive(Debug)]
struct Rows<T> {
    /// Bumped whenever a write to a row ends.
    generation: u64,
    rows: HashMap<String, T>,
    /// Rows with a write in progress, and how many: read from the database, never cached,
    /// until it ends. So no read can see a write's commit in the database and then the row
    /// from before it here (a renewed identity read before its own promotion was forgotten).
    writing: HashMap<String, u32>,
}

impl<T> Default for Rows<T> {
    fn default() -> Self {
        Self {
            generation: 0,
            rows: HashMap::new(),
            writing: HashMap::new(),
        }
    }
}

impl<T: Clone> Rows<T> {
    fn get(&self, id: &str) -> Option<T> {
        if self.writing.contains_key(id) {
            return None;
        }
        self.rows.get(id).cloned()
    }

    /// Whether a row read since `ticket` may be kept: no write ended since, none in progress
    /// on it, and room left.
    fn may_keep(&self, ticket: Ticket, id: &str, max: usize) -> bool {
        self.generation == ticket.0 && !self.writing.contains_key(id) && self.rows.len() < max
    }

    fn keep(&mut self, ticket: Ticket, id: &str, row: &T, max: usize) {
        if self.may_keep(ticket, id, max) {
            self.rows.insert(id.to_owned(), row.clone());
        }
    }

    /// [`Rows::keep`], for a row the caller gives up.
    fn keep_owned(&mut self, ticket: Ticket, id: String, row: T, max: usize) {
        if self.may_keep(ticket, &id, max) {
            self.rows.insert(id, row);
        }
    }

    fn begin_write(&mut self, id: &str) {
        *self.writing.entry(id.to_owned()).or_insert(0) += 1;
        self.rows.remove(id);
    }

    fn end_write(&mut self, id: &str) {
        self.generation += 1;
        self.rows.remove(id);
        if let Some(n) = self.writing.get_mut(id) {
            *n -= 1;
            if *n == 0 {
                self.writing.remove(id);
            }
        }
    }
}

/// The generation a read began at; it may fill the cache only if the generation is the same
/// when it ends.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket(u64);

/// Which cached table a write changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Table {
    /// `devices` (and `device_seen`).
    Devices,
    /// `gateways`.
    Gateways,
}

impl Cache {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update is a single map operation; a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The stored device, if cached.
    pub(crate) fn device(&self, id: &str) -> Option<Device> {
        self.lock().devices.get(id)
    }

    /// Taken before reading a device from the database.
    pub(crate) fn device_ticket(&self) -> Ticket {
        Ticket(self.lock().devices.generation)
    }

    /// Keeps a device read from the database, unless a write to a device ended since
    /// `ticket` or one to this device is in progress.
    pub(crate) fn keep_device(&self, ticket: Ticket, device: &Device) {
        self.lock()
            .devices
            .keep(ticket, &device.id, device, MAX_DEVICES);
    }

    /// The stored gateway, if cached.
    pub(crate) fn gateway(&self, id: &str) -> Option<GatewayRecord> {
        self.lock().gateways.get(id)
    }

    /// Taken before reading a gateway from the database.
    pub(crate) fn gateway_ticket(&self) -> Ticket {
        Ticket(self.lock().gateways.generation)
    }

    /// Keeps a gateway read from the database (as [`Cache::keep_device`]).
    pub(crate) fn keep_gateway(&self, ticket: Ticket, gateway: &GatewayRecord) {
        self.lock()
            .gateways
            .keep(ticket, &gateway.id, gateway, MAX_GATEWAYS);
    }

    /// A write to row `id` of `table` begins: until it ends, that row is read from the
    /// database.
    pub(crate) fn begin_write(&self, table: Table, id: &str) {
        let mut inner = self.lock();
        match table {
            Table::Devices => inner.devices.begin_write(id),
            Table::Gateways => inner.gateways.begin_write(id),
        }
    }

    /// The write [`Cache::begin_write`] announced ended (committed or not).
    pub(crate) fn end_write(&self, table: Table, id: &str) {
        let mut inner = self.lock();
        match table {
            Table::Devices => inner.devices.end_write(id),
            Table::Gateways => inner.gateways.end_write(id),
        }
    }

    /// Sightings were written to the database (the last-seen flush): cached devices take them
    /// as the flush's statement did (the newer time wins; a path-less sighting keeps the path).
    pub(crate) fn seen_flushed(&self, flushed: &HashMap<String, Seen>) {
        let mut inner = self.lock();
        inner.devices.generation += 1;
        for (id, seen) in flushed {
            if let Some(d) = inner.devices.rows.get_mut(id) {
                d.last_seen = Some(d.last_seen.map_or(seen.at, |at| at.max(seen.at)));
                if seen.connection_path.is_some() {
                    d.connection_path.clone_from(&seen.connection_path);
                }
            }
        }
    }

    /// Whether device `id` is known to have no pending task.
    pub(crate) fn no_pending(&self, id: &str) -> bool {
        let inner = self.lock();
        inner.no_pending.contains(id) || inner.no_open.contains(id)
    }

    /// Whether device `id` is known to have no pending or running task.
    pub(crate) fn no_open(&self, id: &str) -> bool {
        self.lock().no_open.contains(id)
    }

    /// Taken before probing a device's tasks in the database.
    pub(crate) fn task_ticket(&self) -> Ticket {
        Ticket(self.lock().task_generation)
    }

    /// The database said device `id` has no pending task (kept unless a task was created
    /// since `ticket`).
    pub(crate) fn keep_no_pending(&self, ticket: Ticket, id: &str) {
        let mut inner = self.lock();
        if inner.task_generation == ticket.0 {
            keep(&mut inner.no_pending, id);
        }
    }

    /// Devices read together ([`crate::SqliteStore::warm_caches`]), under one lock.
    pub(crate) fn keep_devices(&self, ticket: Ticket, devices: Vec<Device>) {
        let mut inner = self.lock();
        for d in devices {
            inner
                .devices
                .keep_owned(ticket, d.id.clone(), d, MAX_DEVICES);
        }
    }

    /// The database said none of `ids` has a pending or running task.
    pub(crate) fn keep_all_no_open(&self, ticket: Ticket, ids: &[String]) {
        let mut inner = self.lock();
        if inner.task_generation == ticket.0 {
            for id in ids {
                keep(&mut inner.no_open, id);
            }
        }
    }

    /// The database said device `id` has no pending or running task.
    pub(crate) fn keep_no_open(&self, ticket: Ticket, id: &str) {
        let mut inner = self.lock();
        if inner.task_generation == ticket.0 {
            keep(&mut inner.no_open, id);
        }
    }

    /// A task for `device_ids` was created (or its creation failed): their facts are void.
    ///
    /// Between the task's commit and this call a probe may still say "none pending"; that
    /// costs nothing, because whoever creates a task wakes the devices' long-polls only
    /// after the creation returned, and they probe again then.
    pub(crate) fn tasks_created(&self, device_ids: &[String]) {
        let mut inner = self.lock();
        inner.task_generation += 1;
        let inner = &mut *inner;
        for set in [&mut inner.no_pending, &mut inner.no_open] {
            // A task for the whole fleet: emptying is cheaper than 100,000 removals.
            if device_ids.len() >= set.len() / 2 {
                set.clear();
            } else {
                for id in device_ids {
                    set.remove(id);
                }
            }
        }
    }

    /// Device `id` was deleted: its task facts go too (its row goes with
    /// [`Cache::end_write`]).
    pub(crate) fn forget_tasks_of(&self, id: &str) {
        let mut inner = self.lock();
        inner.no_pending.remove(id);
        inner.no_open.remove(id);
    }

    /// How many devices are cached (tests).
    #[cfg(test)]
    pub(crate) fn devices_cached(&self) -> usize {
        self.lock().devices.rows.len()
    }
}

fn keep(set: &mut HashSet<String>, id: &str) {
    if set.len() >= MAX_TASK_FACTS {
        set.clear();
    }
    set.insert(id.to_owned());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(id: &str, last_seen: Option<i64>) -> Device {
        Device {
            id: id.to_owned(),
            name: id.to_owned(),
            cert_serial: "S".into(),
            cert_sha256: "H".into(),
            tags: Vec::new(),
            created_at: 1,
            last_seen,
            connection_path: Some("lan via a:1".into()),
            last_error: None,
            config_version_acked: 0,
            profile_version_acked: 0,
            failed_attempts: Vec::new(),
            failed_attempts_at: None,
            os: None,
            inventory_hash: None,
            inventory_at: None,
            revoked: false,
            cert_not_after: None,
            next_cert_sha256: None,
        }
    }

    #[test]
    fn a_read_that_raced_a_write_does_not_fill_the_cache() {
        let c = Cache::default();
        let before = c.device_ticket();
        c.begin_write(Table::Devices, "d");
        c.keep_device(c.device_ticket(), &device("d", None));
        assert_eq!(c.device("d"), None, "not kept while a write is in progress");
        c.end_write(Table::Devices, "d");
        c.keep_device(before, &device("d", None));
        assert_eq!(c.device("d"), None, "the read began before the write ended");
        let after = c.device_ticket();
        c.keep_device(after, &device("d", None));
        assert!(c.device("d").is_some());
        c.begin_write(Table::Devices, "d");
        assert_eq!(
            c.device("d"),
            None,
            "a row being written is read from the database"
        );
        c.end_write(Table::Devices, "d");
        assert_eq!(c.device("d"), None, "and forgotten when the write ends");

        let before = c.task_ticket();
        c.tasks_created(&["d".to_owned()]);
        c.keep_no_pending(before, "d");
        c.keep_no_open(before, "d");
        assert!(!c.no_pending("d") && !c.no_open("d"));
        let after = c.task_ticket();
        c.keep_no_open(after, "d");
        assert!(
            c.no_open("d") && c.no_pending("d"),
            "no open task: none pending either"
        );
        c.tasks_created(&["d".to_owned()]);
        assert!(!c.no_open("d") && !c.no_pending("d"));
    }

    #[test]
    fn a_flush_moves_cached_last_seen_as_the_database_does() {
        let c = Cache::default();
        c.keep_device(c.device_ticket(), &device("d", Some(100)));
        let flushed = HashMap::from([
            (
                "d".to_owned(),
                Seen {
                    at: 90,
                    connection_path: None,
                },
            ),
            (
                "other".to_owned(),
                Seen {
                    at: 5,
                    connection_path: None,
                },
            ),
        ]);
        c.seen_flushed(&flushed);
        let d = c.device("d").unwrap();
        assert_eq!(d.last_seen, Some(100), "the newer time wins");
        assert_eq!(d.connection_path.as_deref(), Some("lan via a:1"));
        c.seen_flushed(&HashMap::from([(
            "d".to_owned(),
            Seen {
                at: 120,
                connection_path: Some("gateway g via h".into()),
            },
        )]));
        let d = c.device("d").unwrap();
        assert_eq!(d.last_seen, Some(120));
        assert_eq!(d.connection_path.as_deref(), Some("gateway g via h"));
        assert_eq!(c.device("other"), None, "a flush does not add devices");
    }
}
