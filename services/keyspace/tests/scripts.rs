//! The scripts on the real Redis: the claim/bump protocol of ARCHITECTURE.md section 3 in both
//! orders, the parameter cache, I2 (no repeat after an ack), and supersession.

use dp_keyspace::{Check, Claim, Device, Owner, Store};
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

fn owner(pod: &str, request: u64) -> Owner {
    Owner {
        pod: pod.into(),
        request,
        expiry_ms: u64::MAX / 2,
    }
}

fn changed_of(claim: &Claim) -> Vec<FolderVersion> {
    match claim {
        Claim::Claimed { changed, .. } => changed.clone(),
        Claim::MissingParameters => panic!("expected a claim"),
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
        )
        .await
        .expect("claim");
    assert_eq!(
        claim,
        Claim::Claimed {
            previous: None,
            heartbeat: 60,
            folders: full(60, &["5", "6"]).folders.expect("folders"),
            changed: vec![],
        }
    );

    // Claim first, then bump: the bump names the parked Ping's owner.
    let bump = store
        .bump(&mut conn, "alice@example.com", &["5".into()], 1)
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
        )
        .await
        .expect("claim");
    let Claim::Claimed {
        previous,
        heartbeat,
        folders,
        changed,
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
        .ack(&mut conn, device, &changed, NOW + 60_000)
        .await
        .expect("ack");
    let again = store
        .claim(
            &mut conn,
            device,
            &owner("b", 3),
            &PingRequest::default(),
            NOW,
        )
        .await
        .expect("claim");
    assert!(changed_of(&again).is_empty());

    // I1 under a silent drop: a Status 2 (to a Ping whose heartbeat ran until NOW + 60 s) was
    // written, but the device came back only after that heartbeat ran out, as one does that
    // waited out a dead connection: it may never have heard it, so it hears it again; once.
    store
        .bump(&mut conn, "alice@example.com", &["5".into()], 1)
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
            )
            .await
            .expect("claim"),
    );
    assert_eq!(changed.len(), 1);
    store
        .ack(&mut conn, device, &changed, NOW + 60_000)
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
        )
        .await
        .expect("claim");
    assert_eq!(
        changed_of(&again),
        changed,
        "reported again after a late return"
    );
    store
        .ack(&mut conn, device, &changed, late + 60_000)
        .await
        .expect("ack");
    let settled = store
        .claim(
            &mut conn,
            device,
            &owner("b", 5),
            &PingRequest::default(),
            late + 1,
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
        )
        .await
        .expect("claim");
    assert!(
        changed_of(&later).is_empty(),
        "settled reports are never repeated"
    );

    // check: the owner sees news; an older owner learns it was superseded.
    store
        .bump(&mut conn, "alice@example.com", &["6".into()], 1)
        .await
        .expect("bump");
    let check = store
        .check(&mut conn, device, &owner("b", 3), ["5", "6"].into_iter())
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
        .check(&mut conn, device, &owner("a", 1), ["6"].into_iter())
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
        )
        .await
        .expect("claim");
    assert_eq!(empty, Claim::MissingParameters, "nothing cached: Status 3");
    let only_heartbeat = PingRequest {
        heartbeat: Some(90),
        folders: None,
    };
    let claim = store
        .claim(&mut conn, device, &owner("a", 1), &only_heartbeat, NOW)
        .await
        .expect("claim");
    assert_eq!(
        claim,
        Claim::MissingParameters,
        "no folders known: Status 3"
    );

    store
        .claim(&mut conn, device, &owner("a", 2), &full(120, &["1"]), NOW)
        .await
        .expect("claim");
    let claim = store
        .claim(&mut conn, device, &owner("a", 3), &only_heartbeat, NOW)
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
        .claim(&mut conn, device, &expired, &PingRequest::default(), NOW)
        .await
        .expect("claim");
    let bump = store
        .bump(&mut conn, "bob", &["1".into()], 11)
        .await
        .expect("bump");
    assert!(bump.owners.is_empty());
    cleanup(&mut conn, &store).await;
}
