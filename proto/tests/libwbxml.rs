//! Cross-check against an independent codec: libwbxml (Debian's libwbxml2-utils). Generated Ping
//! and FolderHierarchy documents go both ways:
//! ours -> bytes -> `wbxml2xml -l ACTIVESYNC` -> XML -> our XML parser -> same tree, and
//! our XML -> `xml2wbxml -a -n -v 1.3` -> bytes, equal to our encoding byte for byte.
//! A missing tool fails the test: `.ci/run` installs it.

use std::path::{Path, PathBuf};
use std::process::Command;

use dp_proto::wbxml::{decode, encode, tag_token, xml, Element, Node};

/// Documents per family; two families, both directions.
const PER_FAMILY: usize = 600;

/// A small deterministic generator (xorshift64*), so a failure names a seed that reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    /// Text as folder ids and display names hold it: XML specials, non-ASCII, inner spaces.
    /// libwbxml trims leading and trailing blanks, so the ends are never blank.
    fn text(&mut self, max: usize) -> String {
        const PIECES: &[&str] = &[
            "a", "Z", "0", "7", "-", "_", ":", "/", ".", " ", "<", ">", "&", "\"", "'", "é", "ß",
            "日", "本", "😀", "Inbox", "%", "=", "{", "}",
        ];
        let len = 1 + self.below(max);
        let text: String = (0..len).map(|_| PIECES[self.below(PIECES.len())]).collect();
        let trimmed = text.trim();
        if trimmed.is_empty() {
            "x".to_owned()
        } else {
            trimmed.to_owned()
        }
    }
    fn number(&mut self, max: u64) -> String {
        (self.next() % (max + 1)).to_string()
    }
}

fn el(page: u8, name: &str) -> Element {
    let token = tag_token(page, name).unwrap_or_else(|| panic!("{name} on page {page}"));
    Element::new(page, token)
}

fn leaf(page: u8, name: &str, text: String) -> Element {
    let mut element = el(page, name);
    element.children.push(Node::Text(text));
    element
}

const PING: u8 = 13;
const HIERARCHY: u8 = 7;

fn ping_document(rng: &mut Rng) -> Element {
    if rng.chance(50) {
        let mut ping = el(PING, "Ping");
        if rng.chance(70) {
            ping = ping.child(leaf(PING, "HeartbeatInterval", rng.number(3540)));
        }
        if rng.chance(80) || ping.children.is_empty() {
            let mut folders = el(PING, "Folders");
            for _ in 0..1 + rng.below(8) {
                let class = ["Email", "Calendar", "Contacts", "Tasks", "Notes"][rng.below(5)];
                folders = folders.child(
                    el(PING, "Folder")
                        .child(leaf(PING, "Id", rng.text(20)))
                        .child(leaf(PING, "Class", class.to_owned())),
                );
            }
            ping = ping.child(folders);
        }
        ping
    } else {
        let mut ping = el(PING, "Ping").child(leaf(PING, "Status", (1 + rng.below(8)).to_string()));
        if rng.chance(50) {
            let mut folders = el(PING, "Folders");
            for _ in 0..1 + rng.below(6) {
                folders = folders.child(leaf(PING, "Folder", rng.text(20)));
            }
            ping = ping.child(folders);
        }
        if rng.chance(20) {
            ping = ping.child(leaf(PING, "MaxFolders", rng.number(300)));
        }
        if rng.chance(20) {
            ping = ping.child(leaf(PING, "HeartbeatInterval", rng.number(3540)));
        }
        ping
    }
}

fn folder_fields(rng: &mut Rng, element: Element) -> Element {
    element
        .child(leaf(HIERARCHY, "ServerId", rng.text(12)))
        .child(leaf(HIERARCHY, "ParentId", rng.text(12)))
        .child(leaf(HIERARCHY, "DisplayName", rng.text(30)))
        .child(leaf(HIERARCHY, "Type", (1 + rng.below(19)).to_string()))
}

fn hierarchy_document(rng: &mut Rng) -> Element {
    let h = HIERARCHY;
    match rng.below(5) {
        0 => el(h, "FolderSync").child(leaf(h, "SyncKey", rng.number(1000))),
        1 | 2 => {
            let mut changes = el(h, "Changes");
            let n = rng.below(10);
            changes = changes.child(leaf(h, "Count", n.to_string()));
            for _ in 0..n {
                changes = match rng.below(3) {
                    0 => changes.child(folder_fields(rng, el(h, "Add"))),
                    1 => changes.child(folder_fields(rng, el(h, "Update"))),
                    _ => changes.child(el(h, "Delete").child(leaf(h, "ServerId", rng.text(12)))),
                };
            }
            el(h, "FolderSync")
                .child(leaf(h, "Status", "1".into()))
                .child(leaf(h, "SyncKey", rng.number(1000)))
                .child(changes)
        }
        3 => el(h, "FolderCreate")
            .child(leaf(h, "SyncKey", rng.number(1000)))
            .child(leaf(h, "ParentId", rng.text(12)))
            .child(leaf(h, "DisplayName", rng.text(30)))
            .child(leaf(h, "Type", "12".into())),
        _ => el(h, "FolderDelete")
            .child(leaf(h, "Status", (1 + rng.below(11)).to_string()))
            .child(leaf(h, "SyncKey", rng.number(1000))),
    }
}

fn run(tool: &str, args: &[&str], input: &Path, output: &Path) {
    let result = Command::new(tool)
        .args(args)
        .arg("-o")
        .arg(output)
        .arg(input)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {tool}: {e}. Install Debian's libwbxml2-utils (.ci/run does).")
        });
    assert!(
        result.status.success(),
        "{tool} failed on {}: {}",
        input.display(),
        String::from_utf8_lossy(&result.stderr)
    );
}

/// Both directions for one document, in `dir`.
fn cross_check(dir: &Path, label: &str, tree: &Element) {
    let ours = encode(tree).expect("encodes");
    let (wbxml_in, xml_out) = (dir.join("in.wbxml"), dir.join("out.xml"));
    std::fs::write(&wbxml_in, &ours).expect("writes");
    run(
        "wbxml2xml",
        &["-l", "ACTIVESYNC", "-m", "0"],
        &wbxml_in,
        &xml_out,
    );
    let their_xml = std::fs::read_to_string(&xml_out).expect("reads libwbxml's XML");
    let parsed = xml::from_xml(&their_xml)
        .unwrap_or_else(|e| panic!("{label}: libwbxml's XML does not parse: {e}\n{their_xml}"));
    assert_eq!(
        &parsed, tree,
        "{label}: libwbxml decoded our bytes differently\n{their_xml}"
    );

    let (xml_in, wbxml_out) = (dir.join("in.xml"), dir.join("out.wbxml"));
    std::fs::write(&xml_in, xml::to_xml(tree)).expect("writes");
    run("xml2wbxml", &["-a", "-n", "-v", "1.3"], &xml_in, &wbxml_out);
    let theirs = std::fs::read(&wbxml_out).expect("reads libwbxml's bytes");
    assert_eq!(
        theirs, ours,
        "{label}: libwbxml encoded our XML to other bytes"
    );
    assert_eq!(
        &decode(&theirs).expect("we decode libwbxml's bytes"),
        tree,
        "{label}"
    );
}

fn scratch_dir(worker: usize) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dp-libwbxml-{}-{worker}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("creates scratch dir");
    dir
}

#[test]
fn libwbxml_agrees_with_us_both_ways() {
    let seed: u64 = std::env::var("DP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_D1EC_7B05_0001);
    let workers = 4;
    let checked: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|worker| {
                scope.spawn(move || {
                    let dir = scratch_dir(worker);
                    let mut count = 0;
                    for i in (worker..2 * PER_FAMILY).step_by(workers) {
                        let mut rng =
                            Rng(seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                        let (family, tree) = if i % 2 == 0 {
                            ("ping", ping_document(&mut rng))
                        } else {
                            ("hierarchy", hierarchy_document(&mut rng))
                        };
                        cross_check(&dir, &format!("{family} #{i} (DP_SEED={seed})"), &tree);
                        count += 1;
                    }
                    let _ = std::fs::remove_dir_all(&dir);
                    count
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker passed"))
            .sum()
    });
    assert_eq!(checked, 2 * PER_FAMILY);
}
