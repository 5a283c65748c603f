//! The government registry's wire codec: SOAP-style XML (wire format version 1).
//!
//! [`encode_request`] writes a `VerifyPersonRequest`; [`decode_reply`] reads the answer, a
//! `VerifyPersonResponse` (a [`Verdict`] for a request id) or a SOAP 1.1 fault.
//!
//! The registry is outside our trust boundary, so decoding is strict: an answer that is not
//! exactly the documented shape is an [`XmlError`], never a panic and never a verdict.
//!
//! - Size first: an answer over [`MAX_REPLY_BYTES`] is refused before it is parsed.
//! - No DTD: any `DOCTYPE` is refused, so no entity is ever declared, let alone expanded
//!   (no billion laughs, no external entities). Only the five predefined entities and
//!   character references are resolved; any other reference (`&foo;`) is refused.
//! - Namespaces, not prefixes: `Envelope`, `Body` and `Fault` must be in
//!   [`SOAP_ENVELOPE_NS`]; `VerifyPersonResponse`, `RequestId` and `Result` in
//!   [`REGISTRY_NS`] (any prefix, or a default namespace); `faultcode` and `faultstring`
//!   unqualified, as SOAP 1.1 has them.
//! - Exact structure: `Envelope > Body > (VerifyPersonResponse > RequestId, Result)` or
//!   `Envelope > Body > (Fault > faultcode, faultstring)`, children in that order. Whitespace,
//!   comments and a leading XML declaration are allowed; attributes are checked (well-formed,
//!   no unknown entities) and otherwise ignored. Anything else (unknown elements, text or
//!   CDATA outside the four text elements, processing instructions, content after the root,
//!   nesting deeper than [`MAX_DEPTH`], more than [`MAX_ATTRIBUTES`] attributes on an
//!   element) is an error.
//!
//! Decoding makes two passes over the (at most 64 KiB) answer: the first screens the whole
//! document for hostile or ill-formed content (DOCTYPE, entities, depth, syntax), the second
//! checks its structure. So a hostile answer is reported as such wherever its payload sits,
//! and not as the first structural surprise before it.

use std::borrow::Cow;
use std::fmt::Display;

use chrono::NaiveDate;
use quick_xml::NsReader;
use quick_xml::escape::{EscapeError, escape, resolve_xml_entity, unescape_with};
use quick_xml::events::{BytesStart, Event};
use quick_xml::name::{Namespace, QName, ResolveResult};

/// The SOAP 1.1 envelope namespace.
pub const SOAP_ENVELOPE_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";

/// The registry's namespace (version 1 of its wire format).
pub const REGISTRY_NS: &str = "urn:gov:pl:registry:v1";

/// `Content-Type` header of a request.
pub const CONTENT_TYPE: &str = "text/xml; charset=utf-8";

/// `SOAPAction` header of a request (the quotes belong to the value).
pub const SOAP_ACTION: &str = "\"urn:gov:pl:registry:v1#VerifyPerson\"";

/// Largest answer [`decode_reply`] parses; a larger one is refused unread.
pub const MAX_REPLY_BYTES: usize = 64 * 1024;

/// Deepest element nesting [`decode_reply`] accepts (a valid answer nests 4 deep).
pub const MAX_DEPTH: usize = 8;

/// Most attributes one element may carry (a valid answer has at most a few namespace
/// declarations). Bounds the work per element: quick-xml checks attributes for duplicates
/// pairwise, and resolves each name against every namespace binding in scope.
pub const MAX_ATTRIBUTES: usize = 16;

/// Longest piece of the answer (in characters) quoted in an error.
const QUOTE_CHARS: usize = 64;

/// What the registry is asked to verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyRequest<'a> {
    /// Our id of the request; the registry echoes it in its answer.
    pub request_id: &'a str,
    /// The citizen's national id (PESEL).
    pub national_id: &'a str,
    /// The citizen's full name as registered with us.
    pub full_name: &'a str,
    /// The citizen's date of birth.
    pub birth_date: NaiveDate,
}

/// The registry's verdict on a citizen's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// `MATCH`: the person exists and the data match.
    Match,
    /// `DATA_MISMATCH`: the person exists but the data differ.
    DataMismatch,
    /// `DECEASED`: the person is recorded as deceased.
    Deceased,
    /// `NOT_FOUND`: no person has this national id.
    NotFound,
}

/// The code of a SOAP 1.1 fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultCode {
    /// `Client` (or a `Client.*` specialisation): our request was malformed; retrying the
    /// same request will not help.
    Client,
    /// `Server` (or a `Server.*` specialisation): the registry failed; a retry may succeed.
    Server,
    /// Any other code, as written (cut to 64 characters).
    Other(String),
}

/// A decoded answer of the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A `VerifyPersonResponse`. The caller must check that `request_id` is its own.
    Verdict {
        /// The request id the registry echoed (surrounding whitespace removed).
        request_id: String,
        /// The verdict.
        verdict: Verdict,
    },
    /// A SOAP fault.
    Fault {
        /// The `faultcode`.
        code: FaultCode,
        /// The `faultstring` (surrounding whitespace removed).
        message: String,
    },
}

/// Why an answer of the registry was refused. Quoted pieces of the answer are cut to 64
/// characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    /// The answer is larger than [`MAX_REPLY_BYTES`]; it was not parsed.
    #[error("registry answer of {bytes} bytes is over the {MAX_REPLY_BYTES}-byte limit")]
    TooLarge {
        /// Size of the answer.
        bytes: usize,
    },
    /// The answer has a `DOCTYPE` (a DTD could declare entities; none is accepted).
    #[error("registry answer has a DOCTYPE")]
    Doctype,
    /// The answer references an entity other than the five predefined ones (the name).
    #[error("registry answer references the undeclared entity `&{0};`")]
    Entity(String),
    /// The answer is not well-formed (namespace-aware) UTF-8 XML, or is cut short.
    #[error("registry answer is not well-formed XML: {0}")]
    Malformed(String),
    /// An element is in the wrong namespace.
    #[error(
        "registry answer has `{element}` in {}",
        .found.as_deref().map_or("no namespace".to_owned(), |ns| format!("namespace `{ns}`"))
    )]
    Namespace {
        /// The element's name as written.
        element: String,
        /// The namespace it is in (`None`: none).
        found: Option<String>,
    },
    /// Something the wire format does not allow where it is (described).
    #[error("registry answer has unexpected {0}")]
    Unexpected(String),
    /// A required element is missing (its local name).
    #[error("registry answer lacks `{0}`")]
    Missing(&'static str),
    /// `Result` holds a value the wire format does not define (the value).
    #[error("registry answer has unknown result `{0}`")]
    UnknownResult(String),
    /// Elements nest deeper than [`MAX_DEPTH`].
    #[error("registry answer nests elements deeper than {MAX_DEPTH}")]
    TooDeep,
}

/// The `VerifyPersonRequest` for `req`, with every text XML-escaped.
///
/// Characters XML 1.0 cannot carry at all (most control characters, U+FFFE, U+FFFF) are
/// replaced by U+FFFD, so the document is always well-formed.
pub fn encode_request(req: &VerifyRequest<'_>) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<soap:Envelope xmlns:soap="{SOAP_ENVELOPE_NS}" xmlns:reg="{REGISTRY_NS}">
  <soap:Body>
    <reg:VerifyPersonRequest>
      <reg:RequestId>{}</reg:RequestId>
      <reg:NationalId>{}</reg:NationalId>
      <reg:FullName>{}</reg:FullName>
      <reg:BirthDate>{}</reg:BirthDate>
    </reg:VerifyPersonRequest>
  </soap:Body>
</soap:Envelope>
"#,
        text(req.request_id),
        text(req.national_id),
        text(req.full_name),
        req.birth_date.format("%Y-%m-%d"),
    )
}

/// Decodes an answer of the registry (the HTTP body of a 200, or of a 4xx/5xx carrying a
/// SOAP fault). See the [module documentation](self) for what is accepted.
pub fn decode_reply(body: &[u8]) -> Result<Reply, XmlError> {
    if body.len() > MAX_REPLY_BYTES {
        return Err(XmlError::TooLarge { bytes: body.len() });
    }
    let text = std::str::from_utf8(body)
        .map_err(|err| XmlError::Malformed(format!("not UTF-8: {err}")))?;
    screen(text)?;
    parse(text)
}

/// `value` escaped as XML text, with characters XML cannot carry replaced by U+FFFD.
fn text(value: &str) -> Cow<'_, str> {
    if value.chars().all(is_xml_char) {
        escape(value)
    } else {
        let cleaned: String = value
            .chars()
            .map(|c| {
                if is_xml_char(c) {
                    c
                } else {
                    char::REPLACEMENT_CHARACTER
                }
            })
            .collect();
        Cow::Owned(escape(cleaned).into_owned())
    }
}

/// Whether `c` matches XML 1.0's `Char` production.
fn is_xml_char(c: char) -> bool {
    matches!(c,
        '\t' | '\n' | '\r'
        | '\u{20}'..='\u{D7FF}'
        | '\u{E000}'..='\u{FFFD}'
        | '\u{10000}'..='\u{10FFFF}')
}

/// Whether `s` is XML whitespace only (or empty).
fn is_blank(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
}

/// `s` without surrounding XML whitespace.
fn trim(s: &str) -> &str {
    s.trim_matches([' ', '\t', '\n', '\r'])
}

/// `s` cut to [`QUOTE_CHARS`] characters, for quoting in an error.
fn quote(s: &str) -> String {
    cut(s, QUOTE_CHARS)
}

/// `s` cut to `max` characters.
fn cut(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_owned(),
    }
}

/// Pass one: the whole document is read once, so hostile or ill-formed content anywhere is
/// reported as such.
fn screen(text: &str) -> Result<(), XmlError> {
    let mut lexer = Lexer::new(text);
    while !matches!(lexer.next()?, Item::Eof) {}
    Ok(())
}

/// Pass two: the structure.
fn parse(text: &str) -> Result<Reply, XmlError> {
    let mut lexer = Lexer::new(text);
    let root = loop {
        match lexer.next()? {
            Item::Open(element) => break element,
            Item::Text(t) if is_blank(&t) => {}
            Item::Text(_) => return Err(unexpected("text before the root element")),
            Item::CData(_) => return Err(unexpected("CDATA before the root element")),
            Item::Close | Item::Eof => return Err(malformed("no root element")),
        }
    };
    root.expect("Envelope", Ns::Soap)?;
    let body = child(&mut lexer, &root)?.ok_or(XmlError::Missing("Body"))?;
    body.expect("Body", Ns::Soap)?;
    let reply = match child(&mut lexer, &body)? {
        None => return Err(XmlError::Missing("VerifyPersonResponse")),
        Some(e) if e.local == "VerifyPersonResponse" => {
            e.require(Ns::Registry)?;
            response(&mut lexer, &e)?
        }
        Some(e) if e.local == "Fault" => {
            e.require(Ns::Soap)?;
            fault(&mut lexer, &e)?
        }
        Some(e) => return Err(e.unexpected_in(&body)),
    };
    no_more_children(&mut lexer, &body)?;
    no_more_children(&mut lexer, &root)?;
    loop {
        match lexer.next()? {
            Item::Eof => return Ok(reply),
            Item::Text(t) if is_blank(&t) => {}
            _ => return Err(unexpected("content after the root element")),
        }
    }
}

/// The children of a `VerifyPersonResponse`, after its start.
fn response(lexer: &mut Lexer<'_>, parent: &Element) -> Result<Reply, XmlError> {
    let request_id = leaf(lexer, parent, "RequestId", Ns::Registry, &["Result"])?;
    let result = leaf(lexer, parent, "Result", Ns::Registry, &[])?;
    no_more_children(lexer, parent)?;
    let verdict = match trim(&result) {
        "MATCH" => Verdict::Match,
        "DATA_MISMATCH" => Verdict::DataMismatch,
        "DECEASED" => Verdict::Deceased,
        "NOT_FOUND" => Verdict::NotFound,
        other => return Err(XmlError::UnknownResult(quote(other))),
    };
    Ok(Reply::Verdict {
        request_id: trim(&request_id).to_owned(),
        verdict,
    })
}

/// The children of a SOAP `Fault`, after its start.
fn fault(lexer: &mut Lexer<'_>, parent: &Element) -> Result<Reply, XmlError> {
    let code = leaf(
        lexer,
        parent,
        "faultcode",
        Ns::Unqualified,
        &["faultstring"],
    )?;
    // Right after `</faultcode>`: its prefix bindings are still in scope.
    let code = lexer.fault_code(trim(&code));
    let message = leaf(lexer, parent, "faultstring", Ns::Unqualified, &[])?;
    no_more_children(lexer, parent)?;
    Ok(Reply::Fault {
        code,
        message: trim(&message).to_owned(),
    })
}

/// The next child element of `parent`, or `None` at its end; blank text is skipped.
fn child(lexer: &mut Lexer<'_>, parent: &Element) -> Result<Option<Element>, XmlError> {
    loop {
        match lexer.next()? {
            Item::Open(element) => return Ok(Some(element)),
            Item::Close => return Ok(None),
            Item::Text(t) if is_blank(&t) => {}
            Item::Text(_) => return Err(unexpected(format!("text in `{}`", parent.name()))),
            Item::CData(_) => return Err(unexpected(format!("CDATA in `{}`", parent.name()))),
            Item::Eof => return Err(malformed(format!("ends inside `{}`", parent.name()))),
        }
    }
}

/// Reads to the end of `parent`, which must have no further child.
fn no_more_children(lexer: &mut Lexer<'_>, parent: &Element) -> Result<(), XmlError> {
    match child(lexer, parent)? {
        None => Ok(()),
        Some(e) => Err(e.unexpected_in(parent)),
    }
}

/// The text of the next child of `parent`, which must be `local` in `ns`. `later` are the
/// siblings that may follow it: meeting one of them first means `local` is missing.
fn leaf(
    lexer: &mut Lexer<'_>,
    parent: &Element,
    local: &'static str,
    ns: Ns,
    later: &[&str],
) -> Result<String, XmlError> {
    let element = child(lexer, parent)?.ok_or(XmlError::Missing(local))?;
    if element.local != local {
        return Err(if later.contains(&element.local.as_str()) {
            XmlError::Missing(local)
        } else {
            element.unexpected_in(parent)
        });
    }
    element.require(ns)?;
    let mut value = String::new();
    loop {
        match lexer.next()? {
            Item::Text(t) | Item::CData(t) => value.push_str(&t),
            Item::Close => return Ok(value),
            Item::Open(e) => return Err(e.unexpected_in(&element)),
            Item::Eof => return Err(malformed(format!("ends inside `{}`", element.name()))),
        }
    }
}

fn unexpected(what: impl Into<String>) -> XmlError {
    XmlError::Unexpected(what.into())
}

fn malformed(what: impl Display) -> XmlError {
    XmlError::Malformed(what.to_string())
}

/// The namespace an element name resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ns {
    /// No namespace.
    Unqualified,
    /// [`SOAP_ENVELOPE_NS`].
    Soap,
    /// [`REGISTRY_NS`].
    Registry,
    /// Any other (cut to 64 characters).
    Other(String),
}

impl Ns {
    fn of(namespace: Namespace<'_>) -> Ns {
        match namespace.into_inner() {
            ns if ns == SOAP_ENVELOPE_NS.as_bytes() => Ns::Soap,
            ns if ns == REGISTRY_NS.as_bytes() => Ns::Registry,
            ns => Ns::Other(quote(&String::from_utf8_lossy(ns))),
        }
    }

    fn uri(&self) -> Option<String> {
        match self {
            Ns::Unqualified => None,
            Ns::Soap => Some(SOAP_ENVELOPE_NS.to_owned()),
            Ns::Registry => Some(REGISTRY_NS.to_owned()),
            Ns::Other(uri) => Some(uri.clone()),
        }
    }
}

/// An element start, its name resolved.
#[derive(Debug)]
struct Element {
    ns: Ns,
    local: String,
    /// The name as written.
    qname: String,
}

impl Element {
    /// The name as written, cut for quoting.
    fn name(&self) -> String {
        quote(&self.qname)
    }

    /// Checks that this is `local` in `ns`.
    fn expect(&self, local: &str, ns: Ns) -> Result<(), XmlError> {
        if self.local != local {
            return Err(unexpected(format!("element `{}`", self.name())));
        }
        self.require(ns)
    }

    /// Checks that this element is in `ns`.
    fn require(&self, ns: Ns) -> Result<(), XmlError> {
        if self.ns == ns {
            Ok(())
        } else {
            Err(XmlError::Namespace {
                element: self.name(),
                found: self.ns.uri(),
            })
        }
    }

    fn unexpected_in(&self, parent: &Element) -> XmlError {
        unexpected(format!("element `{}` in `{}`", self.name(), parent.name()))
    }
}

/// A piece of the document, hostile and ill-formed content already refused.
#[derive(Debug)]
enum Item<'i> {
    Open(Element),
    Close,
    /// Character data: a run of text, or one resolved reference.
    Text(Cow<'i, str>),
    CData(Cow<'i, str>),
    Eof,
}

/// Turns quick-xml's events into [`Item`]s, refusing what no answer may contain: DOCTYPE,
/// unknown entities, processing instructions, a misplaced or non-UTF-8 XML declaration,
/// characters XML does not allow, nesting deeper than [`MAX_DEPTH`], more than
/// [`MAX_ATTRIBUTES`] attributes on an element, undeclared prefixes, and anything quick-xml
/// finds ill-formed. Comments are skipped.
struct Lexer<'i> {
    reader: NsReader<&'i [u8]>,
    /// Elements open.
    depth: usize,
    /// Whether an event has been read (an XML declaration must come first).
    started: bool,
    /// An empty element (`<a/>`) was returned as an `Open`; its `Close` is due.
    close_due: bool,
}

impl<'i> Lexer<'i> {
    fn new(text: &'i str) -> Self {
        let mut reader = NsReader::from_str(text);
        let config = reader.config_mut();
        config.check_comments = true;
        config.check_end_names = true;
        config.allow_dangling_amp = false;
        config.allow_unmatched_ends = false;
        Lexer {
            reader,
            depth: 0,
            started: false,
            close_due: false,
        }
    }

    fn next(&mut self) -> Result<Item<'i>, XmlError> {
        if std::mem::take(&mut self.close_due) {
            return Ok(Item::Close);
        }
        loop {
            let first = !std::mem::replace(&mut self.started, true);
            let (ns, event) = match self.reader.read_resolved_event() {
                Ok((ns, event)) => (element_ns(ns), event),
                Err(err) => return Err(self.failed(err)),
            };
            match event {
                Event::Start(start) => {
                    let element = self.open(ns, &start)?;
                    self.depth += 1;
                    return Ok(Item::Open(element));
                }
                Event::Empty(start) => {
                    let element = self.open(ns, &start)?;
                    self.close_due = true;
                    return Ok(Item::Open(element));
                }
                Event::End(_) => {
                    self.depth = self.depth.saturating_sub(1);
                    return Ok(Item::Close);
                }
                Event::Text(t) => {
                    let t = t.xml10_content().map_err(malformed)?;
                    check_chars(&t)?;
                    if !t.is_empty() {
                        return Ok(Item::Text(t));
                    }
                }
                Event::CData(c) => {
                    let c = c.xml10_content().map_err(malformed)?;
                    check_chars(&c)?;
                    return Ok(Item::CData(c));
                }
                Event::GeneralRef(r) => {
                    let name = r.decode().map_err(malformed)?;
                    if r.is_char_ref() {
                        return match r.resolve_char_ref() {
                            Ok(Some(c)) if is_xml_char(c) => Ok(Item::Text(c.to_string().into())),
                            _ => Err(malformed(format!(
                                "invalid character reference `&{};`",
                                quote(&name)
                            ))),
                        };
                    }
                    return match resolve_xml_entity(&name) {
                        Some(value) => Ok(Item::Text(value.into())),
                        None => Err(XmlError::Entity(quote(&name))),
                    };
                }
                Event::Comment(c) => check_chars(&c.decode().map_err(malformed)?)?,
                Event::Decl(decl) => {
                    if !first {
                        return Err(unexpected("XML declaration after the start"));
                    }
                    let version = decl.version().map_err(malformed)?;
                    if &*version != b"1.0" {
                        let version = String::from_utf8_lossy(&version);
                        return Err(unexpected(format!("XML version `{}`", quote(&version))));
                    }
                    if let Some(encoding) = decl.encoding() {
                        let encoding = encoding.map_err(malformed)?;
                        if !encoding.eq_ignore_ascii_case(b"UTF-8") {
                            let encoding = String::from_utf8_lossy(&encoding);
                            return Err(unexpected(format!("encoding `{}`", quote(&encoding))));
                        }
                    }
                }
                Event::PI(pi) => {
                    let target = String::from_utf8_lossy(pi.target());
                    return Err(unexpected(format!(
                        "processing instruction `<?{}`",
                        quote(&target)
                    )));
                }
                Event::DocType(_) => return Err(XmlError::Doctype),
                Event::Eof if self.depth > 0 => return Err(malformed("cut short")),
                Event::Eof => return Ok(Item::Eof),
            }
        }
    }

    /// Checks an element start (depth, name, attributes) and resolves its name.
    fn open(&self, ns: Result<Ns, Vec<u8>>, start: &BytesStart<'_>) -> Result<Element, XmlError> {
        if self.depth + 1 > MAX_DEPTH {
            return Err(XmlError::TooDeep);
        }
        let qname = std::str::from_utf8(start.name().into_inner())
            .map_err(malformed)?
            .to_owned();
        let ns = ns.map_err(|prefix| {
            malformed(format!(
                "undeclared prefix `{}`",
                quote(&String::from_utf8_lossy(&prefix))
            ))
        })?;
        for (n, attribute) in start.attributes().enumerate() {
            if n == MAX_ATTRIBUTES {
                return Err(unexpected(format!(
                    "attribute beyond {MAX_ATTRIBUTES} on `{}`",
                    quote(&qname)
                )));
            }
            let attribute = attribute.map_err(malformed)?;
            let value = std::str::from_utf8(&attribute.value).map_err(malformed)?;
            if value.contains('<') {
                return Err(malformed("`<` in an attribute value"));
            }
            let value = unescape_with(value, resolve_xml_entity).map_err(|err| match err {
                EscapeError::UnrecognizedEntity(_, name) => XmlError::Entity(quote(&name)),
                other => malformed(other),
            })?;
            check_chars(&value)?;
        }
        let local = std::str::from_utf8(start.local_name().into_inner())
            .map_err(malformed)?
            .to_owned();
        Ok(Element { ns, local, qname })
    }

    /// A `faultcode` value as a [`FaultCode`], resolving its prefix in the current scope.
    /// An unprefixed code is taken as SOAP's; a prefixed one must be bound to SOAP's
    /// namespace. SOAP 1.1's dotted specialisations (`Client.Authentication`) count as
    /// their base code.
    fn fault_code(&self, value: &str) -> FaultCode {
        let (soap, local) = match value.split_once(':') {
            None => (true, value),
            Some((_, local)) => {
                let (ns, _) = self
                    .reader
                    .resolver()
                    .resolve(QName(value.as_bytes()), false);
                (
                    ns == ResolveResult::Bound(Namespace(SOAP_ENVELOPE_NS.as_bytes())),
                    local,
                )
            }
        };
        let base = local.split_once('.').map_or(local, |(base, _)| base);
        match (soap, base) {
            (true, "Client") => FaultCode::Client,
            (true, "Server") => FaultCode::Server,
            _ => FaultCode::Other(quote(value)),
        }
    }

    /// A quick-xml error, with where it happened.
    fn failed(&self, err: quick_xml::Error) -> XmlError {
        let what = cut(&err.to_string(), 4 * QUOTE_CHARS);
        malformed(format!("{what} (at byte {})", self.reader.error_position()))
    }
}

/// The namespace of an element name, or the undeclared prefix it uses.
fn element_ns(resolved: ResolveResult<'_>) -> Result<Ns, Vec<u8>> {
    match resolved {
        ResolveResult::Unbound => Ok(Ns::Unqualified),
        ResolveResult::Bound(namespace) => Ok(Ns::of(namespace)),
        ResolveResult::Unknown(prefix) => Err(prefix),
    }
}

/// Refuses characters XML does not allow (a raw control character, for one).
fn check_chars(s: &str) -> Result<(), XmlError> {
    match s.chars().find(|c| !is_xml_char(*c)) {
        None => Ok(()),
        Some(c) => Err(malformed(format!("character U+{:04X}", u32::from(c)))),
    }
}

#[cfg(test)]
#[path = "xml_tests.rs"]
mod tests;
