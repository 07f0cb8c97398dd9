//! The `.zir` form round-trips: print → parse → print is the identity, on built modules.

mod common;

use zambac_ir::{build, parse_module, print_module, verify_module};

fn roundtrip(spec: &zambac_frontend::ModelSpec) {
    let m = build(spec).expect("builds");
    verify_module(&m).expect("built module verifies");
    let text = print_module(&m);
    let back = parse_module(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    verify_module(&back).expect("parsed module verifies");
    assert_eq!(print_module(&back), text);
}

#[test]
fn tiny_zamba2_roundtrips() {
    roundtrip(&common::tiny_zamba2());
}

/// A scaling with per-frequency lists travels as one string attribute and comes back equal
/// (the fused linear epilogues carry it too, after the passes).
#[test]
fn rope_scaling_roundtrips() {
    let mut spec = common::tiny_zamba2();
    spec.shared.rope_scaling = Some(zambac_engine::RopeScaling::Longrope {
        short_factor: (0..12).map(|i| 1.0 + i as f64 / 3.0).collect(),
        long_factor: vec![2.5; 12],
        original_max_position_embeddings: 16,
        attention_factor: 1.25,
    });
    roundtrip(&spec);
    let text = print_module(&build(&spec).unwrap());
    assert!(text.contains("scaling="), "{text}");
}

#[test]
fn tiny_zamba1_roundtrips() {
    roundtrip(&common::tiny_zamba1());
}

#[test]
fn dump_tiny() {
    let m = build(&common::tiny_zamba1()).unwrap();
    println!("{}", print_module(&m));
}

/// Names with quotes, backslashes, control characters and non-ASCII text print as literals
/// the lexer reads back (the fuzzer found that Rust's `{:?}` escapes, `\0` or `\u{f}`, did not
/// parse).
#[test]
fn strings_with_any_characters_roundtrip() {
    let mut m = build(&common::tiny_zamba2()).unwrap();
    let odd = "a\"b\\c\nd\te\rf\0g\u{f}h\u{7f}ü→😀";
    m.params[0].name = odd.to_string();
    m.params[1].tie = Some(format!("tie{odd}"));
    let text = print_module(&m);
    let back = parse_module(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(back.params[0].name, odd);
    assert_eq!(
        back.params[1].tie.as_deref(),
        Some(format!("tie{odd}").as_str())
    );
    assert_eq!(print_module(&back), text);
    for bad in [r#""\q""#, r#""\u{d800}""#, r#""\u{""#, r#""\u12""#] {
        let src = text.replacen(&super_quote(odd), bad, 1);
        assert!(parse_module(&src).is_err(), "{bad} parsed");
    }
}

/// How the printer quotes `odd` (to swap in malformed literals).
fn super_quote(s: &str) -> String {
    let text = {
        let mut m = build(&common::tiny_zamba2()).unwrap();
        m.params[0].name = s.to_string();
        print_module(&m)
    };
    let line = text.lines().find(|l| l.starts_with("param @0 ")).unwrap();
    let start = line.find('"').unwrap();
    let end = line.rfind(" : ").unwrap();
    line[start..end].to_string()
}
