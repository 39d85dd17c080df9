//! `cpu`: one event counts the primes below `cpu-max-prime` by trial division, as sb_cpu.c.

use std::hint::black_box;

use anyhow::Result;

use super::{RunStats, Spec, Worker, drive, report};

/// Primes in `3..max_prime`, sysbench's way: trial division by 2..=sqrt(c) computed as a
/// double, with 64-bit operands.
///
/// On x86-64 this is the machine code gcc -O2 makes of sb_cpu.c, so events/s compare with
/// Debian's binary whatever Rust profile builds us: rustc would use 32-bit `div` when the
/// operands fit (about 20% faster here), and an unoptimised build is 30% slower.
#[inline(never)]
pub fn count_primes(max_prime: u64) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if max_prime <= i64::MAX as u64 {
        let n: u64;
        // SAFETY: registers only, all named (rax and rdx for `div`); no memory or stack.
        // `div` cannot fault: the divisor is >= 3.
        unsafe {
            std::arch::asm!(
                "mov {tmp}, 0x4000000000000000",
                "movq {two}, {tmp}",
                "2:",
                "cmp {c}, {max}",
                "jae 6f",
                "xorps {t}, {t}",
                "cvtsi2sd {t}, {c}",
                "sqrtsd {t}, {t}",
                // l = 2 > t: prime.
                "comisd {t}, {two}",
                "jb 4f",
                // gcc's parity test for l = 2.
                "test {c}, 1",
                "jz 5f",
                "mov {l}, 3",
                "3:",
                "xorps {fl}, {fl}",
                "cvtsi2sd {fl}, {l}",
                "comisd {t}, {fl}",
                "jb 4f",
                "mov rax, {c}",
                "xor edx, edx",
                "div {l}",
                "test rdx, rdx",
                "jz 5f",
                "inc {l}",
                "jmp 3b",
                "4:",
                "inc {n}",
                "5:",
                "inc {c}",
                "jmp 2b",
                "6:",
                max = in(reg) max_prime,
                c = inout(reg) 3u64 => _,
                n = inout(reg) 0u64 => n,
                l = out(reg) _,
                tmp = out(reg) _,
                t = out(xmm_reg) _,
                fl = out(xmm_reg) _,
                two = out(xmm_reg) _,
                out("rax") _,
                out("rdx") _,
                options(pure, nomem, nostack),
            );
        }
        return n;
    }
    count_primes_portable(max_prime)
}

/// sb_cpu.c's loop in Rust: the reference for the assembly, and the code elsewhere.
pub(super) fn count_primes_portable(max_prime: u64) -> u64 {
    let mut n = 0;
    for c in 3..max_prime {
        let t = (c as f64).sqrt();
        let mut l = 2u64;
        while l as f64 <= t {
            if c % l == 0 {
                break;
            }
            l += 1;
        }
        if l as f64 > t {
            n += 1;
        }
    }
    n
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
