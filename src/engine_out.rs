//! Writing an engine: generated code, then the weights streamed one tensor at a time
//! (read from the checkpoint or drawn at random) behind a progress bar, then the manifest.
//! The runtime's writer builds it in a temporary directory and renames it into place, so
//! a failed build leaves an existing engine untouched.

use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use zambac_engine::resources::Budget;
use zambac_engine::{Companions, Elem, EngineWriter, GpuEntry, GpuFiles, ManifestParts, ModelInfo};
use zambac_weights::{Checkpoint, random_param};

use crate::build_cmd::{BuildArgs, Compiled, generate_code, host_target, weight_bytes};
use crate::error::{CliError, CliResult};
use crate::model::WeightSource;

/// Writes the engine; returns how many kernels' host code came from the compile cache, and
/// the GPU code's summary when it has some.
pub fn write(
    c: &Compiled,
    args: &BuildArgs,
    out: &Path,
) -> CliResult<(usize, Option<crate::build_cmd::GpuSummary>)> {
    let (tokenizer, tokenizer_dir) = match read_tokenizer(c, args)? {
        Some((bytes, dir)) => (Some(bytes), Some(dir)),
        None => (None, None),
    };
    let config_dir = if args.input.is_dir() {
        Some(args.input.clone())
    } else {
        match &c.input.weights {
            WeightSource::Checkpoint(dir) => Some(dir.clone()),
            WeightSource::Random(_) => None,
        }
    };
    let generation = crate::generation_info::read(config_dir.as_deref(), tokenizer_dir.as_deref())?;
    check_room(c, out)?;
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
        let stored = if *elem == Elem::Bf16 {
            Elem::Bf16
        } else {
            Elem::F32
        };
        let idx = match c.lowered.weight_blocks.get(i).and_then(Option::as_ref) {
            Some(blocks) => w.add_blocked_weight(&p.name, &p.shape, &data, stored, blocks)?,
            None => w.add_weight(&p.name, &p.shape, &data, stored)?,
        };
        if idx as usize != i {
            return Err(CliError::Internal(anyhow::anyhow!(
                "weight {} written at index {idx}",
                p.name
            )));
        }
    }
    let target = host_target(args)?;
    let mut build = serde_json::json!({
        "targets": args.target,
        "weights": match &c.input.weights {
            WeightSource::Random(seed) => format!("random:{seed}"),
            WeightSource::Checkpoint(d) => format!("checkpoint {}", d.display()),
        },
        "weight_dtype": c.dtype.to_string(),
    });
    // The spill check's record (registers and shared memory are in the GPU launch table).
    if let (Some(r), Some(notes)) = (
        code.gpu.as_ref().and_then(|g| g.ptxas.as_ref()),
        build.as_object_mut(),
    ) {
        notes.insert(
            "ptxas".into(),
            serde_json::json!({"arch": r.arch, "spill_bytes": r.total_spill_bytes()}),
        );
    }
    let spec = &c.input.spec;
    let parts = ManifestParts {
        zambac_version: env!("CARGO_PKG_VERSION").to_string(),
        model: ModelInfo {
            name: spec.name.clone(),
            family: spec.family.name().to_string(),
            vocab_size: spec.vocab_size,
            hidden_size: spec.hidden_size,
            layers: spec.layers.len(),
            weight_elem: c.dtype,
            state: c.lowered.state.clone(),
            tokenizer: None,
            generation,
        },
        source: serde_json::to_value(spec).map_err(|e| {
            CliError::Internal(anyhow::anyhow!("cannot record the model description: {e}"))
        })?,
        kernels: c.lowered.kernels.clone(),
        programs: c.lowered.programs.clone(),
        host_target: code.host.as_ref().map(|_| zambac_engine::TargetCpu {
            cpu: target.cpu.clone(),
            features: target.features.clone(),
        }),
        build,
    };
    let empty = Vec::new();
    let gpu_entries = code.gpu.as_ref().map(gpu_entries);
    let files = Companions {
        host: code.host.as_ref().map_or(&empty, |h| &h.bytes),
        gpu: code
            .gpu
            .as_ref()
            .zip(gpu_entries.as_deref())
            .map(|(g, kernels)| GpuFiles {
                ptx: g.ptx.as_bytes(),
                chip: &g.chip,
                kernels,
            }),
        tokenizer: tokenizer.as_deref(),
    };
    w.finish(parts, files)?;
    bar.finish_and_clear();
    Ok((
        code.host.as_ref().map_or(0, |h| h.cached),
        code.gpu.as_ref().map(crate::build_cmd::GpuSummary::of),
    ))
}

/// Refuses, before code generation and before anything is written, an engine whose
/// weights do not fit on the output's file system, or whose largest parameter cannot be
/// held in memory while it is drawn or read (as f32) and stored.
fn check_room(c: &Compiled, out: &Path) -> CliResult<()> {
    let mut disk = Budget::new();
    disk.add("weights.bin", weight_bytes(c));
    disk.check_disk(&format!("the engine {}", out.display()), out)
        .map_err(|e| CliError::Input(format!("error: {e}")))?;
    let largest = c
        .module
        .params
        .iter()
        .zip(&c.lowered.weight_elems)
        .max_by_key(|(p, _)| p.numel());
    if let Some((p, elem)) = largest {
        let numel = p.numel() as u64;
        let mut memory = Budget::new();
        memory
            .add_n(
                format!("parameter `{}` {:?} as f32", p.name, p.shape),
                numel,
                4,
            )
            .add_n("its stored copy", numel, elem.size() as u64);
        memory
            .check_memory(&format!("writing the engine {}", out.display()))
            .map_err(|e| CliError::Input(format!("error: {e}")))?;
    }
    Ok(())
}

/// The model's `tokenizer.json`, checked to load, for the engine to carry: the one in the
/// checkpoint directory the weights come from, else the one beside the description; and
/// the directory it is in.
/// `zambac build --target sm_90 --emit ptx`: only the GPU code — `kernels.ptx` and its
/// launch table `gpu.json` — in the output directory, and a table of the kernels' resources.
pub fn write_ptx(c: &Compiled, args: &BuildArgs) -> CliResult<()> {
    let code = generate_code(c, args)?;
    let gpu = code.gpu.as_ref().ok_or_else(|| {
        CliError::Internal(anyhow::anyhow!("no GPU code was generated for --emit ptx"))
    })?;
    let out = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.ptx", c.input.spec.name)));
    let table = zambac_engine::GpuCode {
        chip: gpu.chip.clone(),
        ptx: zambac_engine::FileRef {
            file: zambac_engine::PTX_FILE.into(),
            xxh3: zambac_engine::Checksum::of(gpu.ptx.as_bytes()),
        },
        kernels: gpu_entries(gpu),
    };
    let json = serde_json::to_vec_pretty(&table)
        .map_err(|e| CliError::Internal(anyhow::anyhow!("cannot serialise gpu.json: {e}")))?;
    std::fs::create_dir_all(&out)
        .map_err(|e| CliError::input(format!("{}: cannot create: {e}", out.display())))?;
    for (name, bytes) in [
        (zambac_engine::PTX_FILE, gpu.ptx.as_bytes()),
        ("gpu.json", json.as_slice()),
    ] {
        let path = out.join(name);
        let tmp = out.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| CliError::input(format!("{}: cannot write: {e}", path.display())))?;
    }
    println!(
        "wrote {} GPU kernels for {} → {}",
        table.kernels.len(),
        table.chip,
        out.display()
    );
    match &gpu.ptxas {
        Some(r) => println!(
            "ptxas -arch={}: every kernel assembles, {} bytes of spills",
            r.arch,
            r.total_spill_bytes()
        ),
        None => println!("ptxas not found: the PTX was not assembled (set ZAMBAC_PTXAS)"),
    }
    println!(
        "  {:<44} {:>6} {:>6} {:>9} {:>12}",
        "entry", "lanes", "block", "registers", "shared bytes"
    );
    let show = |v: Option<u64>| v.map_or("?".to_string(), |v| v.to_string());
    for k in &table.kernels {
        println!(
            "  {:<44} {:>6} {:>6} {:>9} {:>12}",
            k.entry(),
            k.lanes,
            k.block_size,
            show(k.registers.map(u64::from)),
            show(k.shared_bytes)
        );
        if let Some(b) = &k.batched {
            println!(
                "  {:<44} {:>6} {:>6} {:>9} {:>12}",
                zambac_engine::gpu::batched_entry(&k.symbol),
                k.lanes,
                k.block_size,
                show(b.registers.map(u64::from)),
                show(b.shared_bytes)
            );
        }
    }
    Ok(())
}

/// The launch table of the GPU code: each entry's parameters and block size, with the
/// registers and shared memory `ptxas` reported when the build could run it.
fn gpu_entries(gpu: &zambac_codegen::GpuModule) -> Vec<GpuEntry> {
    gpu.kernels
        .iter()
        .map(|k| {
            let resources = gpu
                .ptxas
                .as_ref()
                .and_then(|r| r.kernels().find(|f| f.name == k.entry));
            GpuEntry {
                symbol: k.entry.strip_prefix("zk_").unwrap_or(&k.entry).to_string(),
                params: k.params.clone(),
                lanes: k.lanes,
                block_size: k.block_size,
                registers: resources.map(|f| f.registers),
                shared_bytes: resources.map(|f| f.shared_bytes),
                batched: k.batched.as_ref().map(|params| {
                    let name = zambac_engine::gpu::batched_entry(
                        k.entry.strip_prefix("zk_").unwrap_or(&k.entry),
                    );
                    let resources = gpu
                        .ptxas
                        .as_ref()
                        .and_then(|r| r.kernels().find(|f| f.name == name));
                    zambac_engine::GpuBatchedEntry {
                        params: params.clone(),
                        registers: resources.map(|f| f.registers),
                        shared_bytes: resources.map(|f| f.shared_bytes),
                    }
                }),
            }
        })
        .collect()
}

fn read_tokenizer(c: &Compiled, args: &BuildArgs) -> CliResult<Option<(Vec<u8>, PathBuf)>> {
    let beside = if args.input.is_dir() {
        Some(args.input.clone())
    } else {
        args.input.parent().map(Path::to_path_buf)
    };
    let checkpoint = match &c.input.weights {
        WeightSource::Checkpoint(dir) => Some(dir.clone()),
        WeightSource::Random(_) => None,
    };
    let Some(path) = [checkpoint, beside]
        .into_iter()
        .flatten()
        .map(|d| d.join(zambac_engine::TOKENIZER_FILE))
        .find(|p| p.is_file())
    else {
        return Ok(None);
    };
    zambac_runtime::tokenizer::Tokenizer::open(&path, "")?;
    let bytes = std::fs::read(&path)
        .map_err(|e| CliError::input(format!("error: {}: cannot read: {e}", path.display())))?;
    let dir = path.parent().map_or_else(PathBuf::new, Path::to_path_buf);
    Ok(Some((bytes, dir)))
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
