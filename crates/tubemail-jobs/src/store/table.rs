//! The store's records by id: pages of [`PAGE`] consecutive ids, in a hash map of pages.
//!
//! A map of one entry per job rehashed every entry at once when it grew: at a backlog of 100,000 and
//! more, each growth held the store's lock for 2 to 5 ms (zeroing fresh pages included), and every
//! scheduled job due then started that late. The map of pages is 64 times smaller, so its growth is
//! too; a page is allocated when its first id is enqueued and freed when its last job leaves. Ids are
//! consecutive and jobs mostly leave in order, so pages fill and empty in turn, and neighbours in a
//! backlog are neighbours in memory. A job that outlives its neighbours (scheduled far ahead, in the
//! dead set) keeps its page: at most [`PAGE`] pointers, 520 bytes, per such job.

use rustc_hash::FxHashMap;

use super::{JobId, JobRecord};

/// Ids per page.
pub const PAGE: usize = 64;

#[derive(Debug, Default)]
pub(super) struct JobTable {
    pages: FxHashMap<u64, Box<Page>>,
    len: usize,
}

#[derive(Debug)]
struct Page {
    slots: [Option<Box<JobRecord>>; PAGE],
    live: usize,
}

fn place(id: JobId) -> (u64, usize) {
    (id.0 / PAGE as u64, (id.0 % PAGE as u64) as usize)
}

impl JobTable {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn get(&self, id: &JobId) -> Option<&JobRecord> {
        let (page, slot) = place(*id);
        self.pages.get(&page)?.slots[slot].as_deref()
    }

    pub(super) fn get_mut(&mut self, id: &JobId) -> Option<&mut JobRecord> {
        let (page, slot) = place(*id);
        self.pages.get_mut(&page)?.slots[slot].as_deref_mut()
    }

    pub(super) fn contains_key(&self, id: &JobId) -> bool {
        self.get(id).is_some()
    }

    /// Puts `record` at `id`, returning the record it replaces.
    pub(super) fn insert(&mut self, id: JobId, record: Box<JobRecord>) -> Option<Box<JobRecord>> {
        let (page, slot) = place(id);
        let page = self
            .pages
            .entry(page)
            .or_insert_with(|| Box::new(Page { slots: std::array::from_fn(|_| None), live: 0 }));
        let old = page.slots[slot].replace(record);
        if old.is_none() {
            page.live += 1;
            self.len += 1;
        }
        old
    }

    pub(super) fn remove(&mut self, id: &JobId) -> Option<Box<JobRecord>> {
        let (at, slot) = place(*id);
        let page = self.pages.get_mut(&at)?;
        let record = page.slots[slot].take()?;
        page.live -= 1;
        self.len -= 1;
        if page.live == 0 {
            self.pages.remove(&at);
        }
        Some(record)
    }

    /// Pages allocated.
    #[cfg(test)]
    pub(super) fn pages(&self) -> usize {
        self.pages.len()
    }

    /// Every record, in no order that reaches behaviour (callers sort).
    pub(super) fn values(&self) -> impl Iterator<Item = &JobRecord> {
        self.pages.values().flat_map(|page| page.slots.iter().filter_map(Option::as_deref))
    }
}
