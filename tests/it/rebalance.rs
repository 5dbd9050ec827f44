//! Rebalancing with several members: cooperative rebalancing leaves the
//! partitions that do not move alone, and under either protocol a seeded
//! schedule of SIGKILLs, SIGTERMs and restarts of three members keeps
//! every (partition, offset) exactly once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::chaos::schedule::Rng;
use crate::harness::*;

const PARTITIONS: i32 = 12;

/// When, what the watched member held, and the stored offsets then.
type Sample = (Instant, Option<BTreeSet<i32>>, BTreeMap<i32, i64>);

/// The partitions a member holds, from `/status` (`kafka.group.assignment`).
fn held(member: &Sluice) -> Option<BTreeSet<i32>> {
    assignment(&member.status()?)
}

/// The partitions in a `/status` document's `kafka.group.assignment`.
fn assignment(status: &serde_json::Value) -> Option<BTreeSet<i32>> {
    let mut out = BTreeSet::new();
    for t in status["kafka"]["group"]["assignment"].as_array()? {
        for p in t["partitions"].as_array()? {
            out.insert(p.as_i64()? as i32);
        }
    }
    Some(out)
}

/// Whether the members' `/status` show every partition held by exactly one
/// of them, each holding some.
fn settled(members: &[&Sluice]) -> bool {
    let mut all = Vec::new();
    for m in members {
        match held(m) {
            Some(h) if !h.is_empty() => all.extend(h),
            _ => return false,
        }
    }
    all.sort_unstable();
    all == (0..PARTITIONS).collect::<Vec<_>>()
}

async fn await_settled(members: &[&Sluice], what: &str) {
    let ok = eventually(Duration::from_secs(90), || async { settled(members) }).await;
    assert!(
        ok,
        "{what}: the members never split the {PARTITIONS} partitions: {:?}\n{}",
        members.iter().map(|m| held(m)).collect::<Vec<_>>(),
        members
            .iter()
            .map(|m| m.log_text())
            .collect::<Vec<_>>()
            .join("\n----\n")
    );
}

fn member_config(services: &Services, group: &str, topic: &str, table: &str, kafka: &str) -> String {
    config(services, group, topic, table, ORDER_COLUMNS, "").replace(
        "session_timeout = \"6s\"",
        &format!("session_timeout = \"6s\"\n{kafka}"),
    )
}

/// Three members come and go (B joins, C joins, C stops, B is killed)
/// while records keep arriving. Member A is never touched: under
/// cooperative rebalancing it never holds nothing, and what it keeps
/// throughout keeps being written — its stored offsets never stall the
/// way a stop-the-world rebalance stalls them.
#[tokio::test(flavor = "multi_thread")]
async fn cooperative_rebalancing_keeps_the_untouched_member_writing() {
    const EVENTS: u64 = 90_000;
    const RATE: u64 = 1_000;
    let services = Services::from_env();
    let pool = services.pool().await;
    let (topic, group, table) = (unique("coop"), unique("g"), unique("orders"));
    create_topic(&services.brokers, &topic, PARTITIONS).await;
    create_orders_table(&pool, &table).await;
    let (brokers, t) = (services.brokers.clone(), topic.clone());
    let producer =
        tokio::task::spawn_blocking(move || produce(&brokers, &t, PARTITIONS, 0..EVENTS, RATE, order_payload));
    let a = Sluice::start(&member_config(&services, &group, &topic, &table, ""));
    await_settled(&[&a], "a alone").await;

    // Watch A and the stored offsets every 100 ms while the others churn.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (stop, pool, group, topic) = (stop.clone(), pool.clone(), group.clone(), topic.clone());
        let a_status = a.http_addr().expect("a serves /status");
        tokio::spawn(async move {
            let mut samples: Vec<Sample> = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let held = http_get(&a_status, "/status")
                    .await
                    .and_then(|(_, body)| assignment(&serde_json::from_str(&body).ok()?));
                let offsets: BTreeMap<i32, i64> = stored_offsets(&pool, &group, &topic).await.into_iter().collect();
                samples.push((Instant::now(), held, offsets));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            samples
        })
    };
    let churn_start = Instant::now();
    let b = a.restart("b.log");
    await_settled(&[&a, &b], "b joined").await;
    let c = a.restart("c.log");
    await_settled(&[&a, &b, &c], "c joined").await;
    c.sigterm();
    let mut c = c;
    assert!(
        c.wait_timeout(Duration::from_secs(15)).is_some_and(|s| s.success()),
        "c stops cleanly"
    );
    await_settled(&[&a, &b], "c left").await;
    let mut b = b;
    b.kill9();
    await_settled(&[&a], "b died").await;
    let churn = churn_start.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let samples = watcher.await.unwrap();
    assert!(
        !producer.is_finished(),
        "the churn ({churn:?}) outlasted the production ({} s): raise EVENTS",
        EVENTS / RATE
    );

    // A never held nothing (eager rebalancing revokes everything).
    let mut kept: Option<BTreeSet<i32>> = None;
    for (at, held, _) in &samples {
        let held = held.clone().unwrap_or_default();
        assert!(
            !held.is_empty(),
            "a held no partition {:?} into the churn\n{}",
            at.duration_since(churn_start),
            a.log_text()
        );
        kept = Some(match kept {
            None => held,
            Some(k) => k.intersection(&held).copied().collect(),
        });
    }
    let kept = kept.expect("samples");
    assert!(!kept.is_empty(), "a kept some partitions throughout");
    // What A kept was written all along: the longest time the stored
    // offset of any partition it kept stood still.
    let mut longest = Duration::ZERO;
    for p in &kept {
        let offset = |s: &Sample| s.2.get(p).copied().unwrap_or(0);
        let (mut last_move, mut last) = (samples[0].0, offset(&samples[0]));
        for s in &samples[1..] {
            if offset(s) != last {
                longest = longest.max(s.0.duration_since(last_move));
                (last_move, last) = (s.0, offset(s));
            }
        }
        longest = longest.max(samples.last().unwrap().0.duration_since(last_move));
    }
    eprintln!(
        "churn {churn:?}; a kept {kept:?}; its stored offsets stood still at most {longest:?}; {} samples",
        samples.len()
    );
    assert!(
        longest < Duration::from_secs(2),
        "a's kept partitions {kept:?} stalled {longest:?} during the churn\n{}",
        a.log_text()
    );
    // A handed the partitions that moved over after flushing them: nothing
    // of them was left to forget (the next owner re-reads nothing).
    let revokes: Vec<String> = a
        .log_text()
        .lines()
        .filter(|l| l.contains("partitions revoked"))
        .map(str::to_owned)
        .collect();
    assert!(revokes.len() >= 2, "{revokes:?}");
    for line in &revokes {
        assert!(line.contains("forgotten=0 flushed=true"), "{line}");
    }
    let status = a.status().expect("a's status");
    let g = &status["kafka"]["group"];
    assert_eq!(g["protocol"], "cooperative", "{g}");
    assert!(g["generation"].as_i64().unwrap() >= 4, "four rebalances at least: {g}");
    assert!(g["member_id"].as_str().is_some_and(|m| !m.is_empty()), "{g}");
    assert!(g["rebalances"]["revoked"]["count"].as_u64().unwrap() >= 2, "{g}");
    assert_eq!(g["rebalances"]["lost"]["count"], 0, "{g}");

    producer.await.unwrap();
    let ends: Vec<(i32, i64)> = (0..PARTITIONS)
        .map(|p| (p, (EVENTS / PARTITIONS as u64) as i64))
        .collect();
    await_stored_offsets(&pool, &group, &topic, &ends, Duration::from_secs(120), || a.log_text()).await;
    assert_exactly_once(&pool, &table, PARTITIONS, EVENTS).await;
}

/// One step of the churn schedule.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// SIGKILL member `i`, start it again after `down`.
    Kill { member: usize, down: Duration },
    /// SIGTERM member `i` (it flushes and leaves), start it again after `down`.
    Term { member: usize, down: Duration },
}

/// The seeded schedule: `n` steps over three members, each followed by a
/// pause before the next.
fn schedule(seed: u64, n: usize) -> Vec<(Step, Duration)> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let member = rng.range(0, 3) as usize;
            let down = rng.millis(0, 3_000);
            let step = if rng.range(0, 2) == 0 {
                Step::Kill { member, down }
            } else {
                Step::Term { member, down }
            };
            (step, rng.millis(500, 4_000))
        })
        .collect()
}

/// Waits until this incarnation of a member has joined (its first
/// assignment callback ran: with tansu, a member that dies in the middle
/// of its first join can stall the group for minutes).
async fn joined(member: &Sluice) {
    let ok = eventually(Duration::from_secs(90), || async {
        member.log_text().contains("event=\"assigned\"") || member.log_text().contains("event=assigned")
    })
    .await;
    assert!(ok, "never joined\n{}", member.log_text());
}

/// Three members on 12 partitions under a seeded schedule of SIGKILLs,
/// SIGTERMs and restarts while records arrive; then every (partition,
/// offset) is in the table exactly once.
async fn churn(protocol: &str) {
    const EVENTS: u64 = 60_000;
    const RATE: u64 = 1_500;
    let seed: u64 = std::env::var("SLUICE_CHURN_SEED")
        .ok()
        .map(|s| s.parse().expect("SLUICE_CHURN_SEED is a number"))
        .unwrap_or(20261130);
    let steps = schedule(seed, 5);
    eprintln!("churn ({protocol}), seed {seed} (replay: SLUICE_CHURN_SEED={seed}): {steps:?}");
    let services = Services::from_env();
    let pool = services.pool().await;
    let (topic, group, table) = (unique("churn"), unique("g"), unique("orders"));
    create_topic(&services.brokers, &topic, PARTITIONS).await;
    create_orders_table(&pool, &table).await;
    // A backlog first, then a steady stream through the schedule.
    let (brokers, t) = (services.brokers.clone(), topic.clone());
    tokio::task::spawn_blocking(move || produce(&brokers, &t, PARTITIONS, 0..EVENTS / 2, 0, order_payload))
        .await
        .unwrap();
    let (brokers, t) = (services.brokers.clone(), topic.clone());
    let producer =
        tokio::task::spawn_blocking(move || produce(&brokers, &t, PARTITIONS, EVENTS / 2..EVENTS, RATE, order_payload));
    let kafka = format!("rebalance_protocol = \"{protocol}\"");
    let first = Sluice::start(&member_config(&services, &group, &topic, &table, &kafka));
    let mut incarnation = 0;
    let mut members: Vec<Sluice> = vec![first];
    for name in ["b", "c"] {
        let m = members[0].restart(&format!("{name}-0.log"));
        members.push(m);
    }
    for m in &members {
        joined(m).await;
    }
    // Each step waits for the group to settle first: tansu can stall a group
    // for minutes when a member goes away in the middle of a rebalance.
    let mut exits = Vec::new();
    for (step, pause) in &steps {
        let (member, down) = match *step {
            Step::Kill { member, down } | Step::Term { member, down } => (member, down),
        };
        await_settled(&members.iter().collect::<Vec<_>>(), "before the step").await;
        match step {
            Step::Kill { .. } => members[member].kill9(),
            Step::Term { .. } => {
                members[member].sigterm();
                let status = tokio::task::block_in_place(|| members[member].wait_timeout(Duration::from_secs(15)));
                exits.push(format!("{status:?}"));
                assert!(
                    status.is_some_and(|s| s.success()),
                    "member {member} did not stop cleanly: {status:?}\n{}",
                    members[member].log_text()
                );
            }
        }
        tokio::time::sleep(down).await;
        incarnation += 1;
        let next = members[member].restart(&format!("{}-{incarnation}.log", ["a", "b", "c"][member]));
        members[member] = next;
        tokio::time::sleep(*pause).await;
    }
    producer.await.unwrap();
    let logs = || {
        members
            .iter()
            .map(|m| m.log_text())
            .collect::<Vec<_>>()
            .join("\n----\n")
    };
    let ends: Vec<(i32, i64)> = (0..PARTITIONS)
        .map(|p| (p, (EVENTS / PARTITIONS as u64) as i64))
        .collect();
    await_stored_offsets(&pool, &group, &topic, &ends, Duration::from_secs(180), logs).await;
    assert_exactly_once(&pool, &table, PARTITIONS, EVENTS).await;
    eprintln!("churn ({protocol}): exits {exits:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn churn_of_three_members_is_exactly_once_with_cooperative_rebalancing() {
    churn("cooperative").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn churn_of_three_members_is_exactly_once_with_eager_rebalancing() {
    churn("eager").await;
}

/// What tansu lacks, on librdkafka's mock cluster (which coordinates
/// groups as Kafka does here): with static membership and cooperative
/// rebalancing, a member joining a stable group receives its share (tansu
/// never starts the follow-up rebalance after the static leader revoked),
/// and a static member that dies and stays down is evicted after the
/// session timeout so its partitions flow again (tansu keeps it). Every
/// (partition, offset) exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn static_members_scale_out_and_fail_over_on_the_mock_cluster() {
    const EVENTS: u64 = 12_000;
    let services = Services::from_env();
    let pool = services.pool().await;
    let cluster = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
    let mock = Services {
        brokers: cluster.bootstrap_servers(),
        database_url: services.database_url.clone(),
    };
    let (topic, group, table) = (unique("static_coop"), unique("g"), unique("orders"));
    cluster.create_topic(&topic, PARTITIONS, 1).expect("topic");
    create_orders_table(&pool, &table).await;
    let (brokers, t) = (mock.brokers.clone(), topic.clone());
    tokio::task::spawn_blocking(move || produce(&brokers, &t, PARTITIONS, 0..EVENTS / 2, 0, order_payload))
        .await
        .unwrap();
    let member = |id: &str| {
        member_config(
            &mock,
            &group,
            &topic,
            &table,
            &format!("rebalance_protocol = \"cooperative\"\ninstance_id = \"{id}\""),
        )
    };
    let a = Sluice::start(&member("member-a"));
    await_settled(&[&a], "a alone").await;
    let mut b = Sluice::start(&member("member-b"));
    await_settled(&[&a, &b], "b joined a stable group").await;
    let held_by_b = held(&b).expect("b's status");
    b.kill9();
    let died = Instant::now();
    await_settled(&[&a], "b evicted").await;
    let took = died.elapsed();
    eprintln!("b's partitions {held_by_b:?} back on a {took:?} after b's SIGKILL (session timeout 6 s)");
    assert!(
        took >= Duration::from_secs(5),
        "not before the session timeout: {took:?}"
    );
    let (brokers, t) = (mock.brokers.clone(), topic.clone());
    tokio::task::spawn_blocking(move || produce(&brokers, &t, PARTITIONS, EVENTS / 2..EVENTS, 0, order_payload))
        .await
        .unwrap();
    let ends: Vec<(i32, i64)> = (0..PARTITIONS)
        .map(|p| (p, (EVENTS / PARTITIONS as u64) as i64))
        .collect();
    await_stored_offsets(&pool, &group, &topic, &ends, Duration::from_secs(60), || a.log_text()).await;
    assert_exactly_once(&pool, &table, PARTITIONS, EVENTS).await;
    let g = &a.status().expect("a's status")["kafka"]["group"];
    assert_eq!(g["protocol"], "cooperative", "{g}");
}

/// A partition revoked while its pipeline was paused, and assigned back
/// once the pipeline flows again, is fetched again: librdkafka keeps a
/// partition's pause across unassign and assign, so sluice resumes what it
/// is assigned for a flowing pipeline (before, such a partition stalled for
/// good behind a green `/readyz`).
#[tokio::test(flavor = "multi_thread")]
async fn a_partition_revoked_while_paused_flows_when_it_comes_back() {
    revoked_while_paused("cooperative").await;
}

/// The same under eager rebalancing, where every rebalance revokes
/// everything: a member paused at a rebalance came back with every
/// partition paused.
#[tokio::test(flavor = "multi_thread")]
async fn a_partition_revoked_while_paused_flows_when_it_comes_back_eager() {
    revoked_while_paused("eager").await;
}

async fn revoked_while_paused(protocol: &str) {
    const EVENTS: u64 = 12_000;
    let services = Services::from_env();
    let pool = services.pool().await;
    let (topic, group, table) = (unique("paused_back"), unique("g"), unique("orders"));
    create_topic(&services.brokers, &topic, PARTITIONS).await;
    create_orders_table(&pool, &table).await;
    let (brokers, t) = (services.brokers.clone(), topic.clone());
    tokio::task::spawn_blocking(move || produce(&brokers, &t, PARTITIONS, 0..EVENTS, 0, order_payload))
        .await
        .unwrap();
    let lock = TableLock::take(&pool, &table).await;
    let cfg = config(
        &services,
        &group,
        &topic,
        &table,
        ORDER_COLUMNS,
        "max_buffer_records = 500\nbatch_size = 100",
    )
    .replace(
        "session_timeout = \"6s\"",
        &format!("session_timeout = \"6s\"\nrebalance_protocol = \"{protocol}\""),
    );
    let a = Sluice::start(&cfg);
    await_settled(&[&a], "a alone").await;
    let paused = |m: &Sluice| {
        m.status()
            .and_then(|s| s["pipelines"][0]["paused_partitions"].as_array().map(|p| p.len()))
            .unwrap_or(0)
    };
    assert!(
        eventually(Duration::from_secs(60), || async { paused(&a) == 12 }).await,
        "a never paused\n{}",
        a.log_text()
    );
    // B joins while A is paused: A hands some partitions over, paused.
    let mut b = a.restart("b.log");
    await_settled(&[&a, &b], "b joined").await;
    let handed = held(&b).unwrap();
    lock.release().await;
    // B leaves once A flows again: its partitions come back to A.
    assert!(
        eventually(Duration::from_secs(60), || async { paused(&a) == 0 }).await,
        "a never resumed\n{}",
        a.log_text()
    );
    // Only once the backlog is written: from then on A's pipeline never
    // pauses (nor resumes, which would resume every partition it holds).
    let caught_up: Vec<(i32, i64)> = (0..PARTITIONS)
        .map(|p| (p, (EVENTS / PARTITIONS as u64) as i64))
        .collect();
    await_stored_offsets(&pool, &group, &topic, &caught_up, Duration::from_secs(90), || {
        format!("{}\n{}", a.log_text(), b.log_text())
    })
    .await;
    b.sigterm();
    assert!(b.wait_timeout(Duration::from_secs(15)).is_some_and(|s| s.success()));
    await_settled(&[&a], "b left").await;
    // A few more records, too few to pause the pipeline again.
    const MORE: u64 = 120;
    let (brokers, t) = (services.brokers.clone(), topic.clone());
    tokio::task::spawn_blocking(move || produce(&brokers, &t, PARTITIONS, EVENTS..EVENTS + MORE, 0, order_payload))
        .await
        .unwrap();
    let ends: Vec<(i32, i64)> = (0..PARTITIONS)
        .map(|p| (p, ((EVENTS + MORE) / PARTITIONS as u64) as i64))
        .collect();
    await_stored_offsets(&pool, &group, &topic, &ends, Duration::from_secs(60), || {
        format!("partitions that went to b and back: {handed:?}\n{}", a.log_text())
    })
    .await;
    assert_exactly_once(&pool, &table, PARTITIONS, EVENTS + MORE).await;
}
