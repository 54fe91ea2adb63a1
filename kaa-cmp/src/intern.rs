//! A reference-counted string table: strings that many endpoints share (app
//! version names, configuration names, config IDs, reply subjects) are stored
//! once and referred to by a `u32` handle. Handle 0 means "none".

use std::collections::HashMap;
use std::sync::Arc;

/// The "none" handle.
pub(crate) const NONE: u32 = 0;

struct Entry {
    value: Option<Arc<str>>,
    refs: u32,
}

pub(crate) struct Interner {
    map: HashMap<Arc<str>, u32>,
    entries: Vec<Entry>,
    free: Vec<u32>,
}

impl Interner {
    pub(crate) fn new() -> Self {
        Interner {
            map: HashMap::new(),
            entries: vec![Entry {
                value: None,
                refs: 0,
            }],
            free: Vec::new(),
        }
    }

    /// The handle of `s`, with one more reference (the caller owns it).
    pub(crate) fn acquire(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.map.get(s) {
            if let Some(e) = self.entries.get_mut(id as usize) {
                e.refs = e.refs.saturating_add(1);
            }
            return id;
        }
        let value: Arc<str> = Arc::from(s);
        let entry = Entry {
            value: Some(value.clone()),
            refs: 1,
        };
        let id = match self.free.pop() {
            Some(id) => {
                if let Some(slot) = self.entries.get_mut(id as usize) {
                    *slot = entry;
                }
                id
            }
            None => {
                self.entries.push(entry);
                u32::try_from(self.entries.len() - 1).unwrap_or(u32::MAX)
            }
        };
        self.map.insert(value, id);
        id
    }

    /// One more reference to an existing handle (no-op for [`NONE`]).
    pub(crate) fn retain(&mut self, id: u32) {
        if id == NONE {
            return;
        }
        if let Some(e) = self.entries.get_mut(id as usize) {
            e.refs = e.refs.saturating_add(1);
        }
    }

    /// Drops one reference; the string is freed with its last one.
    pub(crate) fn release(&mut self, id: u32) {
        if id == NONE {
            return;
        }
        let Some(e) = self.entries.get_mut(id as usize) else {
            return;
        };
        e.refs = e.refs.saturating_sub(1);
        if e.refs == 0
            && let Some(v) = e.value.take()
        {
            self.map.remove(&*v);
            self.free.push(id);
        }
    }

    /// Replaces the handle in `slot` with `new`, moving one reference.
    pub(crate) fn set(&mut self, slot: &mut u32, new: u32) {
        self.retain(new);
        self.release(*slot);
        *slot = new;
    }

    /// The string behind a handle; `None` for [`NONE`] or a freed handle.
    pub(crate) fn get(&self, id: u32) -> Option<&Arc<str>> {
        self.entries.get(id as usize)?.value.as_ref()
    }

    /// Whether `id` is the handle of a string equal to `s`: one pointer
    /// comparison when `s` is the interned `Arc` itself, one string comparison
    /// otherwise, no hashing. Never true for [`NONE`].
    pub(crate) fn holds(&self, id: u32, s: &Arc<str>) -> bool {
        self.get(id)
            .is_some_and(|v| Arc::ptr_eq(v, s) || **v == **s)
    }

    /// The handle of `s`, if it is in the table (no reference taken).
    pub(crate) fn find(&self, s: &str) -> Option<u32> {
        self.map.get(s).copied()
    }

    /// How many distinct strings are stored.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_counting() {
        let mut t = Interner::new();
        let a = t.acquire("a");
        assert_ne!(a, NONE);
        assert_eq!(t.acquire("a"), a);
        let b = t.acquire("b");
        assert_ne!(a, b);
        assert_eq!(t.len(), 2);
        t.release(a);
        assert_eq!(t.get(a).map(|s| &**s), Some("a"));
        t.release(a);
        assert_eq!(t.get(a), None);
        assert_eq!(t.find("a"), None);
        assert_eq!(t.len(), 1);
        // The freed handle is reused.
        let c = t.acquire("c");
        assert_eq!(c, a);
        let mut slot = NONE;
        t.set(&mut slot, b);
        t.release(b);
        assert_eq!(t.get(b).map(|s| &**s), Some("b"));
        t.set(&mut slot, NONE);
        assert_eq!(t.get(b), None);
        t.release(NONE);
        t.retain(NONE);
        assert_eq!(t.get(NONE), None);
        // `holds`: the interned `Arc`, an equal string elsewhere, never `NONE`.
        let d = t.acquire("d");
        let interned = Arc::clone(t.get(d).unwrap());
        assert!(t.holds(d, &interned));
        assert!(t.holds(d, &Arc::from("d")));
        assert!(!t.holds(d, &Arc::from("e")));
        assert!(!t.holds(NONE, &Arc::from("")));
        t.release(d);
        assert!(!t.holds(d, &interned));
    }
}
