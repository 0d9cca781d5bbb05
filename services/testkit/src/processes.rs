//! Processes as Linux's /proc shows them: which a parent started, and whether one still runs.
//! What an interrupted `loadtest` leaves behind is checked this way, and it waits this way
//! for the processes it killed before clearing the namespace they wrote in.

/// A running process: its id and its command name (at most 15 bytes, as the kernel keeps it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    pub name: String,
}

/// The running processes whose parent is `parent`.
pub fn children(parent: u32) -> Vec<Process> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter_map(|pid| {
            let stat = Stat::read(pid)?;
            (stat.ppid == parent && stat.running()).then_some(Process {
                pid,
                name: stat.name,
            })
        })
        .collect()
}

/// Whether `pid` still runs. A zombie does not: it has exited and only waits for its parent
/// (or, once that is gone, whoever inherits it) to read its status.
pub fn running(pid: u32) -> bool {
    Stat::read(pid).is_some_and(|stat| stat.running())
}

struct Stat {
    name: String,
    state: char,
    ppid: u32,
}

impl Stat {
    /// `/proc/<pid>/stat`: `pid (name) state ppid ...`; the name may hold spaces and parentheses,
    /// so it ends at the last `)`.
    fn read(pid: u32) -> Option<Stat> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (head, rest) = stat.rsplit_once(')')?;
        let name = head.split_once('(')?.1.to_owned();
        let mut fields = rest.split_whitespace();
        let state = fields.next()?.chars().next()?;
        let ppid = fields.next()?.parse().ok()?;
        Some(Stat { name, state, ppid })
    }

    fn running(&self) -> bool {
        !matches!(self.state, 'Z' | 'X')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_runs_until_it_is_killed_and_reaped_or_a_zombie() {
        let mut child = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .expect("sleep starts");
        let me = std::process::id();
        let found = children(me);
        assert!(
            found.contains(&Process {
                pid: child.id(),
                name: "sleep".into()
            }),
            "{found:?}"
        );
        assert!(running(child.id()));
        child.kill().expect("kill");
        // Unreaped, it is a zombie: no longer running, though /proc still lists it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while running(child.id()) {
            assert!(
                std::time::Instant::now() < deadline,
                "killed sleep still runs"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!children(me).iter().any(|p| p.pid == child.id()));
        child.wait().expect("reaped");
        assert!(!running(child.id()));
    }
}
