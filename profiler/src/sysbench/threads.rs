//! `threads`: one event takes one of `thread-locks` mutexes round-robin and does
//! `thread-yields` rounds of lock, `sched_yield`, unlock, as sb_threads.c.

use std::sync::{
    Mutex,
    atomic::{AtomicU32, Ordering},
};

use anyhow::Result;

use super::{RunStats, Spec, Worker, drive, report};

struct Threads<'a> {
    locks: &'a [Mutex<()>],
    next: &'a AtomicU32,
    yields: u32,
}

impl Worker for Threads<'_> {
    fn event(&mut self) -> Result<bool> {
        let n = self.next.fetch_add(1, Ordering::Relaxed) as usize % self.locks.len();
        let lock = &self.locks[n];
        for _ in 0..self.yields {
            let g = lock.lock().unwrap_or_else(|e| e.into_inner());
            std::thread::yield_now();
            drop(g);
        }
        Ok(true)
    }
}

pub(super) fn run(spec: &Spec) -> Result<RunStats> {
    let locks: Vec<Mutex<()>> = (0..spec.thread.locks).map(|_| Mutex::new(())).collect();
    let next = AtomicU32::new(0);
    let out = drive(spec, |_| {
        Ok(Threads {
            locks: &locks,
            next: &next,
            yields: spec.thread.yields,
        })
    })?;
    Ok(report::stats(out, None, None))
}
