//! Compile errors: where they are and what they say.

use super::*;

#[test]
fn syntax_errors_name_request_field_line_and_column() {
    let errs = compile_errors(
        "name: create-vehicle\nmethod: POST\npath: /v\nbody: |\n  {\"vin\": {{ vehicle.vin }},\n   \"make\": {{ vehicle.make }},\n   \"year\": {{ vehicle.year ",
    );
    assert_eq!(errs.len(), 1);
    let e = &errs[0];
    assert_eq!(
        (e.request.as_str(), e.field.as_str()),
        ("create-vehicle", "body")
    );
    assert_eq!(e.mapping, 0);
    assert_eq!(e.line, Some(3));
    // The column of the last token before the end (`year`).
    assert_eq!(
        e.to_string(),
        "request \"create-vehicle\" body, line 3 column 21: unexpected end of input, expected end of variable block"
    );

    // Column counts characters, not bytes, and every broken template is reported.
    let errs = compile_errors(
        "name: get\nmethod: GET\npath: '/v/é/{{ vehicle.id }'\nwhen: 'remote.id is'\nheaders: {X-A: '{% if %}'}",
    );
    let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["path", "headers.X-A", "when"], "{errs:?}");
    // Characters, not bytes: `é` is two bytes.
    assert_eq!(
        (errs[0].line, errs[0].column),
        (Some(1), Some(20)),
        "{}",
        errs[0]
    );
    assert_eq!(errs[2].line, Some(1));
    assert!(
        errs[2]
            .to_string()
            .starts_with("request \"get\" when, line 1 column ")
    );
}

#[test]
fn shape_errors_the_api_server_would_refuse_are_reported_too() {
    let errs = compile_errors(
        "name: up\nmethod: POST\npath: 'v?x=1'\nbody: '{}'\nheaders: {Authorization: x, Content-Type: y}\nforEachImage: {send: raw}",
    );
    let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "path",
            "path",
            "body",
            "headers.Authorization",
            "headers.Content-Type"
        ],
        "{errs:?}"
    );
}

#[test]
fn unknown_filters_tests_and_functions_are_template_errors() {
    let errs = compile_errors(
        "name: p\nmethod: POST\npath: '/v/{{ vehicle.vin | slug }}'\nwhen: 'vehicle is vehicle_like'\nbody: '{{ nosuch(1) }}'",
    );
    let got: Vec<_> = errs.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        got,
        [
            "request \"p\" path, line 1 column 21: unknown filter: filter slug is unknown",
            "request \"p\" body, line 1 column 4: unknown function: nosuch is unknown",
            "request \"p\" when, line 1 column 12: unknown test: test vehicle_like is unknown",
        ]
    );
    // Undefined values in the samples are not errors of the template.
    Compiled::new(&one_request(
        "name: p\nmethod: POST\npath: /v\nbody: '{{ vehicle.trim }}'",
    ))
    .unwrap();
}

#[test]
fn headers_the_operator_sets_cannot_be_mapped() {
    let mut spec = one_request(
        "name: get\nmethod: GET\npath: /v\nheaders: {X-Request-Id: a, X-Api-Key: b, X-Other: c}",
    );
    spec.idempotency_header = "x-request-id".into();
    spec.auth = serde_yaml::from_str("apiKey: {header: X-API-KEY, secretRef: {name: k}}").unwrap();
    let errs = Compiled::new(&spec).err().unwrap();
    let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["headers.X-Api-Key", "headers.X-Request-Id"]);
}

#[test]
fn header_and_part_names_must_be_safe_where_they_are_written() {
    let errs = compile_errors(
        "name: up\nmethod: POST\npath: /v\nheaders: {'X Bad': a, 'X-Ok': b}\nforEachImage: {send: multipart, fields: {'a\"; filename=\"x': '1', ok: '2'}}",
    );
    let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        ["headers.X Bad", "forEachImage.fields.a\"; filename=\"x"],
        "{errs:?}"
    );
}
