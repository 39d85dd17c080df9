//! Who owns a thing the tool made: a process, by pid and start time (pids are reused), so a
//! later run can tell a leftover of a dead owner from a live run's. The lowest floor: every
//! room that names its things by owner (labs, cgroups, temp files, QEMU, libvirt domains,
//! Docker labels) uses it, and it uses nothing of theirs.

/// A process, identified beyond its pid by its start time (pids are reused).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Owner {
    pub pid: u32,
    pub start: u64,
}

impl Owner {
    pub fn me() -> Owner {
        let pid = std::process::id();
        Owner {
            pid,
            start: start_time(pid).unwrap_or(0),
        }
    }

    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start)
    }
}

/// Field 22 of /proc/PID/stat: start time in clock ticks since boot; None once it is dead.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after its ')' are plain.
    let rest = &stat[stat.rfind(')')? + 2..];
    // A zombie (killed, not yet reaped) owns nothing any more.
    if rest.starts_with('Z') || rest.starts_with('X') {
        return None;
    }
    rest.split(' ').nth(19)?.parse().ok()
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.pid, self.start)
    }
}

impl std::str::FromStr for Owner {
    type Err = ();
    fn from_str(s: &str) -> Result<Owner, ()> {
        let (pid, start) = s.split_once(':').ok_or(())?;
        Ok(Owner {
            pid: pid.parse().map_err(|_| ())?,
            start: start.parse().map_err(|_| ())?,
        })
    }
}

/// `profiler-<pid>-<start>-<i>`: the name of the `i`-th thing `owner` made (QEMU's `-name`,
/// libvirt domains).
pub fn name(owner: &Owner, index: u32) -> String {
    format!("{NAME_PREFIX}{}-{}-{index}", owner.pid, owner.start)
}

pub const NAME_PREFIX: &str = "profiler-";

/// The owner a [`name`] carries, if it is one.
pub fn of_name(name: &str) -> Option<Owner> {
    let mut it = name.strip_prefix(NAME_PREFIX)?.split('-');
    let pid = it.next()?.parse().ok()?;
    let start = it.next()?.parse().ok()?;
    it.next()?.parse::<u32>().ok()?;
    it.next().is_none().then_some(Owner { pid, start })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn my_start_time_is_readable_and_i_am_alive() {
        let me = Owner::me();
        assert!(me.start > 0);
        assert!(me.alive());
        let ghost = Owner {
            pid: me.pid,
            start: me.start + 1,
        };
        assert!(!ghost.alive(), "a reused pid must not pass for the owner");
    }

    #[test]
    fn names_carry_their_owner() {
        let me = Owner::me();
        assert_eq!(of_name(&name(&me, 3)), Some(me.clone()));
        for bad in [
            "profiler",
            "profiler-1-2",
            "profiler-1-2-x",
            "profiler-1-2-3-4",
            "pf-1-2-3",
        ] {
            assert_eq!(of_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn owner_round_trips_through_a_label() {
        let me = Owner::me();
        assert_eq!(me.to_string().parse::<Owner>(), Ok(me));
        assert!("garbage".parse::<Owner>().is_err());
    }
}
