//! Value parsers for counts and durations, so a zero, negative or garbled value is refused by
//! the parser in one line naming the option (clap adds the option's name) and what to pass.

/// A whole number of at least `MIN` (negative numbers reach here: the commands that take
/// these allow them, so `--count -1` is this error, not "unexpected argument").
pub fn at_least<T: TryFrom<u64>, const MIN: u64>(s: &str) -> Result<T, String> {
    let bad = || {
        format!(
            "expected a whole number of at least {MIN}, e.g. {}",
            MIN.max(4)
        )
    };
    let n: i128 = s.trim().parse().map_err(|_| bad())?;
    if n < i128::from(MIN) {
        return Err(bad());
    }
    u64::try_from(n)
        .ok()
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| format!("{s} is too large"))
}

/// Seconds: a finite number greater than 0 and at most a day.
pub fn seconds(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 86_400.0 => Ok(v),
        _ => Err("expected seconds greater than 0 (at most 86400), e.g. 10 or 0.5".into()),
    }
}

/// [`seconds`], kept as the text given (it is handed on to a workload's own parser).
pub fn seconds_text(s: &str) -> Result<String, String> {
    seconds(s).map(|_| s.trim().to_string())
}

/// A clap error as one line: the message and its hints (e.g. the possible values), without
/// the usage and "--help" lines.
pub fn one_line(rendered: &str) -> String {
    let parts: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information")
        })
        .collect();
    let line = parts.join(" ");
    line.strip_prefix("error: ").unwrap_or(&line).to_string()
}

/// A report's output file (`--json FILE`), checked before the run rather than after it: its
/// directory must exist, and the path must not be a directory.
pub fn output_file(path: Option<&std::path::Path>, option: &str) -> anyhow::Result<()> {
    let Some(path) = path else { return Ok(()) };
    if crate::export::json::to_stdout(Some(path)) {
        return Ok(());
    }
    if path.is_dir() {
        anyhow::bail!(
            "{option} {}: that is a directory; name a file, e.g. {option} report.json",
            path.display()
        );
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    if !dir.is_dir() {
        anyhow::bail!(
            "{option} {}: directory {} does not exist; create it or write elsewhere",
            path.display(),
            dir.display()
        );
    }
    Ok(())
}

/// The packet filter's flags, one definition for `trace` (its `--attach-only` above all) and
/// `agent`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct FilterArgs {
    /// Follow packets to or from this port (default: a lab's own ports; the agent: every port).
    #[arg(long)]
    pub port: Option<u16>,
    /// Follow packets to or from this IPv4 address.
    #[arg(long)]
    pub host: Option<std::net::Ipv4Addr>,
    /// Follow packets born in this named network namespace (its packets are "requests").
    #[arg(long)]
    pub netns: Option<String>,
    /// Follow packets born on this interface index.
    #[arg(long)]
    pub ifindex: Option<u32>,
}

impl FilterArgs {
    /// Refuses up front a filter that can match nothing (see `attach_only_filter`).
    pub fn check(&self) -> anyhow::Result<()> {
        attach_only_filter(self.port, self.netns.as_deref(), self.ifindex)
    }

    /// `--host` as the kernel side compares it (network byte order), 0 = any.
    pub fn host_be(&self) -> u32 {
        self.host.map_or(0, |h| u32::from_ne_bytes(h.octets()))
    }

    /// The tracer's filter on existing traffic: `--netns`' packets are the requests.
    pub fn existing_traffic(
        &self,
        ports: (u16, u16),
    ) -> anyhow::Result<crate::probes::net::Filter> {
        let netns = match &self.netns {
            Some(n) => netns_inode(n)?,
            None => 0,
        };
        Ok(crate::probes::net::Filter {
            ports,
            netns,
            client_netns: netns,
            ifindex: self.ifindex.unwrap_or(0),
            host: self.host_be(),
            xmit_hook: true,
            ..Default::default()
        })
    }
}

/// The inode of a named network namespace, as the kernel side compares it.
pub fn netns_inode(name: &str) -> anyhow::Result<u32> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(crate::lab::netns::path(name))
        .map(|m| m.ino() as u32)
        .map_err(|_| anyhow::anyhow!("no network namespace {name}: see `ip netns list`"))
}

/// An `--attach-only` filter that can match nothing is refused up front: port 0, interface
/// index 0, or an index no interface has in the namespace the packets are born in.
pub fn attach_only_filter(
    port: Option<u16>,
    netns: Option<&str>,
    ifindex: Option<u32>,
) -> anyhow::Result<()> {
    if port == Some(0) {
        anyhow::bail!(
            "--port 0 matches no packet: pass the port your traffic uses, e.g. --port 5201"
        );
    }
    let Some(index) = ifindex else { return Ok(()) };
    let place = netns.map_or("the root namespace".to_string(), |n| {
        format!("namespace {n}")
    });
    let name = match netns {
        Some(ns) => crate::lab::netns::run_in(ns, move || Ok(interface_name(index)))?,
        None => interface_name(index),
    };
    if name.is_none() {
        let list = netns.map_or("ip -o link".to_string(), |n| format!("ip -n {n} -o link"));
        anyhow::bail!(
            "--ifindex {index}: no interface has that index in {place} (`{list}` lists them); the filter would match nothing"
        );
    }
    Ok(())
}

/// The interface with `index` in the calling thread's network namespace.
fn interface_name(index: u32) -> Option<String> {
    if index == 0 {
        return None;
    }
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer holds IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_files_are_checked_before_the_run() {
        use std::path::Path;
        assert!(output_file(None, "--json").is_ok());
        assert!(output_file(Some(Path::new("report.json")), "--json").is_ok());
        assert!(output_file(Some(Path::new("/tmp/report.json")), "--json").is_ok());
        let e = output_file(Some(Path::new("/nonexistent/dir/x.json")), "--json").unwrap_err();
        assert_eq!(
            e.to_string(),
            "--json /nonexistent/dir/x.json: directory /nonexistent/dir does not exist; create it or write elsewhere"
        );
        let e = output_file(Some(Path::new("/tmp")), "--json").unwrap_err();
        assert!(e.to_string().contains("is a directory"), "{e}");
    }

    #[test]
    fn a_filter_that_matches_nothing_is_refused() {
        assert!(attach_only_filter(Some(80), None, None).is_ok());
        // Loopback is 1 in every namespace.
        assert!(attach_only_filter(Some(80), None, Some(1)).is_ok());
        let e = attach_only_filter(Some(0), None, None).unwrap_err();
        assert!(
            e.to_string().starts_with("--port 0 matches no packet"),
            "{e}"
        );
        for index in [0, 999_999] {
            let e = attach_only_filter(Some(80), None, Some(index)).unwrap_err();
            assert!(
                e.to_string()
                    .starts_with(&format!("--ifindex {index}: no interface")),
                "{e}"
            );
        }
    }

    #[test]
    fn counts() {
        assert_eq!(at_least::<u32, 1>("4"), Ok(4));
        assert_eq!(at_least::<u32, 0>("0"), Ok(0));
        for bad in ["0", "-1", "x", "1.5", ""] {
            let e = at_least::<u32, 1>(bad).unwrap_err();
            assert_eq!(e, "expected a whole number of at least 1, e.g. 4", "{bad}");
        }
        assert_eq!(
            at_least::<u32, 1>("99999999999").unwrap_err(),
            "99999999999 is too large"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(seconds("0.5"), Ok(0.5));
        assert_eq!(seconds_text(" 3 "), Ok("3".into()));
        for bad in ["0", "-1", "nan", "inf", "1e9", "x"] {
            assert!(seconds(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn clap_errors_fold_into_one_line() {
        let e = "error: invalid value '-1' for '--count <N>': expected a whole number\n\n\
                 For more information, try '--help'.\n";
        assert_eq!(
            one_line(e),
            "invalid value '-1' for '--count <N>': expected a whole number"
        );
        let v = "error: invalid value 'bogus' for '--mode <MODE>'\n  [possible values: host, bridge]\n\n\
                 Usage: profiler lab up --mode <MODE>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            one_line(v),
            "invalid value 'bogus' for '--mode <MODE>' [possible values: host, bridge]"
        );
    }
}
