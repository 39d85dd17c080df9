//! One room per BPF subject, named as in profiler-ebpf/src: each holds its subject's loader,
//! attach and reader. Commands use them; they do not own them.
//!
//! This file is the one object, built from `profiler-ebpf` by build.rs and embedded in the
//! binary, and its one loader. Every command loads the one object, but only its own subject's
//! maps at full size: the others shrink to one entry, so a command's kernel memory is what it
//! traces.

pub mod exec;
pub mod inject;
pub mod kvm;
pub mod log;
pub mod migrate;
pub mod net;
pub mod probe;
pub mod sched;
pub mod selftest;
pub mod softirq;

use anyhow::{Context as _, Result};
use aya::{Ebpf, EbpfLoader};
use profiler_common::names::map;

pub const OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/profiler"));

/// The BPF subjects, one per file of profiler-ebpf/src.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subject {
    /// net.rs and softirq.rs: the packet-path tracer.
    Net,
    Kvm,
    Sched,
    /// migrate.rs: the migration stream's bytes and the vCPU threads' runs.
    Migrate,
    Exec,
    Inject,
    Probe,
    Selftest,
}

/// Every map of the object with more than a few bytes, by subject; a ring buffer's smallest
/// size is one page.
const MAPS: &[(&str, Subject)] = &[
    (map::NET_SKB, Subject::Net),
    (map::NET_DEV, Subject::Net),
    (map::SEG_SLOT, Subject::Net),
    (map::NET_HIST, Subject::Net),
    (map::NET_POS, Subject::Net),
    (map::NET_DROPS, Subject::Net),
    (map::NET_UNKNOWN, Subject::Net),
    (map::NET_EVENTS, Subject::Net),
    (map::NET_TASK, Subject::Net),
    (map::NET_APPS, Subject::Net),
    (map::SOFTIRQ_HIST, Subject::Net),
    (map::KVM_THREADS, Subject::Kvm),
    (map::KVM_EXIT_SLOT, Subject::Kvm),
    (map::KVM_EXIT_HIST, Subject::Kvm),
    (map::KVM_EXIT_COUNT, Subject::Kvm),
    (map::KVM_RUN_HIST, Subject::Kvm),
    (map::KVM_USER_EXITS, Subject::Kvm),
    (map::KVM_PIO_PORTS, Subject::Kvm),
    (map::SCHED_TGIDS, Subject::Sched),
    (map::SCHED_READY, Subject::Sched),
    (map::SCHED_HIST, Subject::Sched),
    (map::MIGRATE_BYTES, Subject::Migrate),
    (map::MIGRATE_COUNTERS, Subject::Migrate),
    (map::MIGRATE_VCPUS, Subject::Migrate),
    (map::EXEC_EVENTS, Subject::Exec),
    (map::PROBE_HITS, Subject::Probe),
    (map::SELFTEST_HIST, Subject::Selftest),
];

const RING_BUFFERS: &[&str] = &[map::NET_EVENTS, map::EXEC_EVENTS];

/// A loader for `subject`: the other subjects' maps at their smallest.
pub fn loader(subject: Subject) -> EbpfLoader<'static> {
    let mut l = EbpfLoader::new();
    for (name, s) in MAPS {
        if *s != subject {
            let smallest = if RING_BUFFERS.contains(name) { 4096 } else { 1 };
            l.map_max_entries(name, smallest);
        }
    }
    // aya-log's ring buffer: one page unless `--debug-bpf` asks for it (`log::enable`).
    l.map_max_entries(map::AYA_LOGS, log::SMALLEST);
    l
}

/// The whole object with every map at full size (the doctor's probes and map census).
pub fn load() -> Result<Ebpf> {
    Ebpf::load(OBJECT).context("loading the profiler's eBPF object")
}

/// Kernel memory of one subject's load, computed for a CPU count.
#[derive(Debug, serde::Serialize)]
pub struct AtCpus {
    pub cpus: u32,
    pub bytes: u64,
    /// Bytes copied out of the subject's array maps for one interval's reading.
    pub read_bytes: u64,
}

#[derive(Debug, serde::Serialize)]
pub struct MemoryModel {
    pub subject: String,
    pub by_cpus: Vec<AtCpus>,
}

/// Bytes the kernel allocates for a map: values rounded to 8 bytes, per-CPU values once per
/// CPU, hash elements with their ~48-byte header (struct htab_elem), ring buffers by size.
fn map_bytes(map_type: u32, key: u32, value: u32, entries: u32, cpus: u32) -> (u64, u64) {
    use aya_obj::generated::bpf_map_type as t;
    let (k, v, n, c) = (
        (key as u64).next_multiple_of(8),
        (value as u64).next_multiple_of(8),
        entries as u64,
        cpus as u64,
    );
    match map_type {
        x if x == t::BPF_MAP_TYPE_ARRAY as u32 => (n * v, n * v),
        x if x == t::BPF_MAP_TYPE_PERCPU_ARRAY as u32 => (n * v * c + n * 8, n * v * c),
        x if x == t::BPF_MAP_TYPE_HASH as u32 || x == t::BPF_MAP_TYPE_LRU_HASH as u32 => {
            (n * (48 + k + v), 0)
        }
        x if x == t::BPF_MAP_TYPE_PERCPU_HASH as u32
            || x == t::BPF_MAP_TYPE_LRU_PERCPU_HASH as u32 =>
        {
            (n * (48 + k + 8) + n * v * c, 0)
        }
        x if x == t::BPF_MAP_TYPE_RINGBUF as u32 => (n, 0),
        _ => (0, 0),
    }
}

/// Each subject's maps as its loader creates them (the others' shrunk), from 2 to 256 CPUs.
pub fn memory_model() -> Result<Vec<MemoryModel>> {
    let obj = aya_obj::Object::parse(OBJECT).context("parsing the eBPF object")?;
    let subjects = [
        Subject::Net,
        Subject::Kvm,
        Subject::Sched,
        Subject::Migrate,
        Subject::Exec,
        Subject::Inject,
        Subject::Probe,
        Subject::Selftest,
    ];
    Ok(subjects
        .iter()
        .map(|&subject| MemoryModel {
            subject: format!("{subject:?}").to_lowercase(),
            by_cpus: [2, 16, 64, 128, 256]
                .into_iter()
                .map(|cpus| {
                    let (mut bytes, mut read_bytes) = (0, 0);
                    for (name, m) in &obj.maps {
                        let own = MAPS.iter().find(|(n, _)| n == name).map(|(_, s)| *s);
                        let entries = match own {
                            _ if name == map::AYA_LOGS => log::SMALLEST,
                            Some(s) if s != subject => {
                                if RING_BUFFERS.contains(&name.as_str()) {
                                    4096
                                } else {
                                    1
                                }
                            }
                            _ => m.max_entries(),
                        };
                        let (b, r) =
                            map_bytes(m.map_type(), m.key_size(), m.value_size(), entries, cpus);
                        bytes += b;
                        if own == Some(subject) {
                            read_bytes += r;
                        }
                    }
                    AtCpus {
                        cpus,
                        bytes,
                        read_bytes,
                    }
                })
                .collect(),
        })
        .collect())
}

/// Every point any subject attaches, by subject: what the doctor plans and the tracers attach.
pub fn points() -> Vec<(&'static str, Vec<&'static crate::attach::Point>)> {
    vec![
        ("net", net::POINTS.iter().chain(softirq::POINTS).collect()),
        ("kvm", kvm::HOOKS.iter().map(|h| &h.point).collect()),
        ("exec", exec::POINTS.iter().collect()),
        ("sched", sched::POINTS.iter().collect()),
        ("migrate", migrate::POINTS.iter().collect()),
    ]
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use aya_obj::ProgramSection;
    use profiler_common::names::{map, program};

    use super::*;
    use crate::attach::Mechanism;

    fn object() -> aya_obj::Object {
        aya_obj::Object::parse(OBJECT).unwrap()
    }

    #[test]
    fn program_names_are_the_objects() {
        let obj = object();
        let built: BTreeSet<&str> = obj.programs.keys().map(String::as_str).collect();
        let listed: BTreeSet<&str> = program::ALL.iter().copied().collect();
        assert_eq!(
            built, listed,
            "profiler-common's names::program against the object"
        );
        assert_eq!(listed.len(), program::ALL.len(), "a name listed twice");
    }

    #[test]
    fn map_names_are_the_objects() {
        let obj = object();
        let built: BTreeSet<&str> = obj
            .maps
            .keys()
            .map(String::as_str)
            .filter(|n| !n.starts_with('.'))
            .collect();
        let listed: BTreeSet<&str> = map::ALL.iter().copied().collect();
        assert_eq!(
            built, listed,
            "profiler-common's names::map against the object"
        );
        for (name, _) in MAPS {
            assert!(
                listed.contains(name),
                "{name} in the loader's table but not a map"
            );
        }
    }

    #[test]
    fn every_point_names_a_program_of_its_mechanism() {
        let obj = object();
        for (subject, points) in points() {
            for p in points {
                for c in p.candidates {
                    let name = c.program.expect("a subject's point has a program");
                    let section = &obj.programs[name].section;
                    let ok = matches!(
                        (c.mechanism, section),
                        (Mechanism::RawTracepoint, ProgramSection::RawTracePoint)
                            | (Mechanism::Tracepoint, ProgramSection::TracePoint)
                            | (Mechanism::TpBtf, ProgramSection::BtfTracePoint)
                            | (Mechanism::Fentry, ProgramSection::FEntry { .. })
                            | (Mechanism::Fexit, ProgramSection::FExit { .. })
                            | (Mechanism::Kprobe, ProgramSection::KProbe)
                            | (Mechanism::Kretprobe, ProgramSection::KRetProbe)
                    );
                    assert!(
                        ok,
                        "{subject}: {name} is {section:?}, declared {:?}",
                        c.mechanism
                    );
                }
            }
        }
    }
}
