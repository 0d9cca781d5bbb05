//! Key names: only this crate names keys, so the watcher and the frontend cannot drift apart.

use dp_proto::ids::{mailbox_token, token};

/// Key names of one namespace.
#[derive(Clone, Debug)]
pub struct Keyspace {
    ns: String,
}

impl Keyspace {
    pub fn new(namespace: &str) -> Self {
        Keyspace {
            ns: namespace.to_owned(),
        }
    }

    fn mailbox(&self, mailbox: &str, suffix: &str) -> String {
        format!("{}:{{{}}}:{}", self.ns, mailbox_token(mailbox), suffix)
    }

    pub fn versions(&self, mailbox: &str) -> String {
        self.mailbox(mailbox, "ver")
    }

    pub fn owners(&self, mailbox: &str) -> String {
        self.mailbox(mailbox, "own")
    }

    pub fn notified(&self, mailbox: &str, device_id: &str) -> String {
        self.mailbox(mailbox, &format!("ntf:{}", token(device_id)))
    }

    pub fn params(&self, mailbox: &str, device_id: &str) -> String {
        self.mailbox(mailbox, &format!("prm:{}", token(device_id)))
    }

    pub fn unconfirmed(&self, mailbox: &str, device_id: &str) -> String {
        self.mailbox(mailbox, &format!("unc:{}", token(device_id)))
    }

    pub fn hierarchy(&self, mailbox: &str) -> String {
        self.mailbox(mailbox, "hier")
    }

    pub fn folders(&self, mailbox: &str, device_id: &str) -> String {
        self.mailbox(mailbox, &format!("fld:{}", token(device_id)))
    }

    pub fn sync_state(&self, mailbox: &str, device_id: &str) -> String {
        self.mailbox(mailbox, &format!("syn:{}", token(device_id)))
    }

    pub fn devices(&self, mailbox: &str) -> String {
        self.mailbox(mailbox, "dev")
    }

    pub fn watched(&self, mailbox: &str) -> String {
        self.mailbox(mailbox, "wat")
    }

    /// Sorted set: canonical mailbox -> until when (ms) it has a parked Ping. Written by the
    /// frontends only while an IMAP watcher runs (it reads it to know what to watch).
    pub fn pinged(&self) -> String {
        format!("{}:pinged", self.ns)
    }

    /// String `created_ms:random`: the incarnation of the namespace's Redis state. A Redis
    /// that lost its data (restarted without persistence, failed over) has none, and the first
    /// service to look makes a new one.
    pub fn epoch(&self) -> String {
        format!("{}:epoch", self.ns)
    }

    /// String `host:port`: where pod `pod` takes direct wakes (its `WAKE_LISTEN_ADDR`), while
    /// it runs (the key expires unless the pod refreshes it).
    pub fn wake_addr(&self, pod: &str) -> String {
        format!("{}:wake:{pod}", self.ns)
    }

    /// Hash: IMAP watcher replica -> until when (ms) it is alive.
    pub fn imap_replicas(&self) -> String {
        format!("{}:imap:replicas", self.ns)
    }

    /// Hash: the mailbox's store folders as the IMAP watcher last saw them.
    pub fn imap_seen(&self, mailbox: &str) -> String {
        self.mailbox(mailbox, "imap")
    }

    /// A pattern matching every key of the namespace (for tests and tools that clean up).
    pub fn all_keys_pattern(&self) -> String {
        format!("{}:*", self.ns)
    }
}

/// One device of one mailbox, as the scripts need it.
#[derive(Clone, Copy, Debug)]
pub struct Device<'a> {
    pub mailbox: &'a str,
    pub device_id: &'a str,
    /// [`dp_proto::ids::device_key`] of the two.
    pub key: &'a str,
}

/// Who acknowledges a Status 2 (ARCHITECTURE.md, I2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// No Sync is visible: the answer itself, once the device is known to have heard it.
    Standalone,
    /// In front of an ActiveSync server: the device's completed Sync of the folder.
    Proxy,
}

impl Mode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Mode::Standalone => "standalone",
            Mode::Proxy => "proxy",
        }
    }
}
