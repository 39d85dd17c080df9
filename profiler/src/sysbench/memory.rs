//! `memory`: one event reads or writes one `memory-block-size` block, one `int` at a time,
//! as sb_memory.c: a shared buffer for `--memory-scope=global`, one per thread for `local`.
//!
//! Buffers are `AtomicU32` so threads sharing the global one are not a data race; relaxed
//! loads and stores compile to plain moves and, unlike plain ones, are not merged into wide
//! vector moves, so the work per event stays sysbench's (one 4-byte access per `int`).

use std::{
    hint::black_box,
    sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed},
};

use anyhow::Result;

use super::{AccessMode, MemoryOper, MemoryScope, MemoryStats, Rng, RunStats, Spec, Worker};
use super::{drive, report};

/// Blocks a thread takes from the shared `memory-total-size` budget at a time: sysbench
/// takes a global mutex per block, which would dominate a 1K event.
const GRANT: u64 = 4096;

fn buffer(words: usize) -> Box<[AtomicU32]> {
    (0..words).map(|_| AtomicU32::new(0)).collect()
}

struct Memory<'a> {
    global: &'a [AtomicU32],
    local: Option<Box<[AtomicU32]>>,
    oper: MemoryOper,
    rnd: bool,
    rng: Rng,
    /// Blocks left of this thread's grant, and the shared count of blocks granted.
    left: u64,
    granted: &'a AtomicU64,
    total_blocks: u64,
}

impl Memory<'_> {
    #[inline]
    fn take(&mut self) -> bool {
        if self.left == 0 {
            let prev = self.granted.fetch_add(GRANT, Relaxed);
            if prev >= self.total_blocks {
                return false;
            }
            self.left = GRANT.min(self.total_blocks - prev);
        }
        self.left -= 1;
        true
    }
}

impl Worker for Memory<'_> {
    #[inline]
    fn event(&mut self) -> Result<bool> {
        if !self.take() {
            return Ok(false);
        }
        let buf = self.local.as_deref().unwrap_or(self.global);
        let n = buf.len();
        match (self.rnd, self.oper) {
            (false, MemoryOper::Write) => {
                for w in buf {
                    w.store(0, Relaxed);
                }
            }
            (false, MemoryOper::Read) => {
                let mut acc = 0;
                for w in buf {
                    acc ^= w.load(Relaxed);
                }
                black_box(acc);
            }
            (false, MemoryOper::None) => {
                // sysbench stores `end - buf` into a volatile per int.
                for i in 0..n {
                    black_box(n - i);
                }
            }
            (true, MemoryOper::Write) => {
                for _ in 0..n {
                    let i = (self.rng.uniform() * n as f64) as usize;
                    buf[i.min(n - 1)].store(0, Relaxed);
                }
            }
            (true, MemoryOper::Read) => {
                let mut acc = 0;
                for _ in 0..n {
                    let i = (self.rng.uniform() * n as f64) as usize;
                    acc ^= buf[i.min(n - 1)].load(Relaxed);
                }
                black_box(acc);
            }
            // sysbench rejects this pair at run time; Spec::validate does up front.
            (true, MemoryOper::None) => {}
        }
        Ok(true)
    }
}

pub(super) fn run(spec: &Spec) -> Result<RunStats> {
    let m = &spec.memory;
    let words = (m.block_size / 4) as usize;
    let global = match m.scope {
        MemoryScope::Global => buffer(words),
        MemoryScope::Local => buffer(0),
    };
    let granted = AtomicU64::new(0);
    let total_blocks = m.total_size.div_ceil(m.block_size);
    let out = drive(spec, |i| {
        Ok(Memory {
            global: &global,
            local: (m.scope == MemoryScope::Local).then(|| buffer(words)),
            oper: m.oper,
            rnd: m.access_mode == AccessMode::Rnd,
            rng: Rng::new(i as u64),
            left: 0,
            granted: &granted,
            total_blocks,
        })
    })?;
    let ops: u64 = out.per_thread.iter().map(|t| t.0).sum();
    let secs = out.elapsed.as_secs_f64();
    let mib = if m.oper == MemoryOper::None {
        0.0
    } else {
        (ops * m.block_size) as f64 / (1024.0 * 1024.0)
    };
    let mem = MemoryStats {
        operations: ops,
        ops_per_sec: ops as f64 / secs,
        mib_transferred: mib,
        mib_per_sec: mib / secs,
    };
    Ok(report::stats(out, Some(mem), None))
}
