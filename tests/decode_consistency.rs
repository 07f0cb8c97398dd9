//! Decoding from the states a prefill leaves behind gives the same logits as one full
//! forward over the whole sequence — on random models of both families with groups,
//! GQA, RoPE on and off, untied heads and prompts longer than the chunk size.
//! (With `dt_clamp = "hf5"` the two paths differ by design, spec §6.3; the property is
//! checked for the consistent settings `none` and `always`.)

mod common;

use common::max_diff;
use common::random_model::random_model;
use proptest::prelude::*;
use zambac_reference::ReferenceBackend;
use zambac_runtime::session::Backend;
use zambac_weights::random;

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn decode_from_state_equals_full_forward(model in random_model(&["none", "always"]), split in 1usize..9) {
        let spec = model.spec();
        let m = zambac_ir::build(&spec).unwrap();
        let w = random(&m, 11);
        let mut be = ReferenceBackend::new(m, w).unwrap();
        let prompt: Vec<i64> = (0..11).map(|i| (i * 7 + 3) % 61).collect();
        let cap = prompt.len();
        let (full, _) = be.prefill(&prompt, cap).unwrap();
        let (head, mut state) = be.prefill(&prompt[..split], cap).unwrap();
        for r in 0..split {
            let d = max_diff(head.row(r), full.row(r));
            prop_assert!(d < 1e-4, "prefill row {} differs by {}", r, d);
        }
        for (pos, &tok) in prompt.iter().enumerate().skip(split) {
            prop_assert_eq!(state.position(), pos);
            let logits = be.decode(tok, &mut state).unwrap();
            let d = max_diff(logits.row(0), full.row(pos));
            prop_assert!(d < 1e-4, "decode at position {} differs by {}\n{}", pos, d, model.toml());
        }
    }
}
