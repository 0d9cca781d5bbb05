//! Store folder names -> the paths the Redis scripts derive from each device's hierarchy
//! (`keyspace/src/scripts/news.lua`): `#2` Inbox, `#3` Drafts, `#4` Deleted Items, `#5` Sent
//! Items, whatever the store calls them; other folders by their path, segments joined by `/`.

/// How the store names its folders (`STORE_FOLDER_*`, `STORE_DRAFTS`, `STORE_TRASH`, `STORE_SENT`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreNames {
    /// The hierarchy separator the store uses (`/` or `.`).
    pub separator: String,
    /// A prefix every folder but INBOX carries (`INBOX.` in Courier-style namespaces).
    pub prefix: String,
    /// Special-use names, compared exactly; the index is the EAS folder type minus 3.
    pub special: [Vec<String>; 3],
}

impl Default for StoreNames {
    fn default() -> Self {
        StoreNames {
            separator: "/".into(),
            prefix: String::new(),
            special: [
                vec!["Drafts".into()],
                vec!["Trash".into()],
                vec!["Sent".into()],
            ],
        }
    }
}

impl StoreNames {
    /// The path of `name` as the scripts compare it: `INBOX.Archive.2024` with separator `.` and
    /// prefix `INBOX.` is `Archive/2024`; `Sent/2023` is `#5/2023`.
    pub fn path(&self, name: &str) -> String {
        let name = match name.strip_prefix(self.prefix.as_str()) {
            Some(rest) if !self.prefix.is_empty() && !rest.is_empty() => rest,
            _ => name,
        };
        let mut segments: Vec<&str> = name.split(self.separator.as_str()).collect();
        let first = segments.first().copied().unwrap_or_default();
        let special = if first.eq_ignore_ascii_case("INBOX") {
            Some(2)
        } else {
            self.special
                .iter()
                .position(|names| names.iter().any(|n| n == first))
                .map(|i| i + 3)
        };
        let marker = special.map(|kind| format!("#{kind}"));
        if let (Some(marker), Some(slot)) = (&marker, segments.first_mut()) {
            *slot = marker;
        }
        segments.join("/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_use_and_inbox_are_markers_whatever_their_case_or_depth() {
        let names = StoreNames::default();
        assert_eq!(names.path("INBOX"), "#2");
        assert_eq!(names.path("inbox/Lists"), "#2/Lists");
        assert_eq!(names.path("Sent"), "#5");
        assert_eq!(names.path("Sent/2023"), "#5/2023");
        assert_eq!(names.path("Drafts"), "#3");
        assert_eq!(names.path("Trash"), "#4");
        assert_eq!(
            names.path("trash"),
            "trash",
            "only INBOX ignores case (RFC 3501)"
        );
        assert_eq!(names.path("Archive/2024"), "Archive/2024");
    }

    #[test]
    fn separator_and_prefix_are_normalised() {
        let names = StoreNames {
            separator: ".".into(),
            prefix: "INBOX.".into(),
            special: [
                vec!["Drafts".into()],
                vec!["Trash".into(), "Deleted Messages".into()],
                vec!["Sent".into(), "Sent Items".into()],
            ],
        };
        assert_eq!(names.path("INBOX"), "#2");
        assert_eq!(names.path("INBOX.Archive.2024"), "Archive/2024");
        assert_eq!(names.path("INBOX.Sent Items"), "#5");
        assert_eq!(names.path("INBOX.Deleted Messages"), "#4");
    }
}
