//! The one attach path: load a point's programs, attach the first way the kernel accepts, and
//! detach and reattach it (the packet tracer's windows). Every subject attaches through here.

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Btf, Ebpf,
    programs::{
        BtfTracePoint, FEntry, FExit, KProbe, RawTracePoint, TracePoint, fentry::FEntryLinkId,
        fexit::FExitLinkId, kprobe::KProbeLinkId, raw_trace_point::RawTracePointLinkId,
        tp_btf::BtfTracePointLinkId, trace_point::TracePointLinkId,
    },
};

use super::{Attached, Candidate, Mechanism, Point, Target};

/// An attachment, to detach or to make again.
#[derive(Debug)]
pub struct Link {
    pub way: Candidate,
    id: LinkId,
}

#[derive(Debug)]
enum LinkId {
    Raw(RawTracePointLinkId),
    Tp(TracePointLinkId),
    Btf(BtfTracePointLinkId),
    FEntry(FEntryLinkId),
    FExit(FExitLinkId),
    KProbe(KProbeLinkId),
}

/// The event name a way is attached to: a tracepoint's name or a function's.
fn event(c: &Candidate) -> (&'static str, &'static str) {
    match c.target {
        Target::Tracepoint { category, name } => (category, name),
        Target::Function { name } => ("", name),
    }
}

fn program(c: &Candidate) -> Result<&'static str> {
    c.program
        .ok_or_else(|| anyhow!("no {} program for {}", c.mechanism.name(), c.target))
}

/// Loads the program of one way (tp_btf, fentry and fexit need the kernel's BTF; without one
/// given, vmlinux's is parsed here).
pub fn load(ebpf: &mut Ebpf, c: &Candidate, btf: Option<&Btf>) -> Result<()> {
    let name = program(c)?;
    let p = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} not in the eBPF object"))?;
    let (_, event) = event(c);
    let parsed;
    let btf = match (btf, c.mechanism) {
        (None, Mechanism::TpBtf | Mechanism::Fentry | Mechanism::Fexit) => {
            parsed = Btf::from_sys_fs().context("reading vmlinux BTF")?;
            Some(&parsed)
        }
        (b, _) => b,
    };
    let btf = || btf.ok_or_else(|| anyhow!("no BTF"));
    let r = match c.mechanism {
        Mechanism::RawTracepoint => <&mut RawTracePoint>::try_from(p)?.load(),
        Mechanism::Tracepoint => <&mut TracePoint>::try_from(p)?.load(),
        Mechanism::TpBtf => <&mut BtfTracePoint>::try_from(p)?.load(event, btf()?),
        Mechanism::Fentry => <&mut FEntry>::try_from(p)?.load(event, btf()?),
        Mechanism::Fexit => <&mut FExit>::try_from(p)?.load(event, btf()?),
        Mechanism::Kprobe | Mechanism::Kretprobe => <&mut KProbe>::try_from(p)?.load(),
        m => bail!("{} is not an attach path yet", m.name()),
    };
    r.with_context(|| format!("loading {name}"))
}

/// Attaches a loaded way.
pub fn attach(ebpf: &mut Ebpf, c: &Candidate) -> Result<Link> {
    let name = program(c)?;
    let (category, event) = event(c);
    let p = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} not in the eBPF object"))?;
    let id = match c.mechanism {
        Mechanism::RawTracepoint => LinkId::Raw(<&mut RawTracePoint>::try_from(p)?.attach(event)?),
        Mechanism::Tracepoint => {
            LinkId::Tp(<&mut TracePoint>::try_from(p)?.attach(category, event)?)
        }
        Mechanism::TpBtf => LinkId::Btf(<&mut BtfTracePoint>::try_from(p)?.attach()?),
        Mechanism::Fentry => LinkId::FEntry(<&mut FEntry>::try_from(p)?.attach()?),
        Mechanism::Fexit => LinkId::FExit(<&mut FExit>::try_from(p)?.attach()?),
        Mechanism::Kprobe | Mechanism::Kretprobe => {
            LinkId::KProbe(<&mut KProbe>::try_from(p)?.attach(event, 0)?)
        }
        m => bail!("{} is not an attach path yet", m.name()),
    };
    Ok(Link { way: *c, id })
}

/// Detaches; the program stays loaded, for `attach` again.
pub fn detach(ebpf: &mut Ebpf, link: Link) -> Result<()> {
    let name = program(&link.way)?;
    let p = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} not in the eBPF object"))?;
    match link.id {
        LinkId::Raw(id) => <&mut RawTracePoint>::try_from(p)?.detach(id)?,
        LinkId::Tp(id) => <&mut TracePoint>::try_from(p)?.detach(id)?,
        LinkId::Btf(id) => <&mut BtfTracePoint>::try_from(p)?.detach(id)?,
        LinkId::FEntry(id) => <&mut FEntry>::try_from(p)?.detach(id)?,
        LinkId::FExit(id) => <&mut FExit>::try_from(p)?.detach(id)?,
        LinkId::KProbe(id) => <&mut KProbe>::try_from(p)?.detach(id)?,
    }
    Ok(())
}

/// Loads and attaches the first of the point's ways the kernel accepts, and says how: on a
/// kernel the doctor examined, what `super::plan_point` said.
pub fn attach_point(ebpf: &mut Ebpf, point: &Point, btf: Option<&Btf>) -> (Option<Link>, Attached) {
    let mut why = vec![];
    for c in point.candidates {
        match load(ebpf, c, btf).and_then(|()| attach(ebpf, c)) {
            Ok(link) => return (Some(link), Attached::by(c)),
            Err(e) => why.push(format!("{}: {e:#}", c.mechanism.name())),
        }
    }
    (None, Attached::failed(point, &why))
}
