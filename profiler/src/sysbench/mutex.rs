//! `mutex`: one event per thread, as sb_mutex.c: `mutex-locks` times, spin `mutex-loops`
//! empty loops, then lock a random one of `mutex-num` padded mutexes and bump a counter.

use std::{
    hint::black_box,
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering::Relaxed},
    },
};

use anyhow::Result;

use super::{Rng, RunStats, Spec, Worker, drive, report};

/// sysbench pads each mutex with 256 bytes so neighbours do not share cache lines.
#[repr(align(64))]
struct Padded {
    m: Mutex<()>,
    _pad: [u8; 256],
}

struct MutexTest<'a> {
    locks: &'a [Padded],
    counter: &'a AtomicU32,
    nlocks: u32,
    nloops: u32,
    rng: Rng,
    done: bool,
}

impl Worker for MutexTest<'_> {
    fn event(&mut self) -> Result<bool> {
        if self.done {
            return Ok(false);
        }
        self.done = true;
        let n = self.locks.len() as u64;
        // sysbench's do/while: at least one lock even with --mutex-locks=0.
        for _ in 0..self.nlocks.max(1) {
            let i = (self.rng.next_u64() % n) as usize;
            for l in 0..self.nloops {
                black_box(l);
            }
            let g = self.locks[i].m.lock().unwrap_or_else(|e| e.into_inner());
            // A plain increment, as sysbench's (its counter is not protected either).
            self.counter
                .store(self.counter.load(Relaxed).wrapping_add(1), Relaxed);
            drop(g);
        }
        Ok(true)
    }
}

pub(super) fn run(spec: &Spec) -> Result<RunStats> {
    let m = &spec.mutex;
    let locks: Vec<Padded> = (0..m.num)
        .map(|_| Padded {
            m: Mutex::new(()),
            _pad: [0; 256],
        })
        .collect();
    let counter = AtomicU32::new(0);
    let out = drive(spec, |i| {
        Ok(MutexTest {
            locks: &locks,
            counter: &counter,
            nlocks: m.locks,
            nloops: m.loops,
            rng: Rng::new(i as u64),
            done: false,
        })
    })?;
    Ok(report::stats(out, None, None))
}
