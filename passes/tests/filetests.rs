//! Pass filetests: each `passes/tests/filetests/<pass>/*.zir` names the passes it runs in a
//! `; test: a,b` header; the harness parses the module, runs exactly those passes (with
//! the verifier after each) and snapshots the result — or the error — with insta.
//! Review changes with `cargo insta review`.

use zambac_ir::{Bindings, parse_module, print_module};

fn run_filetest(src: &str) -> String {
    let Some(passes) = src
        .lines()
        .find_map(|l| l.strip_prefix("; test:"))
        .map(|p| {
            p.split(',')
                .map(|s| s.trim().to_string())
                .collect::<Vec<_>>()
        })
    else {
        return "error: missing `; test: <passes>` header\n".into();
    };
    let mut m = match parse_module(src) {
        Ok(m) => m,
        Err(e) => return format!("parse error: {e}\n"),
    };
    let opts = zambac_passes::Options {
        passes: Some(passes.clone()),
        ..Default::default()
    };
    let mut pm = match zambac_passes::PassManager::new(opts) {
        Ok(pm) => pm,
        Err(e) => return format!("error: {e}\n"),
    };
    let mut cx = zambac_passes::PassCx::new(Bindings { t: 8, c: 16 });
    if let Err(e) = pm.run(&mut m, &mut cx, &mut std::io::sink()) {
        return format!("error: {e}\n");
    }
    let mut out = String::new();
    for t in &pm.timings {
        let what = if t.changed { "changed" } else { "unchanged" };
        out.push_str(&format!(
            "; {}: {what}, {} → {} ops\n",
            t.pass, t.ops_before, t.ops_after
        ));
    }
    for (pass, stat) in &pm.stats {
        out.push_str(&format!("; {pass}: {stat}\n"));
    }
    out.push('\n');
    out.push_str(&print_module(&m));
    out
}

#[test]
fn filetests() {
    insta::glob!("filetests/**/*.zir", |path| {
        let src = std::fs::read_to_string(path).unwrap();
        insta::assert_snapshot!(run_filetest(&src));
    });
}

/// Every registered pass has at least one filetest.
#[test]
fn every_pass_has_filetests() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/filetests");
    for p in zambac_passes::REGISTRY {
        let d = dir.join(p.name());
        let n = std::fs::read_dir(&d).map(|r| r.count()).unwrap_or(0);
        assert!(
            n > 0,
            "pass `{}` has no filetests in {}",
            p.name(),
            d.display()
        );
    }
}
