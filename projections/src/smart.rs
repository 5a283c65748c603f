//! SMART Scheduling Links: availability published in the form vaccine finders poll. A
//! `$bulk-publish` manifest points at three NDJSON files of FHIR resources: one `Location` and
//! one `Schedule` per vaccination site, and per slot (region, location, date) up to two
//! aggregated `Slot`s, `free` with the remaining capacity and `busy` with the reserved part
//! (the spec's `slot-capacity` extension). Rendered from the same availability rows as
//! `GET /v1/availability`, from a cache about one second old. What the spec requires of a
//! `Location` beyond what the events know (a name, a street address with its postal code,
//! a phone) comes from a site directory in configuration ([`parse_sites`]); a site missing
//! from it is not published.

use std::collections::BTreeMap;

use chrono::{NaiveDate, SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use streams::crypto::sha256_hex;

use crate::store::Availability;

/// The three files, in manifest order: (type, path on the read API).
pub const FILES: [(&str, &str); 3] = [
    ("Location", "/smart/locations.ndjson"),
    ("Schedule", "/smart/schedules.ndjson"),
    ("Slot", "/smart/slots.ndjson"),
];

/// The path of the manifest on the read API.
pub const MANIFEST: &str = "/$bulk-publish";

const BOOKING_LINK: &str =
    "http://fhir-registry.smarthealthit.org/StructureDefinition/booking-deep-link";
const BOOKING_PHONE: &str =
    "http://fhir-registry.smarthealthit.org/StructureDefinition/booking-phone";
const SLOT_CAPACITY: &str =
    "http://fhir-registry.smarthealthit.org/StructureDefinition/slot-capacity";

/// Where the publication points: configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// The read API's public base URL (no trailing slash): the manifest's `request` and the
    /// files' `url`s are absolute, as the spec asks.
    pub public_url: String,
    /// Where citizens book (the edge's citizen page, say): each free slot links there with
    /// `region`, `location` and `date` appended. No link when unset.
    pub booking_url: Option<String>,
    /// A phone number that books, on each free slot and each location. None when unset.
    pub booking_phone: Option<String>,
    /// What the spec requires of each published site and the events do not say, by
    /// (region, location). Sites missing from it are left out of the publication.
    pub sites: Sites,
}

/// The site directory: each vaccination site's description, by (region, location).
pub type Sites = BTreeMap<(String, String), Site>;

/// One vaccination site as finders show it (one entry of the `REG_SITES_FILE` directory).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Site {
    /// The region token, as in slots.
    pub region: String,
    /// The location token, as in slots.
    pub location: String,
    /// The name people know the site by.
    pub name: String,
    /// Its street address.
    pub address: SiteAddress,
    /// A phone number of the site (the `Location`'s `phone` contact point), if it has one.
    #[serde(default)]
    pub phone: Option<String>,
}

/// A site's postal address, as the spec's `Location.address` needs it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteAddress {
    /// Street and number, one or more lines.
    pub line: Vec<String>,
    /// Town or city.
    pub city: String,
    /// The state or province; the region token when absent.
    #[serde(default)]
    pub state: Option<String>,
    /// The postal code (`postalCode`, required by the spec).
    pub postal_code: String,
}

/// Parses a site directory: a JSON array of [`Site`]s, every required text non-blank, the
/// region and location valid tokens, each (region, location) once. The message says which
/// entry is wrong.
pub fn parse_sites(json: &str) -> Result<Sites, String> {
    let list: Vec<Site> =
        serde_json::from_str(json).map_err(|e| format!("not a list of sites: {e}"))?;
    let mut sites = Sites::new();
    for (i, site) in list.into_iter().enumerate() {
        let at = format!("site {} ({}/{})", i + 1, site.region, site.location);
        streams::model::Region::parse(&site.region).map_err(|e| format!("{at}: {}", e.0))?;
        streams::model::Location::parse(&site.location).map_err(|e| format!("{at}: {}", e.0))?;
        let blank = |s: &str| s.trim().is_empty();
        let address = &site.address;
        for (field, value) in [
            ("name", site.name.as_str()),
            ("address.city", &address.city),
            ("address.postal_code", &address.postal_code),
        ] {
            if blank(value) {
                return Err(format!("{at}: {field} is empty"));
            }
        }
        if address.line.is_empty() || address.line.iter().any(|l| blank(l)) {
            return Err(format!(
                "{at}: address.line needs at least one non-empty line"
            ));
        }
        if address.state.as_deref().is_some_and(blank) || site.phone.as_deref().is_some_and(blank) {
            return Err(format!(
                "{at}: address.state and phone are left out, not empty"
            ));
        }
        let key = (site.region.clone(), site.location.clone());
        if sites.insert(key, site).is_some() {
            return Err(format!("{at}: listed twice"));
        }
    }
    Ok(sites)
}

/// The three NDJSON files and the fingerprint of their content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    /// `Location` resources, one per line.
    pub locations: String,
    /// `Schedule` resources, one per line.
    pub schedules: String,
    /// `Slot` resources, one per line.
    pub slots: String,
    /// A hash of the three: the publication changes exactly when it does.
    pub fingerprint: String,
}

impl Files {
    /// The file of `resource_type` (`Location`, `Schedule` or `Slot`).
    pub fn get(&self, resource_type: &str) -> &str {
        match resource_type {
            "Location" => &self.locations,
            "Schedule" => &self.schedules,
            _ => &self.slots,
        }
    }
}

/// A FHIR id (at most 64 of `A-Za-z0-9-.`) from subject-safe tokens: joined with `.`, or a
/// hash of them when that would be longer than 64.
fn fhir_id(parts: &[&str]) -> String {
    let joined = parts.join(".");
    if joined.len() <= 64 {
        joined
    } else {
        format!("h.{}", &sha256_hex(joined.as_bytes())[..40])
    }
}

/// A link with query parameters appended, whether or not it has some already.
fn with_query(url: &str, pairs: &[(&str, &str)]) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    let query: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{url}{separator}{}", query.join("&"))
}

fn line(out: &mut String, value: &Value) {
    out.push_str(&value.to_string());
    out.push('\n');
}

/// Renders the three files from availability rows (ordered by region, location, date, as the
/// store returns them). Rows with a date that does not parse, and rows of a site missing from
/// the directory (the spec requires its address), are skipped.
pub fn render(rows: &[Availability], publication: &Publication) -> Files {
    let mut locations = String::new();
    let mut schedules = String::new();
    let mut slots = String::new();
    let mut last_site: Option<(&str, &str)> = None;
    for row in rows {
        let Ok(date) = NaiveDate::parse_from_str(&row.date, "%Y-%m-%d") else {
            continue;
        };
        let Some(described) = publication
            .sites
            .get(&(row.region.clone(), row.location.clone()))
        else {
            continue;
        };
        let site = fhir_id(&[&row.region, &row.location]);
        if last_site != Some((&row.region, &row.location)) {
            last_site = Some((&row.region, &row.location));
            line(
                &mut locations,
                &location(row, described, &site, publication),
            );
            line(&mut schedules, &schedule(&site));
        }
        for slot in slots_of(row, date, &site, publication) {
            line(&mut slots, &slot);
        }
    }
    let fingerprint = sha256_hex(format!("{locations}\0{schedules}\0{slots}").as_bytes());
    Files {
        locations,
        schedules,
        slots,
        fingerprint,
    }
}

/// The FHIR `Location` of a site: what the directory says of it, where its availability is
/// read and the phones that book.
fn location(row: &Availability, described: &Site, site: &str, publication: &Publication) -> Value {
    let availability = with_query(
        &format!("{}/v1/availability", publication.public_url),
        &[("region", &row.region), ("location", &row.location)],
    );
    let mut telecom = vec![json!({"system": "url", "value": availability})];
    for phone in [&described.phone, &publication.booking_phone]
        .into_iter()
        .flatten()
    {
        let contact = json!({"system": "phone", "value": phone});
        if !telecom.contains(&contact) {
            telecom.push(contact);
        }
    }
    let address = &described.address;
    json!({
        "resourceType": "Location",
        "id": site,
        "identifier": [{
            "system": format!("{}/v1/availability", publication.public_url),
            "value": format!("{}/{}", row.region, row.location),
        }],
        "name": described.name,
        "description": format!("Vaccination site {} in region {}", row.location, row.region),
        "telecom": telecom,
        "address": {
            "line": address.line,
            "city": address.city,
            "state": address.state.as_deref().unwrap_or(&row.region),
            "postalCode": address.postal_code,
        },
    })
}

/// The FHIR `Schedule` of a site: immunization, at its `Location`.
fn schedule(site: &str) -> Value {
    json!({
        "resourceType": "Schedule",
        "id": site,
        "serviceType": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/service-type",
            "code": "57",
            "display": "Immunization",
        }]}],
        "actor": [{"reference": format!("Location/{site}")}],
    })
}

/// A slot's FHIR `Slot`s: `free` with the remaining places, `busy` with the reserved ones,
/// each only when it has some.
fn slots_of(
    row: &Availability,
    date: NaiveDate,
    site: &str,
    publication: &Publication,
) -> Vec<Value> {
    // Coarse timing: the whole day, in UTC (the system knows dates, not opening hours).
    let start = format!("{date}T00:00:00.000Z");
    let end = format!("{}T00:00:00.000Z", date.succ_opt().unwrap_or(date));
    let remaining = row.remaining.min(row.capacity);
    [("free", remaining), ("busy", row.capacity - remaining)]
        .into_iter()
        .filter(|(_, count)| *count > 0)
        .map(|(status, count)| {
            let mut extension = match status {
                "free" => booking(row, publication),
                _ => Vec::new(),
            };
            extension.push(json!({"url": SLOT_CAPACITY, "valueInteger": count}));
            json!({
                "resourceType": "Slot",
                "id": fhir_id(&[&row.region, &row.location, &row.date, status]),
                "schedule": {"reference": format!("Schedule/{site}")},
                "status": status,
                "start": start,
                "end": end,
                "extension": extension,
            })
        })
        .collect()
}

/// How a free slot is booked: a link to the booking page for its place and day, and a phone,
/// when configured.
fn booking(row: &Availability, publication: &Publication) -> Vec<Value> {
    let mut extension = Vec::new();
    if let Some(booking) = &publication.booking_url {
        let link = with_query(
            booking,
            &[
                ("region", &row.region),
                ("location", &row.location),
                ("date", &row.date),
            ],
        );
        extension.push(json!({"url": BOOKING_LINK, "valueUrl": link}));
    }
    if let Some(phone) = &publication.booking_phone {
        extension.push(json!({"url": BOOKING_PHONE, "valueString": phone}));
    }
    extension
}

/// The manifest: `transactionTime` is when this content was first published (so an unchanged
/// publication keeps its manifest, its entity tag and its `304`s).
pub fn manifest(publication: &Publication, transaction_time: &str) -> Value {
    let base = &publication.public_url;
    json!({
        "transactionTime": transaction_time,
        "request": format!("{base}{MANIFEST}"),
        "output": FILES
            .iter()
            .map(|(kind, path)| json!({"type": kind, "url": format!("{base}{path}")}))
            .collect::<Vec<_>>(),
        "error": [],
    })
}

/// Now, as the spec's timestamps are written (`2021-04-22T14:28:21.582Z`).
pub fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn row(
        region: &str,
        location: &str,
        date: &str,
        capacity: u64,
        remaining: u64,
    ) -> Availability {
        Availability {
            region: region.into(),
            location: location.into(),
            date: date.into(),
            capacity,
            remaining,
            waiting: 0,
        }
    }

    /// A directory entry for a site, with a phone.
    fn site(region: &str, location: &str) -> Site {
        Site {
            region: region.into(),
            location: location.into(),
            name: format!("Punkt szczepień {location}"),
            address: SiteAddress {
                line: vec!["ul. Długa 1".into()],
                city: "Warszawa".into(),
                state: None,
                postal_code: "00-001".into(),
            },
            phone: Some("+48 22 111 11 11".into()),
        }
    }

    /// A publication whose directory describes every site of `rows`.
    fn publication(booking: bool, rows: &[Availability]) -> Publication {
        Publication {
            public_url: "https://read.example.org".into(),
            booking_url: booking.then(|| "https://book.example.org/".into()),
            booking_phone: booking.then(|| "+48 22 000 00 00".into()),
            sites: rows
                .iter()
                .map(|r| {
                    let key = (r.region.clone(), r.location.clone());
                    (key, site(&r.region, &r.location))
                })
                .collect(),
        }
    }

    fn parse(file: &str) -> Vec<Value> {
        assert!(file.is_empty() || file.ends_with('\n'), "NDJSON ends lines");
        file.lines()
            .map(|l| {
                assert!(!l.contains('\n') && !l.is_empty());
                serde_json::from_str(l).expect("each line is a JSON object")
            })
            .collect()
    }

    fn is_fhir_id(id: &str) -> bool {
        (1..=64).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    }

    /// The spec's timestamp: `YYYY-MM-DDThh:mm:ss(.sss)?` and a zone, `Z` or `+hh:mm`.
    fn is_timestamp(s: &str) -> bool {
        chrono::DateTime::parse_from_rfc3339(s).is_ok() && s.len() >= 20 && s.as_bytes()[10] == b'T'
    }

    #[test]
    fn the_files_follow_the_specifications_rules() {
        let rows = [
            row("mazowieckie", "radom-centrum", "2027-03-01", 100, 100),
            row("mazowieckie", "radom-centrum", "2027-03-02", 10, 4),
            row("mazowieckie", "warszawa-narodowy", "2027-03-01", 5, 0),
            row("slaskie", "katowice-spodek", "2027-12-31", 0, 0),
        ];
        let files = render(&rows, &publication(true, &rows));
        let locations = parse(&files.locations);
        let schedules = parse(&files.schedules);
        let slots = parse(&files.slots);
        assert_eq!((locations.len(), schedules.len()), (3, 3), "one per site");

        let mut location_ids = HashSet::new();
        for l in &locations {
            assert_eq!(l["resourceType"], "Location");
            let id = l["id"].as_str().unwrap();
            assert!(is_fhir_id(id), "{id}");
            assert!(location_ids.insert(id.to_owned()), "unique ids");
            assert!(l["name"].as_str().is_some_and(|n| !n.is_empty()));
            let telecom = l["telecom"].as_array().unwrap();
            assert!(!telecom.is_empty(), "at least one contact point");
            for t in telecom {
                assert!(["phone", "url"].contains(&t["system"].as_str().unwrap()));
                assert!(t["value"].as_str().is_some_and(|v| !v.is_empty()));
            }
            assert!(l["address"]["line"].is_array());
            assert!(l["address"]["city"].is_string() && l["address"]["state"].is_string());
            assert!(l["address"]["postalCode"].is_string());
            let identifier = l["identifier"].as_array().unwrap();
            assert!(!identifier.is_empty());
            assert!(identifier[0]["system"].is_string() && identifier[0]["value"].is_string());
        }
        let mut schedule_ids = HashSet::new();
        for s in &schedules {
            assert_eq!(s["resourceType"], "Schedule");
            let id = s["id"].as_str().unwrap();
            assert!(is_fhir_id(id) && schedule_ids.insert(id.to_owned()));
            let actor = s["actor"].as_array().unwrap();
            assert_eq!(actor.len(), 1, "one actor");
            let reference = actor[0]["reference"].as_str().unwrap();
            let location = reference.strip_prefix("Location/").expect("Location/<id>");
            assert!(location_ids.contains(location), "{reference} resolves");
            assert_eq!(s["serviceType"][0]["coding"][0]["code"], "57");
        }
        let mut slot_ids = HashSet::new();
        for s in &slots {
            assert_eq!(s["resourceType"], "Slot");
            let id = s["id"].as_str().unwrap();
            assert!(is_fhir_id(id) && slot_ids.insert(id.to_owned()));
            let reference = s["schedule"]["reference"].as_str().unwrap();
            let schedule = reference.strip_prefix("Schedule/").expect("Schedule/<id>");
            assert!(schedule_ids.contains(schedule), "{reference} resolves");
            assert!(["free", "busy"].contains(&s["status"].as_str().unwrap()));
            let (start, end) = (s["start"].as_str().unwrap(), s["end"].as_str().unwrap());
            assert!(is_timestamp(start) && is_timestamp(end), "{start} {end}");
            assert!(start < end);
        }
        // Free is what remains and busy what is taken, as aggregated slots; nothing for an
        // empty slot; a booking link and phone only where one can book.
        let summary: Vec<(String, String, i64, bool)> = slots
            .iter()
            .map(|s| {
                let ext = s["extension"].as_array().unwrap();
                let capacity = ext
                    .iter()
                    .find(|e| e["url"] == SLOT_CAPACITY)
                    .and_then(|e| e["valueInteger"].as_i64())
                    .unwrap();
                let link = ext.iter().any(|e| e["url"] == BOOKING_LINK);
                (
                    s["start"].as_str().unwrap()[..10].to_owned(),
                    s["status"].as_str().unwrap().to_owned(),
                    capacity,
                    link,
                )
            })
            .collect();
        let expected = [
            ("2027-03-01", "free", 100, true),
            ("2027-03-02", "free", 4, true),
            ("2027-03-02", "busy", 6, false),
            ("2027-03-01", "busy", 5, false),
        ];
        assert_eq!(
            summary,
            expected
                .iter()
                .map(|(d, s, c, l)| (d.to_string(), s.to_string(), *c, *l))
                .collect::<Vec<_>>()
        );
        let link = slots[0]["extension"][0]["valueUrl"].as_str().unwrap();
        assert_eq!(
            link,
            "https://book.example.org/?region=mazowieckie&location=radom-centrum&date=2027-03-01"
        );
        assert_eq!(slots[0]["end"], "2027-03-02T00:00:00.000Z");
        // Without a booking portal configured: no link, no phone, the capacity still there.
        let plain = parse(&render(&rows, &publication(false, &rows)).slots);
        assert_eq!(plain[0]["extension"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn a_location_has_what_the_spec_requires_and_an_undescribed_site_is_not_published() {
        let rows = [
            row("mazowieckie", "warszawa-narodowy", "2027-03-01", 5, 5),
            row("mazowieckie", "nowhere", "2027-03-01", 5, 5),
        ];
        let mut publication = publication(true, &rows[..1]);
        let files = render(&rows, &publication);
        let locations = parse(&files.locations);
        assert_eq!(
            locations.len(),
            1,
            "the site without an address is left out"
        );
        assert_eq!(parse(&files.schedules).len(), 1);
        assert!(
            parse(&files.slots)
                .iter()
                .all(|s| s["schedule"]["reference"] == "Schedule/mazowieckie.warszawa-narodowy")
        );
        let l = &locations[0];
        assert_eq!(l["name"], "Punkt szczepień warszawa-narodowy");
        assert_eq!(
            l["address"],
            json!({"line": ["ul. Długa 1"], "city": "Warszawa", "state": "mazowieckie",
                   "postalCode": "00-001"})
        );
        let phones: Vec<&Value> = l["telecom"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["system"] == "phone")
            .map(|t| &t["value"])
            .collect();
        assert_eq!(
            phones,
            [&json!("+48 22 111 11 11"), &json!("+48 22 000 00 00")]
        );
        // The same phone twice is one contact point; a configured state wins over the region.
        publication.booking_phone = Some("+48 22 111 11 11".into());
        let described = publication.sites.values_mut().next().unwrap();
        described.address.state = Some("Mazowieckie".into());
        let l = &parse(&render(&rows, &publication).locations)[0];
        assert_eq!(l["telecom"].as_array().unwrap().len(), 2, "{l}");
        assert_eq!(l["address"]["state"], "Mazowieckie");
    }

    #[test]
    fn a_site_directory_is_strict() {
        let good = r#"[{"region": "mazowieckie", "location": "warszawa-narodowy",
            "name": "PGE Narodowy", "phone": "+48 22 000 00 01",
            "address": {"line": ["al. Poniatowskiego 1"], "city": "Warszawa",
                        "postal_code": "03-901"}}]"#;
        let sites = parse_sites(good).unwrap();
        let site = &sites[&("mazowieckie".to_owned(), "warszawa-narodowy".to_owned())];
        assert_eq!(site.address.postal_code, "03-901");
        let twice = good.replace("}}]", "}}, ") + &good[1..];
        for (bad, says) in [
            (
                good.replace(r#""postal_code": "03-901""#, r#""postal_code": " ""#),
                "postal_code",
            ),
            (
                good.replace(r#""postal_code": "03-901""#, r#""state": "mazowieckie""#),
                "postal_code",
            ),
            (
                good.replace(r#"["al. Poniatowskiego 1"]"#, "[]"),
                "address.line",
            ),
            (
                good.replace("warszawa-narodowy", "Warszawa Narodowy"),
                "site 1",
            ),
            (good.replace(r#""name""#, r#""nazwa""#), "nazwa"),
            (good.replace(r#""+48 22 000 00 01""#, r#""""#), "phone"),
            (twice, "listed twice"),
            ("{}".to_owned(), "not a list"),
        ] {
            let error = parse_sites(&bad).unwrap_err();
            assert!(error.contains(says), "{bad}: {error}");
        }
    }

    #[test]
    fn the_demo_sites_deploy_up_describes_are_a_valid_directory() {
        let up = include_str!("../../deploy/up");
        let start = up
            .find("<<'SITES'\n")
            .expect("deploy/up writes the demo sites")
            + 10;
        let end = start + up[start..].find("\nSITES\n").expect("the end of the list");
        let sites = parse_sites(&up[start..end]).unwrap();
        assert_eq!(sites.len(), 4, "the four seeded sites");
        assert!(sites.values().all(|s| s.phone.is_some()));
    }

    #[test]
    fn the_manifest_has_the_bulk_publish_shape() {
        let m = manifest(&publication(false, &[]), "2027-02-01T08:00:00.000Z");
        assert!(is_timestamp(m["transactionTime"].as_str().unwrap()));
        assert_eq!(m["request"], "https://read.example.org/$bulk-publish");
        let output = m["output"].as_array().unwrap();
        let types: Vec<&str> = output.iter().map(|o| o["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["Location", "Schedule", "Slot"]);
        for o in output {
            assert!(
                o["url"]
                    .as_str()
                    .unwrap()
                    .starts_with("https://read.example.org/smart/")
            );
        }
        assert_eq!(m["error"], json!([]));
        assert!(is_timestamp(&now()));
    }

    #[test]
    fn ids_stay_within_64_characters_and_distinct() {
        let long = "a".repeat(32);
        let other = format!("{}b", "a".repeat(31));
        let rows = [
            row(&long, &long, "2027-03-01", 1, 1),
            row(&long, &other, "2027-03-01", 1, 1),
        ];
        let files = render(&rows, &publication(false, &rows));
        let ids: HashSet<String> = parse(&files.locations)
            .iter()
            .chain(parse(&files.slots).iter())
            .map(|v| v["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids.len(), 4);
        assert!(ids.iter().all(|id| is_fhir_id(id)), "{ids:?}");
        // The same content, the same fingerprint; another, another.
        assert_eq!(
            files.fingerprint,
            render(&rows, &publication(false, &rows)).fingerprint
        );
        assert_ne!(
            files.fingerprint,
            render(&rows[..1], &publication(false, &rows)).fingerprint
        );
    }
}
