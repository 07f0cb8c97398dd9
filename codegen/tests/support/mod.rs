//! Kernels and calling helpers shared by the smoke tests.
//!
//! `saxpy` and `silu` are built with melior builders (the hand-written `func`/`arith`/`memref`
//! builders, the ODS-generated `math.exp`, and the generic builder for `scf.parallel`, which
//! needs its `operandSegmentSizes` set by hand), the way fused kernel groups will be built.
//! `vexp_add` is parsed from text to cover the `vector` dialect and the parsing path.

use zambac_codegen::melior::Context;
use zambac_codegen::melior::dialect::ods::math;
use zambac_codegen::melior::dialect::{arith, func, memref};
use zambac_codegen::melior::ir::attribute::{
    DenseI32ArrayAttribute, FloatAttribute, IntegerAttribute, StringAttribute, TypeAttribute,
};
use zambac_codegen::melior::ir::operation::OperationBuilder;
use zambac_codegen::melior::ir::r#type::FunctionType;
use zambac_codegen::melior::ir::{
    Attribute, Block, BlockLike, Identifier, Location, Module, Operation, Region, RegionLike, Type,
    Value,
};

/// A module with `saxpy(a, x, y)`: `y[i] = a * x[i] + y[i]`, and `silu(x, y)`:
/// `y[i] = x[i] / (1 + exp(-x[i]))`, both as `scf.parallel` over the elements.
pub fn elementwise_module(context: &Context) -> Module<'_> {
    let location = Location::unknown(context);
    let module = Module::new(location);
    module.body().append_operation(saxpy(context));
    module.body().append_operation(silu(context));
    module
}

/// `vexp_add(x, y)`: `y[i..i+8] = exp(x[i..i+8]) + y[i..i+8]` for `len(x)` a multiple of 8.
pub const VECTOR_KERNEL: &str = r#"
func.func @vexp_add(%x: memref<?xf32>, %y: memref<?xf32>) attributes {llvm.emit_c_interface} {
  %c0 = arith.constant 0 : index
  %c8 = arith.constant 8 : index
  %n = memref.dim %x, %c0 : memref<?xf32>
  scf.parallel (%i) = (%c0) to (%n) step (%c8) {
    %v = vector.load %x[%i] : memref<?xf32>, vector<8xf32>
    %w = vector.load %y[%i] : memref<?xf32>, vector<8xf32>
    %e = math.exp %v : vector<8xf32>
    %s = arith.addf %e, %w : vector<8xf32>
    vector.store %s, %y[%i] : memref<?xf32>, vector<8xf32>
    scf.reduce
  }
  return
}
"#;

fn saxpy(context: &Context) -> Operation<'_> {
    let f32 = Type::float32(context);
    let vector = memref_1d(context);
    function(context, "saxpy", &[f32, vector, vector], |block| {
        let a = argument(block, 0);
        let x = argument(block, 1);
        let y = argument(block, 2);
        parallel_loop(context, block, x, |body, i| {
            let location = Location::unknown(context);
            let xi = result(body.append_operation(memref::load(x, &[i], location)));
            let yi = result(body.append_operation(memref::load(y, &[i], location)));
            let product = result(body.append_operation(arith::mulf(a, xi, location)));
            let sum = result(body.append_operation(arith::addf(product, yi, location)));
            body.append_operation(memref::store(sum, y, &[i], location));
        });
    })
}

fn silu(context: &Context) -> Operation<'_> {
    let f32 = Type::float32(context);
    let vector = memref_1d(context);
    function(context, "silu", &[vector, vector], |block| {
        let x = argument(block, 0);
        let y = argument(block, 1);
        let location = Location::unknown(context);
        let one = result(block.append_operation(arith::constant(
            context,
            FloatAttribute::new(context, f32, 1.0).into(),
            location,
        )));
        parallel_loop(context, block, x, |body, i| {
            let xi = result(body.append_operation(memref::load(x, &[i], location)));
            let negated = result(body.append_operation(arith::negf(xi, location)));
            let exp = result(body.append_operation(math::exp(context, negated, location).into()));
            let denominator = result(body.append_operation(arith::addf(one, exp, location)));
            let silu = result(body.append_operation(arith::divf(xi, denominator, location)));
            body.append_operation(memref::store(silu, y, &[i], location));
        });
    })
}

/// A `func.func` with no results and `llvm.emit_c_interface`, so the host library exports
/// `_mlir_ciface_<name>` taking pointers to memref descriptors.
fn function<'c>(
    context: &'c Context,
    name: &str,
    arguments: &[Type<'c>],
    build: impl FnOnce(&Block<'c>),
) -> Operation<'c> {
    let location = Location::unknown(context);
    let block = Block::new(
        &arguments
            .iter()
            .map(|argument| (*argument, location))
            .collect::<Vec<_>>(),
    );
    build(&block);
    block.append_operation(func::r#return(&[], location));
    let region = Region::new();
    region.append_block(block);
    func::func(
        context,
        StringAttribute::new(context, name),
        TypeAttribute::new(FunctionType::new(context, arguments, &[]).into()),
        region,
        &[(
            Identifier::new(context, "llvm.emit_c_interface"),
            Attribute::unit(context),
        )],
        location,
    )
}

/// Appends `scf.parallel (%i) = (0) to (dim(extent_of, 0)) step (1)` to `block`, with the body
/// filled by `body` and terminated by `scf.reduce`.
fn parallel_loop<'c>(
    context: &'c Context,
    block: &Block<'c>,
    extent_of: Value<'c, '_>,
    body: impl FnOnce(&Block<'c>, Value<'c, '_>),
) {
    let location = Location::unknown(context);
    let index = Type::index(context);
    let constant = |value| {
        result(block.append_operation(arith::constant(
            context,
            IntegerAttribute::new(index, value).into(),
            location,
        )))
    };
    let zero = constant(0);
    let one = constant(1);
    let extent = result(block.append_operation(memref::dim(extent_of, zero, location)));
    let loop_body = Block::new(&[(index, location)]);
    body(&loop_body, argument(&loop_body, 0));
    loop_body.append_operation(
        OperationBuilder::new("scf.reduce", location)
            .build()
            .expect("scf.reduce builds"),
    );
    let region = Region::new();
    region.append_block(loop_body);
    block.append_operation(
        OperationBuilder::new("scf.parallel", location)
            .add_operands(&[zero, extent, one])
            .add_attributes(&[(
                Identifier::new(context, "operandSegmentSizes"),
                DenseI32ArrayAttribute::new(context, &[1, 1, 1, 0]).into(),
            )])
            .add_regions([region])
            .build()
            .expect("scf.parallel builds"),
    );
}

fn memref_1d(context: &Context) -> Type<'_> {
    Type::parse(context, "memref<?xf32>").expect("memref type parses")
}

fn argument<'c, 'a>(block: &'a Block<'c>, index: usize) -> Value<'c, 'a> {
    block.argument(index).expect("argument exists").into()
}

fn result<'c, 'a>(operation: zambac_codegen::melior::ir::OperationRef<'c, 'a>) -> Value<'c, 'a> {
    operation.result(0).expect("operation has a result").into()
}

/// MLIR's descriptor of a rank-1 memref, as `_mlir_ciface_*` functions take it.
#[repr(C)]
pub struct MemRef1d {
    allocated: *mut f32,
    aligned: *mut f32,
    offset: i64,
    sizes: [i64; 1],
    strides: [i64; 1],
}

impl MemRef1d {
    /// A descriptor viewing all of `data`; it must not outlive `data`.
    pub fn new(data: &mut [f32]) -> Self {
        Self {
            allocated: data.as_mut_ptr(),
            aligned: data.as_mut_ptr(),
            offset: 0,
            sizes: [i64::try_from(data.len()).expect("length fits i64")],
            strides: [1],
        }
    }
}

/// Deterministic test data in roughly [-8, 8): an LCG, so no dependency on `rand`.
pub fn sample(n: usize, seed: u32) -> Vec<f32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / (1u32 << 24) as f32 * 16.0 - 8.0
        })
        .collect()
}
