//! Request bodies parsed into valid values ("parse, don't validate"), or a [`FieldError`]
//! naming the field. Nothing here does I/O; hostile input is refused, never panicked on.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use streams::events::{RegistryRefusal, Reviewer};
use streams::model::{Location, Region, SlotKey};
use streams::national_id::{self, NationalIdRule};

/// A refused request body: the contract's error, with the field concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field concerned (`None` when the body as a whole is unreadable).
    pub field: Option<String>,
    /// `invalid_json`, `invalid_field`, `missing_field` or `unknown_field`.
    pub code: &'static str,
    /// A sentence for people.
    pub message: String,
}

impl FieldError {
    fn invalid(field: &str, message: impl Into<String>) -> Self {
        FieldError {
            field: Some(field.to_owned()),
            code: "invalid_field",
            message: message.into(),
        }
    }

    /// A submission for a region no operator configured (no capacity, no window).
    pub fn unknown_region(region: &Region) -> Self {
        FieldError::invalid(
            "region",
            format!(
                "region {region} does not take registrations: no place or date is configured for it"
            ),
        )
    }

    /// A slot date whose day is over in its region's time zone.
    pub fn day_over(date: NaiveDate, zone: impl std::fmt::Display) -> Self {
        FieldError::invalid(
            "date",
            format!("{date} is over (days end at midnight, {zone}); choose today or a later date"),
        )
    }

    fn missing(field: &str) -> Self {
        FieldError {
            field: Some(field.to_owned()),
            code: "missing_field",
            message: format!("{field} is required"),
        }
    }

    fn json(message: impl Into<String>) -> Self {
        FieldError {
            field: None,
            code: "invalid_json",
            message: message.into(),
        }
    }
}

/// Field limits (configuration; these are the contract's defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Most questionnaire answers.
    pub max_attributes: usize,
    /// Longest answer key, in characters.
    pub max_attribute_key_len: usize,
    /// Longest string answer, in characters.
    pub max_attribute_value_len: usize,
    /// Longest full name, in characters.
    pub max_name_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_attributes: 32,
            max_attribute_key_len: 64,
            max_attribute_value_len: 512,
            max_name_len: 200,
        }
    }
}

/// A valid registration request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Registration {
    /// The national id, checked under the configured rule.
    pub national_id: String,
    /// The full name, trimmed.
    pub full_name: String,
    /// The birth date (matches the national id).
    pub birth_date: NaiveDate,
    /// E-mail, if given.
    pub email: Option<String>,
    /// Phone, if given (at least one of e-mail and phone is).
    pub phone: Option<String>,
    /// The slot asked for.
    pub slot: SlotKey,
    /// Questionnaire answers.
    pub attributes: BTreeMap<String, Value>,
    /// The language for messages.
    pub language: String,
}

/// A valid `PUT /v1/admin/capacity` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapacityRequest {
    /// The slot.
    pub slot: SlotKey,
    /// Its new capacity.
    pub capacity: u32,
}

/// A valid `PUT /v1/admin/windows` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowRequest {
    /// The region.
    pub region: Region,
    /// Opening time.
    pub opens_at: DateTime<Utc>,
    /// Closing time (after the opening).
    pub closes_at: DateTime<Utc>,
}

/// Largest capacity an operator may set for one slot.
pub const MAX_CAPACITY: u64 = 1_000_000;

fn object(body: &[u8]) -> Result<Map<String, Value>, FieldError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(FieldError::json("the body must be a JSON object")),
        Err(e) => Err(FieldError::json(format!("the body is not valid JSON: {e}"))),
    }
}

fn reject_unknown(map: &Map<String, Value>, known: &[&str]) -> Result<(), FieldError> {
    match map.keys().find(|k| !known.contains(&k.as_str())) {
        None => Ok(()),
        Some(k) => Err(FieldError {
            field: Some(k.chars().take(64).collect()),
            code: "unknown_field",
            message: "this field is not part of the request".into(),
        }),
    }
}

/// A whole number from 0 up to `max`. JSON does not tell `3` from `3.0`, so a number with a
/// zero fraction counts (exactly, up to 2^53, where every whole f64 is exact).
fn whole_number(value: &Value, max: u64) -> Option<u64> {
    const EXACT: f64 = 9_007_199_254_740_992.0;
    value
        .as_u64()
        .or_else(|| {
            value
                .as_f64()
                .filter(|f| f.fract() == 0.0 && (0.0..=EXACT).contains(f))
                .map(|f| f as u64)
        })
        .filter(|n| *n <= max)
}

fn opt_str<'a>(map: &'a Map<String, Value>, field: &str) -> Result<Option<&'a str>, FieldError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim())),
        Some(_) => Err(FieldError::invalid(
            field,
            format!("{field} must be a string"),
        )),
    }
}

fn req_str<'a>(map: &'a Map<String, Value>, field: &str) -> Result<&'a str, FieldError> {
    match opt_str(map, field)? {
        None | Some("") => Err(FieldError::missing(field)),
        Some(s) => Ok(s),
    }
}

fn date(map: &Map<String, Value>, field: &str) -> Result<NaiveDate, FieldError> {
    let s = req_str(map, field)?;
    if s.len() != 10 {
        return Err(FieldError::invalid(
            field,
            format!("{field} must be a date, YYYY-MM-DD"),
        ));
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map_err(|_| FieldError::invalid(field, format!("{field} must be a real date, YYYY-MM-DD")))
}

fn slot(map: &Map<String, Value>) -> Result<SlotKey, FieldError> {
    Ok(SlotKey {
        region: Region::parse(req_str(map, "region")?)
            .map_err(|e| FieldError::invalid("region", e.0))?,
        location: Location::parse(req_str(map, "location")?)
            .map_err(|e| FieldError::invalid("location", e.0))?,
        date: date(map, "date")?,
    })
}

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

fn email(s: &str) -> Result<String, FieldError> {
    let bad = || FieldError::invalid("email", "email must look like name@example.org");
    if s.len() > 254 || has_control(s) || s.contains(char::is_whitespace) {
        return Err(bad());
    }
    let (local, domain) = s.split_once('@').ok_or_else(bad)?;
    if local.is_empty()
        || domain.contains('@')
        || !domain.contains('.')
        || domain.starts_with('.')
        || domain.ends_with('.')
    {
        return Err(bad());
    }
    Ok(s.to_owned())
}

fn phone(s: &str) -> Result<String, FieldError> {
    let digits = s.strip_prefix('+').unwrap_or(s);
    let count = digits.chars().filter(char::is_ascii_digit).count();
    if !digits.chars().all(|c| c.is_ascii_digit() || c == ' ') || !(7..=15).contains(&count) {
        return Err(FieldError::invalid(
            "phone",
            "phone must be 7 to 15 digits, optionally starting with +",
        ));
    }
    Ok(s.to_owned())
}

fn language(s: Option<&str>) -> Result<String, FieldError> {
    let Some(s) = s else { return Ok("en".into()) };
    let (primary, region) = match s.split_once('-') {
        Some((p, r)) => (p, Some(r)),
        None => (s, None),
    };
    let primary_ok =
        (2..=8).contains(&primary.len()) && primary.bytes().all(|b| b.is_ascii_lowercase());
    let region_ok = region
        .is_none_or(|r| (2..=8).contains(&r.len()) && r.bytes().all(|b| b.is_ascii_alphanumeric()));
    if primary_ok && region_ok {
        Ok(s.to_owned())
    } else {
        Err(FieldError::invalid(
            "language",
            "language must be a tag such as en, pl or pt-br",
        ))
    }
}

fn attributes(
    value: Option<&Value>,
    limits: &Limits,
) -> Result<BTreeMap<String, Value>, FieldError> {
    let map = match value {
        None | Some(Value::Null) => return Ok(BTreeMap::new()),
        Some(Value::Object(map)) => map,
        Some(_) => {
            return Err(FieldError::invalid(
                "attributes",
                "attributes must be an object",
            ));
        }
    };
    if map.len() > limits.max_attributes {
        return Err(FieldError::invalid(
            "attributes",
            format!("attributes may have at most {} keys", limits.max_attributes),
        ));
    }
    let mut out = BTreeMap::new();
    for (key, value) in map {
        let len = key.chars().count();
        if len == 0 || len > limits.max_attribute_key_len || has_control(key) {
            return Err(FieldError::invalid(
                "attributes",
                format!(
                    "attribute keys must be 1 to {} characters",
                    limits.max_attribute_key_len
                ),
            ));
        }
        match value {
            Value::String(s) if s.chars().count() <= limits.max_attribute_value_len => {}
            Value::String(_) => {
                return Err(FieldError::invalid(
                    "attributes",
                    format!(
                        "attribute {key:?} is longer than {} characters",
                        limits.max_attribute_value_len
                    ),
                ));
            }
            Value::Number(_) | Value::Bool(_) => {}
            _ => {
                return Err(FieldError::invalid(
                    "attributes",
                    format!("attribute {key:?} must be a string, a number or a boolean"),
                ));
            }
        }
        out.insert(key.clone(), value.clone());
    }
    Ok(out)
}

/// Parses a `POST /v1/registrations` body. `today` bounds the birth date.
pub fn parse_registration(
    body: &[u8],
    rule: NationalIdRule,
    limits: &Limits,
    today: NaiveDate,
) -> Result<Registration, FieldError> {
    let map = object(body)?;
    reject_unknown(
        &map,
        &[
            "national_id",
            "full_name",
            "birth_date",
            "email",
            "phone",
            "region",
            "location",
            "date",
            "attributes",
            "language",
        ],
    )?;
    let national_id = req_str(&map, "national_id")?.to_owned();
    let full_name = req_str(&map, "full_name")?;
    if full_name.chars().count() > limits.max_name_len || has_control(full_name) {
        return Err(FieldError::invalid(
            "full_name",
            format!(
                "full_name must be 1 to {} characters, without control characters",
                limits.max_name_len
            ),
        ));
    }
    let birth_date = date(&map, "birth_date")?;
    let oldest = today
        .checked_sub_months(chrono::Months::new(130 * 12))
        .unwrap_or(NaiveDate::MIN);
    if birth_date > today || birth_date < oldest {
        return Err(FieldError::invalid(
            "birth_date",
            "birth_date must be a past date within 130 years",
        ));
    }
    national_id::check(rule, &national_id, birth_date)
        .map_err(|e| FieldError::invalid("national_id", e.to_string()))?;
    let email = opt_str(&map, "email")?
        .filter(|s| !s.is_empty())
        .map(email)
        .transpose()?;
    let phone = opt_str(&map, "phone")?
        .filter(|s| !s.is_empty())
        .map(phone)
        .transpose()?;
    if email.is_none() && phone.is_none() {
        return Err(FieldError {
            field: Some("email".into()),
            code: "missing_field",
            message: "give an email or a phone (or both) so we can reach you".into(),
        });
    }
    let slot = slot(&map)?;
    let attributes = attributes(map.get("attributes"), limits)?;
    let language = language(opt_str(&map, "language")?.filter(|s| !s.is_empty()))?;
    Ok(Registration {
        national_id,
        full_name: full_name.to_owned(),
        birth_date,
        email,
        phone,
        slot,
        attributes,
        language,
    })
}

/// Parses a `PUT /v1/admin/capacity` body.
pub fn parse_capacity(body: &[u8]) -> Result<CapacityRequest, FieldError> {
    let map = object(body)?;
    reject_unknown(&map, &["region", "location", "date", "capacity"])?;
    let slot = slot(&map)?;
    let capacity = match map.get("capacity") {
        None | Some(Value::Null) => return Err(FieldError::missing("capacity")),
        Some(v) => whole_number(v, MAX_CAPACITY).ok_or_else(|| {
            FieldError::invalid(
                "capacity",
                format!("capacity must be a whole number from 0 to {MAX_CAPACITY}"),
            )
        })?,
    };
    Ok(CapacityRequest {
        slot,
        capacity: capacity as u32,
    })
}

/// A parsed `POST /v1/registrations/recover` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryRequest {
    /// The national id, checked against the configured rule and the birth date.
    pub national_id: String,
}

/// Parses a `POST /v1/registrations/recover` body: `{"national_id", "birth_date"}`, checked
/// as a submission's are (a typo is a `400`, which says nothing of who is registered).
pub fn parse_recovery(body: &[u8], rule: NationalIdRule) -> Result<RecoveryRequest, FieldError> {
    let map = object(body)?;
    reject_unknown(&map, &["national_id", "birth_date"])?;
    let national_id = req_str(&map, "national_id")?.to_owned();
    let birth_date = date(&map, "birth_date")?;
    national_id::check(rule, &national_id, birth_date)
        .map_err(|e| FieldError::invalid("national_id", e.to_string()))?;
    Ok(RecoveryRequest { national_id })
}

/// A parsed `POST /v1/admin/erasures` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErasureRequest {
    /// The citizen's national id, checked as a submission's is.
    pub national_id: String,
    /// Who, and on what grounds.
    pub reviewer: Reviewer,
}

/// Parses `{"national_id", "birth_date", "operator", "note"}`: the citizen whose personal
/// data is to be erased (the birth date checks the national id, so a typo erases nobody
/// else's), the operator and the request's reference.
pub fn parse_erasure(body: &[u8], rule: NationalIdRule) -> Result<ErasureRequest, FieldError> {
    let map = object(body)?;
    reject_unknown(&map, &["national_id", "birth_date", "operator", "note"])?;
    let national_id = req_str(&map, "national_id")?.to_owned();
    let birth_date = date(&map, "birth_date")?;
    national_id::check(rule, &national_id, birth_date)
        .map_err(|e| FieldError::invalid("national_id", e.to_string()))?;
    Ok(ErasureRequest {
        national_id,
        reviewer: reviewer(&map)?,
    })
}

/// A parsed `POST /v1/admin/notifications/redrive` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedriveRequest {
    /// The registration.
    pub registration_id: streams::model::RegistrationId,
    /// The decisions-stream sequence of the decision whose message is re-driven.
    pub decision_seq: u64,
    /// `email` or `webhook`.
    pub channel: &'static str,
    /// Who, and why.
    pub reviewer: Reviewer,
}

/// Parses `{"registration_id", "decision_seq", "channel", "operator", "note"}` (as a dead
/// letter in `GET /v1/admin/notifications/dead-letters` names them).
pub fn parse_redrive(body: &[u8]) -> Result<RedriveRequest, FieldError> {
    let map = object(body)?;
    reject_unknown(
        &map,
        &[
            "registration_id",
            "decision_seq",
            "channel",
            "operator",
            "note",
        ],
    )?;
    let registration_id = streams::model::RegistrationId::parse(req_str(&map, "registration_id")?)
        .map_err(|e| FieldError::invalid("registration_id", e.0))?;
    let decision_seq = match map.get("decision_seq") {
        None | Some(Value::Null) => return Err(FieldError::missing("decision_seq")),
        Some(v) => whole_number(v, u64::MAX)
            .filter(|s| *s > 0)
            .ok_or_else(|| {
                FieldError::invalid(
                    "decision_seq",
                    "decision_seq must be a positive whole number",
                )
            })?,
    };
    let channel = match req_str(&map, "channel")? {
        "email" => "email",
        "webhook" => "webhook",
        _ => {
            return Err(FieldError::invalid(
                "channel",
                "channel must be email or webhook",
            ));
        }
    };
    Ok(RedriveRequest {
        registration_id,
        decision_seq,
        channel,
        reviewer: reviewer(&map)?,
    })
}

/// The operator and note every operator decision carries.
fn reviewer(map: &Map<String, Value>) -> Result<Reviewer, FieldError> {
    let text = |field: &str, max: usize| -> Result<String, FieldError> {
        let value = req_str(map, field)?.trim();
        if value.is_empty() || value.chars().count() > max || has_control(value) {
            return Err(FieldError::invalid(
                field,
                format!("{field} must be 1 to {max} characters, without control characters"),
            ));
        }
        Ok(value.to_owned())
    };
    Ok(Reviewer {
        operator: text("operator", 64)?,
        note: text("note", 500)?,
    })
}

/// An operator's decision on a registration in manual review.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReviewDecision {
    /// The citizen is who they say: confirm.
    Approve,
    /// Refuse, for one of the registry's reasons.
    Reject(RegistryRefusal),
    /// Ask the registry again.
    Requeue,
}

/// A parsed `POST /v1/admin/reviews/{id}` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewRequest {
    /// What the operator decided.
    pub decision: ReviewDecision,
    /// Who, and why (kept in the log).
    pub reviewer: Reviewer,
}

/// Parses a `POST /v1/admin/reviews/{id}` body:
/// `{"decision": "approve" | "reject" | "requeue", "reason"?, "operator", "note"}`; `reason`
/// (`data_mismatch`, `deceased` or `not_found`) only, and always, with `reject`.
pub fn parse_review(body: &[u8]) -> Result<ReviewRequest, FieldError> {
    let map = object(body)?;
    reject_unknown(&map, &["decision", "reason", "operator", "note"])?;
    let reviewer = reviewer(&map)?;
    let reason = opt_str(&map, "reason")?;
    let decision = match (req_str(&map, "decision")?, reason) {
        ("approve", None) => ReviewDecision::Approve,
        ("requeue", None) => ReviewDecision::Requeue,
        ("reject", Some(reason)) => ReviewDecision::Reject(match reason {
            "data_mismatch" => RegistryRefusal::DataMismatch,
            "deceased" => RegistryRefusal::Deceased,
            "not_found" => RegistryRefusal::NotFound,
            _ => {
                return Err(FieldError::invalid(
                    "reason",
                    "reason must be data_mismatch, deceased or not_found",
                ));
            }
        }),
        ("reject", None) => return Err(FieldError::missing("reason")),
        ("approve" | "requeue", Some(_)) => {
            return Err(FieldError::invalid(
                "reason",
                "a reason goes only with decision reject",
            ));
        }
        _ => {
            return Err(FieldError::invalid(
                "decision",
                "decision must be approve, reject or requeue",
            ));
        }
    };
    Ok(ReviewRequest { decision, reviewer })
}

/// Parses a `PUT /v1/admin/windows` body.
pub fn parse_window(body: &[u8]) -> Result<WindowRequest, FieldError> {
    let map = object(body)?;
    reject_unknown(&map, &["region", "opens_at", "closes_at"])?;
    let region =
        Region::parse(req_str(&map, "region")?).map_err(|e| FieldError::invalid("region", e.0))?;
    let time = |field: &str| {
        DateTime::parse_from_rfc3339(req_str(&map, field)?)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| FieldError::invalid(field, format!("{field} must be an RFC 3339 time")))
    };
    let (opens_at, closes_at) = (time("opens_at")?, time("closes_at")?);
    if closes_at <= opens_at {
        return Err(FieldError::invalid(
            "closes_at",
            "closes_at must be after opens_at",
        ));
    }
    Ok(WindowRequest {
        region,
        opens_at,
        closes_at,
    })
}

/// Most admissions per second an operator may set for one waiting room.
pub const MAX_ADMISSION_RATE: u64 = 1_000_000;

/// A region named in a path.
pub fn parse_region(text: &str) -> Result<Region, FieldError> {
    Region::parse(text).map_err(|e| FieldError::invalid("region", e.0))
}

/// A parsed `POST /v1/queue` body: the region whose line to join.
pub fn parse_queue_request(body: &[u8]) -> Result<Region, FieldError> {
    let map = object(body)?;
    reject_unknown(&map, &["region"])?;
    Region::parse(req_str(&map, "region")?).map_err(|e| FieldError::invalid("region", e.0))
}

/// A parsed `PUT /v1/admin/queues/{region}` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSettings {
    /// Whether submissions need an admitted ticket.
    pub enabled: bool,
    /// Admissions per second.
    pub rate: u32,
    /// When the line opens (`None`: the region's window's opening, if any).
    pub opens_at: Option<DateTime<Utc>>,
    /// Whether `rate` caps what the pipeline's headroom allows or is the pace itself.
    pub pacing: streams::waiting_room::Pacing,
}

/// Parses `PUT /v1/admin/queues/{region}`: `enabled` (boolean), `rate` (admissions per
/// second, 1 to [`MAX_ADMISSION_RATE`]), an optional `opens_at` (RFC 3339) and an optional
/// `pacing` (`headroom`, the default, or `fixed`).
pub fn parse_queue_settings(body: &[u8]) -> Result<QueueSettings, FieldError> {
    let map = object(body)?;
    reject_unknown(&map, &["enabled", "rate", "opens_at", "pacing"])?;
    let enabled = match map.get("enabled") {
        None | Some(Value::Null) => return Err(FieldError::missing("enabled")),
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(FieldError::invalid(
                "enabled",
                "enabled must be true or false",
            ));
        }
    };
    let rate = match map.get("rate") {
        None | Some(Value::Null) => return Err(FieldError::missing("rate")),
        Some(v) => whole_number(v, MAX_ADMISSION_RATE)
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                FieldError::invalid(
                    "rate",
                    format!("rate must be a whole number of admissions per second from 1 to {MAX_ADMISSION_RATE}"),
                )
            })?,
    };
    // Absent means the window's opening; null is not a time.
    if matches!(map.get("opens_at"), Some(Value::Null)) {
        return Err(FieldError::invalid(
            "opens_at",
            "opens_at must be an RFC 3339 time (leave it out for the region's window's opening)",
        ));
    }
    let opens_at = opt_str(&map, "opens_at")?
        .map(|t| {
            DateTime::parse_from_rfc3339(t)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| FieldError::invalid("opens_at", "opens_at must be an RFC 3339 time"))
        })
        .transpose()?;
    let pacing = match map.get("pacing") {
        None => streams::waiting_room::Pacing::default(),
        Some(v) => v
            .as_str()
            .and_then(streams::waiting_room::Pacing::parse)
            .ok_or_else(|| {
                FieldError::invalid(
                    "pacing",
                    "pacing must be \"headroom\" (the rate caps what the pipeline can take) or \"fixed\" (admit at the rate)",
                )
            })?,
    };
    Ok(QueueSettings {
        enabled,
        rate: rate as u32,
        opens_at,
        pacing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn a_recovery_request_needs_a_valid_national_id_matching_the_birth_date() {
        let parse = |v: Value| parse_recovery(v.to_string().as_bytes(), NationalIdRule::Pesel);
        assert_eq!(
            parse(json!({"national_id": "44051401359", "birth_date": "1944-05-14"}))
                .unwrap()
                .national_id,
            "44051401359"
        );
        for (body, field) in [
            (
                json!({"national_id": "44051401359", "birth_date": "1944-05-15"}),
                "national_id",
            ),
            (
                json!({"national_id": "44051401358", "birth_date": "1944-05-14"}),
                "national_id",
            ),
            (json!({"national_id": "44051401359"}), "birth_date"),
            (
                json!({"national_id": "44051401359", "birth_date": "1944-05-14", "email": "x"}),
                "email",
            ),
        ] {
            let err = parse(body.clone()).unwrap_err();
            assert_eq!(err.field.as_deref(), Some(field), "{body}: {err:?}");
        }
    }

    #[test]
    fn a_review_decision_is_parsed_strictly() {
        let parse = |v: Value| parse_review(v.to_string().as_bytes());
        let ok = parse(json!({"decision": "reject", "reason": "deceased", "operator": "a.nowak", "note": " registry office "})).unwrap();
        assert_eq!(
            ok.decision,
            ReviewDecision::Reject(RegistryRefusal::Deceased)
        );
        assert_eq!(ok.reviewer.note, "registry office");
        assert_eq!(
            parse(json!({"decision": "approve", "operator": "a", "note": "b"}))
                .unwrap()
                .decision,
            ReviewDecision::Approve
        );
        for (body, field) in [
            (
                json!({"decision": "reject", "operator": "a", "note": "b"}),
                "reason",
            ),
            (
                json!({"decision": "approve", "reason": "deceased", "operator": "a", "note": "b"}),
                "reason",
            ),
            (
                json!({"decision": "reject", "reason": "slot_full", "operator": "a", "note": "b"}),
                "reason",
            ),
            (
                json!({"decision": "maybe", "operator": "a", "note": "b"}),
                "decision",
            ),
            (
                json!({"decision": "approve", "operator": "", "note": "b"}),
                "operator",
            ),
            (json!({"decision": "approve", "operator": "a"}), "note"),
            (
                json!({"decision": "approve", "operator": "a", "note": "b", "extra": 1}),
                "extra",
            ),
        ] {
            let err = parse(body.clone()).unwrap_err();
            assert_eq!(err.field.as_deref(), Some(field), "{body}: {err:?}");
        }
    }

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2027, 2, 1).unwrap()
    }

    fn valid() -> Value {
        json!({
            "national_id": "44051401359", "full_name": " Jan Kowalski ", "birth_date": "1944-05-14",
            "email": "jan@example.pl", "region": "mazowieckie", "location": "warszawa-1",
            "date": "2027-03-01", "attributes": {"group": "60+", "doses": 0, "chronic": true},
        })
    }

    fn parse(v: &Value) -> Result<Registration, FieldError> {
        parse_registration(
            v.to_string().as_bytes(),
            NationalIdRule::Pesel,
            &Limits::default(),
            today(),
        )
    }

    fn field_of(v: Value) -> (Option<String>, &'static str) {
        let e = parse(&v).unwrap_err();
        (e.field, e.code)
    }

    fn with(key: &str, value: Value) -> Value {
        let mut v = valid();
        v[key] = value;
        v
    }

    fn without(key: &str) -> Value {
        let mut v = valid();
        v.as_object_mut().unwrap().remove(key);
        v
    }

    #[test]
    fn a_full_valid_request_is_accepted_and_normalised() {
        let r = parse(&valid()).unwrap();
        assert_eq!(r.full_name, "Jan Kowalski");
        assert_eq!(r.language, "en");
        assert_eq!(r.slot.location.as_str(), "warszawa-1");
        assert_eq!(r.attributes.len(), 3);
        let r = parse(&with("phone", json!("+48 600 700 800"))).unwrap();
        assert_eq!(r.phone.as_deref(), Some("+48 600 700 800"));
    }

    #[test]
    fn every_rule_names_its_field() {
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(
            field_of(with("national_id", json!("44051401358"))),
            (some("national_id"), "invalid_field")
        );
        assert_eq!(
            field_of(with("national_id", json!(44051401359u64))),
            (some("national_id"), "invalid_field")
        );
        assert_eq!(
            field_of(with("birth_date", json!("1944-05-15"))),
            (some("national_id"), "invalid_field")
        );
        assert_eq!(
            field_of(with("birth_date", json!("2030-01-01"))),
            (some("birth_date"), "invalid_field")
        );
        assert_eq!(
            field_of(with("birth_date", json!("14.05.1944"))),
            (some("birth_date"), "invalid_field")
        );
        assert_eq!(
            field_of(without("full_name")),
            (some("full_name"), "missing_field")
        );
        assert_eq!(
            field_of(with("full_name", json!("a\u{0}b"))),
            (some("full_name"), "invalid_field")
        );
        assert_eq!(
            field_of(with("full_name", json!("x".repeat(201)))),
            (some("full_name"), "invalid_field")
        );
        assert_eq!(field_of(without("email")), (some("email"), "missing_field"));
        assert_eq!(
            field_of(with("email", json!("no-at-sign"))),
            (some("email"), "invalid_field")
        );
        assert_eq!(
            field_of(with("email", json!("a@b"))),
            (some("email"), "invalid_field")
        );
        assert_eq!(
            field_of(with("phone", json!("12ab"))),
            (some("phone"), "invalid_field")
        );
        assert_eq!(
            field_of(with("region", json!("Mazowieckie"))),
            (some("region"), "invalid_field")
        );
        assert_eq!(
            field_of(without("location")),
            (some("location"), "missing_field")
        );
        assert_eq!(
            field_of(with("date", json!("2027-02-29"))),
            (some("date"), "invalid_field")
        );
        assert_eq!(
            field_of(with("language", json!("Polish"))),
            (some("language"), "invalid_field")
        );
        assert_eq!(
            field_of(with("extra", json!(1))),
            (some("extra"), "unknown_field")
        );
    }

    #[test]
    fn attributes_are_flat_and_bounded() {
        let a = |v: Value| field_of(with("attributes", v));
        let attr = Some("attributes".to_owned());
        assert_eq!(a(json!([1])), (attr.clone(), "invalid_field"));
        assert_eq!(
            a(json!({"k": {"nested": 1}})),
            (attr.clone(), "invalid_field")
        );
        assert_eq!(a(json!({"k": null})), (attr.clone(), "invalid_field"));
        assert_eq!(a(json!({"k": [1]})), (attr.clone(), "invalid_field"));
        assert_eq!(
            a(json!({"k": "x".repeat(513)})),
            (attr.clone(), "invalid_field")
        );
        assert_eq!(
            a(json!({"k".repeat(65): 1})),
            (attr.clone(), "invalid_field")
        );
        let many: Map<String, Value> = (0..33).map(|i| (format!("k{i}"), json!(i))).collect();
        assert_eq!(a(Value::Object(many)), (attr, "invalid_field"));
        assert!(parse(&with("attributes", json!({"k": "x".repeat(512)}))).is_ok());
    }

    #[test]
    fn hostile_bodies_are_refused_without_panicking() {
        let limits = Limits::default();
        let deep = "[".repeat(100_000);
        for body in [
            &b""[..],
            b"null",
            b"[]",
            b"\"x\"",
            b"1e999999",
            b"{",
            deep.as_bytes(),
            b"\xff\xfe",
        ] {
            let e = parse_registration(body, NationalIdRule::Pesel, &limits, today()).unwrap_err();
            assert_eq!(e.code, "invalid_json");
            assert_eq!(e.field, None);
        }
    }

    #[test]
    fn operator_bodies_are_checked() {
        let c =
            parse_capacity(br#"{"region":"r","location":"l","date":"2027-03-01","capacity":5}"#)
                .unwrap();
        assert_eq!(c.capacity, 5);
        // JSON does not tell 61 from 61.0 (nor does the OpenAPI document's `integer`).
        let c =
            parse_capacity(br#"{"region":"r","location":"l","date":"2027-03-01","capacity":61.0}"#)
                .unwrap();
        assert_eq!(c.capacity, 61);
        for (body, field) in [
            (
                r#"{"region":"r","location":"l","date":"2027-03-01","capacity":-1}"#,
                "capacity",
            ),
            (
                r#"{"region":"r","location":"l","date":"2027-03-01","capacity":1.5}"#,
                "capacity",
            ),
            (
                r#"{"region":"r","location":"l","date":"2027-03-01","capacity":2000000}"#,
                "capacity",
            ),
            (
                r#"{"region":"r","location":"l","date":"2027-03-01"}"#,
                "capacity",
            ),
            (r#"{"region":"r","location":"l","capacity":1}"#, "date"),
        ] {
            assert_eq!(
                parse_capacity(body.as_bytes())
                    .unwrap_err()
                    .field
                    .as_deref(),
                Some(field),
                "{body}"
            );
        }
        let w = parse_window(br#"{"region":"r","opens_at":"2027-03-01T08:00:00+01:00","closes_at":"2027-03-01T20:00:00Z"}"#).unwrap();
        assert!(w.closes_at > w.opens_at);
        let e = parse_window(br#"{"region":"r","opens_at":"2027-03-02T00:00:00Z","closes_at":"2027-03-01T00:00:00Z"}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("closes_at"));
        let e = parse_window(
            br#"{"region":"r","opens_at":"tomorrow","closes_at":"2027-03-01T00:00:00Z"}"#,
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("opens_at"));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_registration(&bytes, NationalIdRule::Pesel, &Limits::default(), today());
            let _ = parse_capacity(&bytes);
            let _ = parse_window(&bytes);
        }

        #[test]
        fn arbitrary_json_objects_never_panic(fields in proptest::collection::btree_map("[a-z_]{1,12}", any::<String>(), 0..12)) {
            let body = serde_json::to_vec(&fields).unwrap();
            let _ = parse_registration(&body, NationalIdRule::Pesel, &Limits::default(), today());
        }
    }
}
