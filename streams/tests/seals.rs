//! Registrations' own data keys against a real nats-server: a block sealed under one opens
//! with the key stored beside it; erasing the key (one registration, or a whole region at the
//! end of retention) leaves a block that opens for nobody, and touches no other key.

use async_nats::jetstream;
use streams::appender::{Appender, AppenderOptions};
use streams::config::{Replication, ensure_streams};
use streams::crypto::Keys;
use streams::events::PersonalData;
use streams::model::{Region, RegistrationId};
use streams::seals::{self, Unopenable};
use testkit::NatsServer;

fn personal(n: u32) -> PersonalData {
    PersonalData {
        national_id: "44051401359".into(),
        full_name: format!("Obywatel {n}"),
        birth_date: chrono::NaiveDate::from_ymd_opt(1944, 5, 14).unwrap(),
        email: Some(format!("c{n}@example.pl")),
        phone: None,
        attributes: Default::default(),
    }
}

#[tokio::test]
async fn an_erased_key_opens_nothing_and_the_end_of_retention_erases_only_its_region() {
    testkit::init_test_log();
    let nats = NatsServer::start();
    let client = nats.connect().await;
    let js = jetstream::new(client.clone());
    ensure_streams(&js, Replication(1)).await.unwrap();
    let appender = Appender::start(
        client,
        streams::subjects::INTAKE_STREAM,
        AppenderOptions::default(),
    );
    let keys = Keys::from_secret("a test secret of enough length");
    let mut sealed = Vec::new();
    for (n, region) in ["lodzkie", "lodzkie", "lodzkie", "slaskie"]
        .iter()
        .enumerate()
    {
        let id = RegistrationId::generate(&Region::parse(region).unwrap());
        let (block, own) = keys.seal_own(&id, &personal(n as u32));
        appender.append(seals::message(&id, own)).await.unwrap();
        sealed.push((id, block, n as u32));
    }
    for (id, block, n) in &sealed {
        assert_eq!(
            seals::open(&js, &keys, id, block).await.unwrap(),
            personal(*n)
        );
    }

    // One registration's key: erased, and erasing it again finds nothing.
    let (first, block, _) = &sealed[0];
    assert_eq!(seals::erase(&js, first).await.unwrap(), 1);
    assert_eq!(seals::erase(&js, first).await.unwrap(), 0);
    assert!(matches!(
        seals::open(&js, &keys, first, block).await,
        Err(Unopenable::Erased)
    ));
    // A block moved to another registration's key still does not open.
    let (second, _, _) = &sealed[1];
    assert!(matches!(
        seals::open(&js, &keys, second, block).await,
        Err(Unopenable::Key(_))
    ));

    // The end of lodzkie's retention: its two other keys go, slaskie's stays.
    let mut seen = Vec::new();
    let erased = seals::end_retention(
        &js,
        &Region::parse("lodzkie").unwrap(),
        &mut |done, total| seen.push((done, total)),
    )
    .await
    .unwrap();
    assert_eq!(erased, 2);
    assert_eq!(seen.last(), Some(&(2, 2)));
    for (id, block, n) in &sealed {
        let opened = seals::open(&js, &keys, id, block).await;
        if id.region().as_str() == "slaskie" {
            assert_eq!(opened.unwrap(), personal(*n));
        } else {
            assert!(matches!(opened, Err(Unopenable::Erased)), "{id}");
        }
    }
    // Nothing left to do a second time.
    assert_eq!(
        seals::end_retention(&js, &Region::parse("lodzkie").unwrap(), &mut |_, _| {})
            .await
            .unwrap(),
        0
    );
}
