//! A thin, typed layer over melior's operation builders, so kernel files read like the math
//! they implement instead of like MLIR plumbing.
//!
//! Kernels are built with builders, never from text: every helper here appends exactly one
//! operation (or one structured control-flow op with its regions) to the current block.
//! Values are handled as [`V`], a melior [`Value`] whose parent lifetime is erased. melior ties
//! each value to a borrow of the block that defines it, which makes nested regions (a loop
//! body using values of the enclosing function) impossible to express with closures. Every
//! value created here belongs to an operation that is appended to a block of the module under
//! construction, and the module outlives all of them, so erasing that lifetime is sound as
//! long as values do not escape the module's construction (they never leave this crate).

mod flow;

use melior::Context;
use melior::dialect::arith::{self, CmpfPredicate, CmpiPredicate};
use melior::dialect::{func, memref};
use melior::ir::attribute::{
    DenseElementsAttribute, DenseI64ArrayAttribute, FlatSymbolRefAttribute, FloatAttribute,
    IntegerAttribute,
};
use melior::ir::operation::{OperationBuilder, OperationLike};
use melior::ir::r#type::IntegerType;
use melior::ir::{
    Attribute, Block, BlockLike, Identifier, Location, Operation, OperationRef, Type, TypeLike,
    Value, ValueLike,
};

/// An SSA value of the module under construction (see the module docs for the lifetime).
pub(crate) type V<'c> = Value<'c, 'static>;

/// The widest vector the kernels use: 8 × f32 fills one AVX2 register.
pub(crate) const VW: usize = 8;

/// Appends operations to one block.
#[derive(Clone, Copy)]
pub(crate) struct Emitter<'c, 'b> {
    pub(crate) cx: &'c Context,
    block: &'b Block<'c>,
    loc: Location<'c>,
    /// Where 8-lane `math` ops become calls into glibc's libmvec: the names called so far,
    /// which the module declares at the end. `None`: `math` ops throughout.
    vector_calls: Option<&'b VectorCalls>,
}

/// The libmvec functions (`_ZGVdN8v_<op>f`, AVX2, 8 × f32 in `ymm0`) a module calls.
pub(crate) type VectorCalls = std::cell::RefCell<std::collections::BTreeSet<String>>;

/// `math` ops that have an AVX2 libmvec variant in glibc ≥ 2.35 (`expf` since 2.22).
const LIBMVEC_OPS: [&str; 5] = ["exp", "erf", "tanh", "log1p", "expm1"];

/// The libmvec name of the 8-lane AVX2 variant of `op`.
pub(crate) fn libmvec_name(op: &str) -> String {
    format!("_ZGVdN8v_{op}f")
}

fn erase<'c>(value: Value<'c, '_>) -> V<'c> {
    // SAFETY: see the module documentation; the value's defining operation or block is owned
    // by the module being built, which outlives every use of the returned handle.
    unsafe { Value::from_raw(value.to_raw()) }
}

impl<'c, 'b> Emitter<'c, 'b> {
    /// An emitter appending to `block`; with `vector_calls`, 8-lane transcendental `math`
    /// ops become libmvec calls recorded there.
    pub(crate) fn new(
        cx: &'c Context,
        block: &'b Block<'c>,
        vector_calls: Option<&'b VectorCalls>,
    ) -> Self {
        Self {
            cx,
            block,
            loc: Location::unknown(cx),
            vector_calls,
        }
    }

    /// Argument `index` of the current block.
    pub(crate) fn arg(&self, index: usize) -> V<'c> {
        erase(
            self.block
                .argument(index)
                .expect("block argument index within the block's signature")
                .into(),
        )
    }

    /// Appends a fully built operation.
    pub(crate) fn append(&self, op: Operation<'c>) -> OperationRef<'c, 'b> {
        self.block.append_operation(op)
    }

    /// Appends the generic operation `name` and returns its results.
    pub(crate) fn emit(
        &self,
        name: &str,
        operands: &[V<'c>],
        results: &[Type<'c>],
        attributes: &[(&str, Attribute<'c>)],
    ) -> Vec<V<'c>> {
        let attributes: Vec<_> = attributes
            .iter()
            .map(|(key, value)| (Identifier::new(self.cx, key), *value))
            .collect();
        let op = OperationBuilder::new(name, self.loc)
            .add_operands(operands)
            .add_results(results)
            .add_attributes(&attributes)
            .build()
            .expect("generic operation with explicit operands, results and attributes");
        self.results(self.append(op))
    }

    fn results(&self, op: OperationRef<'c, 'b>) -> Vec<V<'c>> {
        (0..op.result_count())
            .map(|index| erase(op.result(index).expect("result index in range").into()))
            .collect()
    }

    /// Appends `name` with a single result of type `result`.
    pub(crate) fn emit1(
        &self,
        name: &str,
        operands: &[V<'c>],
        result: Type<'c>,
        attributes: &[(&str, Attribute<'c>)],
    ) -> V<'c> {
        self.emit(name, operands, &[result], attributes)[0]
    }

    fn first(&self, op: Operation<'c>) -> V<'c> {
        self.results(self.append(op))[0]
    }

    // ---- types ----

    pub(crate) fn f32_t(&self) -> Type<'c> {
        Type::float32(self.cx)
    }

    pub(crate) fn index_t(&self) -> Type<'c> {
        Type::index(self.cx)
    }

    pub(crate) fn int_t(&self, bits: u32) -> Type<'c> {
        IntegerType::new(self.cx, bits).into()
    }

    pub(crate) fn ptr_t(&self) -> Type<'c> {
        self.parse_type("!llvm.ptr")
    }

    /// `vector<width x elem>`.
    pub(crate) fn vec_t(&self, width: usize, elem: Type<'c>) -> Type<'c> {
        Type::vector(&[width as u64], elem)
    }

    /// `vector<width x f32>`.
    pub(crate) fn vf32(&self, width: usize) -> Type<'c> {
        self.vec_t(width, self.f32_t())
    }

    pub(crate) fn parse_type(&self, text: &str) -> Type<'c> {
        Type::parse(self.cx, text).expect("type text written by this crate parses")
    }

    pub(crate) fn parse_attr(&self, text: &str) -> Attribute<'c> {
        Attribute::parse(self.cx, text).expect("attribute text written by this crate parses")
    }

    // ---- constants ----

    pub(crate) fn index(&self, value: i64) -> V<'c> {
        self.int_const(value, self.index_t())
    }

    pub(crate) fn int_const(&self, value: i64, ty: Type<'c>) -> V<'c> {
        self.first(arith::constant(
            self.cx,
            IntegerAttribute::new(ty, value).into(),
            self.loc,
        ))
    }

    pub(crate) fn f32(&self, value: f32) -> V<'c> {
        self.first(arith::constant(
            self.cx,
            FloatAttribute::new(self.cx, self.f32_t(), f64::from(value)).into(),
            self.loc,
        ))
    }

    /// A constant f32 vector with the given lanes.
    pub(crate) fn f32_lanes(&self, lanes: &[f32]) -> V<'c> {
        let ty = self.vf32(lanes.len());
        let elements: Vec<Attribute<'c>> = lanes
            .iter()
            .map(|&lane| FloatAttribute::new(self.cx, self.f32_t(), f64::from(lane)).into())
            .collect();
        let dense = DenseElementsAttribute::new(ty, &elements)
            .expect("dense f32 vector constant of matching length");
        self.first(arith::constant(self.cx, dense.into(), self.loc))
    }

    /// `value` in every lane of a `vector<width x f32>`.
    pub(crate) fn f32_splat(&self, value: f32, width: usize) -> V<'c> {
        self.f32_lanes(&vec![value; width])
    }

    /// `value` shaped like `like`: an f32 scalar, or a splat of the width of the f32 vector
    /// `like`.
    pub(crate) fn f32_like(&self, value: f32, like: V<'c>) -> V<'c> {
        if like.r#type().is_vector() {
            self.f32_splat(value, self.width_of(like))
        } else {
            self.f32(value)
        }
    }

    /// `value` in every lane of a `vector<width x i<bits>>`.
    pub(crate) fn int_splat(&self, value: i64, bits: u32, width: usize) -> V<'c> {
        let text = format!("dense<{value}> : vector<{width}xi{bits}>");
        self.first(arith::constant(self.cx, self.parse_attr(&text), self.loc))
    }

    // ---- floating point (scalars or vectors alike) ----

    fn same_type(&self, name: &str, operands: &[V<'c>]) -> V<'c> {
        self.emit1(name, operands, operands[0].r#type(), &[])
    }

    pub(crate) fn addf(&self, a: V<'c>, b: V<'c>) -> V<'c> {
        self.same_type("arith.addf", &[a, b])
    }

    pub(crate) fn subf(&self, a: V<'c>, b: V<'c>) -> V<'c> {
        self.same_type("arith.subf", &[a, b])
    }

    pub(crate) fn mulf(&self, a: V<'c>, b: V<'c>) -> V<'c> {
        self.same_type("arith.mulf", &[a, b])
    }

    pub(crate) fn divf(&self, a: V<'c>, b: V<'c>) -> V<'c> {
        self.same_type("arith.divf", &[a, b])
    }

    pub(crate) fn negf(&self, a: V<'c>) -> V<'c> {
        self.same_type("arith.negf", &[a])
    }

    /// IEEE `maximum` (NaN-propagating), as torch's `max`.
    pub(crate) fn maxf(&self, a: V<'c>, b: V<'c>) -> V<'c> {
        self.same_type("arith.maximumf", &[a, b])
    }

    /// `a·b + c`, fused.
    pub(crate) fn fma(&self, a: V<'c>, b: V<'c>, c: V<'c>) -> V<'c> {
        self.same_type("math.fma", &[a, b, c])
    }

    /// A one-operand `math` op (`exp`, `log1p`, `erf`, `tanh`, `sin`, `cos`, `sqrt`). With
    /// libmvec enabled, `vector<8xf32>` operands of the ops it has go to its AVX2 variant
    /// (LLVM would otherwise call the scalar libm function once per lane), and so do
    /// narrower vectors, padded with zeros: every vector lane is then the same function of
    /// its value whatever the vector's width, so a value does not change with the chunk it
    /// falls in — a blocked kernel's leftover channels, which depend on how the launch split
    /// the grid among threads, compute what a full block computes.
    pub(crate) fn math(&self, op: &str, a: V<'c>) -> V<'c> {
        let ty = a.r#type();
        if self.vector_calls.is_some() && LIBMVEC_OPS.contains(&op) && ty.is_vector() {
            let n = self.width_of(a);
            if n < 8 && ty == self.vf32(n) {
                let pad: Vec<i64> = (0..8).map(|i| i.min(n as i64)).collect();
                let wide = self.shuffle(a, self.f32_splat(0.0, n), &pad);
                let out = self.math(op, wide);
                let lanes: Vec<i64> = (0..n as i64).collect();
                return self.shuffle(out, out, &lanes);
            }
        }
        if let Some(calls) = self.vector_calls
            && LIBMVEC_OPS.contains(&op)
            && ty == self.vf32(8)
        {
            let name = libmvec_name(op);
            let call = self.append(func::call(
                self.cx,
                FlatSymbolRefAttribute::new(self.cx, &name),
                &[a],
                &[ty],
                self.loc,
            ));
            calls.borrow_mut().insert(name);
            return erase(
                call.result(0)
                    .expect("libmvec calls have one result")
                    .into(),
            );
        }
        self.same_type(&format!("math.{op}"), &[a])
    }

    /// `a^b` (`math.powf`).
    pub(crate) fn powf(&self, a: V<'c>, b: V<'c>) -> V<'c> {
        self.same_type("math.powf", &[a, b])
    }

    pub(crate) fn cmpf(&self, predicate: CmpfPredicate, a: V<'c>, b: V<'c>) -> V<'c> {
        self.first(arith::cmpf(self.cx, predicate, a, b, self.loc))
    }

    pub(crate) fn select(&self, condition: V<'c>, a: V<'c>, b: V<'c>) -> V<'c> {
        self.first(arith::select(condition, a, b, self.loc))
    }

    // ---- integers and indices ----

    pub(crate) fn addi(&self, a: V<'c>, b: V<'c>) -> V<'c> {
        self.same_type("arith.addi", &[a, b])
    }

    pub(crate) fn subi(&self, a: V<'c>, b: V<'c>) -> V<'c> {
        self.same_type("arith.subi", &[a, b])
    }

    pub(crate) fn muli(&self, a: V<'c>, b: V<'c>) -> V<'c> {
        self.same_type("arith.muli", &[a, b])
    }

    pub(crate) fn divui(&self, a: V<'c>, b: V<'c>) -> V<'c> {
        self.same_type("arith.divui", &[a, b])
    }

    pub(crate) fn remui(&self, a: V<'c>, b: V<'c>) -> V<'c> {
        self.same_type("arith.remui", &[a, b])
    }

    pub(crate) fn minsi(&self, a: V<'c>, b: V<'c>) -> V<'c> {
        self.same_type("arith.minsi", &[a, b])
    }

    pub(crate) fn maxsi(&self, a: V<'c>, b: V<'c>) -> V<'c> {
        self.same_type("arith.maxsi", &[a, b])
    }

    pub(crate) fn andi(&self, a: V<'c>, b: V<'c>) -> V<'c> {
        self.same_type("arith.andi", &[a, b])
    }

    pub(crate) fn ori(&self, a: V<'c>, b: V<'c>) -> V<'c> {
        self.same_type("arith.ori", &[a, b])
    }

    pub(crate) fn shli(&self, a: V<'c>, b: V<'c>) -> V<'c> {
        self.same_type("arith.shli", &[a, b])
    }

    pub(crate) fn shrui(&self, a: V<'c>, b: V<'c>) -> V<'c> {
        self.same_type("arith.shrui", &[a, b])
    }

    pub(crate) fn cmpi(&self, predicate: CmpiPredicate, a: V<'c>, b: V<'c>) -> V<'c> {
        self.first(arith::cmpi(self.cx, predicate, a, b, self.loc))
    }

    /// `a + k` for an index `a` and a constant `k` (no op when `k` is 0).
    pub(crate) fn add_k(&self, a: V<'c>, k: usize) -> V<'c> {
        if k == 0 {
            a
        } else {
            self.addi(a, self.index(k as i64))
        }
    }

    /// `a · k` for an index `a` and a constant `k`.
    pub(crate) fn mul_k(&self, a: V<'c>, k: usize) -> V<'c> {
        match k {
            1 => a,
            _ => self.muli(a, self.index(k as i64)),
        }
    }

    /// A conversion op (`arith.index_cast`, `arith.extui`, `arith.bitcast`, …) to `ty`.
    pub(crate) fn cast(&self, op: &str, a: V<'c>, ty: Type<'c>) -> V<'c> {
        self.emit1(&format!("arith.{op}"), &[a], ty, &[])
    }

    /// An index as f32 (through i64, as `pos as f32` in Rust).
    pub(crate) fn index_to_f32(&self, a: V<'c>) -> V<'c> {
        let wide = self.cast("index_cast", a, self.int_t(64));
        self.cast("sitofp", wide, self.f32_t())
    }

    // ---- memory ----

    /// `vector.load` of `width` consecutive elements of type `elem` at `mem[index]`.
    pub(crate) fn vload(&self, mem: V<'c>, index: V<'c>, width: usize, elem: Type<'c>) -> V<'c> {
        self.emit1("vector.load", &[mem, index], self.vec_t(width, elem), &[])
    }

    /// [`Emitter::vload`] promising that `mem[index]` lies at a multiple of `align` bytes,
    /// so the backend may load the vector in a few wide instructions (on NVPTX, 16-byte
    /// `ld.global.v4`; a scalar load per element otherwise).
    pub(crate) fn vload_aligned(
        &self,
        mem: V<'c>,
        index: V<'c>,
        width: usize,
        elem: Type<'c>,
        align: u64,
    ) -> V<'c> {
        let align = IntegerAttribute::new(self.int_t(64), align as i64).into();
        let attributes = [("alignment", align)];
        self.emit1(
            "vector.load",
            &[mem, index],
            self.vec_t(width, elem),
            &attributes,
        )
    }

    /// The address of `mem`'s first element, as an index (`memref.extract_aligned_pointer_as_index`).
    pub(crate) fn address(&self, mem: V<'c>) -> V<'c> {
        self.emit1(
            "memref.extract_aligned_pointer_as_index",
            &[mem],
            self.index_t(),
            &[],
        )
    }

    /// `vector.store` of `value` at `mem[index]`.
    pub(crate) fn vstore(&self, value: V<'c>, mem: V<'c>, index: V<'c>) {
        self.emit("vector.store", &[value, mem, index], &[], &[]);
    }

    /// Scalar `memref.load`.
    pub(crate) fn load(&self, mem: V<'c>, index: V<'c>) -> V<'c> {
        self.first(memref::load(mem, &[index], self.loc))
    }

    /// Scalar `memref.store`.
    pub(crate) fn store(&self, value: V<'c>, mem: V<'c>, index: V<'c>) {
        self.append(memref::store(value, mem, &[index], self.loc));
    }

    /// `memref.prefetch` of the line holding `mem[index]` for reading, into the second-level
    /// cache (locality 2: `prefetcht1` on x86). An index past the memref is harmless: a
    /// prefetch never faults.
    pub(crate) fn prefetch_l2(&self, mem: V<'c>, index: V<'c>) {
        let attr = |text: &str| Attribute::parse(self.cx, text).expect("a prefetch attribute");
        self.emit(
            "memref.prefetch",
            &[mem, index],
            &[],
            &[
                ("isWrite", attr("false")),
                ("localityHint", attr("2 : i32")),
                ("isDataCache", attr("true")),
            ],
        );
    }

    // ---- vectors ----

    /// A scalar in every lane of a `vector<width>`.
    pub(crate) fn splat(&self, scalar: V<'c>, width: usize) -> V<'c> {
        let ty = self.vec_t(width, scalar.r#type());
        self.emit1("vector.broadcast", &[scalar], ty, &[])
    }

    /// Combines all lanes of `v` with `kind` (`add`, `maximumf`).
    pub(crate) fn reduce(&self, kind: &str, v: V<'c>) -> V<'c> {
        let elem = self.elem_of(v);
        let kind = self.parse_attr(&format!("#vector.kind<{kind}>"));
        self.emit1("vector.reduction", &[v], elem, &[("kind", kind)])
    }

    /// The sum of all lanes of `v` in any order: LLVM may reduce it as a tree (log₂ lanes
    /// shuffles and adds) instead of one lane after another. The Mamba2 scan reduces once
    /// per state row and token, and there the in-order chain of eight dependent scalar
    /// adds cost 15–20% of the kernel (`bench_kernels`).
    pub(crate) fn sum_any_order(&self, v: V<'c>) -> V<'c> {
        let elem = self.elem_of(v);
        let kind = self.parse_attr("#vector.kind<add>");
        let reassoc = self.parse_attr("#arith.fastmath<reassoc>");
        self.emit1(
            "vector.reduction",
            &[v],
            elem,
            &[("kind", kind), ("fastmath", reassoc)],
        )
    }

    /// Lane `lane` of `v`.
    pub(crate) fn extract(&self, v: V<'c>, lane: usize) -> V<'c> {
        let elem = self.elem_of(v);
        let position = DenseI64ArrayAttribute::new(self.cx, &[lane as i64]).into();
        self.emit1(
            "vector.extract",
            &[v],
            elem,
            &[("static_position", position)],
        )
    }

    /// A vector of the given scalars.
    pub(crate) fn vector_of(&self, lanes: &[V<'c>]) -> V<'c> {
        let ty = self.vec_t(lanes.len(), lanes[0].r#type());
        self.emit1("vector.from_elements", lanes, ty, &[])
    }

    /// Lanes `mask` of the concatenation of `a` and `b`.
    pub(crate) fn shuffle(&self, a: V<'c>, b: V<'c>, mask: &[i64]) -> V<'c> {
        let ty = self.vec_t(mask.len(), self.elem_of(a));
        let mask = DenseI64ArrayAttribute::new(self.cx, mask).into();
        self.emit1("vector.shuffle", &[a, b], ty, &[("mask", mask)])
    }

    /// The number of lanes of a vector value.
    pub(crate) fn width_of(&self, v: V<'c>) -> usize {
        let ty = v.r#type();
        // SAFETY: `ty` is a live shaped (vector) type of this context.
        let lanes = unsafe { mlir_sys::mlirShapedTypeGetDimSize(ty.to_raw(), 0) };
        usize::try_from(lanes).expect("vector types built here have a static size")
    }

    fn elem_of(&self, v: V<'c>) -> Type<'c> {
        let ty = v.r#type();
        // SAFETY: `ty` is a live vector type of this context; the element type is owned by it.
        unsafe { Type::from_raw(mlir_sys::mlirShapedTypeGetElementType(ty.to_raw())) }
    }
}
