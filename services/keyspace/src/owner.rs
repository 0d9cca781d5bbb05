//! Who holds a device's parked Ping: the pod, the request id the pod gave it, and when it expires.

/// Stored as `pod\trequest\texpiry_ms` in the mailbox's owners hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub pod: String,
    pub request: u64,
    /// Past this instant (ms since the Unix epoch) the Ping has certainly been answered, and the
    /// watcher stops waking it.
    pub expiry_ms: u64,
}

impl Owner {
    pub fn encode(&self) -> String {
        format!("{}\t{}\t{}", self.pod, self.request, self.expiry_ms)
    }

    pub fn parse(value: &str) -> Option<Owner> {
        let mut parts = value.split('\t');
        let pod = parts.next()?.to_owned();
        let request = parts.next()?.parse().ok()?;
        let expiry_ms = parts.next()?.parse().ok()?;
        if pod.is_empty() || parts.next().is_some() {
            return None;
        }
        Some(Owner {
            pod,
            request,
            expiry_ms,
        })
    }
}

/// A Ping that has ended (answered, or its client gone): the pod that held it and the request
/// id that pod gave it. Its owner entry goes, unless a newer Ping owns the device by now.
#[derive(Clone, Copy, Debug)]
pub struct Ended<'a> {
    pub pod: &'a str,
    pub request: u64,
}

impl Ended<'_> {
    /// What the ended Ping's owner entry starts with (the scripts' `release_owner` compares it).
    pub fn prefix(&self) -> String {
        format!("{}\t{}\t", self.pod, self.request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let owner = Owner {
            pod: "frontend-7f9c".into(),
            request: 42,
            expiry_ms: 1_700_000_000_000,
        };
        assert_eq!(Owner::parse(&owner.encode()), Some(owner));
        for bad in ["", "pod", "pod\tx\t1", "pod\t1", "\t1\t2", "p\t1\t2\t3"] {
            assert_eq!(Owner::parse(bad), None, "{bad:?}");
        }
    }
}
