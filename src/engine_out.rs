//! Writing an engine: generated code, then the weights streamed one tensor at a time
//! (read from the checkpoint or drawn at random) behind a progress bar, then the manifest.
//! The runtime's writer builds it in a temporary directory and renames it into place, so
//! a failed build leaves an existing engine untouched.

use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use zambac_ir::Elem;
use zambac_runtime::engine::{Dtype, EngineWriter, ManifestParts};
use zambac_runtime::weights::{Checkpoint, random_param};

use crate::build_cmd::{BuildArgs, Compiled, generate_code, host_target, weight_bytes};
use crate::error::{CliError, CliResult};
use crate::model::WeightSource;

pub fn write(c: &Compiled, args: &BuildArgs, out: &Path) -> CliResult<()> {
    let code = generate_code(c, args)?;
    let mut w = EngineWriter::create(out)?;
    let bar = progress_bar(weight_bytes(c));
    let b = bar.clone();
    w.on_progress(move |p| b.set_position(p.bytes_written));
    enum Source {
        Checkpoint(Checkpoint),
        Random(u64),
    }
    let source = match &c.input.weights {
        WeightSource::Checkpoint(dir) => Source::Checkpoint(Checkpoint::open(dir)?),
        WeightSource::Random(seed) => Source::Random(*seed),
    };
    for (i, (p, elem)) in c
        .module
        .params
        .iter()
        .zip(&c.lowered.weight_elems)
        .enumerate()
    {
        let data = match &source {
            Source::Checkpoint(ck) => {
                let src = c.sources.get(&p.name).ok_or_else(|| {
                    CliError::Internal(anyhow::anyhow!(
                        "no checkpoint tensor for parameter `{}`",
                        p.name
                    ))
                })?;
                ck.to_f32(src)?
            }
            Source::Random(seed) => random_param(p, *seed).data,
        };
        let dtype = if *elem == Elem::Bf16 {
            Dtype::Bf16
        } else {
            Dtype::F32
        };
        let idx = w.add_weight(&p.name, &p.shape, &data, dtype)?;
        if idx as usize != i {
            return Err(CliError::Internal(anyhow::anyhow!(
                "weight {} written at index {idx}",
                p.name
            )));
        }
    }
    let target = host_target(args);
    let mut build = serde_json::json!({
        "target_cpu": target.cpu,
        "target_features": target.features,
        "targets": args.target,
        "weights": match &c.input.weights {
            WeightSource::Random(seed) => format!("random:{seed}"),
            WeightSource::Checkpoint(d) => format!("checkpoint {}", d.display()),
        },
        "weight_dtype": c.dtype.to_string(),
    });
    if let Some(gpu) = &code.gpu {
        build["gpu_kernels"] = serde_json::json!(
            gpu.kernels
                .iter()
                .map(|k| serde_json::json!({
                    "entry": k.entry,
                    "block_size": k.block_size,
                    "params": k.params.iter().map(|p| format!("{p:?}")).collect::<Vec<_>>(),
                }))
                .collect::<Vec<_>>()
        );
        if let Some(r) = &gpu.ptxas {
            build["ptxas"] = serde_json::json!(r
                .kernels()
                .map(|f| serde_json::json!({"entry": f.name, "registers": f.registers, "spill_bytes": f.spill_store_bytes + f.spill_load_bytes}))
                .collect::<Vec<_>>());
        }
    }
    let parts = ManifestParts {
        zambac_version: env!("CARGO_PKG_VERSION").to_string(),
        spec: c.input.spec.clone(),
        kernels: c.lowered.kernels.clone(),
        programs: c.lowered.programs.clone(),
        build,
    };
    let empty = Vec::new();
    let host = code.host.as_ref().map_or(&empty, |h| &h.bytes);
    let ptx = code.gpu.as_ref().map(|g| g.ptx.as_bytes());
    w.finish(parts, host, ptx)?;
    bar.finish_and_clear();
    Ok(())
}

fn progress_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>8} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message("weights");
    bar
}
