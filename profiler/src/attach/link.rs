//! The one attach path: load a point's programs, attach the first way the kernel accepts, and
//! detach and reattach it (the packet tracer's windows). Every subject attaches through here.

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Btf, Ebpf,
    programs::{
        BtfTracePoint, RawTracePoint, TracePoint, raw_trace_point::RawTracePointLinkId,
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
}

fn tracepoint(c: &Candidate) -> Result<(&'static str, &'static str)> {
    match c.target {
        Target::Tracepoint { category, name } => Ok((category, name)),
        Target::Function { name } => bail!("{name}: function probes are not built yet"),
    }
}

fn program(c: &Candidate) -> Result<&'static str> {
    c.program
        .ok_or_else(|| anyhow!("no {} program for {}", c.mechanism.name(), c.target))
}

/// Loads the program of one way (tp_btf needs the kernel's BTF).
pub fn load(ebpf: &mut Ebpf, c: &Candidate, btf: Option<&Btf>) -> Result<()> {
    let name = program(c)?;
    let p = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} not in the eBPF object"))?;
    let (_, event) = tracepoint(c)?;
    let r = match c.mechanism {
        Mechanism::RawTracepoint => <&mut RawTracePoint>::try_from(p)?.load(),
        Mechanism::Tracepoint => <&mut TracePoint>::try_from(p)?.load(),
        Mechanism::TpBtf => {
            let btf = btf.ok_or_else(|| anyhow!("tp_btf needs vmlinux BTF"))?;
            <&mut BtfTracePoint>::try_from(p)?.load(event, btf)
        }
        m => bail!("{} is not an attach path yet", m.name()),
    };
    r.with_context(|| format!("loading {name}"))
}

/// Attaches a loaded way.
pub fn attach(ebpf: &mut Ebpf, c: &Candidate) -> Result<Link> {
    let name = program(c)?;
    let (category, event) = tracepoint(c)?;
    let p = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} not in the eBPF object"))?;
    let id = match c.mechanism {
        Mechanism::RawTracepoint => LinkId::Raw(<&mut RawTracePoint>::try_from(p)?.attach(event)?),
        Mechanism::Tracepoint => {
            LinkId::Tp(<&mut TracePoint>::try_from(p)?.attach(category, event)?)
        }
        Mechanism::TpBtf => LinkId::Btf(<&mut BtfTracePoint>::try_from(p)?.attach()?),
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
