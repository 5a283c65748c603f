//! The registry's wire format (see `docs/registry.md`): the strict request parser, the
//! answers, the faults, the hostile answers and the population rule.

use std::fmt;
use std::sync::OnceLock;

use quick_xml::NsReader;
use quick_xml::escape::{escape, resolve_predefined_entity};
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use serde::{Deserialize, Serialize};

/// The SOAP 1.1 envelope namespace.
pub const SOAP_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
/// The registry's namespace, version 1.
pub const REGISTRY_NS: &str = "urn:gov:pl:registry:v1";
/// The namespace a `wrong_namespace` hostile answer puts in place of [`REGISTRY_NS`].
pub const EVIL_NS: &str = "urn:evil:registry:v1";
/// The `SOAPAction` every request carries (quoted on the wire, as SOAP 1.1 has it).
pub const SOAP_ACTION: &str = "urn:gov:pl:registry:v1#VerifyPerson";
/// The path of the one operation.
pub const VERIFY_PATH: &str = "/registry/v1/verify";
/// The largest request body the registry reads; a larger one is refused with `413`.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// How much padding a `huge_body` answer carries (the whole answer is a little larger).
pub const HUGE_BODY_PADDING: usize = 8 * 1024 * 1024;
/// The `RequestId` the committed corpus of answers echoes.
pub const CORPUS_REQUEST_ID: &str = "0190c1e5-7b2a-7c4d-9e6f-5a4b3c2d1e0f";
/// The `RequestId` a `wrong_request_id` answer echoes (or [`OTHER_REQUEST_ID_2`] when the
/// request itself carried this one).
pub const OTHER_REQUEST_ID: &str = "00000000-0000-7000-8000-00000000dead";
/// The `RequestId` a `wrong_request_id` answer echoes when the request carried
/// [`OTHER_REQUEST_ID`].
pub const OTHER_REQUEST_ID_2: &str = "00000000-0000-7000-8000-00000000beef";

/// A definite answer of the registry about one person.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RegistryResult {
    /// The person exists and the data match (`MATCH`).
    Match,
    /// The person exists but the data differ (`DATA_MISMATCH`).
    DataMismatch,
    /// The person is recorded as deceased (`DECEASED`).
    Deceased,
    /// No such national id (`NOT_FOUND`).
    NotFound,
}

impl RegistryResult {
    /// Every result, in the order the spec lists them.
    pub const ALL: [RegistryResult; 4] = [
        RegistryResult::Match,
        RegistryResult::DataMismatch,
        RegistryResult::Deceased,
        RegistryResult::NotFound,
    ];

    /// The text of `<reg:Result>`: `MATCH`, `DATA_MISMATCH`, `DECEASED` or `NOT_FOUND`.
    pub fn as_str(self) -> &'static str {
        match self {
            RegistryResult::Match => "MATCH",
            RegistryResult::DataMismatch => "DATA_MISMATCH",
            RegistryResult::Deceased => "DECEASED",
            RegistryResult::NotFound => "NOT_FOUND",
        }
    }
}

impl fmt::Display for RegistryResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The population rule: what the registry answers for a national id.
///
/// The last two digits of the PESEL's serial (`national_id[8..10]`) decide: `97` is
/// `DATA_MISMATCH`, `98` `DECEASED`, `99` `NOT_FOUND`, anything else (an id too short to have
/// them included, though the server refuses those before asking) `MATCH`. Name and birth date
/// are not compared.
pub fn outcome_for(national_id: &str) -> RegistryResult {
    match national_id.as_bytes().get(8..10) {
        Some(b"97") => RegistryResult::DataMismatch,
        Some(b"98") => RegistryResult::Deceased,
        Some(b"99") => RegistryResult::NotFound,
        _ => RegistryResult::Match,
    }
}

/// The kinds of hostile answer the simulator serves (HTTP 200, `text/xml`) to test a client's
/// parser. Named in snake case in JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostileKind {
    /// A valid answer cut off inside `<reg:Result>`.
    Truncated,
    /// A valid answer whose registry namespace is [`EVIL_NS`].
    WrongNamespace,
    /// A DOCTYPE declaring nested entities `lol` to `lol9`, with `&lol9;` inside `Result`.
    BillionLaughs,
    /// A DOCTYPE declaring `xxe` as `file:///etc/passwd`, with `&xxe;` inside `Result`.
    ExternalEntity,
    /// A well-formed answer padded with a comment of [`HUGE_BODY_PADDING`] bytes.
    HugeBody,
    /// `<reg:Result>PROBABLY</reg:Result>`.
    UnknownResult,
    /// A valid answer echoing another `RequestId` than the request's.
    WrongRequestId,
}

impl HostileKind {
    /// Every kind.
    pub const ALL: [HostileKind; 7] = [
        HostileKind::Truncated,
        HostileKind::WrongNamespace,
        HostileKind::BillionLaughs,
        HostileKind::ExternalEntity,
        HostileKind::HugeBody,
        HostileKind::UnknownResult,
        HostileKind::WrongRequestId,
    ];

    /// The kind's name in JSON and in the corpus's file names.
    pub fn as_str(self) -> &'static str {
        match self {
            HostileKind::Truncated => "truncated",
            HostileKind::WrongNamespace => "wrong_namespace",
            HostileKind::BillionLaughs => "billion_laughs",
            HostileKind::ExternalEntity => "external_entity",
            HostileKind::HugeBody => "huge_body",
            HostileKind::UnknownResult => "unknown_result",
            HostileKind::WrongRequestId => "wrong_request_id",
        }
    }
}

impl fmt::Display for HostileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed `VerifyPersonRequest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyRequest {
    /// The caller's id for this request, echoed back.
    pub request_id: String,
    /// The national id (11 digits).
    pub national_id: String,
    /// The full name (not compared by the population rule).
    pub full_name: String,
    /// The birth date, `YYYY-MM-DD` (not compared by the population rule).
    pub birth_date: String,
}

/// Why a request was refused (`400` with a `soap:Client` fault carrying this text).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The body is not UTF-8.
    #[error("the request is not UTF-8")]
    NotUtf8,
    /// The XML declaration names another encoding than UTF-8.
    #[error("unsupported encoding {0:?}: the registry reads UTF-8 only")]
    UnsupportedEncoding(String),
    /// The body is not well-formed XML.
    #[error("malformed XML: {0}")]
    Malformed(String),
    /// The body carries a DOCTYPE (and with it, possibly, entity declarations).
    #[error("DOCTYPE and entity declarations are not allowed")]
    DocType,
    /// A reference to an entity other than the five XML predefines.
    #[error("undeclared entity &{0};")]
    UndeclaredEntity(String),
    /// A processing instruction.
    #[error("processing instructions are not allowed")]
    ProcessingInstruction,
    /// An element where the envelope has no place for it.
    #[error("unexpected element {element} in {inside}")]
    UnexpectedElement {
        /// The element, with `soap:`/`reg:` standing for the namespaces.
        element: String,
        /// Where it was found.
        inside: &'static str,
    },
    /// Text outside the request's fields.
    #[error("unexpected text in {0}")]
    StrayText(&'static str),
    /// An element given twice.
    #[error("{0} is given more than once")]
    Duplicate(&'static str),
    /// A required element is missing.
    #[error("{0} is missing")]
    Missing(&'static str),
    /// A field's value is not acceptable.
    #[error("{field} {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// A SOAP 1.1 fault code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultCode {
    /// `soap:Client`: the request was malformed.
    Client,
    /// `soap:Server`: the registry failed.
    Server,
}

impl FaultCode {
    fn as_str(self) -> &'static str {
        match self {
            FaultCode::Client => "soap:Client",
            FaultCode::Server => "soap:Server",
        }
    }
}

const DECL: &str = r#"<?xml version="1.0" encoding="UTF-8"?>"#;
const FIELDS: [&str; 4] = ["RequestId", "NationalId", "FullName", "BirthDate"];

fn head(doctype: &str, registry_ns: &str) -> String {
    format!(
        "{DECL}\n{doctype}<soap:Envelope xmlns:soap=\"{SOAP_NS}\" xmlns:reg=\"{registry_ns}\">\n  <soap:Body>\n"
    )
}

fn tail(request_id: &str, result_markup: &str) -> String {
    format!(
        "    <reg:VerifyPersonResponse>\n      <reg:RequestId>{}</reg:RequestId>\n      <reg:Result>{result_markup}</reg:Result>\n    </reg:VerifyPersonResponse>\n  </soap:Body>\n</soap:Envelope>\n",
        escape(request_id)
    )
}

/// The answer (HTTP 200) giving `result` for the request `request_id`.
pub fn answer_xml(request_id: &str, result: RegistryResult) -> String {
    head("", REGISTRY_NS) + &tail(request_id, result.as_str())
}

/// A SOAP 1.1 fault (`faultcode` and `faultstring` unqualified) carrying `message`.
pub fn fault_xml(code: FaultCode, message: &str) -> String {
    format!(
        "{DECL}\n<soap:Envelope xmlns:soap=\"{SOAP_NS}\">\n  <soap:Body>\n    <soap:Fault>\n      <faultcode>{}</faultcode>\n      <faultstring>{}</faultstring>\n    </soap:Fault>\n  </soap:Body>\n</soap:Envelope>\n",
        code.as_str(),
        escape(message)
    )
}

/// The text of the fault the registry answers when it fails (`error_rate`).
pub const SERVER_FAULT_MESSAGE: &str = "Registry temporarily unavailable";

/// The size of a fault answer that echoes the request (the `fault_echo` knob): 64 KiB, the
/// most a careful client reads.
pub const ECHO_FAULT_ANSWER_BYTES: usize = 64 * 1024;

/// A server fault whose text echoes `request`'s personal data, repeated until the answer is
/// [`ECHO_FAULT_ANSWER_BYTES`] long.
pub fn echo_fault_xml(request: &VerifyRequest) -> String {
    let echo = format!(
        "{SERVER_FAULT_MESSAGE}: no record matches {}, {}, born {}. ",
        request.full_name, request.national_id, request.birth_date
    );
    let room = ECHO_FAULT_ANSWER_BYTES - fault_xml(FaultCode::Server, "").len();
    let mut message = String::with_capacity(room);
    while message.len() + echo.len() <= room {
        message.push_str(&echo);
    }
    // Fill the rest, so the answer is exactly the size (escaping could change it: no
    // character of the filler needs escaping).
    while fault_xml(FaultCode::Server, &message).len() < ECHO_FAULT_ANSWER_BYTES {
        message.push('x');
    }
    message.truncate(message.trim_end().len());
    fault_xml(FaultCode::Server, &message)
}

fn billion_laughs_doctype() -> String {
    let mut doctype = String::from("<!DOCTYPE soap:Envelope [\n  <!ENTITY lol \"lol\">\n");
    for level in 1..=9 {
        let inner = if level == 1 {
            "lol".to_owned()
        } else {
            format!("lol{}", level - 1)
        };
        let refs = format!("&{inner};").repeat(10);
        doctype.push_str(&format!("  <!ENTITY lol{level} \"{refs}\">\n"));
    }
    doctype.push_str("]>\n");
    doctype
}

const EXTERNAL_ENTITY_DOCTYPE: &str =
    "<!DOCTYPE soap:Envelope [\n  <!ENTITY xxe SYSTEM \"file:///etc/passwd\">\n]>\n";

/// The request id a `wrong_request_id` answer echoes for a request carrying `request_id`.
pub fn other_request_id(request_id: &str) -> &'static str {
    if request_id == OTHER_REQUEST_ID {
        OTHER_REQUEST_ID_2
    } else {
        OTHER_REQUEST_ID
    }
}

/// The padding of a `huge_body` answer: one XML comment, built once and shared.
pub fn huge_body_padding() -> &'static str {
    static PADDING: OnceLock<String> = OnceLock::new();
    PADDING.get_or_init(|| {
        let mut padding = String::with_capacity(HUGE_BODY_PADDING + 16);
        padding.push_str("    <!--");
        padding.extend(std::iter::repeat_n('x', HUGE_BODY_PADDING));
        padding.push_str("-->\n");
        padding
    })
}

/// A `huge_body` answer in three parts, to be sent one after another: what precedes the
/// padding, the shared padding ([`huge_body_padding`]), what follows it.
pub fn huge_body_parts(request_id: &str, result: RegistryResult) -> (String, &'static str, String) {
    (
        head("", REGISTRY_NS),
        huge_body_padding(),
        tail(request_id, result.as_str()),
    )
}

/// The hostile answer of `kind` to a request `request_id` whose true answer is `result`.
///
/// `huge_body` is returned whole here (more than 8 MiB); the server streams it from
/// [`huge_body_parts`] instead.
pub fn hostile_xml(kind: HostileKind, request_id: &str, result: RegistryResult) -> String {
    match kind {
        HostileKind::Truncated => {
            let whole = answer_xml(request_id, result);
            let open = "<reg:Result>";
            // Every result has more than two letters: the cut falls inside the element.
            let cut = whole.find(open).expect("an answer has a Result") + open.len() + 2;
            whole[..cut].to_owned()
        }
        HostileKind::WrongNamespace => head("", EVIL_NS) + &tail(request_id, result.as_str()),
        HostileKind::BillionLaughs => {
            head(&billion_laughs_doctype(), REGISTRY_NS) + &tail(request_id, "&lol9;")
        }
        HostileKind::ExternalEntity => {
            head(EXTERNAL_ENTITY_DOCTYPE, REGISTRY_NS) + &tail(request_id, "&xxe;")
        }
        HostileKind::HugeBody => {
            let (before, padding, after) = huge_body_parts(request_id, result);
            before + padding + &after
        }
        HostileKind::UnknownResult => head("", REGISTRY_NS) + &tail(request_id, "PROBABLY"),
        HostileKind::WrongRequestId => answer_xml(other_request_id(request_id), result),
    }
}

/// The committed corpus (`processors/tests/registry_corpus/`): file name and content, for
/// every hostile kind but `huge_body`, plus `match.xml` and `fault.xml`. Each answers
/// [`CORPUS_REQUEST_ID`] for a person whose true answer is `MATCH`.
pub fn corpus() -> Vec<(String, String)> {
    let result = RegistryResult::Match;
    let mut files = vec![
        (
            "match.xml".to_owned(),
            answer_xml(CORPUS_REQUEST_ID, result),
        ),
        (
            "fault.xml".to_owned(),
            fault_xml(FaultCode::Server, SERVER_FAULT_MESSAGE),
        ),
    ];
    for kind in HostileKind::ALL {
        if kind != HostileKind::HugeBody {
            files.push((
                format!("{kind}.xml"),
                hostile_xml(kind, CORPUS_REQUEST_ID, result),
            ));
        }
    }
    files
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Ns {
    Soap,
    Registry,
    Other,
}

fn classify(ns: &ResolveResult<'_>) -> Ns {
    match ns {
        ResolveResult::Bound(ns) if ns.as_ref() == SOAP_NS.as_bytes() => Ns::Soap,
        ResolveResult::Bound(ns) if ns.as_ref() == REGISTRY_NS.as_bytes() => Ns::Registry,
        _ => Ns::Other,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Node {
    Envelope,
    Header,
    HeaderContent,
    Body,
    Request,
    Field(usize),
}

impl Node {
    fn name(self) -> &'static str {
        match self {
            Node::Envelope => "soap:Envelope",
            Node::Header | Node::HeaderContent => "soap:Header",
            Node::Body => "soap:Body",
            Node::Request => "reg:VerifyPersonRequest",
            Node::Field(i) => FIELDS[i],
        }
    }
}

#[derive(Default)]
struct Parse {
    stack: Vec<Node>,
    root_done: bool,
    header: bool,
    body: bool,
    request: bool,
    fields: [Option<String>; 4],
}

impl Parse {
    fn open(&mut self, ns: Ns, local: &[u8]) -> Result<Node, RequestError> {
        let parent = self.stack.last().copied();
        let unexpected = |inside: &'static str| {
            let prefix = match ns {
                Ns::Soap => "soap:",
                Ns::Registry => "reg:",
                Ns::Other => "(foreign namespace) ",
            };
            RequestError::UnexpectedElement {
                element: format!("{prefix}{}", String::from_utf8_lossy(local)),
                inside,
            }
        };
        let node = match parent {
            None if self.root_done => return Err(unexpected("the document (a second root)")),
            None if ns == Ns::Soap && local == b"Envelope" => Node::Envelope,
            None => return Err(unexpected("the document (expected soap:Envelope)")),
            Some(Node::Envelope) if ns == Ns::Soap && local == b"Header" => {
                if self.header || self.body {
                    return Err(RequestError::Duplicate("soap:Header"));
                }
                self.header = true;
                Node::Header
            }
            Some(Node::Envelope) if ns == Ns::Soap && local == b"Body" => {
                if self.body {
                    return Err(RequestError::Duplicate("soap:Body"));
                }
                self.body = true;
                Node::Body
            }
            Some(Node::Envelope) => return Err(unexpected("soap:Envelope")),
            Some(Node::Header | Node::HeaderContent) => Node::HeaderContent,
            Some(Node::Body) if ns == Ns::Registry && local == b"VerifyPersonRequest" => {
                if self.request {
                    return Err(RequestError::Duplicate("reg:VerifyPersonRequest"));
                }
                self.request = true;
                Node::Request
            }
            Some(Node::Body) => return Err(unexpected("soap:Body")),
            Some(Node::Request) => {
                let field = FIELDS
                    .iter()
                    .position(|name| ns == Ns::Registry && name.as_bytes() == local)
                    .ok_or_else(|| unexpected("reg:VerifyPersonRequest"))?;
                if self.fields[field].is_some() {
                    return Err(RequestError::Duplicate(FIELDS[field]));
                }
                self.fields[field] = Some(String::new());
                Node::Field(field)
            }
            Some(Node::Field(i)) => {
                return Err(RequestError::Invalid {
                    field: FIELDS[i],
                    reason: "must hold text, not elements",
                });
            }
        };
        self.stack.push(node);
        Ok(node)
    }

    fn close(&mut self) {
        self.stack.pop();
        if self.stack.is_empty() {
            self.root_done = true;
        }
    }

    fn text(&mut self, text: &str) -> Result<(), RequestError> {
        match self.stack.last().copied() {
            Some(Node::Field(i)) => {
                self.fields[i]
                    .get_or_insert_with(String::new)
                    .push_str(text);
                Ok(())
            }
            Some(Node::Header | Node::HeaderContent) => Ok(()),
            _ if text.chars().all(char::is_whitespace) => Ok(()),
            Some(node) => Err(RequestError::StrayText(node.name())),
            None => Err(RequestError::StrayText("the document")),
        }
    }

    fn finish(self) -> Result<VerifyRequest, RequestError> {
        if !self.stack.is_empty() || !self.root_done {
            return Err(RequestError::Malformed("the document ends early".into()));
        }
        if !self.body {
            return Err(RequestError::Missing("soap:Body"));
        }
        if !self.request {
            return Err(RequestError::Missing("reg:VerifyPersonRequest"));
        }
        let [request_id, national_id, full_name, birth_date] = self.fields;
        let request = VerifyRequest {
            request_id: request_id.ok_or(RequestError::Missing("RequestId"))?,
            national_id: national_id.ok_or(RequestError::Missing("NationalId"))?,
            full_name: full_name.ok_or(RequestError::Missing("FullName"))?,
            birth_date: birth_date.ok_or(RequestError::Missing("BirthDate"))?,
        };
        validate(&request)?;
        Ok(request)
    }
}

fn malformed(error: impl fmt::Display) -> RequestError {
    RequestError::Malformed(error.to_string())
}

/// Parses a `VerifyPersonRequest` envelope strictly: UTF-8, namespace-aware (any prefixes,
/// or a default namespace), no DOCTYPE, no entities but the five predefined ones and
/// character references, no processing instructions, every field exactly once and valid,
/// nothing unexpected. An optional `soap:Header` is skipped.
pub fn parse_request(body: &[u8]) -> Result<VerifyRequest, RequestError> {
    let text = std::str::from_utf8(body).map_err(|_| RequestError::NotUtf8)?;
    let mut reader = NsReader::from_str(text);
    let mut parse = Parse::default();
    let mut first = true;
    loop {
        let (ns, event) = reader.read_resolved_event().map_err(malformed)?;
        let ns = classify(&ns);
        let is_first = std::mem::replace(&mut first, false);
        match event {
            Event::Decl(decl) => {
                if !is_first {
                    return Err(RequestError::Malformed(
                        "the XML declaration is not at the start".into(),
                    ));
                }
                if let Some(encoding) = decl.encoding() {
                    let encoding = encoding.map_err(malformed)?;
                    if !encoding.eq_ignore_ascii_case(b"utf-8") {
                        return Err(RequestError::UnsupportedEncoding(
                            String::from_utf8_lossy(&encoding).into_owned(),
                        ));
                    }
                }
            }
            Event::DocType(_) => return Err(RequestError::DocType),
            Event::PI(_) => return Err(RequestError::ProcessingInstruction),
            Event::Comment(_) => {}
            Event::Start(element) => {
                parse.open(ns, element.local_name().as_ref())?;
            }
            Event::Empty(element) => {
                parse.open(ns, element.local_name().as_ref())?;
                parse.close();
            }
            Event::End(_) => parse.close(),
            Event::Text(text) => parse.text(&text.xml_content().map_err(malformed)?)?,
            Event::CData(cdata) => parse.text(&cdata.xml_content().map_err(malformed)?)?,
            Event::GeneralRef(reference) => {
                if let Some(ch) = reference.resolve_char_ref().map_err(malformed)? {
                    parse.text(ch.encode_utf8(&mut [0; 4]))?;
                } else {
                    let name = reference.decode().map_err(malformed)?;
                    let value = resolve_predefined_entity(&name)
                        .ok_or_else(|| RequestError::UndeclaredEntity(name.into_owned()))?;
                    parse.text(value)?;
                }
            }
            Event::Eof => break,
        }
    }
    parse.finish()
}

fn validate(request: &VerifyRequest) -> Result<(), RequestError> {
    let invalid = |field, reason| Err(RequestError::Invalid { field, reason });
    let id = &request.request_id;
    if id.trim().is_empty() {
        return invalid("RequestId", "is empty");
    }
    if id.chars().count() > 128 {
        return invalid("RequestId", "is longer than 128 characters");
    }
    if id.chars().any(char::is_control) {
        return invalid("RequestId", "holds control characters");
    }
    let national_id = request.national_id.as_bytes();
    if national_id.len() != 11 || !national_id.iter().all(u8::is_ascii_digit) {
        return invalid("NationalId", "must be exactly 11 digits");
    }
    let name = request.full_name.trim();
    if name.is_empty() {
        return invalid("FullName", "is empty");
    }
    if name.chars().count() > 200 {
        return invalid("FullName", "is longer than 200 characters");
    }
    if !is_date(&request.birth_date) {
        return invalid("BirthDate", "must be a date, YYYY-MM-DD");
    }
    Ok(())
}

fn is_date(text: &str) -> bool {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| b[range].iter().all(u8::is_ascii_digit);
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' || !digits(0..4) {
        return false;
    }
    if !digits(5..7) || !digits(8..10) {
        return false;
    }
    let month = (b[5] - b'0') * 10 + (b[6] - b'0');
    let day = (b[8] - b'0') * 10 + (b[9] - b'0');
    (1..=12).contains(&month) && (1..=31).contains(&day)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUEST: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:reg="urn:gov:pl:registry:v1">
  <soap:Body>
    <reg:VerifyPersonRequest>
      <reg:RequestId>0190c1e5-1</reg:RequestId>
      <reg:NationalId>44051401359</reg:NationalId>
      <reg:FullName>Jan &amp; Anna Kowalscy &#x141;</reg:FullName>
      <reg:BirthDate>1944-05-14</reg:BirthDate>
    </reg:VerifyPersonRequest>
  </soap:Body>
</soap:Envelope>"#;

    #[test]
    fn population_rule_reads_the_serials_last_two_digits() {
        assert_eq!(outcome_for("44051401359"), RegistryResult::Match);
        assert_eq!(outcome_for("44051401979"), RegistryResult::DataMismatch);
        assert_eq!(outcome_for("44051401989"), RegistryResult::Deceased);
        assert_eq!(outcome_for("44051401999"), RegistryResult::NotFound);
        // Only digits 9 and 10 count: 97 elsewhere changes nothing.
        assert_eq!(outcome_for("97979797009"), RegistryResult::Match);
        assert_eq!(outcome_for("44051409700"), RegistryResult::Match);
        assert_eq!(outcome_for("440514019"), RegistryResult::Match);
        assert_eq!(outcome_for(""), RegistryResult::Match);
    }

    #[test]
    fn results_are_named_as_on_the_wire() {
        let names: Vec<_> = RegistryResult::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names, ["MATCH", "DATA_MISMATCH", "DECEASED", "NOT_FOUND"]);
        assert_eq!(
            serde_json::to_string(&RegistryResult::DataMismatch).unwrap(),
            r#""DATA_MISMATCH""#
        );
    }

    #[test]
    fn a_well_formed_request_parses_with_its_text_unescaped() {
        let request = parse_request(REQUEST.as_bytes()).unwrap();
        assert_eq!(request.request_id, "0190c1e5-1");
        assert_eq!(request.national_id, "44051401359");
        assert_eq!(request.full_name, "Jan & Anna Kowalscy Ł");
        assert_eq!(request.birth_date, "1944-05-14");
    }

    #[test]
    fn any_prefix_or_a_default_namespace_is_legal() {
        let other = REQUEST
            .replace("soap:", "s:")
            .replace("xmlns:soap", "xmlns:s")
            .replace("reg:", "")
            .replace("xmlns:reg", "xmlns");
        assert!(parse_request(other.as_bytes()).is_ok(), "{other}");
    }

    #[test]
    fn the_wrong_namespace_is_refused() {
        let evil = REQUEST.replace(REGISTRY_NS, EVIL_NS);
        assert!(matches!(
            parse_request(evil.as_bytes()),
            Err(RequestError::UnexpectedElement { .. })
        ));
    }

    #[test]
    fn doctype_and_undeclared_entities_are_refused() {
        let doctype = REQUEST.replace(
            "<soap:Envelope",
            "<!DOCTYPE x [<!ENTITY e \"boom\">]>\n<soap:Envelope",
        );
        assert_eq!(
            parse_request(doctype.as_bytes()),
            Err(RequestError::DocType)
        );
        let entity = REQUEST.replace("1944-05-14", "&e;");
        assert_eq!(
            parse_request(entity.as_bytes()),
            Err(RequestError::UndeclaredEntity("e".into()))
        );
    }

    #[test]
    fn missing_duplicate_and_invalid_fields_are_refused() {
        let missing = REQUEST.replace("<reg:BirthDate>1944-05-14</reg:BirthDate>", "");
        assert_eq!(
            parse_request(missing.as_bytes()),
            Err(RequestError::Missing("BirthDate"))
        );
        let twice = REQUEST.replace(
            "<reg:FullName>",
            "<reg:NationalId>44051401359</reg:NationalId><reg:FullName>",
        );
        assert_eq!(
            parse_request(twice.as_bytes()),
            Err(RequestError::Duplicate("NationalId"))
        );
        for (from, to, field) in [
            ("44051401359", "4405140135", "NationalId"),
            ("44051401359", "4405140135x", "NationalId"),
            ("1944-05-14", "1944-13-14", "BirthDate"),
            ("1944-05-14", "14.05.1944", "BirthDate"),
            ("0190c1e5-1", " ", "RequestId"),
        ] {
            let bad = REQUEST.replace(from, to);
            assert!(
                matches!(parse_request(bad.as_bytes()), Err(RequestError::Invalid { field: f, .. }) if f == field),
                "{from} -> {to}"
            );
        }
        let nested = REQUEST.replace("1944-05-14", "<reg:Year>1944</reg:Year>");
        assert!(matches!(
            parse_request(nested.as_bytes()),
            Err(RequestError::Invalid {
                field: "BirthDate",
                ..
            })
        ));
        let unknown = REQUEST.replace("<reg:FullName>", "<reg:Extra/><reg:FullName>");
        assert!(matches!(
            parse_request(unknown.as_bytes()),
            Err(RequestError::UnexpectedElement { .. })
        ));
    }

    #[test]
    fn broken_documents_are_refused() {
        for bad in [
            &REQUEST[..REQUEST.len() - 20],
            "",
            "not xml at all",
            "<soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\"/>",
        ] {
            assert!(parse_request(bad.as_bytes()).is_err(), "{bad}");
        }
        assert_eq!(parse_request(b"\xff\xfe"), Err(RequestError::NotUtf8));
        let latin2 = REQUEST.replace("UTF-8", "ISO-8859-2");
        assert!(matches!(
            parse_request(latin2.as_bytes()),
            Err(RequestError::UnsupportedEncoding(_))
        ));
        let pi = REQUEST.replace("<soap:Body>", "<soap:Body><?evil?>");
        assert_eq!(
            parse_request(pi.as_bytes()),
            Err(RequestError::ProcessingInstruction)
        );
    }

    #[test]
    fn answers_escape_what_they_echo() {
        let answer = answer_xml("a<b>&\"c\"", RegistryResult::Deceased);
        assert!(answer.contains("<reg:RequestId>a&lt;b&gt;&amp;&quot;c&quot;</reg:RequestId>"));
        assert!(answer.contains("<reg:Result>DECEASED</reg:Result>"));
        let fault = fault_xml(FaultCode::Client, "x < y");
        assert!(fault.contains("<faultcode>soap:Client</faultcode>"));
        assert!(fault.contains("<faultstring>x &lt; y</faultstring>"));
    }

    #[test]
    fn hostile_answers_are_what_they_claim() {
        let id = CORPUS_REQUEST_ID;
        let result = RegistryResult::Match;
        let truncated = hostile_xml(HostileKind::Truncated, id, result);
        assert!(truncated.ends_with("<reg:Result>MA"), "{truncated}");
        let evil = hostile_xml(HostileKind::WrongNamespace, id, result);
        assert!(!evil.contains(REGISTRY_NS) && evil.contains(EVIL_NS));
        let laughs = hostile_xml(HostileKind::BillionLaughs, id, result);
        assert!(laughs.contains("<!DOCTYPE") && laughs.contains("<reg:Result>&lol9;</reg:Result>"));
        assert!(laughs.contains("<!ENTITY lol9 \"&lol8;&lol8;"));
        let xxe = hostile_xml(HostileKind::ExternalEntity, id, result);
        assert!(xxe.contains(r#"<!ENTITY xxe SYSTEM "file:///etc/passwd">"#));
        assert!(xxe.contains("<reg:Result>&xxe;</reg:Result>"));
        let huge = hostile_xml(HostileKind::HugeBody, id, result);
        assert!(huge.len() >= 8 * 1024 * 1024);
        assert!(huge.ends_with(&tail(id, "MATCH")));
        let unknown = hostile_xml(HostileKind::UnknownResult, id, result);
        assert!(unknown.contains("<reg:Result>PROBABLY</reg:Result>"));
        let wrong = hostile_xml(HostileKind::WrongRequestId, id, result);
        assert!(!wrong.contains(id) && wrong.contains(OTHER_REQUEST_ID));
        let wrong_again = hostile_xml(HostileKind::WrongRequestId, OTHER_REQUEST_ID, result);
        assert!(wrong_again.contains(OTHER_REQUEST_ID_2));
    }

    /// The corpus the verification processor's parser tests read must be what this code
    /// serves. `REGISTRY_CORPUS_BLESS=1 cargo test -p registry-sim corpus` rewrites it.
    #[test]
    fn committed_corpus_matches_the_code() {
        let dir = std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../processors/tests/registry_corpus/"
        ));
        let files = corpus();
        if std::env::var_os("REGISTRY_CORPUS_BLESS").is_some() {
            std::fs::create_dir_all(dir).unwrap();
            for (name, content) in &files {
                std::fs::write(dir.join(name), content).unwrap();
            }
        }
        for (name, content) in &files {
            let committed = std::fs::read_to_string(dir.join(name))
                .unwrap_or_else(|e| panic!("{name}: {e} (REGISTRY_CORPUS_BLESS=1 writes it)"));
            assert_eq!(
                &committed, content,
                "{name} differs from the code (REGISTRY_CORPUS_BLESS=1 rewrites it)"
            );
        }
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".xml"))
            .collect();
        on_disk.sort();
        let mut expected: Vec<String> = files.into_iter().map(|(name, _)| name).collect();
        expected.sort();
        assert_eq!(on_disk, expected, "stale files in the corpus");
    }
}
