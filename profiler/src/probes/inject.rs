//! The delay injector (user side of profiler-ebpf/src/inject.rs), for the lab: this kernel has no
//! netem. A TC program (`profiler-ebpf/src/inject.rs`) on one hook of one lab device holds each selected
//! packet until a deadline, spinning in `bpf_loop`; the delay lands in the segment after the
//! hook. The program stays attached while the [`Injector`] lives.

use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf,
    maps::PerCpuArray,
    programs::{SchedClassifier, TcAttachType},
};

use profiler_common::names::{map, program as prog};

use crate::lab;

/// Longest delay accepted: the program spins on a CPU with softirqs off for this long.
pub const MAX_DELAY: Duration = Duration::from_millis(100);

/// The injector program, attached to one hook of one device. Dropping it detaches.
pub struct Injector {
    // Holds the program and its link: a tcx link (6.6 on) is an fd, detached from any thread;
    // before 6.6 a netlink filter, deleted by a request in the dropping thread's namespace, so
    // the drop happens in the device's (`Drop`).
    ebpf: Option<Ebpf>,
    netns: String,
}

impl Drop for Injector {
    fn drop(&mut self) {
        if let Some(ebpf) = self.ebpf.take() {
            // Dropped outside, a netlink filter stayed on the lab's device: on 6.1 a
            // self-check's first injection went on delaying through the next case. A gone
            // namespace took the filter with it; the request must not reach a host device
            // of the same index, so then the handles are left to the process's exit.
            let ns = self.netns.clone();
            let _ = std::thread::spawn(move || match lab::netns::enter(&ns) {
                Ok(()) => drop(ebpf),
                Err(_) => std::mem::forget(ebpf),
            })
            .join();
        }
    }
}

impl Injector {
    /// Attaches the injector on `dev` in the named network namespace: every IPv4 TCP/UDP
    /// packet (or those with `port` as source or destination port) passing the hook waits
    /// `delay` there.
    pub fn attach(
        netns: &str,
        dev: &str,
        ingress: bool,
        delay: Duration,
        port: Option<u16>,
    ) -> Result<Injector> {
        if delay.is_zero() || delay > MAX_DELAY {
            bail!(
                "delay {delay:?} out of range: 1ns..={}ms",
                MAX_DELAY.as_millis()
            );
        }
        let delay_ns = delay.as_nanos() as u64;
        let port = port.unwrap_or(0);
        let (dev, hook) = (dev.to_string(), hook_name(ingress));
        let ns = netns.to_string();
        let what = format!("attaching the injector to {hook} of {dev} in {ns}");
        // The interface name resolves in the calling thread's namespace: attach from inside it.
        let ebpf = lab::netns::run_in(netns, move || -> Result<Ebpf> {
            let mut ebpf = crate::probes::loader(crate::probes::Subject::Inject)
                .override_global(
                    map::INJECT_CONFIG,
                    &profiler_common::inject::InjectConfig {
                        delay_ns,
                        port,
                        _pad: [0; 6],
                    },
                    true,
                )
                .load(crate::probes::OBJECT)
                .context("loading the profiler's eBPF object")?;
            let prog: &mut SchedClassifier = ebpf
                .program_mut(prog::INJECT)
                .ok_or_else(|| anyhow!("the eBPF object has no inject_delay program"))?
                .try_into()?;
            prog.load().context("loading inject_delay")?;
            let attach = if ingress {
                TcAttachType::Ingress
            } else {
                TcAttachType::Egress
            };
            // Before 6.6 (no TCX) a TC program hangs off a clsact qdisc, which must exist
            // first; it goes with the lab's namespace. Already there is fine, and any other
            // failure shows in the attach's own error.
            if aya::util::KernelVersion::current()
                .is_ok_and(|v| v < aya::util::KernelVersion::new(6, 6, 0))
            {
                let _ = aya::programs::tc::qdisc_add_clsact(&dev);
            }
            prog.attach(&dev, attach)?;
            Ok(ebpf)
        })
        .context(what)?;
        Ok(Injector {
            ebpf: Some(ebpf),
            netns: netns.to_string(),
        })
    }

    /// Packets held so far, over all CPUs.
    pub fn injected(&self) -> Result<u64> {
        let map = self
            .ebpf
            .as_ref()
            .and_then(|e| e.map(map::INJECT_COUNT))
            .ok_or_else(|| anyhow!("the eBPF object has no INJECT_COUNT map"))?;
        let counts: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
        Ok(counts
            .get(&0, 0)
            .context("reading INJECT_COUNT")?
            .iter()
            .sum())
    }
}

pub fn hook_name(ingress: bool) -> &'static str {
    if ingress { "ingress" } else { "egress" }
}
