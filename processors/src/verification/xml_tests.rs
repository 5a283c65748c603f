use std::collections::BTreeMap;
use std::path::Path;

use proptest::prelude::*;
use proptest::sample::Index;
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;

use super::*;

const ID: &str = "0190c1e5-7d3a-7b2e-9f00-3c1d2e4f5a6b";

const VERDICTS: [(Verdict, &str); 4] = [
    (Verdict::Match, "MATCH"),
    (Verdict::DataMismatch, "DATA_MISMATCH"),
    (Verdict::Deceased, "DECEASED"),
    (Verdict::NotFound, "NOT_FOUND"),
];

fn decode(xml: &str) -> Result<Reply, XmlError> {
    decode_reply(xml.as_bytes())
}

fn verdict(request_id: &str, verdict: Verdict) -> Result<Reply, XmlError> {
    Ok(Reply::Verdict {
        request_id: request_id.to_owned(),
        verdict,
    })
}

/// The wire spec's answer, `body` inside `soap:Body` (prefixes `soap` and `reg` declared on
/// the envelope).
fn envelope(body: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<soap:Envelope xmlns:soap="{SOAP_ENVELOPE_NS}" xmlns:reg="{REGISTRY_NS}">
  <soap:Body>
    {body}
  </soap:Body>
</soap:Envelope>
"#
    )
}

/// The wire spec's answer with `request_id` and `result`.
fn answer_with(request_id: &str, result: &str) -> String {
    envelope(&format!(
        "<reg:VerifyPersonResponse>
      <reg:RequestId>{request_id}</reg:RequestId>
      <reg:Result>{result}</reg:Result>
    </reg:VerifyPersonResponse>"
    ))
}

/// The wire spec's answer with `result`.
fn answer(result: &str) -> String {
    answer_with(ID, result)
}

/// The same answer with prefixes `s` and `r`, declared where they are first used.
fn answer_other_prefixes(result: &str) -> String {
    format!(
        r#"<?xml version="1.0"?>
<s:Envelope xmlns:s="{SOAP_ENVELOPE_NS}">
  <s:Body>
    <r:VerifyPersonResponse xmlns:r="{REGISTRY_NS}">
      <r:RequestId>{ID}</r:RequestId>
      <r:Result>{result}</r:Result>
    </r:VerifyPersonResponse>
  </s:Body>
</s:Envelope>"#
    )
}

/// The same answer with default namespaces only, and no XML declaration.
fn answer_default_namespaces(result: &str) -> String {
    format!(
        r#"<Envelope xmlns="{SOAP_ENVELOPE_NS}"><Body>
<VerifyPersonResponse xmlns="{REGISTRY_NS}"><RequestId>{ID}</RequestId><Result>{result}</Result></VerifyPersonResponse>
</Body></Envelope>"#
    )
}

/// The wire spec's fault with `faultcode` text `code`.
fn fault(code: &str, message: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<soap:Envelope xmlns:soap="{SOAP_ENVELOPE_NS}">
  <soap:Body>
    <soap:Fault>
      <faultcode>{code}</faultcode>
      <faultstring>{message}</faultstring>
    </soap:Fault>
  </soap:Body>
</soap:Envelope>
"#
    )
}

fn is_malformed(result: &Result<Reply, XmlError>) -> bool {
    matches!(result, Err(XmlError::Malformed(_)))
}

fn is_unexpected(result: &Result<Reply, XmlError>) -> bool {
    matches!(result, Err(XmlError::Unexpected(_)))
}

// Requests

/// Reads a request back with quick-xml alone: the text of each child of
/// `VerifyPersonRequest` by local name, after checking every element's namespace. Fails on
/// anything ill-formed, unknown entities and characters XML does not allow.
fn read_request(xml: &str) -> Result<BTreeMap<String, String>, String> {
    let mut reader = quick_xml::NsReader::from_str(xml);
    reader.config_mut().check_comments = true;
    let expected = [
        (SOAP_ENVELOPE_NS, "Envelope"),
        (SOAP_ENVELOPE_NS, "Body"),
        (REGISTRY_NS, "VerifyPersonRequest"),
    ];
    let mut depth = 0;
    let mut current = None;
    let mut text = String::new();
    let mut fields = BTreeMap::new();
    if let Some(c) = xml.chars().find(|c| !is_xml_char(*c)) {
        return Err(format!("character U+{:04X}", u32::from(c)));
    }
    loop {
        let (ns, event) = reader.read_resolved_event().map_err(|e| e.to_string())?;
        let ns = match ns {
            ResolveResult::Bound(ns) => String::from_utf8_lossy(ns.into_inner()).into_owned(),
            _ => String::new(),
        };
        match event {
            Event::Decl(_) if depth == 0 && fields.is_empty() => {}
            Event::Start(e) => {
                let local = String::from_utf8_lossy(e.local_name().into_inner()).into_owned();
                match expected.get(depth) {
                    Some((want_ns, want)) if ns == *want_ns && local == *want => {}
                    Some(_) => return Err(format!("unexpected element {{{ns}}}{local}")),
                    None if depth == 3 && ns == REGISTRY_NS => current = Some(local),
                    None => return Err(format!("unexpected element {{{ns}}}{local}")),
                }
                depth += 1;
                text.clear();
            }
            Event::Text(t) => text.push_str(&t.xml10_content().map_err(|e| e.to_string())?),
            Event::GeneralRef(r) => match r.resolve_char_ref().map_err(|e| e.to_string())? {
                Some(c) => text.push(c),
                None => {
                    let name = r.decode().map_err(|e| e.to_string())?;
                    let value = quick_xml::escape::resolve_xml_entity(&name)
                        .ok_or_else(|| format!("entity &{name};"))?;
                    text.push_str(value);
                }
            },
            Event::End(_) => {
                if let Some(local) = current.take() {
                    let value = std::mem::take(&mut text);
                    if fields.insert(local.clone(), value).is_some() {
                        return Err(format!("{local} twice"));
                    }
                }
                depth -= 1;
            }
            Event::Eof if depth == 0 => return Ok(fields),
            other => return Err(format!("unexpected event {other:?}")),
        }
    }
}

fn request_fields(req: &VerifyRequest<'_>) -> BTreeMap<String, String> {
    [
        ("RequestId", req.request_id.to_owned()),
        ("NationalId", req.national_id.to_owned()),
        ("FullName", req.full_name.to_owned()),
        ("BirthDate", req.birth_date.format("%Y-%m-%d").to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

#[test]
fn encoded_request_round_trips_markup_quotes_and_polish_letters() {
    let birth_date = NaiveDate::from_ymd_opt(1944, 5, 14).unwrap();
    for full_name in [
        "Jan Kowalski",
        "Zażółć <gęślą> jaźń & \"Łódź\" 'Śląsk'",
        "</reg:FullName><reg:Injected>x</reg:Injected>",
        "&amp; &lt; ]]> <![CDATA[x]]> <!-- c --> <?pi?>",
        "  spaced  ",
        "",
    ] {
        let req = VerifyRequest {
            request_id: "id <&> \"'\"",
            national_id: "44051401359",
            full_name,
            birth_date,
        };
        let xml = encode_request(&req);
        assert_eq!(read_request(&xml), Ok(request_fields(&req)), "{xml}");
    }
}

#[test]
fn encoded_request_has_the_spec_shape() {
    let req = VerifyRequest {
        request_id: ID,
        national_id: "44051401359",
        full_name: "Jan Kowalski",
        birth_date: NaiveDate::from_ymd_opt(1944, 5, 14).unwrap(),
    };
    let xml = encode_request(&req);
    assert!(xml.starts_with(r#"<?xml version="1.0" encoding="UTF-8"?>"#));
    assert!(xml.contains(&format!(
        r#"<soap:Envelope xmlns:soap="{SOAP_ENVELOPE_NS}" xmlns:reg="{REGISTRY_NS}">"#
    )));
    assert!(xml.contains("<reg:BirthDate>1944-05-14</reg:BirthDate>"));
}

#[test]
fn encoded_request_replaces_characters_xml_cannot_carry() {
    let req = VerifyRequest {
        request_id: "a\u{0}b",
        national_id: "\u{1b}",
        full_name: "x\u{FFFF}y",
        birth_date: NaiveDate::from_ymd_opt(2000, 1, 1).unwrap(),
    };
    let fields = read_request(&encode_request(&req)).unwrap();
    assert_eq!(fields["RequestId"], "a\u{FFFD}b");
    assert_eq!(fields["NationalId"], "\u{FFFD}");
    assert_eq!(fields["FullName"], "x\u{FFFD}y");
}

// Answers of the wire spec

#[test]
fn spec_answers_decode_to_their_verdicts() {
    for (expected, wire) in VERDICTS {
        assert_eq!(decode(&answer(wire)), verdict(ID, expected), "{wire}");
    }
}

#[test]
fn answers_decode_with_other_prefixes() {
    for (expected, wire) in VERDICTS {
        assert_eq!(decode(&answer_other_prefixes(wire)), verdict(ID, expected));
    }
}

#[test]
fn answers_decode_with_default_namespaces() {
    for (expected, wire) in VERDICTS {
        assert_eq!(
            decode(&answer_default_namespaces(wire)),
            verdict(ID, expected)
        );
    }
}

#[test]
fn answer_text_may_use_references_cdata_comments_and_whitespace() {
    for result in [
        "&#77;ATCH",
        "&#x4D;ATCH",
        "<![CDATA[MATCH]]>",
        "MA<!-- split -->TCH",
        "\n        MATCH\n      ",
    ] {
        assert_eq!(
            decode(&answer(result)),
            verdict(ID, Verdict::Match),
            "{result}"
        );
    }
    assert_eq!(
        decode(&answer_with("a&amp;b&lt;c&gt;&quot;&apos;", "MATCH")),
        verdict("a&b<c>\"'", Verdict::Match)
    );
}

#[test]
fn answer_may_have_a_bom_attributes_and_surrounding_comments() {
    let xml = format!(
        "\u{FEFF}{}<!-- after -->\n",
        answer("MATCH")
            .replace("?>\n", "?>\n<!-- before -->\n")
            .replace(
                "<soap:Envelope ",
                "<soap:Envelope soap:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\" "
            )
    );
    assert_eq!(decode(&xml), verdict(ID, Verdict::Match));
}

#[test]
fn answer_with_a_different_request_id_decodes_for_the_caller_to_compare() {
    assert_eq!(
        decode(&answer_with("someone-else", "DECEASED")),
        verdict("someone-else", Verdict::Deceased)
    );
}

#[test]
fn spec_fault_decodes_as_a_server_fault() {
    assert_eq!(
        decode(&fault("soap:Server", "Registry temporarily unavailable")),
        Ok(Reply::Fault {
            code: FaultCode::Server,
            message: "Registry temporarily unavailable".to_owned()
        })
    );
}

#[test]
fn fault_codes_resolve_their_prefix() {
    let code = |faultcode: &str| match decode(&fault(faultcode, "x &amp; y")) {
        Ok(Reply::Fault { code, message }) => {
            assert_eq!(message, "x & y");
            code
        }
        other => panic!("{faultcode}: {other:?}"),
    };
    assert_eq!(code("soap:Client"), FaultCode::Client);
    assert_eq!(code(" soap:Server "), FaultCode::Server);
    assert_eq!(code("Client"), FaultCode::Client);
    assert_eq!(code("Server"), FaultCode::Server);
    assert_eq!(code("soap:Client.Authentication"), FaultCode::Client);
    // Any prefix bound to the SOAP namespace, also one declared on `faultcode` itself.
    let own_prefix = fault("env:Client", "x &amp; y").replace(
        "<faultcode>",
        &format!(r#"<faultcode xmlns:env="{SOAP_ENVELOPE_NS}">"#),
    );
    assert_eq!(
        decode(&own_prefix),
        Ok(Reply::Fault {
            code: FaultCode::Client,
            message: "x & y".to_owned()
        })
    );
    // A prefix bound elsewhere, or to nothing, is not SOAP's.
    assert_eq!(
        code("reg:Server"),
        FaultCode::Other("reg:Server".to_owned())
    );
    assert_eq!(
        code("nope:Server"),
        FaultCode::Other("nope:Server".to_owned())
    );
    assert_eq!(
        code("soap:Receiver"),
        FaultCode::Other("soap:Receiver".to_owned())
    );
}

#[test]
fn fault_with_other_prefix_decodes() {
    let xml = format!(
        r#"<e:Envelope xmlns:e="{SOAP_ENVELOPE_NS}"><e:Body><e:Fault><faultcode>e:Client</faultcode><faultstring>bad request</faultstring></e:Fault></e:Body></e:Envelope>"#
    );
    assert_eq!(
        decode(&xml),
        Ok(Reply::Fault {
            code: FaultCode::Client,
            message: "bad request".to_owned()
        })
    );
}

#[test]
fn answer_at_the_size_limit_is_parsed() {
    let xml = answer("MATCH");
    let padded = format!("{xml}{}", " ".repeat(MAX_REPLY_BYTES - xml.len()));
    assert_eq!(padded.len(), MAX_REPLY_BYTES);
    assert_eq!(decode(&padded), verdict(ID, Verdict::Match));
    let over = format!("{padded} ");
    assert_eq!(
        decode(&over),
        Err(XmlError::TooLarge {
            bytes: MAX_REPLY_BYTES + 1
        })
    );
}

// Hostile answers

#[test]
fn hostile_truncated_answer_is_malformed() {
    let xml = answer("MATCH");
    let end = xml.find("</soap:Envelope>").unwrap() + "</soap:Envelope>".len();
    for cut in 0..end {
        let result = decode(&xml[..cut]);
        assert!(is_malformed(&result), "cut at {cut}: {result:?}");
    }
}

#[test]
fn hostile_wrong_registry_namespace_is_refused() {
    let xml = answer("MATCH").replace(REGISTRY_NS, "urn:gov:pl:registry:v2");
    assert_eq!(
        decode(&xml),
        Err(XmlError::Namespace {
            element: "reg:VerifyPersonResponse".to_owned(),
            found: Some("urn:gov:pl:registry:v2".to_owned()),
        })
    );
}

#[test]
fn hostile_wrong_soap_namespace_is_refused() {
    let soap12 = "http://www.w3.org/2003/05/soap-envelope";
    let xml = answer("MATCH").replace(SOAP_ENVELOPE_NS, soap12);
    assert_eq!(
        decode(&xml),
        Err(XmlError::Namespace {
            element: "soap:Envelope".to_owned(),
            found: Some(soap12.to_owned()),
        })
    );
}

#[test]
fn hostile_unqualified_or_misplaced_names_are_refused() {
    // The response element without a namespace.
    let xml = answer("MATCH").replace("reg:VerifyPersonResponse", "VerifyPersonResponse");
    assert_eq!(
        decode(&xml),
        Err(XmlError::Namespace {
            element: "VerifyPersonResponse".to_owned(),
            found: None,
        })
    );
    // `Result` in the SOAP namespace.
    let xml = answer("MATCH").replace("reg:Result", "soap:Result");
    assert!(
        matches!(decode(&xml), Err(XmlError::Namespace { element, .. }) if element == "soap:Result")
    );
    // A qualified `faultcode` (SOAP 1.1 has it unqualified).
    let xml = fault("soap:Server", "x").replace("faultcode>", "soap:faultcode>");
    assert_eq!(
        decode(&xml),
        Err(XmlError::Namespace {
            element: "soap:faultcode".to_owned(),
            found: Some(SOAP_ENVELOPE_NS.to_owned()),
        })
    );
    // `faultcode` under a default namespace it does not reset.
    let xml = format!(
        r#"<Envelope xmlns="{SOAP_ENVELOPE_NS}"><Body><Fault><faultcode>Server</faultcode><faultstring>x</faultstring></Fault></Body></Envelope>"#
    );
    assert!(matches!(decode(&xml), Err(XmlError::Namespace { .. })));
}

#[test]
fn hostile_undeclared_prefix_is_malformed() {
    let xml = answer("MATCH").replace(&format!(r#" xmlns:reg="{REGISTRY_NS}""#), "");
    assert!(is_malformed(&decode(&xml)));
}

const BILLION_LAUGHS: &str = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
"#;

#[test]
fn hostile_billion_laughs_is_refused_for_its_doctype() {
    let body = answer("&lol9;");
    let xml = format!(
        "{BILLION_LAUGHS}{}",
        &body[body.find("<soap:Envelope").unwrap()..]
    );
    assert_eq!(decode(&xml), Err(XmlError::Doctype));
}

#[test]
fn hostile_external_entity_is_refused_for_its_doctype() {
    let body = answer_with("&xxe;", "MATCH");
    let xml = format!(
        "<?xml version=\"1.0\"?>\n<!DOCTYPE soap:Envelope [ <!ENTITY xxe SYSTEM \"file:///etc/passwd\"> ]>\n{}",
        &body[body.find("<soap:Envelope").unwrap()..]
    );
    assert_eq!(decode(&xml), Err(XmlError::Doctype));
}

#[test]
fn hostile_doctype_anywhere_is_refused() {
    let xml = answer("MATCH").replace("<soap:Body>", "<!DOCTYPE x><soap:Body>");
    assert_eq!(decode(&xml), Err(XmlError::Doctype));
    let xml = format!("{}<!DOCTYPE x>", answer("MATCH"));
    assert_eq!(decode(&xml), Err(XmlError::Doctype));
}

#[test]
fn hostile_huge_body_is_refused_unparsed() {
    let mut body = answer("MATCH").into_bytes();
    body.resize(8 * 1024 * 1024, b' ');
    assert_eq!(
        decode_reply(&body),
        Err(XmlError::TooLarge {
            bytes: 8 * 1024 * 1024
        })
    );
}

#[test]
fn hostile_unknown_result_is_refused() {
    assert_eq!(
        decode(&answer("MAYBE")),
        Err(XmlError::UnknownResult("MAYBE".to_owned()))
    );
    assert_eq!(
        decode(&answer("match")),
        Err(XmlError::UnknownResult("match".to_owned()))
    );
    assert_eq!(
        decode(&answer("")),
        Err(XmlError::UnknownResult(String::new()))
    );
    let long = "X".repeat(1000);
    assert!(
        matches!(decode(&answer(&long)), Err(XmlError::UnknownResult(v)) if v.chars().count() == 65)
    );
}

#[test]
fn hostile_undeclared_entity_is_refused() {
    assert_eq!(
        decode(&answer("&foo;")),
        Err(XmlError::Entity("foo".to_owned()))
    );
    assert_eq!(
        decode(&answer("&lol9;")),
        Err(XmlError::Entity("lol9".to_owned()))
    );
    // In an attribute value too.
    let xml = answer("MATCH").replace("<soap:Body>", r#"<soap:Body a="&xxe;">"#);
    assert_eq!(decode(&xml), Err(XmlError::Entity("xxe".to_owned())));
}

#[test]
fn hostile_bad_references_and_characters_are_malformed() {
    for result in [
        "&#0;",
        "&#1;",
        "&#xFFFF;",
        "&#xD800;",
        "&#x110000;",
        "&#xZZ;",
        "& MATCH",
        "\u{1}MATCH",
    ] {
        let outcome = decode(&answer(result));
        assert!(is_malformed(&outcome), "{result}: {outcome:?}");
    }
}

#[test]
fn hostile_processing_instruction_is_unexpected() {
    let xml = answer("MATCH").replace("<soap:Body>", "<?evil run?><soap:Body>");
    assert!(is_unexpected(&decode(&xml)));
    let xml = answer("<?x?>MATCH");
    assert!(is_unexpected(&decode(&xml)));
    let xml = format!("{}<?x?>", answer("MATCH"));
    assert!(is_unexpected(&decode(&xml)));
}

#[test]
fn hostile_deep_nesting_is_too_deep() {
    let deep = format!("{}MATCH{}", "<a>".repeat(1000), "</a>".repeat(1000));
    assert_eq!(decode(&answer(&deep)), Err(XmlError::TooDeep));
    // `Result` is at depth 4: five more levels make 9.
    let nine = format!("{}MATCH{}", "<a>".repeat(5), "</a>".repeat(5));
    assert_eq!(decode(&answer(&nine)), Err(XmlError::TooDeep));
    let nine_empty = format!("{}<a/>{}", "<a>".repeat(4), "</a>".repeat(4));
    assert_eq!(decode(&answer(&nine_empty)), Err(XmlError::TooDeep));
    // Eight levels are within the limit, but not what an answer holds.
    let eight = format!("{}MATCH{}", "<a>".repeat(4), "</a>".repeat(4));
    assert!(is_unexpected(&decode(&answer(&eight))));
}

#[test]
fn hostile_attribute_flood_is_unexpected() {
    let attributes = |n: usize| (0..n).map(|i| format!(" a{i}=\"\"")).collect::<String>();
    let at_limit = answer("MATCH").replace(
        "<soap:Body>",
        &format!("<soap:Body{}>", attributes(MAX_ATTRIBUTES)),
    );
    assert_eq!(decode(&at_limit), verdict(ID, Verdict::Match));
    // Namespace declarations count too: thousands of them would make every name costly.
    let flood = answer("MATCH").replace(
        "<soap:Body>",
        &format!(
            "<soap:Body{}>",
            (0..3000)
                .map(|i| format!(" xmlns:p{i}=\"u\""))
                .collect::<String>()
        ),
    );
    assert!(is_unexpected(&decode(&flood)));
}

#[test]
fn hostile_structure_is_unexpected() {
    let header = answer("MATCH").replace("<soap:Body>", "<soap:Header></soap:Header><soap:Body>");
    let duplicate = answer("MATCH</reg:Result><reg:Result>NOT_FOUND");
    let extra = answer("MATCH</reg:Result><reg:Extra>x</reg:Extra><reg:Result>MATCH");
    let element_in_text = answer("<reg:Result>MATCH</reg:Result>");
    let text_in_body = answer("MATCH").replace("<soap:Body>", "<soap:Body>oops");
    let cdata_in_body = answer("MATCH").replace("<soap:Body>", "<soap:Body><![CDATA[ ]]>");
    let two_replies = answer("MATCH").replace(
        "</soap:Body>",
        "<soap:Fault><faultcode>Server</faultcode><faultstring>x</faultstring></soap:Fault></soap:Body>",
    );
    let request_echo = answer("MATCH").replace("VerifyPersonResponse", "VerifyPersonRequest");
    let trailing_element = format!("{}<x/>", answer("MATCH"));
    let trailing_text = format!("{}MATCH", answer("MATCH"));
    let text_before_root = format!("hello{}", answer_default_namespaces("MATCH"));
    let late_declaration = format!("\n{}", answer("MATCH"));
    let latin2 = answer("MATCH").replace("UTF-8", "ISO-8859-2");
    let xml11 = answer("MATCH").replace("version=\"1.0\"", "version=\"1.1\"");
    let fault_extra =
        fault("soap:Server", "x").replace("</faultstring>", "</faultstring><detail>more</detail>");
    let wrong_root = answer("MATCH").replace("soap:Envelope", "soap:Body");
    for (name, xml) in [
        ("header", header),
        ("duplicate", duplicate),
        ("extra", extra),
        ("element_in_text", element_in_text),
        ("text_in_body", text_in_body),
        ("cdata_in_body", cdata_in_body),
        ("two_replies", two_replies),
        ("request_echo", request_echo),
        ("trailing_element", trailing_element),
        ("trailing_text", trailing_text),
        ("text_before_root", text_before_root),
        ("late_declaration", late_declaration),
        ("latin2", latin2),
        ("xml11", xml11),
        ("fault_extra", fault_extra),
        ("wrong_root", wrong_root),
    ] {
        let outcome = decode(&xml);
        assert!(is_unexpected(&outcome), "{name}: {outcome:?}");
    }
}

#[test]
fn hostile_missing_elements_are_named() {
    let no_result = answer("MATCH").replace("<reg:Result>MATCH</reg:Result>", "");
    assert_eq!(decode(&no_result), Err(XmlError::Missing("Result")));
    let no_id = answer("MATCH").replace(&format!("<reg:RequestId>{ID}</reg:RequestId>"), "");
    assert_eq!(decode(&no_id), Err(XmlError::Missing("RequestId")));
    let swapped = answer("MATCH")
        .replace(&format!("<reg:RequestId>{ID}</reg:RequestId>"), "")
        .replace(
            "</reg:Result>",
            &format!("</reg:Result><reg:RequestId>{ID}</reg:RequestId>"),
        );
    assert_eq!(decode(&swapped), Err(XmlError::Missing("RequestId")));
    let empty_body = envelope("");
    assert_eq!(
        decode(&empty_body),
        Err(XmlError::Missing("VerifyPersonResponse"))
    );
    let no_body = format!(r#"<soap:Envelope xmlns:soap="{SOAP_ENVELOPE_NS}"/>"#);
    assert_eq!(decode(&no_body), Err(XmlError::Missing("Body")));
    let no_message = fault("soap:Server", "x").replace("<faultstring>x</faultstring>", "");
    assert_eq!(decode(&no_message), Err(XmlError::Missing("faultstring")));
}

#[test]
fn hostile_ill_formed_documents_are_malformed() {
    let mismatched = answer("MATCH").replace("</reg:Result>", "</reg:Resul>");
    let bad_attribute = answer("MATCH").replace("<soap:Body>", "<soap:Body a=1>");
    let twice = answer("MATCH").replace("<soap:Body>", r#"<soap:Body a="1" a="2">"#);
    let lt_in_attribute = answer("MATCH").replace("<soap:Body>", r#"<soap:Body a="<">"#);
    let stray_end = format!("{}</x>", answer("MATCH"));
    let bad_comment = answer("MATCH").replace("<soap:Body>", "<soap:Body><!-- a -- b -->");
    for (name, xml) in [
        ("empty", String::new()),
        ("blank", " \n ".to_owned()),
        ("declaration only", r#"<?xml version="1.0"?>"#.to_owned()),
        ("mismatched", mismatched),
        ("bad_attribute", bad_attribute),
        ("twice", twice),
        ("lt_in_attribute", lt_in_attribute),
        ("stray_end", stray_end),
        ("bad_comment", bad_comment),
    ] {
        let outcome = decode(&xml);
        assert!(is_malformed(&outcome), "{name}: {outcome:?}");
    }
    assert!(is_malformed(&decode_reply(b"<a>\xff</a>")));
}

// The simulator's corpus

#[test]
fn registry_corpus_decodes_as_named() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/registry_corpus");
    let mut seen = Vec::new();
    let mut failures = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|ext| ext != "xml") {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let body = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| decode_reply(&body));
        let ok = match (name.as_str(), &outcome) {
            (_, Err(_)) => false,
            ("match.xml", Ok(Ok(Reply::Verdict { verdict, .. }))) => *verdict == Verdict::Match,
            ("fault.xml", Ok(Ok(Reply::Fault { .. }))) => true,
            ("wrong_request_id.xml", Ok(Ok(Reply::Verdict { .. }))) => true,
            ("match.xml" | "fault.xml" | "wrong_request_id.xml", _) => false,
            (_, Ok(result)) => result.is_err(),
        };
        if !ok {
            failures.push(format!("{name}: {outcome:?}"));
        }
        seen.push(name);
    }
    seen.sort();
    for expected in [
        "billion_laughs.xml",
        "external_entity.xml",
        "fault.xml",
        "match.xml",
        "truncated.xml",
        "unknown_result.xml",
        "wrong_namespace.xml",
        "wrong_request_id.xml",
    ] {
        assert!(
            seen.iter().any(|s| s == expected),
            "{expected} missing in {dir:?}"
        );
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

// Properties

/// Pieces of markup, to make random documents and insertions that reach past the tokenizer.
const FRAGMENTS: &[&str] = &[
    "<soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\">",
    "</soap:Envelope>",
    "<soap:Body>",
    "</soap:Body>",
    "<reg:VerifyPersonResponse xmlns:reg=\"urn:gov:pl:registry:v1\">",
    "</reg:VerifyPersonResponse>",
    "<reg:RequestId>",
    "</reg:RequestId>",
    "<reg:Result>",
    "</reg:Result>",
    "<reg:Result>DECEASED</reg:Result>",
    "<soap:Fault>",
    "</soap:Fault>",
    "<faultcode>soap:Server</faultcode>",
    "<faultstring>x</faultstring>",
    "NOT_FOUND",
    "MATCH",
    "xmlns:reg=\"urn:x\"",
    "xmlns=\"urn:gov:pl:registry:v1\"",
    "<!--",
    "-->",
    "<![CDATA[",
    "]]>",
    "<!DOCTYPE x [<!ENTITY e \"MATCH\">]>",
    "&e;",
    "&amp;",
    "&#77;",
    "<?xml version=\"1.0\"?>",
    "<?pi x?>",
    "<a>",
    "</a>",
    "/>",
    "<",
    ">",
    "\"",
    " ",
    "\n",
];

fn fragment() -> impl Strategy<Value = String> {
    prop::sample::select(FRAGMENTS).prop_map(str::to_owned)
}

#[derive(Debug, Clone)]
enum Mutation {
    Truncate(Index),
    Flip(Index, u8),
    Insert(Index, String),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), 1..=u8::MAX).prop_map(|(at, mask)| Mutation::Flip(at, mask)),
        (
            any::<Index>(),
            prop_oneof![fragment(), any::<String>(), "[ -~]{0,12}"]
        )
            .prop_map(|(at, s)| Mutation::Insert(at, s)),
    ]
}

fn mutate(mut body: Vec<u8>, mutation: &Mutation) -> Vec<u8> {
    match mutation {
        Mutation::Truncate(at) => body.truncate(at.index(body.len() + 1)),
        Mutation::Flip(at, mask) => {
            let at = at.index(body.len());
            body[at] ^= mask;
        }
        Mutation::Insert(at, s) => {
            let at = at.index(body.len() + 1);
            body.splice(at..at, s.bytes());
        }
    }
    body
}

/// A valid answer and the verdict it carries (`None`: a fault).
fn valid_answer() -> impl Strategy<Value = (Vec<u8>, Option<Verdict>)> {
    let verdicts =
        (prop::sample::select(VERDICTS.to_vec()), 0..3u8).prop_map(|((v, wire), style)| {
            let xml = match style {
                0 => answer(wire),
                1 => answer_other_prefixes(wire),
                _ => answer_default_namespaces(wire),
            };
            (xml.into_bytes(), Some(v))
        });
    let faults =
        prop::sample::select(vec!["soap:Server", "soap:Client", "Other"]).prop_map(|code| {
            (
                fault(code, "Registry temporarily unavailable").into_bytes(),
                None,
            )
        });
    prop_oneof![3 => verdicts, 1 => faults]
}

fn request_text() -> impl Strategy<Value = String> {
    "\\PC{0,40}"
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode_reply(&body);
    }

    #[test]
    fn markup_soup_never_panics(pieces in prop::collection::vec(fragment(), 0..48)) {
        let _ = decode_reply(pieces.concat().as_bytes());
    }

    /// A mutated answer may be refused or keep its verdict; it never gets another one.
    #[test]
    fn mutated_answers_never_change_verdict(
        (body, original) in valid_answer(),
        mutation in mutation(),
    ) {
        prop_assert_eq!(decode_reply(&body).ok().and_then(|r| match r {
            Reply::Verdict { verdict, .. } => Some(verdict),
            Reply::Fault { .. } => None,
        }), original);
        let mutated = mutate(body, &mutation);
        if let Ok(Reply::Verdict { verdict, .. }) = decode_reply(&mutated) {
            prop_assert_eq!(Some(verdict), original, "{}", String::from_utf8_lossy(&mutated));
        }
    }

    /// Requests made of any text (no control characters) are well-formed and read back.
    #[test]
    fn encoded_requests_are_well_formed(
        request_id in request_text(),
        national_id in request_text(),
        full_name in request_text(),
        days in 0..1_000_000i32,
    ) {
        let birth_date = NaiveDate::from_num_days_from_ce_opt(days).unwrap();
        let req = VerifyRequest { request_id: &request_id, national_id: &national_id, full_name: &full_name, birth_date };
        let xml = encode_request(&req);
        prop_assert_eq!(read_request(&xml), Ok(request_fields(&req)), "{}", xml);
    }
}
