//! Static membership (`group.instance.id`): a member that comes back within
//! the session timeout under the same instance id takes its partitions
//! back without a rebalance, so the other members keep theirs throughout.

use std::time::{Duration, Instant};

use crate::harness::*;

/// A pipeline's assigned partitions as `/status` shows them.
fn assigned(sluice: &Sluice) -> Option<serde_json::Value> {
    let status = sluice.status()?;
    Some(status["pipelines"][0]["assigned_partitions"].clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_static_member_restarting_within_the_session_timeout_causes_no_rebalance() {
    const EVENTS: u64 = 20_000;
    let services = Services::from_env();
    let pool = services.pool().await;
    let (topic, group, table) = (unique("static"), unique("g"), unique("orders"));
    create_topic(&services.brokers, &topic, 4).await;
    create_orders_table(&pool, &table).await;
    let (brokers, t) = (services.brokers.clone(), topic.clone());
    tokio::task::spawn_blocking(move || produce(&brokers, &t, 4, 0..EVENTS, 0, order_payload))
        .await
        .unwrap();
    let member = |id: &str| {
        config(&services, &group, &topic, &table, ORDER_COLUMNS, "").replace(
            "session_timeout = \"6s\"",
            &format!("session_timeout = \"30s\"\ninstance_id = \"{id}\""),
        )
    };
    let mut a = Sluice::start(&member("member-a"));
    let b = Sluice::start(&member("member-b"));
    // Both hold partitions.
    let split = |v: &Option<serde_json::Value>| v.as_ref().and_then(|v| v.as_array().map(|a| a.len())).unwrap_or(0);
    assert!(
        eventually(Duration::from_secs(60), || async {
            split(&assigned(&a)) > 0 && split(&assigned(&b)) > 0 && split(&assigned(&a)) + split(&assigned(&b)) == 4
        })
        .await,
        "a: {:?}, b: {:?}\n{}\n{}",
        assigned(&a),
        assigned(&b),
        a.log_text(),
        b.log_text()
    );
    let (held_by_a, held_by_b) = (assigned(&a).unwrap(), assigned(&b).unwrap());
    // A dies and comes back under the same instance id, well within the
    // session timeout. Until it holds its partitions again (the rejoin is
    // over), b's never change: no rebalance.
    a.kill9();
    let a2 = a.restart("sluice-a2.log");
    let until = Instant::now() + Duration::from_secs(60);
    while assigned(&a2).as_ref() != Some(&held_by_a) {
        assert!(
            Instant::now() < until,
            "a2 never took a's partitions back\n{}",
            a2.log_text()
        );
        assert_eq!(
            assigned(&b).as_ref(),
            Some(&held_by_b),
            "b's partitions changed: a rebalance\n{}",
            b.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    await_rows(&pool, &table, EVENTS, Duration::from_secs(120), || {
        format!("{}\n{}", a2.log_text(), b.log_text())
    })
    .await;
    assert_eq!(
        assigned(&b).as_ref(),
        Some(&held_by_b),
        "b's partitions changed later\n{}",
        b.log_text()
    );
    assert_exactly_once(&pool, &table, 4, EVENTS).await;
}
