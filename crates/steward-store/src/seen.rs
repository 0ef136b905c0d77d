//! Last-seen times kept in memory between batched flushes.
//!
//! A check-in from an unchanged agent must not cost a database write: at 100,000 agents and a
//! 60 s interval that would be ~1,700 fsyncs a second. Instead each check-in notes the time
//! here, and the store writes all noted devices in one transaction every few seconds. Losing
//! the last few seconds of last-seen to a crash is harmless: the next check-in restores them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// When and how a device was last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Unix seconds.
    pub at: i64,
    /// How it connected, when known (a long-poll does not say; it keeps the previous path).
    pub connection_path: Option<String>,
}

/// A batch of sightings taken for one flush.
pub type SeenBatch = Arc<HashMap<String, Seen>>;

/// The unflushed last-seen values, by device ID.
///
/// A flush moves the noted sightings out of `noted` into `in_flight` while it writes them, and
/// into `flushed` once they are committed, where they stay until the next flush commits.
/// Readers merge all three with what they read from the database. Without the last two a
/// reader whose statement ran while a flush was writing (or whose snapshot predates its commit)
/// found the sighting neither in the buffer nor in its rows, and reported a device that had
/// checked in a second ago as never seen: Offline in the console for a moment.
#[derive(Debug, Default)]
pub struct SeenBuffer {
    inner: Mutex<Generations>,
}

#[derive(Debug, Default)]
struct Generations {
    /// Noted since the last flush began.
    noted: HashMap<String, Seen>,
    /// Taken by the flush now writing (empty when none is).
    in_flight: SeenBatch,
    /// Written by the last flush that committed.
    flushed: SeenBatch,
}

impl SeenBuffer {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        // A panic while holding this lock cannot leave the maps inconsistent (every update is
        // a single insert or swap), so a poisoned lock is still safe to use.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes a sighting. A path-less sighting keeps the path noted before it.
    pub fn note(&self, id: &str, seen: Seen) {
        let mut g = self.lock();
        match g.noted.get_mut(id) {
            Some(old) => {
                if seen.at >= old.at {
                    old.at = seen.at;
                }
                if seen.connection_path.is_some() {
                    old.connection_path = seen.connection_path;
                }
            }
            None => {
                g.noted.insert(id.to_owned(), seen);
            }
        }
    }

    /// A device's sighting not yet known to be in every reader's view of the database: noted,
    /// being flushed, or flushed by the last flush. The latest time; the newest path.
    pub fn get(&self, id: &str) -> Option<Seen> {
        let g = self.lock();
        let mut out: Option<Seen> = None;
        // Newest generation first: its path wins, the latest time wins.
        for gen_map in [&g.noted, &*g.in_flight, &*g.flushed] {
            let Some(s) = gen_map.get(id) else { continue };
            match &mut out {
                None => out = Some(s.clone()),
                Some(o) => {
                    o.at = o.at.max(s.at);
                    if o.connection_path.is_none() {
                        o.connection_path.clone_from(&s.connection_path);
                    }
                }
            }
        }
        out
    }

    /// Takes every noted sighting for a flush. They stay visible to [`SeenBuffer::get`] until
    /// the flush after this one commits; call [`SeenBuffer::committed`] or
    /// [`SeenBuffer::restore`] when the write ends. A batch whose flush never ended (its
    /// future dropped, as the flush loop's is at shutdown) goes again with this one.
    pub fn take(&self) -> SeenBatch {
        let mut g = self.lock();
        let mut batch = std::mem::take(&mut g.noted);
        for (id, seen) in g.in_flight.iter() {
            keep_older(&mut batch, id, seen);
        }
        let batch: SeenBatch = Arc::new(batch);
        g.in_flight = Arc::clone(&batch);
        batch
    }

    /// The batch of the last [`SeenBuffer::take`] is in the database: it replaces the batch
    /// the flush before wrote (every reader started since sees it in its rows).
    pub fn committed(&self) {
        let retired = {
            let mut g = self.lock();
            let batch = std::mem::take(&mut g.in_flight);
            std::mem::replace(&mut g.flushed, batch)
        };
        // Freed outside the lock: thousands of entries, and every check-in notes through it.
        drop(retired);
    }

    /// Puts back sightings whose flush failed, unless newer ones arrived meanwhile.
    pub fn restore(&self, taken: SeenBatch) {
        let mut g = self.lock();
        g.in_flight = SeenBatch::default();
        for (id, seen) in taken.iter() {
            keep_older(&mut g.noted, id, seen);
        }
    }

    /// How many devices have sightings noted since the last flush began.
    pub fn len(&self) -> usize {
        self.lock().noted.len()
    }

    /// Whether nothing is waiting to be flushed.
    pub fn is_empty(&self) -> bool {
        self.lock().noted.is_empty()
    }

    /// Merges the buffered sighting into stored values: the newer time wins; the buffered
    /// path wins when there is one.
    pub fn merge(
        &self,
        id: &str,
        last_seen: Option<i64>,
        path: Option<String>,
    ) -> (Option<i64>, Option<String>) {
        match self.get(id) {
            None => (last_seen, path),
            Some(s) => {
                let at = Some(last_seen.map_or(s.at, |db| db.max(s.at)));
                (at, s.connection_path.or(path))
            }
        }
    }
}

/// Adds an older sighting to `into`: a newer one noted there keeps its time, and its path
/// when it has one.
fn keep_older(into: &mut HashMap<String, Seen>, id: &str, older: &Seen) {
    match into.get_mut(id) {
        Some(newer) => {
            newer.at = newer.at.max(older.at);
            if newer.connection_path.is_none() {
                newer.connection_path.clone_from(&older.connection_path);
            }
        }
        None => {
            into.insert(id.to_owned(), older.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_less_sightings_keep_the_path_and_restore_keeps_newer() {
        let b = SeenBuffer::new();
        b.note(
            "d",
            Seen {
                at: 10,
                connection_path: Some("lan via a:1".into()),
            },
        );
        b.note(
            "d",
            Seen {
                at: 12,
                connection_path: None,
            },
        );
        assert_eq!(
            b.get("d"),
            Some(Seen {
                at: 12,
                connection_path: Some("lan via a:1".into())
            })
        );
        let taken = b.take();
        assert!(b.is_empty());
        b.note(
            "d",
            Seen {
                at: 20,
                connection_path: None,
            },
        );
        b.restore(taken);
        assert_eq!(
            b.get("d"),
            Some(Seen {
                at: 20,
                connection_path: Some("lan via a:1".into())
            })
        );
        assert_eq!(b.merge("d", Some(30), None).0, Some(30));
        assert_eq!(
            b.merge("x", Some(5), Some("p".into())),
            (Some(5), Some("p".into()))
        );
    }

    fn seen(at: i64, path: Option<&str>) -> Seen {
        Seen {
            at,
            connection_path: path.map(str::to_owned),
        }
    }

    /// A reader during a flush (or with a snapshot from before its commit) still finds the
    /// sighting: it is dropped only when the next flush commits.
    #[test]
    fn a_sighting_stays_visible_while_it_is_flushed_and_until_the_next_flush() {
        let b = SeenBuffer::new();
        b.note("d", seen(10, Some("lan via a:1")));
        let batch = b.take();
        assert_eq!(batch.len(), 1);
        assert!(b.is_empty(), "nothing left to flush");
        assert_eq!(b.get("d"), Some(seen(10, Some("lan via a:1"))), "in flight");
        b.committed();
        assert_eq!(
            b.get("d"),
            Some(seen(10, Some("lan via a:1"))),
            "just flushed"
        );
        // The next flush (nothing noted meanwhile) retires it.
        assert!(b.take().is_empty());
        assert_eq!(
            b.get("d"),
            Some(seen(10, Some("lan via a:1"))),
            "still in the last batch"
        );
        b.committed();
        assert_eq!(b.get("d"), None);
    }

    #[test]
    fn newer_generations_win_the_path_and_the_latest_time_wins() {
        let b = SeenBuffer::new();
        b.note("d", seen(10, Some("old")));
        let _ = b.take();
        b.committed();
        b.note("d", seen(12, None));
        assert_eq!(b.get("d"), Some(seen(12, Some("old"))));
        let _ = b.take();
        b.note("d", seen(11, Some("new")));
        assert_eq!(b.get("d"), Some(seen(12, Some("new"))));
        assert_eq!(
            b.merge("d", Some(15), Some("db".into())),
            (Some(15), Some("new".into()))
        );
    }

    /// The flush loop's future is dropped at shutdown, possibly mid-write: the batch it took
    /// is written by the final flush instead of being lost.
    #[test]
    fn a_batch_whose_flush_never_ended_goes_again() {
        let b = SeenBuffer::new();
        b.note("d", seen(10, Some("p")));
        b.note("e", seen(10, Some("q")));
        drop(b.take());
        b.note("e", seen(20, None));
        let batch = b.take();
        assert_eq!(batch.get("d"), Some(&seen(10, Some("p"))));
        assert_eq!(batch.get("e"), Some(&seen(20, Some("q"))));
        b.restore(batch);
        assert_eq!(b.len(), 2, "a failed flush puts both back");
    }
}
