//! Structured control flow (`scf.for`, `scf.parallel`, `scf.if`, `scf.index_switch`),
//! functions and the raw-pointer side of the kernel ABI, for [`Emitter`].

use super::{Emitter, V};
use melior::dialect::{func, scf};
use melior::ir::attribute::{
    DenseI32ArrayAttribute, DenseI64ArrayAttribute, FlatSymbolRefAttribute, StringAttribute,
    TypeAttribute,
};
use melior::ir::operation::OperationBuilder;
use melior::ir::r#type::FunctionType;
use melior::ir::{Block, Identifier, Region, RegionLike, Type, ValueLike};

impl<'c, 'b> Emitter<'c, 'b> {
    // ---- control flow ----

    fn nested(
        &self,
        arguments: &[Type<'c>],
        build: impl FnOnce(&Emitter<'c, '_>, &[V<'c>]),
    ) -> Region<'c> {
        let block = Block::new(
            &arguments
                .iter()
                .map(|ty| (*ty, self.loc))
                .collect::<Vec<_>>(),
        );
        {
            let inner = Emitter {
                cx: self.cx,
                block: &block,
                loc: self.loc,
                vector_calls: self.vector_calls,
            };
            let args: Vec<V<'c>> = (0..arguments.len()).map(|i| inner.arg(i)).collect();
            build(&inner, &args);
        }
        let region = Region::new();
        region.append_block(block);
        region
    }

    /// `scf.for %i = lo to hi step step iter_args(inits)`; `body` gets the induction variable
    /// and the loop-carried values and returns their next values.
    pub(crate) fn for_(
        &self,
        lo: V<'c>,
        hi: V<'c>,
        step: V<'c>,
        inits: &[V<'c>],
        body: impl FnOnce(&Emitter<'c, '_>, V<'c>, &[V<'c>]) -> Vec<V<'c>>,
    ) -> Vec<V<'c>> {
        let types: Vec<Type<'c>> = inits.iter().map(|v| v.r#type()).collect();
        let mut arguments = vec![self.index_t()];
        arguments.extend(&types);
        let region = self.nested(&arguments, |e, args| {
            let next = body(e, args[0], &args[1..]);
            e.append(scf::r#yield(&next, e.loc));
        });
        let mut operands = vec![lo, hi, step];
        operands.extend(inits);
        let op = OperationBuilder::new("scf.for", self.loc)
            .add_operands(&operands)
            .add_results(&types)
            .add_regions([region])
            .build()
            .expect("scf.for with matching iter_args");
        self.results(self.append(op))
    }

    /// `scf.for` over `[lo, hi)` with constant bounds and step.
    pub(crate) fn for_k(
        &self,
        lo: usize,
        hi: usize,
        step: usize,
        inits: &[V<'c>],
        body: impl FnOnce(&Emitter<'c, '_>, V<'c>, &[V<'c>]) -> Vec<V<'c>>,
    ) -> Vec<V<'c>> {
        let (lo, hi, step) = (
            self.index(lo as i64),
            self.index(hi as i64),
            self.index(step as i64),
        );
        self.for_(lo, hi, step, inits, body)
    }

    /// `scf.parallel (%i) = (lo) to (hi) step (step)`: the grid loop, which the GPU pipeline
    /// maps onto blocks and threads and the host pipeline turns into a sequential loop.
    pub(crate) fn parallel(
        &self,
        lo: V<'c>,
        hi: V<'c>,
        step: V<'c>,
        body: impl FnOnce(&Emitter<'c, '_>, V<'c>),
    ) {
        let region = self.nested(&[self.index_t()], |e, args| {
            body(e, args[0]);
            e.emit("scf.reduce", &[], &[], &[]);
        });
        let segments = DenseI32ArrayAttribute::new(self.cx, &[1, 1, 1, 0]).into();
        let op = OperationBuilder::new("scf.parallel", self.loc)
            .add_operands(&[lo, hi, step])
            .add_attributes(&[(Identifier::new(self.cx, "operandSegmentSizes"), segments)])
            .add_regions([region])
            .build()
            .expect("one-dimensional scf.parallel without reductions");
        self.append(op);
    }

    /// `scf.if` with results: both branches return values of `types`.
    pub(crate) fn if_(
        &self,
        condition: V<'c>,
        types: &[Type<'c>],
        then: impl FnOnce(&Emitter<'c, '_>) -> Vec<V<'c>>,
        otherwise: impl FnOnce(&Emitter<'c, '_>) -> Vec<V<'c>>,
    ) -> Vec<V<'c>> {
        let then = self.nested(&[], |e, _| {
            let values = then(e);
            e.append(scf::r#yield(&values, e.loc));
        });
        let otherwise = self.nested(&[], |e, _| {
            let values = otherwise(e);
            e.append(scf::r#yield(&values, e.loc));
        });
        self.results(self.append(scf::r#if(condition, types, then, otherwise, self.loc)))
    }

    /// `scf.index_switch` over `selector` with cases `0..cases`: `branch(e, Some(case))` builds
    /// each case and `branch(e, None)` the default; all return values of `types`.
    pub(crate) fn switch(
        &self,
        selector: V<'c>,
        cases: usize,
        types: &[Type<'c>],
        branch: impl Fn(&Emitter<'c, '_>, Option<usize>) -> Vec<V<'c>>,
    ) -> Vec<V<'c>> {
        let region = |case| {
            self.nested(&[], |e, _| {
                let values = branch(e, case);
                e.append(scf::r#yield(&values, e.loc));
            })
        };
        let mut regions = vec![region(None)];
        regions.extend((0..cases).map(|case| region(Some(case))));
        let labels: Vec<i64> = (0..cases as i64).collect();
        self.results(self.append(scf::index_switch(
            self.cx,
            selector,
            types,
            DenseI64ArrayAttribute::new(self.cx, &labels),
            regions,
            self.loc,
        )))
    }

    /// `scf.if` without results or else branch.
    pub(crate) fn when(&self, condition: V<'c>, then: impl FnOnce(&Emitter<'c, '_>)) {
        let then = self.nested(&[], |e, _| {
            then(e);
            e.append(scf::r#yield(&[], e.loc));
        });
        self.append(scf::r#if(condition, &[], then, Region::new(), self.loc));
    }

    /// A stack buffer of `len` f32 (`memref.alloca`, 64-byte aligned). Allocated in a
    /// function's entry block it is static (LLVM reserves it once in the frame); inside a
    /// loop it would grow the stack every iteration.
    pub(crate) fn alloca_f32(&self, len: usize) -> V<'c> {
        let ty = melior::ir::r#type::MemRefType::new(self.f32_t(), &[len as i64], None, None);
        let align = melior::ir::attribute::IntegerAttribute::new(self.int_t(64), 64);
        self.first(melior::dialect::memref::alloca(
            self.cx,
            ty,
            &[],
            &[],
            Some(align),
            self.loc,
        ))
    }

    /// `memref<len x f32>` in the GPU's workgroup (shared) memory.
    fn workgroup_t(&self, len: usize) -> melior::ir::r#type::MemRefType<'c> {
        let space = self.parse_attr("#gpu.address_space<workgroup>");
        melior::ir::r#type::MemRefType::new(self.f32_t(), &[len as i64], None, Some(space))
    }

    /// Declares `memref.global @name` of `len` f32 in workgroup memory (appended to the
    /// current block, which must be a module's): a block's shared array. The GPU kernel
    /// outliner copies it into the kernel's `gpu.module`, and the NVVM lowering makes it a
    /// `.shared` array of the entry.
    pub(crate) fn workgroup_global(&self, name: &str, len: usize) {
        self.append(melior::dialect::memref::global(
            self.cx,
            name,
            Some("private"),
            self.workgroup_t(len),
            None,
            false,
            None,
            self.loc,
        ));
    }

    /// The workgroup array `name` declared by [`Emitter::workgroup_global`].
    pub(crate) fn workgroup_buffer(&self, name: &str, len: usize) -> V<'c> {
        self.first(melior::dialect::memref::get_global(
            self.cx,
            name,
            self.workgroup_t(len),
            self.loc,
        ))
    }

    /// `gpu.barrier`: every thread of the block waits until all have reached it, and the
    /// workgroup memory written before it is visible to all after it.
    pub(crate) fn barrier(&self) {
        self.emit("gpu.barrier", &[], &[], &[]);
    }

    // ---- functions ----

    /// Appends `func.func @name(arguments)` with no results; `body` fills its entry block
    /// (a `return` is added). Private functions get internal linkage, so they are not
    /// exported from `host.so` and LLVM inlines them into their one caller.
    pub(crate) fn function(
        &self,
        name: &str,
        arguments: &[Type<'c>],
        private: bool,
        body: impl FnOnce(&Emitter<'c, '_>, &[V<'c>]),
    ) {
        let region = self.nested(arguments, |e, args| {
            body(e, args);
            e.append(func::r#return(&[], e.loc));
        });
        let mut attributes = Vec::new();
        if private {
            attributes.push((
                Identifier::new(self.cx, "sym_visibility"),
                StringAttribute::new(self.cx, "private").into(),
            ));
            attributes.push((
                Identifier::new(self.cx, "llvm.linkage"),
                self.parse_attr("#llvm.linkage<internal>"),
            ));
        }
        self.append(func::func(
            self.cx,
            StringAttribute::new(self.cx, name),
            TypeAttribute::new(FunctionType::new(self.cx, arguments, &[]).into()),
            region,
            &attributes,
            self.loc,
        ));
    }

    /// `func.func private @name(vector<8xf32>) -> vector<8xf32>`: an external declaration.
    pub(crate) fn declare_vector_function(&self, name: &str) {
        let v8 = self.vf32(8);
        self.append(func::func(
            self.cx,
            StringAttribute::new(self.cx, name),
            TypeAttribute::new(FunctionType::new(self.cx, &[v8], &[v8]).into()),
            Region::new(),
            &[(
                Identifier::new(self.cx, "sym_visibility"),
                StringAttribute::new(self.cx, "private").into(),
            )],
            self.loc,
        ));
    }

    /// `func.call @name(arguments)` to a function without results.
    pub(crate) fn call(&self, name: &str, arguments: &[V<'c>]) {
        self.append(func::call(
            self.cx,
            FlatSymbolRefAttribute::new(self.cx, name),
            arguments,
            &[],
            self.loc,
        ));
    }

    /// `llvm.load` of `ty` from element `index` of the array at `base` whose elements are
    /// `elem`-typed (pointer-sized or i64 in the kernel ABI).
    pub(crate) fn load_slot(&self, base: V<'c>, index: usize, elem: Type<'c>) -> V<'c> {
        let address = self.first(melior::dialect::llvm::get_element_ptr(
            self.cx,
            base,
            DenseI32ArrayAttribute::new(self.cx, &[index as i32]),
            elem,
            self.ptr_t(),
            self.loc,
        ));
        self.first(melior::dialect::llvm::load(
            self.cx,
            address,
            elem,
            self.loc,
            Default::default(),
        ))
    }

    /// A rank-1 `memref<?x elem>` viewing the memory at `ptr`, built as the LLVM descriptor
    /// the memref lowering expects (allocated = aligned = `ptr`, offset 0, stride 1) and cast
    /// to the memref type; after lowering, the cast pair folds away.
    ///
    /// The size field is never read (kernels compute their own in-bounds indices), so it is
    /// set to the largest i64.
    pub(crate) fn memref_at(&self, ptr: V<'c>, elem: Type<'c>) -> V<'c> {
        let descriptor_t =
            self.parse_type("!llvm.struct<(ptr, ptr, i64, array<1 x i64>, array<1 x i64>)>");
        let i64_t = self.int_t(64);
        let fields = [
            (vec![0], ptr),
            (vec![1], ptr),
            (vec![2], self.int_const(0, i64_t)),
            (vec![3, 0], self.int_const(i64::MAX, i64_t)),
            (vec![4, 0], self.int_const(1, i64_t)),
        ];
        let mut descriptor = self.first(melior::dialect::llvm::undef(descriptor_t, self.loc));
        for (position, value) in fields {
            descriptor = self.first(melior::dialect::llvm::insert_value(
                self.cx,
                descriptor,
                DenseI64ArrayAttribute::new(self.cx, &position),
                value,
                self.loc,
            ));
        }
        let memref_t = self.parse_type(&format!("memref<?x{elem}>"));
        self.emit1(
            "builtin.unrealized_conversion_cast",
            &[descriptor],
            memref_t,
            &[],
        )
    }
}
