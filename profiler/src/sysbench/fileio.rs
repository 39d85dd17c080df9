//! `fileio`: `prepare` writes `file-num` files `test_file.N` of `file-total-size / file-num`
//! bytes each, `run` reads and writes `file-block-size` blocks in them, `cleanup` removes
//! them; as sb_fileio.c (synchronous I/O mode).
//!
//! Request order follows sysbench: sequential modes share one cursor over all files; random
//! modes pick a block uniformly over all files, and `rndrw` reads while a thread's
//! reads/writes ratio is below `file-rw-ratio`. After every `file-fsync-freq` requests,
//! once something was written, the next `file-num` events are fsyncs of each file in turn.

use std::{
    fs::{File, OpenOptions},
    io::{ErrorKind, Seek, SeekFrom, Write},
    os::unix::fs::{FileExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use super::{
    Counters, ExtraFlag, FileOpts, FileStats, FileTestMode, FilesReport, FsyncMode, Rng, RunStats,
    Spec, Worker, drive, report,
};

/// sysbench's name for file `i`.
pub fn file_name(i: u32) -> String {
    format!("test_file.{i}")
}

fn path(o: &FileOpts, i: u32) -> PathBuf {
    o.dir.join(file_name(i))
}

fn open_flags(o: &FileOpts) -> i32 {
    o.extra_flags.iter().fold(0, |f, x| {
        f | match x {
            ExtraFlag::Sync => libc::O_SYNC,
            ExtraFlag::Dsync => libc::O_DSYNC,
            ExtraFlag::Direct => libc::O_DIRECT,
        }
    })
}

/// A zeroed, page-aligned buffer (O_DIRECT needs the alignment), without unsafe code.
struct Aligned {
    raw: Vec<u8>,
    off: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Self {
        const PAGE: usize = 4096;
        let raw = vec![0u8; len + PAGE];
        let off = raw.as_ptr().align_offset(PAGE).min(PAGE);
        Self { raw, off, len }
    }
    fn get(&mut self) -> &mut [u8] {
        &mut self.raw[self.off..self.off + self.len]
    }
}

fn file_size(o: &FileOpts) -> u64 {
    o.total_size / u64::from(o.num)
}

pub(super) fn prepare(spec: &Spec) -> Result<FilesReport> {
    let o = &spec.fileio;
    let started = Instant::now();
    // sysbench's seqwr creates the files itself: prepare only makes sure they are gone.
    if o.test_mode == Some(FileTestMode::Seqwr) {
        let removed = remove(o)?;
        return Ok(FilesReport::new(o, 0, removed, started.elapsed()));
    }
    let size = file_size(o);
    let mut buf = Aligned::new(o.block_size as usize);
    let mut written = 0;
    for i in 0..o.num {
        let p = path(o, i);
        let mut f = OpenOptions::new()
            .create(true)
            .write(true)
            .mode(0o600)
            .custom_flags(open_flags(o))
            .open(&p)
            .with_context(|| format!("creating {}", p.display()))?;
        let mut offset = f.seek(SeekFrom::End(0))?;
        while offset < size {
            f.write_all(buf.get())
                .with_context(|| format!("writing {}", p.display()))?;
            offset += o.block_size;
            written += o.block_size;
        }
        // As sysbench: on disk before the run, so the run does not pay for it.
        f.sync_all()
            .with_context(|| format!("fsync {}", p.display()))?;
    }
    Ok(FilesReport::new(o, written, 0, started.elapsed()))
}

fn remove(o: &FileOpts) -> Result<u32> {
    let mut removed = 0;
    for i in 0..o.num {
        let p = path(o, i);
        match std::fs::remove_file(&p) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", p.display())),
        }
    }
    Ok(removed)
}

pub(super) fn cleanup(spec: &Spec) -> Result<FilesReport> {
    let o = &spec.fileio;
    let started = Instant::now();
    let removed = remove(o)?;
    Ok(FilesReport::new(o, 0, removed, started.elapsed()))
}

fn open_for_run(o: &FileOpts, mode: FileTestMode) -> Result<Vec<File>> {
    let size = file_size(o);
    let open = |p: &Path| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(open_flags(o))
            .open(p)
    };
    let mut files = Vec::with_capacity(o.num as usize);
    for i in 0..o.num {
        let p = path(o, i);
        if mode == FileTestMode::Seqwr {
            // sysbench's "sequential write (creation)": new, empty files.
            match std::fs::remove_file(&p) {
                Err(e) if e.kind() != ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing {}", p.display()));
                }
                _ => {}
            }
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&p)
                .with_context(|| format!("creating {}", p.display()))?;
            files.push(open(&p).with_context(|| format!("opening {}", p.display()))?);
            continue;
        }
        let f = match open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => bail!(
                "fileio: {} is missing: run `profiler sysbench fileio prepare` first, with the \
                 same --file-num, --file-total-size and --file-dir",
                p.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("opening {}", p.display())),
        };
        let len = f.metadata()?.len();
        if len < size {
            bail!(
                "fileio: {} has {len} bytes, {size} expected: run `profiler sysbench fileio \
                 prepare` with the same --file-num and --file-total-size",
                p.display()
            );
        }
        files.push(f);
    }
    Ok(files)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    Write,
    Fsync,
}

struct Req {
    op: Op,
    file: usize,
    pos: u64,
    size: usize,
}

/// sysbench's request state, shared by all threads under one lock, as its global mutex.
#[derive(Default)]
struct State {
    position: u64,
    current_file: usize,
    fsynced_file: usize,
    is_dirty: bool,
    req_performed: u64,
}

struct Shared {
    files: Vec<File>,
    file_size: u64,
    /// Bytes over all files, for random positions.
    total: u64,
    block: u64,
    mode: FileTestMode,
    fsync_freq: u64,
    fsync_all: bool,
    fsync_end: bool,
    fdatasync: bool,
    rw_ratio: f64,
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The periodic fsync of the next file, if one is due (sysbench's check, both modes).
    fn due_fsync(&self, st: &mut State) -> Option<Req> {
        if self.fsync_freq == 0 || !st.is_dirty || !st.req_performed.is_multiple_of(self.fsync_freq)
        {
            return None;
        }
        let file = st.fsynced_file;
        st.fsynced_file += 1;
        if st.fsynced_file == self.files.len() {
            st.fsynced_file = 0;
            st.is_dirty = false;
        }
        Some(Req {
            op: Op::Fsync,
            file,
            pos: 0,
            size: 0,
        })
    }

    fn seq_request(&self) -> Req {
        let op = match self.mode {
            FileTestMode::Seqwr | FileTestMode::Seqrewr => Op::Write,
            _ => Op::Read,
        };
        let mut st = self.lock();
        if op == Op::Write
            && let Some(r) = self.due_fsync(&mut st)
        {
            return r;
        }
        st.req_performed += 1;
        if op == Op::Write {
            st.is_dirty = true;
        }
        if st.current_file == self.files.len() {
            st.position = 0;
            st.current_file = 0;
        }
        let (file, pos) = (st.current_file, st.position);
        let size = self.block.min(self.file_size - pos);
        st.position += size;
        if st.position == self.file_size {
            st.current_file += 1;
            st.position = 0;
        }
        Req {
            op,
            file,
            pos,
            size: size as usize,
        }
    }

    fn rnd_request(&self, c: &Counters, rng: &mut Rng) -> Req {
        let op = match self.mode {
            FileTestMode::Rndwr => Op::Write,
            FileTestMode::Rndrw
                if (c.reads as f64 + 1.0) / (c.writes as f64 + 1.0) >= self.rw_ratio =>
            {
                Op::Write
            }
            _ => Op::Read,
        };
        let tmp = (rng.uniform() * self.total as f64) as u64;
        let tmp = tmp - tmp % self.block;
        let (file, pos) = ((tmp / self.file_size) as usize, tmp % self.file_size);
        let size = self.block.min(self.file_size - pos) as usize;
        let mut st = self.lock();
        if let Some(r) = self.due_fsync(&mut st) {
            return r;
        }
        st.req_performed += 1;
        if op == Op::Write {
            st.is_dirty = true;
        }
        Req {
            op,
            file,
            pos,
            size,
        }
    }

    fn fsync(&self, file: usize) -> Result<()> {
        let f = &self.files[file];
        let r = if self.fdatasync {
            f.sync_data()
        } else {
            f.sync_all()
        };
        r.with_context(|| format!("fsync of {}", file_name(file as u32)))
    }
}

struct FileWorker<'a> {
    shared: &'a Shared,
    buf: Aligned,
    rng: Rng,
    c: Counters,
}

impl Worker for FileWorker<'_> {
    fn event(&mut self) -> Result<bool> {
        let s = self.shared;
        let r = match s.mode {
            FileTestMode::Seqwr | FileTestMode::Seqrewr | FileTestMode::Seqrd => s.seq_request(),
            _ => s.rnd_request(&self.c, &mut self.rng),
        };
        let f = &s.files[r.file];
        let name = || file_name(r.file as u32);
        match r.op {
            Op::Read => {
                let n = f
                    .read_at(&mut self.buf.get()[..r.size], r.pos)
                    .with_context(|| format!("reading {} at {}", name(), r.pos))?;
                if n != r.size {
                    bail!(
                        "short read of {} at {}: {n} of {} bytes",
                        name(),
                        r.pos,
                        r.size
                    );
                }
                self.c.reads += 1;
                self.c.bytes_read += n as u64;
            }
            Op::Write => {
                let n = f
                    .write_at(&self.buf.get()[..r.size], r.pos)
                    .with_context(|| format!("writing {} at {}", name(), r.pos))?;
                if n != r.size {
                    bail!(
                        "short write of {} at {}: {n} of {} bytes",
                        name(),
                        r.pos,
                        r.size
                    );
                }
                if s.fsync_all {
                    s.fsync(r.file)?;
                    self.c.fsyncs += 1;
                }
                self.c.writes += 1;
                self.c.bytes_written += n as u64;
            }
            Op::Fsync => {
                s.fsync(r.file)?;
                self.c.fsyncs += 1;
            }
        }
        Ok(true)
    }

    fn finish(&mut self) -> Result<()> {
        let s = self.shared;
        let reads_only = matches!(s.mode, FileTestMode::Seqrd | FileTestMode::Rndrd);
        if s.fsync_end && !reads_only {
            for i in 0..s.files.len() {
                s.fsync(i)?;
                self.c.fsyncs += 1;
            }
        }
        Ok(())
    }

    fn counters(&self) -> Counters {
        self.c
    }
}

pub(super) fn run(spec: &Spec) -> Result<RunStats> {
    let o = &spec.fileio;
    let Some(mode) = o.test_mode else {
        bail!(
            "fileio run needs --file-test-mode: one of seqwr, seqrewr, seqrd, rndrd, rndwr, rndrw"
        )
    };
    let file_size = file_size(o);
    let shared = Shared {
        files: open_for_run(o, mode)?,
        file_size,
        total: file_size * u64::from(o.num),
        block: o.block_size,
        mode,
        // --file-fsync-all replaces the periodic and final fsyncs, as in sysbench.
        fsync_freq: if o.fsync_all { 0 } else { o.fsync_freq },
        fsync_all: o.fsync_all,
        fsync_end: o.fsync_end && !o.fsync_all,
        fdatasync: o.fsync_mode == FsyncMode::Fdatasync,
        rw_ratio: o.rw_ratio,
        state: Mutex::new(State::default()),
    };
    let out = drive(spec, |i| {
        Ok(FileWorker {
            shared: &shared,
            buf: Aligned::new(o.block_size as usize),
            rng: Rng::new(i as u64),
            c: Counters::default(),
        })
    })?;
    let secs = out.elapsed.as_secs_f64();
    let c = out.counters;
    const MIB: f64 = 1024.0 * 1024.0;
    let fs = FileStats {
        reads: c.reads,
        writes: c.writes,
        fsyncs: c.fsyncs,
        reads_per_sec: c.reads as f64 / secs,
        writes_per_sec: c.writes as f64 / secs,
        fsyncs_per_sec: c.fsyncs as f64 / secs,
        bytes_read: c.bytes_read,
        bytes_written: c.bytes_written,
        read_mib_per_sec: c.bytes_read as f64 / MIB / secs,
        written_mib_per_sec: c.bytes_written as f64 / MIB / secs,
    };
    Ok(report::stats(out, None, Some(fs)))
}
