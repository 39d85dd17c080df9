//! `--print-every N`: every hook of one followed packet in N, pwru-style, from the ring.

use std::io::Write as _;

use anyhow::Result;

use crate::probes::net::NetTracer;

pub(super) fn print_samples(
    tracer: &mut NetTracer,
    last: &mut std::collections::HashMap<u64, u64>,
    header: &mut bool,
    netns_names: &std::collections::HashMap<u64, String>,
) -> Result<()> {
    use profiler_common::net::Event;
    let names = tracer.table.names.clone();
    let mut rb = tracer.events()?;
    let mut out = std::io::stdout().lock();
    while let Some(item) = rb.next() {
        if item.len() < std::mem::size_of::<Event>() {
            continue;
        }
        // SAFETY: the kernel wrote one Event; read_unaligned copes with the ring's alignment.
        let e: Event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
        if *header {
            writeln!(
                out,
                "{:<18} {:>3} {:<4} {:<20} {:>10} {:>4} {:<10} {:>5} {:>10}  layer",
                "SKB", "CPU", "DIR", "HOOK", "NETNS", "IF", "DEV", "LEN", "+DELTA"
            )?;
            *header = false;
        }
        let birth = e.slot == profiler_common::net::SLOT_BIRTH;
        let prev = last.insert(e.skb, e.ts);
        let delta = if birth {
            None
        } else {
            prev.map(|p| e.ts.saturating_sub(p))
        };
        let name_end = e.name.iter().position(|&b| b == 0).unwrap_or(16);
        let hook = if e.hook == profiler_common::net::hook::STAGE {
            super::layers::stage_name(e.class)
        } else if e.hook == profiler_common::net::hook::FUNC {
            super::layers::func_name(e.class)
        } else {
            super::layers::hook_name(e.hook)
        };
        writeln!(
            out,
            "{:#018x} {:>3} {:<4} {:<20} {:>10} {:>4} {:<10} {:>5} {:>10}  {}",
            e.skb,
            e.cpu,
            if e.dir == 0 { "req" } else { "resp" },
            hook,
            netns_names
                .get(&(e.netns as u64))
                .cloned()
                .unwrap_or_else(|| e.netns.to_string()),
            e.ifindex,
            String::from_utf8_lossy(&e.name[..name_end]),
            e.len,
            delta.map_or("".into(), |d| crate::hist::fmt_ns(d as f64)),
            if delta.is_some() {
                names[e.slot as usize]
            } else {
                "(first hook)"
            }
        )?;
    }
    Ok(())
}
