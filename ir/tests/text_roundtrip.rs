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

#[test]
fn tiny_zamba1_roundtrips() {
    roundtrip(&common::tiny_zamba1());
}

#[test]
fn dump_tiny() {
    let m = build(&common::tiny_zamba1()).unwrap();
    println!("{}", print_module(&m));
}
