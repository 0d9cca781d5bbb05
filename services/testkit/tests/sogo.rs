//! directpush in front of a real ActiveSync server: SOGo 5.8 with sogo-activesync, on a real
//! Dovecot IMAP store, both from Debian (`scripts/peers.sh start`, which the test command
//! runs). A device enrols through the proxy; mail delivered by Dovecot reaches the watcher
//! through `contrib/dovecot/directpush.lua` in the store's words and wakes its parked Ping on
//! SOGo's ServerId; its Sync through the proxy returns that mail, and SOGo never sees a Ping.

use std::time::Duration;

use dp_proto::ping::{PingRequest, PingStatus};
use dp_proto::query::Command;
use dp_proto::sync::{FolderChange, FolderSync, Sync};
use dp_proto::wbxml::{decode, encode, xml, Element};
use dp_testkit::client::ping_body;
use dp_testkit::dovecot::{self, MailUser};
use dp_testkit::imap::Imap;
use dp_testkit::{Device, Env, Frontend, HttpResponse, Watcher};

const SECOND: Duration = Duration::from_secs(1);
const SOGO: &str = "http://127.0.0.1:20000/SOGo/Microsoft-Server-ActiveSync";

/// A user of this test's own in Dovecot (whose mail processes tell `watcher` of changes) and in
/// SOGo's user table, with its INBOX opened once with CONDSTORE as SOGo needs.
async fn fresh_user(env: &Env, watcher: &Watcher) -> MailUser {
    let user = MailUser::create(
        "sogo",
        &MailUser::directpush_fields(watcher.addr, &env.ingest_token),
    )
    .await;
    let sogo = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/sogo")
        .await
        .expect("SOGo's database: run scripts/peers.sh start");
    sqlx::query("INSERT INTO sogo_users VALUES ($1, $1, 'pw', $1, $2)")
        .bind(&user.name)
        .bind(format!("{}@example.com", user.name))
        .execute(&sogo)
        .await
        .expect("SOGo user");
    let mut imap = Imap::login(dovecot::IMAP, &user.name, "pw")
        .await
        .expect("Dovecot on 127.0.0.1:1143: run scripts/peers.sh start");
    imap.command("ENABLE CONDSTORE").await.expect("CONDSTORE");
    imap.command("SELECT INBOX").await.expect("INBOX");
    user
}

fn sync_request(collection: &str, key: &str) -> Vec<u8> {
    let mut c = Element::new(0, 0x0F)
        .child(Element::with_text(0, 0x0B, key))
        .child(Element::with_text(0, 0x12, collection));
    if key != "0" {
        c = c
            .child(Element::new(0, 0x13))
            .child(Element::with_text(0, 0x15, "100"));
    }
    encode(&Element::new(0, 0x05).child(Element::new(0, 0x1C).child(c))).expect("encodes")
}

/// What an answer says, for assertions and messages: its XML where our code pages know every
/// tag, else its inline strings as they are (SOGo sends Email tokens libwbxml has no name for).
fn as_xml(response: &HttpResponse) -> String {
    match decode(&response.body) {
        Ok(root) => xml::to_xml(&root),
        Err(_) => String::from_utf8_lossy(&response.body).into_owned(),
    }
}

/// Syncs `collection` through the proxy until SOGo has nothing more; returns the last key and
/// everything the answers said, as XML.
async fn sync_all(phone: &mut Device, collection: &str, mut key: String) -> (String, String) {
    let mut seen = String::new();
    for _ in 0..20 {
        let answer = phone
            .command(Command::Sync, &sync_request(collection, &key), "")
            .await
            .expect("Sync through the proxy");
        assert_eq!(answer.status, 200, "{}", answer.text());
        let (sync, _): (Sync, bool) = dp_proto::sync::scan(&answer.body);
        seen.push_str(&as_xml(&answer));
        let Some(c) = sync.collections.iter().find(|c| c.id == collection) else {
            return (key, seen); // an empty answer: nothing new
        };
        assert_eq!(c.status, Some(1), "{seen}");
        key = c.sync_key.clone().unwrap_or(key);
        if !c.more_available {
            return (key, seen);
        }
    }
    panic!("SOGo kept saying MoreAvailable");
}

#[tokio::test]
async fn new_mail_in_dovecot_wakes_a_ping_parked_in_front_of_sogo() {
    let env = Env::new().await;
    let frontend = Frontend::start(
        &env,
        "a",
        &[("--upstream-url", SOGO), ("--auth-mode", "upstream")],
    )
    .await;
    let watcher = Watcher::start(&env, "w", &[]).await;
    let user = fresh_user(&env, &watcher).await;
    let device_id = format!("dp{:08x}", rand::random::<u32>());
    let mut phone = Device::new(frontend.addr, &user.name, "pw", &device_id);

    // Enrolment: FolderSync 0, Sync 0, Sync.
    let folders = phone
        .command(
            Command::FolderSync,
            &encode(&Element::new(7, 0x16).child(Element::with_text(7, 0x12, "0")))
                .expect("encodes"),
            "",
        )
        .await
        .expect("FolderSync through the proxy");
    assert_eq!(folders.status, 200, "{}", folders.text());
    let (hierarchy, _): (FolderSync, bool) = dp_proto::sync::scan(&folders.body);
    let inbox = hierarchy
        .changes
        .iter()
        .find_map(|c| match c {
            FolderChange::Put(f) if f.folder_type == 2 => Some(f.server_id.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("an Inbox in {}", as_xml(&folders)));
    let (key, _) = sync_all(&mut phone, &inbox, "0".into()).await;
    let (key, _) = sync_all(&mut phone, &inbox, key).await;

    // Parked in front of SOGo; new mail lands in Dovecot, whose script tells the watcher "new
    // mail in INBOX": Status 2 for the Inbox under SOGo's ServerId. SOGo creates the new user's
    // special folders while it answers the first FolderSync, and Dovecot tells of those too: a
    // Ping may first hear Status 7, and then FolderSyncs as a device does.
    let mut folder_key = hierarchy.sync_key.clone().expect("a FolderSync key");
    let mut delivered_subject = None;
    let mut owner = None;
    let mut phone = phone;
    for round in 0..5 {
        let pinged = inbox.clone();
        let parked = tokio::spawn(async move {
            let r = phone
                .ping_within(Some(&ping_body(120, &[&pinged])), 30 * SECOND)
                .await;
            (phone, r)
        });
        // Parked, or already answered (a Status 7 never parks).
        let (env, mailbox, id, before) = (&env, &user.name, &device_id, owner.clone());
        owner = dp_testkit::wait_for("the Ping to park or be answered", 10 * SECOND, || {
            let (parked, before) = (&parked, before.clone());
            async move {
                if parked.is_finished() {
                    return Some(None);
                }
                let now = env.owner(mailbox, id).await;
                (now.is_some() && now != before).then_some(now)
            }
        })
        .await
        .or(owner);
        if delivered_subject.is_none() && !parked.is_finished() {
            let (subject, message) = dovecot::message(&user.name);
            user.deliver_lmtp(&message).await.expect("LMTP delivery");
            delivered_subject = Some(subject);
        }
        let (back, woken) = parked.await.expect("ping task");
        phone = back;
        let woken = woken.ping();
        if woken.status == PingStatus::FolderSyncRequired && round < 4 {
            let request = Element::new(7, 0x16).child(Element::with_text(7, 0x12, &folder_key));
            let answer = phone
                .command(Command::FolderSync, &encode(&request).expect("encodes"), "")
                .await
                .expect("FolderSync");
            let (again, _): (FolderSync, bool) = dp_proto::sync::scan(&answer.body);
            folder_key = again.sync_key.unwrap_or(folder_key);
            continue;
        }
        assert_eq!(woken.status, PingStatus::Changes);
        assert_eq!(woken.folders, std::slice::from_ref(&inbox));
        break;
    }
    let subject = delivered_subject.expect("delivered");

    // The Sync through the proxy returns it, and acknowledges the folder: the next Ping parks.
    let (_, delivered) = sync_all(&mut phone, &inbox, key).await;
    assert!(delivered.contains(&subject), "the new mail in {delivered}");
    let quiet = PingRequest {
        heartbeat: Some(2),
        folders: None,
    };
    let settled = phone.ping_within(Some(&quiet), 20 * SECOND).await.ping();
    assert_eq!(settled.status, PingStatus::Expired);

    let log = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../.peers/sogo.log"
    ))
    .unwrap_or_default();
    let ours: Vec<&str> = log.lines().filter(|l| l.contains(&device_id)).collect();
    assert!(
        ours.iter().any(|l| l.contains("Cmd=Sync")),
        "SOGo's log shows the device's Syncs"
    );
    assert!(
        !ours
            .iter()
            .any(|l| l.contains("Cmd=Ping") || l.contains("in Ping")),
        "SOGo never saw a Ping: {ours:?}"
    );
    env.cleanup().await;
}
