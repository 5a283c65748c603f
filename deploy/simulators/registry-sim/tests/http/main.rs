//! The simulator over real HTTP: each test serves its own registry on a port-0 listener and
//! talks to it with reqwest.

use registry_sim::wire::{EVIL_NS, OTHER_REQUEST_ID, REGISTRY_NS, SOAP_ACTION, VERIFY_PATH};
use registry_sim::{
    BARE_ERROR_BODY, Counts, HostileKind, IdCounts, Knobs, Registry, Simulator as _,
};
use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use simkit::testing::{Reply, Served};

/// A registry served in-process, and a client for it (the [`Served`] it derefs to).
struct Sim {
    served: Served,
    registry: Registry,
}

impl std::ops::Deref for Sim {
    type Target = Served;

    fn deref(&self) -> &Served {
        &self.served
    }
}

/// What only the registry's answers are.
trait SoapReply {
    /// Whether the answer is a SOAP `soap:Client` fault.
    fn is_client_fault(&self) -> bool;
}

impl SoapReply for Reply {
    fn is_client_fault(&self) -> bool {
        self.content_type().starts_with("text/xml")
            && self.body.contains("<faultcode>soap:Client</faultcode>")
    }
}

/// Knobs without latency: the tests measure behaviour, not time.
fn quiet() -> Knobs {
    Knobs {
        latency_ms: 0,
        jitter_ms: 0,
        ..Knobs::default()
    }
}

fn request_xml(request_id: &str, national_id: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:reg="urn:gov:pl:registry:v1">
  <soap:Body>
    <reg:VerifyPersonRequest>
      <reg:RequestId>{request_id}</reg:RequestId>
      <reg:NationalId>{national_id}</reg:NationalId>
      <reg:FullName>Jan Kowalski</reg:FullName>
      <reg:BirthDate>1944-05-14</reg:BirthDate>
    </reg:VerifyPersonRequest>
  </soap:Body>
</soap:Envelope>"#
    )
}

async fn start(knobs: Knobs) -> Sim {
    let registry = Registry::new(knobs).expect("valid knobs");
    let served = Served::start({
        let registry = registry.clone();
        |listener, shutdown| registry.serve(listener, shutdown)
    })
    .await;
    Sim { served, registry }
}

impl Sim {
    async fn read(response: reqwest::Response) -> Reply {
        Reply::read(response).await
    }

    /// Posts `body` to the verify endpoint with the contract's headers.
    async fn post(&self, body: impl Into<reqwest::Body>) -> Reply {
        let response = self
            .client
            .post(format!("{}{VERIFY_PATH}", self.base))
            .header(CONTENT_TYPE, "text/xml; charset=utf-8")
            .header("SOAPAction", format!("\"{SOAP_ACTION}\""))
            .body(body)
            .send()
            .await
            .unwrap();
        Self::read(response).await
    }

    async fn verify(&self, request_id: &str, national_id: &str) -> Reply {
        self.post(request_xml(request_id, national_id)).await
    }

    async fn counts(&self) -> Counts {
        let reply = self.get("/_sim/counts").await;
        assert_eq!(reply.status, StatusCode::OK);
        serde_json::from_str(&reply.body).unwrap()
    }

    /// Stops the server and checks it ended cleanly.
    async fn stop(self) {
        self.served.stop().await;
    }
}

#[tokio::test]
async fn the_population_rule_decides_all_four_results_over_http() {
    let sim = start(quiet()).await;
    for (national_id, result) in [
        ("44051401359", "MATCH"),
        ("44051401979", "DATA_MISMATCH"),
        ("44051401989", "DECEASED"),
        ("44051401999", "NOT_FOUND"),
    ] {
        let reply = sim.verify("req-1", national_id).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert!(reply.content_type().starts_with("text/xml"));
        assert!(reply.body.contains(&format!("xmlns:reg=\"{REGISTRY_NS}\"")));
        assert!(reply.body.contains("<reg:RequestId>req-1</reg:RequestId>"));
        assert!(
            reply
                .body
                .contains(&format!("<reg:Result>{result}</reg:Result>")),
            "{national_id}: {}",
            reply.body
        );
    }
    let counts = sim.counts().await;
    assert_eq!(counts.answered.total(), 4);
    assert_eq!(counts.answered.data_mismatch, 1);
    sim.stop().await;
}

#[tokio::test]
async fn the_echoed_request_id_is_escaped() {
    let sim = start(quiet()).await;
    let reply = sim.verify("a&amp;b&lt;c", "44051401359").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply
            .body
            .contains("<reg:RequestId>a&amp;b&lt;c</reg:RequestId>"),
        "{}",
        reply.body
    );
    sim.stop().await;
}

#[tokio::test]
async fn a_request_with_a_doctype_is_refused_with_a_client_fault() {
    let sim = start(quiet()).await;
    let body = request_xml("req-1", "44051401359").replace(
        "<soap:Envelope",
        "<!DOCTYPE soap:Envelope [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]>\n<soap:Envelope",
    );
    let reply = sim.post(body).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.is_client_fault(), "{}", reply.body);
    assert!(reply.body.contains("DOCTYPE"));
    let counts = sim.counts().await;
    assert_eq!(counts.bad_request, 1);
    assert!(
        counts.by_national_id.is_empty(),
        "a refused request is about nobody"
    );
    sim.stop().await;
}

#[tokio::test]
async fn bad_request_bodies_get_400_with_a_client_fault() {
    let sim = start(quiet()).await;
    let good = request_xml("req-1", "44051401359");
    let bodies = [
        String::new(),
        "not xml".to_owned(),
        good[..good.len() / 2].to_owned(),
        good.replace("<reg:FullName>Jan Kowalski</reg:FullName>", ""),
        good.replace("44051401359", "4405140135"),
        good.replace("1944-05-14", "yesterday"),
        good.replace(REGISTRY_NS, EVIL_NS),
        good.replace("<reg:BirthDate>", "<reg:Shoe>41</reg:Shoe><reg:BirthDate>"),
        good.replace("1944-05-14", "&undeclared;"),
    ];
    for body in bodies {
        let reply = sim.post(body.clone()).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
        assert!(reply.is_client_fault(), "{body}: {}", reply.body);
    }

    // The contract's headers are required.
    let no_action = sim
        .client
        .post(format!("{}{VERIFY_PATH}", sim.base))
        .header(CONTENT_TYPE, "text/xml; charset=utf-8")
        .body(good.clone())
        .send()
        .await
        .unwrap();
    let reply = Sim::read(no_action).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.body.contains("SOAPAction"), "{}", reply.body);
    let json = sim
        .client
        .post(format!("{}{VERIFY_PATH}", sim.base))
        .header(CONTENT_TYPE, "application/json")
        .header("SOAPAction", SOAP_ACTION)
        .body(good.clone())
        .send()
        .await
        .unwrap();
    let reply = Sim::read(json).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.is_client_fault());

    // A body over 64 KiB is refused before it is parsed.
    let padded = good.replace(
        "<soap:Body>",
        &format!("<!--{}--><soap:Body>", "x".repeat(64 * 1024)),
    );
    let reply = sim.post(padded).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(reply.is_client_fault());

    let counts = sim.counts().await;
    assert_eq!(counts.bad_request, 12);
    assert_eq!(counts.total, 12);
    assert_eq!(counts.answered.total(), 0);
    sim.stop().await;
}

#[tokio::test]
async fn each_hostile_kind_is_what_it_claims() {
    let sim = start(quiet()).await;
    let request_id = "0190c1e5-hostile";
    for kind in HostileKind::ALL {
        let reply = sim
            .put_knobs(&format!(
                r#"{{"hostile_rate": 1.0, "hostile": ["{kind}"]}}"#
            ))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        let reply = sim.verify(request_id, "44051401359").await;
        assert_eq!(reply.status, StatusCode::OK, "{kind}");
        assert!(reply.content_type().starts_with("text/xml"), "{kind}");
        let body = &reply.body;
        let echoed = format!("<reg:RequestId>{request_id}</reg:RequestId>");
        match kind {
            HostileKind::Truncated => {
                assert!(body.ends_with("<reg:Result>MA"), "{body}");
                assert!(!body.contains("</soap:Envelope>"));
            }
            HostileKind::WrongNamespace => {
                assert!(!body.contains(REGISTRY_NS), "{body}");
                assert!(body.contains(EVIL_NS));
                assert!(body.contains("<reg:Result>MATCH</reg:Result>"));
            }
            HostileKind::BillionLaughs => {
                assert!(body.contains("<!DOCTYPE"), "{body}");
                for level in 1..=9 {
                    assert!(
                        body.contains(&format!("<!ENTITY lol{level} ")),
                        "lol{level}"
                    );
                }
                assert!(body.contains("<reg:Result>&lol9;</reg:Result>"));
            }
            HostileKind::ExternalEntity => {
                assert!(body.contains("<!DOCTYPE"), "{body}");
                assert!(body.contains(r#"<!ENTITY xxe SYSTEM "file:///etc/passwd">"#));
                assert!(body.contains("<reg:Result>&xxe;</reg:Result>"));
            }
            HostileKind::HugeBody => {
                assert!(body.len() >= 8 * 1024 * 1024, "{}", body.len());
                assert!(body.contains(&echoed));
                assert!(body.trim_end().ends_with("</soap:Envelope>"));
                assert!(body.contains("<reg:Result>MATCH</reg:Result>"));
            }
            HostileKind::UnknownResult => {
                assert!(body.contains("<reg:Result>PROBABLY</reg:Result>"), "{body}");
                assert!(body.contains(&echoed));
            }
            HostileKind::WrongRequestId => {
                assert!(!body.contains(request_id), "{body}");
                assert!(body.contains(&format!(
                    "<reg:RequestId>{OTHER_REQUEST_ID}</reg:RequestId>"
                )));
                assert!(body.contains("<reg:Result>MATCH</reg:Result>"));
            }
        }
    }
    let counts = sim.counts().await;
    assert_eq!(counts.hostile, HostileKind::ALL.len() as u64);
    assert_eq!(
        counts.for_id("44051401359"),
        IdCounts {
            requests: HostileKind::ALL.len() as u64,
            answers: 0
        },
        "a hostile answer is not a definite one"
    );
    sim.stop().await;
}

#[tokio::test]
async fn an_outage_is_switched_on_and_off_at_runtime() {
    let sim = start(quiet()).await;
    assert_eq!(
        sim.verify("req-1", "44051401359").await.status,
        StatusCode::OK
    );

    let reply = sim.put_knobs(r#"{"outage": true}"#).await;
    assert_eq!(reply.status, StatusCode::OK);
    for _ in 0..3 {
        let reply = sim.verify("req-2", "44051401359").await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(reply.retry_after(), Some("5"));
    }

    let reply = sim.put_knobs(r#"{"outage": false}"#).await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = sim.verify("req-3", "44051401359").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body.contains("<reg:Result>MATCH</reg:Result>"));

    let counts = sim.counts().await;
    assert_eq!(counts.outage, 3);
    assert_eq!(counts.answered.matched, 2);
    sim.stop().await;
}

#[tokio::test]
async fn a_burst_over_the_rate_limit_gets_429_with_retry_after() {
    let sim = start(Knobs {
        rate_limit_per_s: 2,
        ..quiet()
    })
    .await;
    let client = &sim;
    let burst: Vec<_> = (0..20)
        .map(|i| async move { client.verify(&format!("req-{i}"), "44051401359").await })
        .collect();
    let replies = futures::future::join_all(burst).await;
    let limited: Vec<_> = replies
        .iter()
        .filter(|reply| reply.status == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert!(!limited.is_empty(), "a burst of 20 exceeds 2 per second");
    assert!(limited.iter().all(|reply| reply.retry_after() == Some("1")));
    let answered = replies
        .iter()
        .filter(|reply| reply.status == StatusCode::OK)
        .count();
    assert!(answered >= 1, "the bucket starts full");
    assert_eq!(answered + limited.len(), 20);
    let counts = sim.counts().await;
    assert_eq!(counts.rate_limited, limited.len() as u64);
    assert_eq!(
        counts.for_id("44051401359"),
        IdCounts {
            requests: 20,
            answers: answered as u64
        }
    );
    sim.stop().await;
}

#[tokio::test]
async fn an_error_rate_of_one_makes_every_answer_a_500() {
    let sim = start(Knobs {
        error_rate: 1.0,
        ..quiet()
    })
    .await;
    for i in 0..20 {
        let reply = sim.verify(&format!("req-{i}"), "44051401359").await;
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
        let fault = reply.content_type().starts_with("text/xml")
            && reply.body.contains("<faultcode>soap:Server</faultcode>")
            && reply
                .body
                .contains("<faultstring>Registry temporarily unavailable</faultstring>");
        let bare = reply.content_type().starts_with("text/plain") && reply.body == BARE_ERROR_BODY;
        assert!(fault || bare, "{}", reply.body);
    }
    let counts = sim.counts().await;
    assert_eq!(counts.faults + counts.bare_errors, 20);
    assert_eq!(counts.answered.total(), 0);
    sim.stop().await;
}

#[tokio::test]
async fn counts_per_national_id_follow_a_known_sequence() {
    let sim = start(quiet()).await;
    let (a, b, c) = ("44051401359", "44051401989", "02270803628");
    for i in 0..3 {
        sim.verify(&format!("a-{i}"), a).await;
    }
    sim.registry
        .set_knobs(Knobs {
            outage: true,
            ..quiet()
        })
        .unwrap();
    sim.verify("b-1", b).await;
    sim.verify("b-2", b).await;
    sim.registry.set_knobs(quiet()).unwrap();
    sim.verify("b-3", b).await;
    sim.put_knobs(r#"{"hostile_rate": 1, "hostile": ["unknown_result"]}"#)
        .await;
    sim.verify("c-1", c).await;
    sim.post("garbage").await;

    let by_id = |id: &str| {
        let sim = &sim;
        let path = format!("/_sim/counts/{id}");
        async move {
            let reply = sim.get(&path).await;
            assert_eq!(reply.status, StatusCode::OK);
            serde_json::from_str::<IdCounts>(&reply.body).unwrap()
        }
    };
    assert_eq!(
        by_id(a).await,
        IdCounts {
            requests: 3,
            answers: 3
        }
    );
    assert_eq!(
        by_id(b).await,
        IdCounts {
            requests: 3,
            answers: 1
        }
    );
    assert_eq!(
        by_id(c).await,
        IdCounts {
            requests: 1,
            answers: 0
        }
    );
    assert_eq!(by_id("99999999999").await, IdCounts::default());

    let counts = sim.counts().await;
    assert_eq!(counts, sim.registry.counts());
    assert_eq!(counts.total, 8);
    assert_eq!(counts.answered.matched, 3);
    assert_eq!(counts.answered.deceased, 1);
    assert_eq!(
        (counts.outage, counts.hostile, counts.bad_request),
        (2, 1, 1)
    );
    assert_eq!(counts.outcomes(), counts.total);
    assert_eq!(counts.by_national_id.len(), 3);

    let reset = sim
        .client
        .post(format!("{}/_sim/reset", sim.base))
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status(), StatusCode::NO_CONTENT);
    assert_eq!(sim.counts().await, Counts::default());
    sim.stop().await;
}

#[tokio::test]
async fn a_bad_knobs_put_is_refused_and_changes_nothing() {
    let sim = start(quiet()).await;
    let before = sim.get("/_sim/knobs").await;
    assert_eq!(before.status, StatusCode::OK);
    assert!(before.content_type().starts_with("application/json"));
    let knobs: Knobs = serde_json::from_str(&before.body).unwrap();
    assert_eq!(knobs, quiet());

    for bad in [
        r#"{"error_rate": 1.5}"#,
        r#"{"outage": true, "error_rate": -1}"#,
        r#"{"outage": true, "no_such_knob": 1}"#,
        r#"{"hostile": ["rude"]}"#,
        r#"{"latency_ms": "slow"}"#,
        r#"[]"#,
        "not json",
    ] {
        let reply = sim.put_knobs(bad).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
        let error: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        assert!(error["error"].is_string(), "{bad}: {}", reply.body);
    }
    assert_eq!(sim.registry.knobs(), quiet());
    assert_eq!(sim.get("/_sim/knobs").await.body, before.body);

    // A good partial PUT changes only what it names, and says what is now in force.
    let reply = sim.put_knobs(r#"{"spike_rate": 0.25}"#).await;
    assert_eq!(reply.status, StatusCode::OK);
    let now: Knobs = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(
        now,
        Knobs {
            spike_rate: 0.25,
            ..quiet()
        }
    );
    assert_eq!(sim.registry.knobs(), now);
    sim.stop().await;
}

#[tokio::test]
async fn healthz_answers_and_admin_calls_are_not_counted() {
    let sim = start(quiet()).await;
    let reply = sim.get("/healthz").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "ok");
    sim.get("/_sim/knobs").await;
    sim.get("/_sim/counts/44051401359").await;
    assert_eq!(sim.counts().await.total, 0);
    sim.stop().await;
}
