//! Last-seen times kept in memory between batched flushes.
//!
//! A check-in from an unchanged agent must not cost a database write: at 100,000 agents and a
//! 60 s interval that would be ~1,700 fsyncs a second. Instead each check-in notes the time
//! here, and the store writes all noted devices in one transaction every few seconds. Losing
//! the last few seconds of last-seen to a crash is harmless: the next check-in restores them.

use std::collections::HashMap;
use std::sync::Mutex;

/// When and how a device was last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Unix seconds.
    pub at: i64,
    /// How it connected, when known (a long-poll does not say; it keeps the previous path).
    pub connection_path: Option<String>,
}

/// The unflushed last-seen values, by device ID.
#[derive(Debug, Default)]
pub struct SeenBuffer {
    inner: Mutex<HashMap<String, Seen>>,
}

impl SeenBuffer {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Seen>> {
        // A panic while holding this lock cannot leave the map inconsistent (every update is
        // a single insert), so a poisoned lock is still safe to use.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes a sighting. A path-less sighting keeps the path noted before it.
    pub fn note(&self, id: &str, seen: Seen) {
        let mut map = self.lock();
        match map.get_mut(id) {
            Some(old) => {
                if seen.at >= old.at {
                    old.at = seen.at;
                }
                if seen.connection_path.is_some() {
                    old.connection_path = seen.connection_path;
                }
            }
            None => {
                map.insert(id.to_owned(), seen);
            }
        }
    }

    /// The unflushed sighting of a device.
    pub fn get(&self, id: &str) -> Option<Seen> {
        self.lock().get(id).cloned()
    }

    /// Takes every unflushed sighting, leaving the buffer empty.
    pub fn take(&self) -> HashMap<String, Seen> {
        std::mem::take(&mut *self.lock())
    }

    /// Puts back sightings whose flush failed, unless newer ones arrived meanwhile.
    pub fn restore(&self, taken: HashMap<String, Seen>) {
        let mut map = self.lock();
        for (id, seen) in taken {
            match map.get_mut(&id) {
                Some(newer) => {
                    if newer.connection_path.is_none() {
                        newer.connection_path = seen.connection_path;
                    }
                }
                None => {
                    map.insert(id, seen);
                }
            }
        }
    }

    /// How many devices have unflushed sightings.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is waiting to be flushed.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Merges the unflushed sighting into stored values: the newer time wins; the buffered
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
}
