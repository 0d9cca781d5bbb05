//! The scripts on the real Redis: the claim/bump protocol of ARCHITECTURE.md section 3 in both
//! orders, the parameter cache, I2 (no repeat after an ack), and supersession.

use dp_keyspace::{Change, Check, Claim, Device, Ended, HierarchyChange, Mode, Owner, Store};
use dp_proto::events::FolderVersion;
use dp_proto::ids::device_key;
use dp_proto::ping::{FolderClass, PingFolder, PingRequest};

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn setup() -> (Store, redis::aio::MultiplexedConnection, String) {
    let ns = format!(
        "tks{:x}",
        std::process::id() as u64 * 1_000_003 + rand_suffix()
    );
    let client = redis::Client::open(redis_url()).expect("redis url");
    let conn = client
        .get_multiplexed_tokio_connection()
        .await
        .expect("Redis at REDIS_URL (127.0.0.1:6379) must run");
    (Store::new(&ns, 600), conn, ns)
}

/// Request `request` of pod `pod`, ended.
fn ended(pod: &str, request: u64) -> Ended<'_> {
    Ended { pod, request }
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0)
}

async fn cleanup(conn: &mut redis::aio::MultiplexedConnection, store: &Store) {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(store.keys.all_keys_pattern())
        .query_async(conn)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query_async(conn).await;
    }
}

/// The pods' clock in these tests.
const NOW: u64 = 1_800_000_000_000;

fn full(heartbeat: u32, ids: &[&str]) -> PingRequest {
    PingRequest {
        heartbeat: Some(heartbeat),
        folders: Some(
            ids.iter()
                .map(|id| PingFolder {
                    id: id.to_string(),
                    class: FolderClass::Email,
                })
                .collect(),
        ),
    }
}

fn change(folders: &[String], hierarchy: bool) -> Change<'_> {
    Change {
        folders,
        store_folders: &[],
        hierarchy,
    }
}

fn email(ids: &[&str]) -> Vec<PingFolder> {
    full(0, ids).folders.unwrap_or_default()
}

fn owner(pod: &str, request: u64) -> Owner {
    Owner {
        pod: pod.into(),
        request,
        expiry_ms: u64::MAX / 2,
    }
}

fn changed_of(claim: &Claim) -> Vec<FolderVersion> {
    match claim {
        // A device Redis held nothing for is new here: its folders are baselines, not news.
        Claim::Claimed { changed, fresh, .. } => {
            if *fresh {
                Vec::new()
            } else {
                changed.clone()
            }
        }
        other => panic!("expected a claim, got {other:?}"),
    }
}

#[tokio::test]
async fn claim_then_bump_names_the_owner_and_bump_then_claim_reports_the_folder() {
    let (store, mut conn, _) = setup().await;
    let key = device_key("alice@example.com", "phone");
    let device = Device {
        mailbox: "alice@example.com",
        device_id: "phone",
        key: &key,
    };

    // First Ping: baseline, nothing new, no previous owner.
    let claim = store
        .claim(
            &mut conn,
            device,
            &owner("a", 1),
            &full(60, &["5", "6"]),
            NOW,
            Mode::Standalone,
        )
        .await
        .expect("claim");
    assert_eq!(
        claim,
        Claim::Claimed {
            previous: None,
            heartbeat: 60,
            folders: full(60, &["5", "6"]).folders.expect("folders"),
            // A device Redis held nothing for: every folder at its new baseline.
            changed: vec![
                FolderVersion {
                    id: "5".into(),
                    version: 0
                },
                FolderVersion {
                    id: "6".into(),
                    version: 0
                }
            ],
            repeats: 0,
            hierarchy_known: false,
            fresh: true,
        }
    );

    // Claim first, then bump: the bump names the parked Ping's owner.
    let bump = store
        .bump(
            &mut conn,
            "alice@example.com",
            change(&["5".into()], false),
            1,
        )
        .await
        .expect("bump");
    assert_eq!(
        bump.versions,
        vec![FolderVersion {
            id: "5".into(),
            version: 1
        }]
    );
    assert_eq!(bump.owners, vec![(key.clone(), owner("a", 1))]);

    // Bump first, then claim: the claim reports the folder at once, empty body reusing the cache.
    let claim = store
        .claim(
            &mut conn,
            device,
            &owner("b", 2),
            &PingRequest::default(),
            NOW,
            Mode::Standalone,
        )
        .await
        .expect("claim");
    let Claim::Claimed {
        previous,
        heartbeat,
        folders,
        changed,
        ..
    } = claim
    else {
        panic!("cached parameters must be found");
    };
    assert_eq!(
        previous,
        Some(owner("a", 1)),
        "supersedes the Ping on pod a"
    );
    assert_eq!((heartbeat, folders.len()), (60, 2));
    assert_eq!(
        changed,
        vec![FolderVersion {
            id: "5".into(),
            version: 1
        }]
    );

    // I2: once acknowledged, the same version is not reported again.
    store
        .ack(&mut conn, device, ended("a", 1), &changed, NOW + 60_000)
        .await
        .expect("ack");
    let again = store
        .claim(
            &mut conn,
            device,
            &owner("b", 3),
            &PingRequest::default(),
            NOW,
            Mode::Standalone,
        )
        .await
        .expect("claim");
    assert!(changed_of(&again).is_empty());

    // I1 under a silent drop: a Status 2 (to a Ping whose heartbeat ran until NOW + 60 s) was
    // written, but the device came back only after that heartbeat ran out, as one does that
    // waited out a dead connection: it may never have heard it, so it hears it again; once.
    store
        .bump(
            &mut conn,
            "alice@example.com",
            change(&["5".into()], false),
            1,
        )
        .await
        .expect("bump");
    let changed = changed_of(
        &store
            .claim(
                &mut conn,
                device,
                &owner("b", 3),
                &PingRequest::default(),
                NOW,
                Mode::Standalone,
            )
            .await
            .expect("claim"),
    );
    assert_eq!(changed.len(), 1);
    store
        .ack(&mut conn, device, ended("a", 1), &changed, NOW + 60_000)
        .await
        .expect("ack");
    let late = NOW + 61_000;
    let again = store
        .claim(
            &mut conn,
            device,
            &owner("b", 4),
            &PingRequest::default(),
            late,
            Mode::Standalone,
        )
        .await
        .expect("claim");
    assert_eq!(
        changed_of(&again),
        changed,
        "reported again after a late return"
    );
    store
        .ack(&mut conn, device, ended("a", 1), &changed, late + 60_000)
        .await
        .expect("ack");
    let settled = store
        .claim(
            &mut conn,
            device,
            &owner("b", 5),
            &PingRequest::default(),
            late + 1,
            Mode::Standalone,
        )
        .await
        .expect("claim");
    assert!(
        changed_of(&settled).is_empty(),
        "an early return settles it (I2)"
    );
    let later = store
        .claim(
            &mut conn,
            device,
            &owner("b", 3),
            &PingRequest::default(),
            late + 999_999,
            Mode::Standalone,
        )
        .await
        .expect("claim");
    assert!(
        changed_of(&later).is_empty(),
        "settled reports are never repeated"
    );

    // check: the owner sees news; an older owner learns it was superseded.
    store
        .bump(
            &mut conn,
            "alice@example.com",
            change(&["6".into()], false),
            1,
        )
        .await
        .expect("bump");
    let check = store
        .check(&mut conn, device, &owner("b", 3), &email(&["5", "6"]))
        .await
        .expect("check");
    assert_eq!(
        check,
        Check::Changed(vec![FolderVersion {
            id: "6".into(),
            version: 1
        }])
    );
    let stale = store
        .check(&mut conn, device, &owner("a", 1), &email(&["6"]))
        .await
        .expect("check");
    assert_eq!(stale, Check::Superseded);
    cleanup(&mut conn, &store).await;
}

#[tokio::test]
async fn missing_parameters_partial_bodies_and_expired_owners() {
    let (store, mut conn, _) = setup().await;
    let key = device_key("bob", "d1");
    let device = Device {
        mailbox: "bob",
        device_id: "d1",
        key: &key,
    };
    let empty = store
        .claim(
            &mut conn,
            device,
            &owner("a", 1),
            &PingRequest::default(),
            NOW,
            Mode::Standalone,
        )
        .await
        .expect("claim");
    assert_eq!(empty, Claim::MissingParameters, "nothing cached: Status 3");
    let only_heartbeat = PingRequest {
        heartbeat: Some(90),
        folders: None,
    };
    let claim = store
        .claim(
            &mut conn,
            device,
            &owner("a", 1),
            &only_heartbeat,
            NOW,
            Mode::Standalone,
        )
        .await
        .expect("claim");
    assert_eq!(
        claim,
        Claim::MissingParameters,
        "no folders known: Status 3"
    );

    store
        .claim(
            &mut conn,
            device,
            &owner("a", 2),
            &full(120, &["1"]),
            NOW,
            Mode::Standalone,
        )
        .await
        .expect("claim");
    let claim = store
        .claim(
            &mut conn,
            device,
            &owner("a", 3),
            &only_heartbeat,
            NOW,
            Mode::Standalone,
        )
        .await
        .expect("claim");
    let Claim::Claimed {
        heartbeat, folders, ..
    } = claim
    else {
        panic!("folders are cached");
    };
    assert_eq!(
        (heartbeat, folders[0].id.as_str()),
        (90, "1"),
        "body's heartbeat, cached folders"
    );

    // An owner whose Ping expired is dropped by the next bump.
    let expired = Owner {
        pod: "a".into(),
        request: 4,
        expiry_ms: 10,
    };
    store
        .claim(
            &mut conn,
            device,
            &expired,
            &PingRequest::default(),
            NOW,
            Mode::Standalone,
        )
        .await
        .expect("claim");
    let bump = store
        .bump(&mut conn, "bob", change(&["1".into()], false), 11)
        .await
        .expect("bump");
    assert!(bump.owners.is_empty());
    cleanup(&mut conn, &store).await;
}

/// Proxy mode (ARCHITECTURE.md I2): a folder stays news until a completed Sync of it, whatever
/// answers were written; a change during the Sync stays news; Status 2 answers are counted
/// until a Sync; a pinged folder outside the learned hierarchy is Status 7.
#[tokio::test]
async fn proxy_mode_is_acknowledged_by_sync_and_knows_the_hierarchy() {
    use dp_keyspace::Synced;
    let (store, mut conn, _) = setup().await;
    let key = device_key("carol", "phone");
    let device = Device {
        mailbox: "carol",
        device_id: "phone",
        key: &key,
    };
    let shared = conn.clone();
    let claim = |request: u64, body: PingRequest| {
        let store = &store;
        let mut conn = shared.clone();
        async move {
            store
                .claim(
                    &mut conn,
                    device,
                    &owner("a", request),
                    &body,
                    NOW,
                    Mode::Proxy,
                )
                .await
                .expect("claim")
        }
    };
    let put = |id| HierarchyChange::Put {
        server_id: id,
        parent_id: "0",
        display_name: id,
        folder_type: 12,
    };
    store
        .apply_hierarchy(&mut conn, device, true, 0, &[put("inbox"), put("old")])
        .await
        .expect("hierarchy");
    assert!(changed_of(&claim(1, full(60, &["inbox"])).await).is_empty());
    assert_eq!(
        claim(2, full(60, &["inbox", "new"])).await,
        Claim::HierarchyChanged {
            previous: Some(owner("a", 1))
        },
        "a folder the device's hierarchy lacks"
    );
    store
        .apply_hierarchy(
            &mut conn,
            device,
            false,
            0,
            &[put("new"), HierarchyChange::Delete("old")],
        )
        .await
        .expect("delta");
    assert!(changed_of(&claim(3, full(60, &["inbox", "new"])).await).is_empty());
    assert!(matches!(
        claim(4, full(60, &["old"])).await,
        Claim::HierarchyChanged { .. }
    ));

    store
        .bump(&mut conn, "carol", change(&["inbox".into()], false), 1)
        .await
        .expect("bump");
    for expected_repeats in 0..3 {
        let Claim::Claimed {
            changed, repeats, ..
        } = claim(5, full(60, &["inbox", "new"])).await
        else {
            panic!("claimed");
        };
        assert_eq!(changed.len(), 1, "reported until synced");
        assert_eq!(repeats, expected_repeats);
        store
            .reported(&mut conn, device, ended("a", 1), &changed)
            .await
            .expect("reported");
    }
    // The Sync starts, a change lands during it, then it completes.
    let start = store.sync_start(&mut conn, device).await.expect("start");
    store
        .bump(&mut conn, "carol", change(&["inbox".into()], false), 1)
        .await
        .expect("bump");
    let version = start.versions["inbox"];
    let done = [Synced {
        collection: "inbox",
        version,
        sync_key: Some("k2"),
    }];
    store
        .synced(&mut conn, device, &done, Some(&["inbox".to_owned()]))
        .await
        .expect("synced");
    let Claim::Claimed {
        changed, repeats, ..
    } = claim(6, PingRequest::default()).await
    else {
        panic!("claimed");
    };
    assert_eq!(repeats, 0, "a Sync ends the run of repeats");
    assert_eq!(changed.len(), 1, "the change during the Sync is still news");
    assert_eq!(changed[0].version, version + 1);
    store
        .reported(&mut conn, device, ended("a", 1), &changed)
        .await
        .expect("reported");
    store
        .reported(&mut conn, device, ended("a", 1), &changed)
        .await
        .expect("reported");
    let Claim::Claimed { repeats, .. } = claim(8, PingRequest::default()).await else {
        panic!("claimed");
    };
    assert_eq!(repeats, 2, "the same news again");
    store
        .bump(&mut conn, "carol", change(&["inbox".into()], false), 1)
        .await
        .expect("bump");
    let Claim::Claimed {
        repeats, changed, ..
    } = claim(9, PingRequest::default()).await
    else {
        panic!("claimed");
    };
    assert_eq!(repeats, 0, "a fresh change is not held back");
    store
        .synced(
            &mut conn,
            device,
            &[Synced {
                collection: "inbox",
                version: changed[0].version,
                sync_key: None,
            }],
            None,
        )
        .await
        .expect("synced");
    let start = store.sync_start(&mut conn, device).await.expect("start");
    assert_eq!(start.last_request, ["inbox"]);
    let done = [Synced {
        collection: "inbox",
        version: start.versions["inbox"],
        sync_key: None,
    }];
    store
        .synced(&mut conn, device, &done, None)
        .await
        .expect("synced");
    assert!(changed_of(&claim(7, PingRequest::default()).await).is_empty());

    // A hierarchy change: Status 7 until the device's next FolderSync, which started after it.
    store
        .bump(&mut conn, "carol", change(&[], true), 1)
        .await
        .expect("bump");
    assert!(matches!(
        claim(10, PingRequest::default()).await,
        Claim::HierarchyChanged { .. }
    ));
    let version = store
        .hierarchy_version(&mut conn, "carol")
        .await
        .expect("version");
    assert_eq!(version, 1);
    store
        .apply_hierarchy(&mut conn, device, false, version, &[])
        .await
        .expect("delta");
    assert!(changed_of(&claim(11, PingRequest::default()).await).is_empty());
    cleanup(&mut conn, &store).await;
}

fn folder<'a>(id: &'a str, parent: &'a str, name: &'a str, kind: u32) -> HierarchyChange<'a> {
    HierarchyChange::Put {
        server_id: id,
        parent_id: parent,
        display_name: name,
        folder_type: kind,
    }
}

/// A change in the store's words reaches every device of the mailbox under its own ServerIds.
#[tokio::test]
async fn store_folders_map_through_each_devices_hierarchy() {
    let (store, mut conn, _) = setup().await;
    let keys: Vec<String> = ["phone", "tablet", "old", "late"]
        .iter()
        .map(|d| device_key("dana", d))
        .collect();
    let device = |i: usize, id: &'static str| Device {
        mailbox: "dana",
        device_id: id,
        key: &keys[i],
    };
    let (phone, tablet, old, late) = (
        device(0, "phone"),
        device(1, "tablet"),
        device(2, "old"),
        device(3, "late"),
    );
    // Z-Push-like ids on one device, SOGo-like on the other.
    let phone_folders = [
        folder("1", "0", "Posteingang", 2),
        folder("3", "0", "Gesendet", 5),
        folder("7", "0", "Archive", 12),
        folder("8", "7", "2024", 12),
        folder("9", "1", "Lists", 12),
    ];
    let tablet_folders = [
        folder("mail/INBOX", "0", "Inbox", 2),
        folder("mail/Archive", "0", "Archive", 12),
        folder("mail/Archive/2024", "mail/Archive", "2024", 12),
    ];
    store
        .apply_hierarchy(&mut conn, phone, true, 0, &phone_folders)
        .await
        .expect("phone hierarchy");
    store
        .apply_hierarchy(&mut conn, tablet, true, 0, &tablet_folders)
        .await
        .expect("tablet hierarchy");
    let mut pinged = Vec::new();
    for (device, ids, request) in [
        (phone, &["1", "8", "9"][..], 1),
        (tablet, &["mail/INBOX", "mail/Archive/2024"][..], 2),
        (old, &["x", "y"][..], 3),
    ] {
        let body = full(600, ids);
        let claimed = store
            .claim(
                &mut conn,
                device,
                &owner("a", request),
                &body,
                NOW,
                Mode::Proxy,
            )
            .await
            .expect("claim");
        assert!(changed_of(&claimed).is_empty(), "nothing new yet");
        pinged.push((
            device,
            owner("a", request),
            body.folders.unwrap_or_default(),
        ));
    }
    let shared = conn.clone();
    let bump = |paths: &[&str]| {
        let store = &store;
        let mut conn = shared.clone();
        let paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
        async move {
            let change = Change {
                store_folders: &paths,
                ..Change::default()
            };
            store
                .bump(&mut conn, "dana", change, NOW)
                .await
                .expect("bump")
        }
    };
    let news = |i: usize| {
        let store = &store;
        let mut conn = shared.clone();
        let (device, owner, folders) = pinged[i].clone();
        async move {
            match store.check(&mut conn, device, &owner, &folders).await {
                Ok(Check::Changed(found)) => found.into_iter().map(|v| v.id).collect::<Vec<_>>(),
                other => panic!("check: {other:?}"),
            }
        }
    };
    let bumped = bump(&["#2"]).await;
    assert_eq!((bumped.store_watched, bumped.store_unwatched), (1, 0));
    assert_eq!(bumped.owners.len(), 3);
    assert_eq!(news(0).await, ["1"], "the phone's Inbox");
    assert_eq!(news(1).await, ["mail/INBOX"], "the tablet's Inbox");
    assert_eq!(
        news(2).await,
        ["x", "y"],
        "a device whose hierarchy is unknown hears of any store change in its mail folders"
    );
    bump(&["Archive/2024", "#2/Lists"]).await;
    assert_eq!(
        news(0).await,
        ["1", "8", "9"],
        "by DisplayName path, under the Inbox too"
    );
    assert_eq!(news(1).await, ["mail/INBOX", "mail/Archive/2024"]);

    // A folder no Ping watches is counted, not an error; the unknown device watches everything.
    let _: () = redis::cmd("DEL")
        .arg(store.keys.watched("dana"))
        .query_async(&mut conn)
        .await
        .expect("del");
    let bumped = bump(&["Junk"]).await;
    assert_eq!((bumped.store_watched, bumped.store_unwatched), (0, 1));

    // A device that enrols after the changes is not told of them.
    store
        .apply_hierarchy(&mut conn, late, true, 0, &tablet_folders)
        .await
        .expect("late hierarchy");
    let claimed = store
        .claim(
            &mut conn,
            late,
            &owner("b", 9),
            &full(600, &["mail/INBOX"]),
            NOW,
            Mode::Proxy,
        )
        .await
        .expect("claim");
    assert!(changed_of(&claimed).is_empty(), "old mail is not news");

    // A Sync's baseline is the version a claim compares with, store changes included.
    let start = store.sync_start(&mut conn, late).await.expect("start");
    assert_eq!(
        start.versions["mail/INBOX"], 1,
        "one store change of the Inbox"
    );
    bump(&["#2"]).await;
    let claimed = store
        .claim(
            &mut conn,
            late,
            &owner("b", 10),
            &PingRequest::default(),
            NOW,
            Mode::Proxy,
        )
        .await
        .expect("claim");
    let changed = changed_of(&claimed);
    assert_eq!(changed.len(), 1);
    assert_eq!(
        (changed[0].id.as_str(), changed[0].version),
        ("mail/INBOX", 2)
    );
    cleanup(&mut conn, &store).await;
}

/// A mailbox keeps state for at most `MAX_DEVICES_PER_MAILBOX` devices: a new one beyond them is
/// refused and writes nothing; the known ones keep working.
#[tokio::test]
async fn a_mailbox_has_state_for_at_most_its_device_limit() {
    let (store, mut conn, ns) = setup().await;
    let store = store.with_max_devices(2);
    let keys: Vec<String> = (0..3)
        .map(|i| device_key("erin", &format!("d{i}")))
        .collect();
    let ids = ["d0", "d1", "d2"];
    let shared = conn.clone();
    let claim = |i: usize| {
        let (store, mut conn, key, id) = (&store, shared.clone(), keys[i].clone(), ids[i]);
        async move {
            let device = Device {
                mailbox: "erin",
                device_id: id,
                key: &key,
            };
            store
                .claim(
                    &mut conn,
                    device,
                    &owner("a", i as u64),
                    &full(60, &["1"]),
                    NOW,
                    Mode::Standalone,
                )
                .await
                .expect("claim")
        }
    };
    assert!(matches!(claim(0).await, Claim::Claimed { .. }));
    assert!(matches!(claim(1).await, Claim::Claimed { .. }));
    assert_eq!(claim(2).await, Claim::TooManyDevices);
    let owners: Vec<String> = redis::cmd("HKEYS")
        .arg(store.keys.owners("erin"))
        .query_async(&mut conn)
        .await
        .expect("owners");
    assert_eq!(owners.len(), 2, "the refused device wrote nothing");
    assert!(
        matches!(claim(0).await, Claim::Claimed { .. }),
        "known devices keep working"
    );
    let _ = ns;
    cleanup(&mut conn, &store).await;
}

/// An ended Ping's owner entry goes, but never a newer Ping's: bump reads only live owners.
#[tokio::test]
async fn an_ended_ping_releases_its_owner_entry_and_only_its_own() {
    let (store, mut conn, _) = setup().await;
    let key = device_key("fay", "p");
    let device = Device {
        mailbox: "fay",
        device_id: "p",
        key: &key,
    };
    let owners = |conn: redis::aio::MultiplexedConnection| {
        let name = store.keys.owners("fay");
        async move {
            let mut conn = conn;
            let n: i64 = redis::cmd("HLEN")
                .arg(name)
                .query_async(&mut conn)
                .await
                .expect("HLEN");
            n
        }
    };
    store
        .claim(
            &mut conn,
            device,
            &owner("a", 1),
            &full(60, &["1"]),
            NOW,
            Mode::Standalone,
        )
        .await
        .expect("claim");
    store
        .claim(
            &mut conn,
            device,
            &owner("b", 2),
            &full(60, &["1"]),
            NOW,
            Mode::Standalone,
        )
        .await
        .expect("claim");
    assert!(!store
        .release(&mut conn, device, ended("a", 1))
        .await
        .expect("release"));
    assert_eq!(
        owners(conn.clone()).await,
        1,
        "the newer Ping keeps its entry"
    );
    assert!(store
        .release(&mut conn, device, ended("b", 2))
        .await
        .expect("release"));
    assert_eq!(owners(conn.clone()).await, 0);
    // An answered Ping's acknowledgement releases it in the same round trip (standalone: ack;
    // proxy: reported), and again never a newer Ping's entry.
    let reported = [FolderVersion {
        id: "1".into(),
        version: 1,
    }];
    for (request, mode) in [(3, Mode::Standalone), (4, Mode::Proxy)] {
        store
            .claim(
                &mut conn,
                device,
                &owner("c", request),
                &full(60, &["1"]),
                NOW,
                mode,
            )
            .await
            .expect("claim");
        let stale = ended("c", request - 1);
        let answered = ended("c", request);
        for (ping, left) in [(stale, 1), (answered, 0)] {
            match mode {
                Mode::Standalone => {
                    store
                        .ack(&mut conn, device, ping, &reported, NOW + 60_000)
                        .await
                        .expect("ack");
                }
                Mode::Proxy => {
                    store
                        .reported(&mut conn, device, ping, &reported)
                        .await
                        .expect("reported");
                }
            }
            assert_eq!(owners(conn.clone()).await, left, "{mode:?}, {ping:?}");
        }
    }
    cleanup(&mut conn, &store).await;
}

/// A claim of `device` pinging folders 5 and 6, as request `request` of pod a.
async fn claim_5_6(
    store: &Store,
    conn: &mut redis::aio::MultiplexedConnection,
    device: Device<'_>,
    request: u64,
    mode: Mode,
) -> Claim {
    let body = full(60, &["5", "6"]);
    let owner = owner("a", request);
    store
        .claim(conn, device, &owner, &body, NOW, mode)
        .await
        .expect("claim")
}

async fn bump_folder(
    store: &Store,
    conn: &mut redis::aio::MultiplexedConnection,
    mailbox: &str,
    folder: &str,
) {
    let folders = [folder.to_string()];
    store
        .bump(conn, mailbox, change(&folders, false), NOW)
        .await
        .expect("bump");
}

/// What a claim after a loss of Redis state must say: the device is new to Redis (so the
/// frontend decides what is news), and folder 6's change since the loss is listed at its
/// version, not taken for a silent baseline. Returns the folders listed.
fn assert_new_with_the_change_since_the_loss(claim: Claim) -> Vec<FolderVersion> {
    let Claim::Claimed { fresh, changed, .. } = claim else {
        panic!("expected a claim, got {claim:?}");
    };
    assert!(fresh, "the device is new to Redis");
    let since = FolderVersion {
        id: "6".into(),
        version: 1,
    };
    assert!(
        changed.contains(&since),
        "the change since the loss is listed, not taken for a baseline: {changed:?}"
    );
    changed
}

/// I1 across a loss of Redis state: an answer written before the loss and acknowledged after
/// it must not make the device known again with only the folders it reported, or the next
/// claim would take a change since the loss, in another folder, for that folder's baseline.
#[tokio::test]
async fn an_answer_acknowledged_after_a_loss_of_redis_state_leaves_the_device_new() {
    let (store, mut conn, _) = setup().await;
    let (mailbox, key) = ("gus@example.com", device_key("gus@example.com", "phone"));
    let device = Device {
        mailbox,
        device_id: "phone",
        key: &key,
    };
    claim_5_6(&store, &mut conn, device, 1, Mode::Standalone).await;
    bump_folder(&store, &mut conn, mailbox, "5").await;
    let reported = changed_of(&claim_5_6(&store, &mut conn, device, 2, Mode::Standalone).await);
    assert_eq!(reported.len(), 1, "folder 5 is news");

    // Redis restarts empty while that Status 2 is being written; its ack comes after.
    cleanup(&mut conn, &store).await;
    let recorded = store
        .ack(&mut conn, device, ended("a", 1), &reported, NOW + 60_000)
        .await
        .expect("ack");
    assert!(!recorded, "nothing is recorded for a device Redis forgot");
    bump_folder(&store, &mut conn, mailbox, "6").await;

    let claim = claim_5_6(&store, &mut conn, device, 3, Mode::Standalone).await;
    let changed = assert_new_with_the_change_since_the_loss(claim);
    let recorded = store
        .ack(&mut conn, device, ended("a", 1), &changed, NOW + 60_000)
        .await
        .expect("ack");
    assert!(recorded, "an ack within the state it came from is recorded");
    cleanup(&mut conn, &store).await;
}

/// The same in proxy mode, where a completed Sync sets the baseline: a Sync that started before
/// Redis lost its state and completed after it sets none.
#[tokio::test]
async fn a_sync_across_a_loss_of_redis_state_leaves_the_device_new() {
    use dp_keyspace::Synced;
    let (store, mut conn, _) = setup().await;
    let (mailbox, key) = ("hal@example.com", device_key("hal@example.com", "phone"));
    let device = Device {
        mailbox,
        device_id: "phone",
        key: &key,
    };
    claim_5_6(&store, &mut conn, device, 1, Mode::Proxy).await;
    bump_folder(&store, &mut conn, mailbox, "5").await;
    let start = store.sync_start(&mut conn, device).await.expect("start");

    // Redis restarts empty during the Sync; a change lands in the other folder after it.
    cleanup(&mut conn, &store).await;
    let done = [Synced {
        collection: "5",
        version: start.versions["5"],
        sync_key: Some("k1"),
    }];
    store
        .synced(&mut conn, device, &done, None)
        .await
        .expect("synced");
    bump_folder(&store, &mut conn, mailbox, "6").await;

    let claim = claim_5_6(&store, &mut conn, device, 2, Mode::Proxy).await;
    assert_new_with_the_change_since_the_loss(claim);
    cleanup(&mut conn, &store).await;
}
