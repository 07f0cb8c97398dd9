//! The printed IR: snapshots of the tiny example and of a released config, and the
//! print → parse → print round trip on every example and config, before and after the
//! optimisation pipeline.

mod common;

use std::path::PathBuf;

use common::*;
use zambac_ir::{Bindings, parse_module, print_module, verify_module};

fn module(path: &std::path::Path) -> zambac_ir::Module {
    let spec = zambac_frontend::load(path)
        .unwrap_or_else(|e| panic!("{}", e.render()))
        .spec;
    zambac_ir::build(&spec).unwrap()
}

fn graph_text(m: &zambac_ir::Module, name: &str) -> String {
    zambac_ir::text::print_graph(m.graph(name).unwrap())
}

#[test]
fn tiny_example_prefill_and_decode() {
    let m = module(&root().join("examples/tiny.toml"));
    insta::assert_snapshot!("tiny_prefill", graph_text(&m, "prefill"));
    insta::assert_snapshot!("tiny_decode", graph_text(&m, "decode"));
}

#[test]
fn zamba2_1_2b_config_prefill_and_decode() {
    let m = module(&root().join("../shared/configs/zamba2-1.2b/config.json"));
    insta::assert_snapshot!("zamba2_1_2b_prefill", graph_text(&m, "prefill"));
    insta::assert_snapshot!("zamba2_1_2b_decode", graph_text(&m, "decode"));
}

/// Every example, every shared config and every fixture config.
fn all_inputs() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    for dir in ["../shared/configs", "../shared/fixtures"] {
        for e in std::fs::read_dir(root().join(dir)).unwrap() {
            let p = e.unwrap().path().join("config.json");
            if p.exists() {
                v.push(p);
            }
        }
    }
    v.sort();
    assert!(v.len() >= 15, "{v:?}");
    v
}

fn assert_roundtrip(m: &zambac_ir::Module, what: &str) {
    verify_module(m).unwrap_or_else(|e| panic!("{what}: {e:?}"));
    let text = print_module(m);
    let back = parse_module(&text).unwrap_or_else(|e| panic!("{what}: {e}"));
    verify_module(&back).unwrap_or_else(|e| panic!("{what} (parsed): {e:?}"));
    assert_eq!(
        print_module(&back),
        text,
        "{what}: print(parse(print)) differs"
    );
    assert_eq!(back.params, m.params, "{what}");
    for (a, b) in m.graphs.iter().zip(&back.graphs) {
        assert_eq!(a.op_count(), b.op_count(), "{what}");
        assert_eq!(a.outputs.len(), b.outputs.len(), "{what}");
    }
}

#[test]
fn every_example_and_config_roundtrips() {
    for path in all_inputs() {
        let what = path.display().to_string();
        let mut m = module(&path);
        assert_roundtrip(&m, &what);
        let mut pm = zambac_passes::PassManager::new(Default::default()).unwrap();
        let mut cx = zambac_passes::PassCx::new(Bindings { t: 512, c: 4096 });
        pm.run(&mut m, &mut cx, &mut std::io::sink()).unwrap();
        assert_roundtrip(&m, &format!("{what} (optimised, with memory plan)"));
    }
}

#[test]
fn any_module_name_prints_as_text_that_parses_back() {
    // Found by the `zir` fuzz target: a name starting with a digit was printed `@"20hyb"`,
    // which the lexer does not read. All-digit names would read as parameter references.
    let mut m = module(&root().join("examples/tiny.toml"));
    for name in ["20hyb", "123", "a b", "x-y.z", "tiny", "é", "", "q\"uote"] {
        m.name = name.to_string();
        let text = print_module(&m);
        let back = parse_module(&text).unwrap_or_else(|e| panic!("{name:?}: {e}\n{text}"));
        assert_eq!(back.name, name);
    }
}

#[test]
fn ir_command_prints_the_module() {
    let out = zambac(&["ir", root().join("examples/tiny.toml").to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(parse_module(&text).is_ok());
    assert!(text.contains("graph @prefill(") && text.contains("graph @decode("));
}
