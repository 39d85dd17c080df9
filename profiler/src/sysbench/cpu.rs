//! `cpu`: one event counts the primes below `cpu-max-prime` by trial division, as sb_cpu.c.

use std::hint::black_box;

use anyhow::Result;

use super::{RunStats, Spec, Worker, drive, report};

/// Primes in `3..max_prime`, sysbench's way: divide by 2..=sqrt(c) (a double), 64-bit
/// operands. The arithmetic must stay as is for events/s to compare with sysbench's.
#[inline(never)]
pub fn count_primes(max_prime: u64) -> u64 {
    let mut n = 0;
    // Signed conversions: the values fit, and they compile to one cvtsi2sd as gcc's do.
    for c in 3..max_prime {
        let t = (c as i64 as f64).sqrt();
        let mut l = 2u64;
        while l as i64 as f64 <= t {
            // gcc turns the first divisor, 2, into a parity test; so do we.
            let divides = if l == 2 { c & 1 == 0 } else { rem64(c, l) == 0 };
            if divides {
                break;
            }
            l += 1;
        }
        if l as i64 as f64 > t {
            n += 1;
        }
    }
    n
}

/// `a % b` with the 64-bit `div` sysbench's binary uses: LLVM would test for operands that
/// fit 32 bits and take the cheaper 32-bit `div`, about 20% faster on this loop.
#[inline(always)]
fn rem64(a: u64, b: u64) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        let rem: u64;
        // SAFETY: callers pass b >= 2, so `div` cannot fault; it reads and writes only
        // rax and rdx, named here, and touches no memory.
        unsafe {
            std::arch::asm!(
                "div {b}",
                b = in(reg) b,
                inout("rax") a => _,
                inout("rdx") 0u64 => rem,
                options(pure, nomem, nostack),
            );
        }
        rem
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        a % b
    }
}

struct Cpu {
    max_prime: u64,
}

impl Worker for Cpu {
    #[inline]
    fn event(&mut self) -> Result<bool> {
        // black_box on both sides: the limit is not a constant and the count is used.
        black_box(count_primes(black_box(self.max_prime)));
        Ok(true)
    }
}

pub(super) fn run(spec: &Spec) -> Result<RunStats> {
    let max_prime = spec.cpu.max_prime;
    let out = drive(spec, |_| Ok(Cpu { max_prime }))?;
    Ok(report::stats(out, None, None))
}
