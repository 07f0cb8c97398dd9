//! The `.zir` parser: reads exactly what the printer writes (plus comments).
//!
//! Ops are rebuilt through `Graph::add_op`, so the parser re-infers every result type and
//! rejects a text whose written types disagree with the op's typing rule.
//! [`parse_module_unverified`] reads the same syntax but leaves those meaning checks to the
//! verifier.

use std::collections::HashMap;

use super::ParseError;
use super::lex::{Tok, Token, lex};
use crate::graph::{Graph, Loc, Module, NodeId, Param, ParamId, Placement, ValueRef};
use crate::op::{Attr, OpKind};
use crate::types::{Dim, Elem, Sym, TensorType};

/// Parses a module.
pub fn parse_module(src: &str) -> Result<Module, ParseError> {
    parse(src, Check::Full)
}

/// Parses a module without checking what the verifier checks: each op gets the result
/// types the text writes, and a graph, input or output name given twice is kept. Syntax and
/// name resolution are checked as by [`parse_module`]. This is how a text can state a
/// module that only the verifier rejects, which the verifier's negative tests need; every
/// other reader wants [`parse_module`].
pub fn parse_module_unverified(src: &str) -> Result<Module, ParseError> {
    parse(src, Check::Syntax)
}

fn parse(src: &str, check: Check) -> Result<Module, ParseError> {
    let (toks, eof) = lex(src)?;
    let mut p = Parser {
        toks,
        eof,
        i: 0,
        check,
    };
    p.module()
}

/// How much of a module's meaning the parser checks beyond syntax and names.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Re-infer every result type; reject graph, input and output names given twice.
    Full,
    /// Trust the written types and names; the verifier judges them.
    Syntax,
}

struct Parser {
    toks: Vec<Token>,
    /// The end of input, which every position from `toks.len()` on reads.
    eof: Token,
    /// The current token: `toks[i]`, or `eof` once `i` reaches `toks.len()`.
    i: usize,
    check: Check,
}

impl Parser {
    /// Token `i`; the end-of-input token at and after the end.
    fn tok(&self, i: usize) -> &Token {
        self.toks.get(i).unwrap_or(&self.eof)
    }

    fn peek(&self) -> &Tok {
        &self.tok(self.i).tok
    }

    /// The current token; steps to the next one unless at the end of input.
    fn next(&mut self) -> Token {
        let t = self.tok(self.i).clone();
        if self.i < self.toks.len() {
            self.i += 1;
        }
        t
    }

    fn err<T>(&self, msg: impl Into<String>) -> Result<T, ParseError> {
        let t = self.tok(self.i);
        Err(ParseError {
            line: t.line,
            col: t.col,
            msg: msg.into(),
        })
    }

    fn describe(t: &Tok) -> String {
        match t {
            Tok::Value(v) => format!("`%{v}`"),
            Tok::ParamRef(n) => format!("`@{n}`"),
            Tok::AtName(n) => format!("`@{n}`"),
            Tok::Ident(s) => format!("`{s}`"),
            Tok::Int(n) => format!("`{n}`"),
            Tok::Float(x) => format!("`{x:?}`"),
            Tok::Str(s) => format!("{s:?}"),
            Tok::Punct(c) => format!("`{c}`"),
            Tok::Eof => "end of input".into(),
        }
    }

    fn expect_punct(&mut self, c: char) -> Result<(), ParseError> {
        if *self.peek() == Tok::Punct(c) {
            self.next();
            Ok(())
        } else {
            self.err(format!(
                "expected `{c}`, found {}",
                Self::describe(self.peek())
            ))
        }
    }

    fn eat_punct(&mut self, c: char) -> bool {
        if *self.peek() == Tok::Punct(c) {
            self.next();
            true
        } else {
            false
        }
    }

    fn expect_keyword(&mut self, kw: &str) -> Result<(), ParseError> {
        match self.peek() {
            Tok::Ident(s) if s == kw => {
                self.next();
                Ok(())
            }
            t => self.err(format!("expected `{kw}`, found {}", Self::describe(t))),
        }
    }

    fn ident(&mut self) -> Result<String, ParseError> {
        match self.peek().clone() {
            Tok::Ident(s) => {
                self.next();
                Ok(s)
            }
            t => self.err(format!("expected a name, found {}", Self::describe(&t))),
        }
    }

    fn at_name(&mut self) -> Result<String, ParseError> {
        match self.peek().clone() {
            Tok::AtName(s) => {
                self.next();
                Ok(s)
            }
            Tok::Str(s) => {
                self.next();
                Ok(s)
            }
            t => self.err(format!("expected `@name`, found {}", Self::describe(&t))),
        }
    }

    fn string(&mut self) -> Result<String, ParseError> {
        match self.peek().clone() {
            Tok::Str(s) => {
                self.next();
                Ok(s)
            }
            t => self.err(format!("expected a string, found {}", Self::describe(&t))),
        }
    }

    fn int(&mut self) -> Result<u64, ParseError> {
        match self.peek().clone() {
            Tok::Int(n) => {
                self.next();
                Ok(n)
            }
            t => self.err(format!("expected an integer, found {}", Self::describe(&t))),
        }
    }

    fn module(&mut self) -> Result<Module, ParseError> {
        self.expect_keyword("module")?;
        let mut m = Module {
            name: self.at_name()?,
            ..Module::default()
        };
        while matches!(self.peek(), Tok::Ident(s) if s == "param") {
            self.next();
            let id = match self.next().tok {
                Tok::ParamRef(n) => n,
                t => {
                    self.i -= 1;
                    return self.err(format!("expected `@N`, found {}", Self::describe(&t)));
                }
            };
            if id as usize != m.params.len() {
                return self.err(format!(
                    "parameters must be numbered in order: expected @{}, found @{id}",
                    m.params.len()
                ));
            }
            let name = self.string()?;
            self.expect_punct(':')?;
            let ty_tok = self.i;
            let ty = self.ty()?;
            let mut shape = Vec::new();
            for d in &ty.dims {
                match d.as_const() {
                    Some(n) => shape.push(n),
                    None => return Err(self.at(ty_tok, "parameter shapes must be static")),
                }
            }
            let mut param = Param {
                name,
                elem: ty.elem,
                shape,
                tie: None,
                hash: None,
            };
            loop {
                match self.peek() {
                    Tok::Ident(s) if s == "tie" => {
                        self.next();
                        self.expect_punct('=')?;
                        param.tie = Some(self.string()?);
                    }
                    Tok::Ident(s) if s == "hash" => {
                        self.next();
                        self.expect_punct('=')?;
                        param.hash = Some(self.int()?);
                    }
                    _ => break,
                }
            }
            m.params.push(param);
        }
        while *self.peek() != Tok::Eof {
            let header = self.i;
            let g = self.graph(&m)?;
            if self.check == Check::Full && m.graph(&g.name).is_some() {
                return Err(self.at(header, format!("graph `@{}` is defined twice", g.name)));
            }
            m.graphs.push(g);
        }
        Ok(m)
    }

    fn ty(&mut self) -> Result<TensorType, ParseError> {
        let elem_name = self.ident()?;
        let Some(elem) = Elem::parse(&elem_name) else {
            self.i -= 1;
            return self.err(format!("unknown element type `{elem_name}`"));
        };
        let dims = self.dims()?;
        Ok(TensorType::new(elem, dims))
    }

    fn dims(&mut self) -> Result<Vec<Dim>, ParseError> {
        self.expect_punct('[')?;
        let mut dims = Vec::new();
        if self.eat_punct(']') {
            return Ok(dims);
        }
        loop {
            let d = match self.next().tok {
                Tok::Int(n) => Dim::Const(n as usize),
                Tok::Ident(s) if s == "T" => Dim::Sym(Sym::T),
                Tok::Ident(s) if s == "C" => Dim::Sym(Sym::C),
                t => {
                    self.i -= 1;
                    return self.err(format!(
                        "expected a dimension (integer, T or C), found {}",
                        Self::describe(&t)
                    ));
                }
            };
            dims.push(d);
            if self.eat_punct(']') {
                return Ok(dims);
            }
            self.expect_punct(',')?;
        }
    }

    fn graph(&mut self, m: &Module) -> Result<Graph, ParseError> {
        self.expect_keyword("graph")?;
        let mut g = Graph::new(self.at_name()?);
        let mut values: HashMap<String, ValueRef> = HashMap::new();
        let mut params: HashMap<u32, ValueRef> = HashMap::new();
        self.expect_punct('(')?;
        if !self.eat_punct(')') {
            loop {
                let name_tok = self.i;
                let name = match self.next().tok {
                    Tok::Value(v) => v,
                    t => {
                        self.i -= 1;
                        return self
                            .err(format!("expected `%input`, found {}", Self::describe(&t)));
                    }
                };
                self.expect_punct(':')?;
                let ty = self.ty()?;
                let v = g.add_input(name.clone(), ty);
                if values.insert(name.clone(), v).is_some() && self.check == Check::Full {
                    return Err(self.at(name_tok, format!("input `%{name}` is declared twice")));
                }
                if self.eat_punct(')') {
                    break;
                }
                self.expect_punct(',')?;
            }
        }
        self.expect_punct('{')?;
        let mut loc = Loc::Embed;
        loop {
            match self.peek().clone() {
                Tok::Ident(s) if s == "return" => {
                    self.next();
                    self.outputs(&mut g, &values)?;
                    self.expect_punct('}')?;
                    return Ok(g);
                }
                Tok::Ident(s) if s == "layer" => {
                    self.next();
                    loc = Loc::Layer(self.int()? as u32);
                    self.expect_punct(':')?;
                }
                Tok::Ident(s) if s == "embed" || s == "head" => {
                    self.next();
                    loc = if s == "embed" { Loc::Embed } else { Loc::Head };
                    self.expect_punct(':')?;
                }
                Tok::Value(_) => self.stmt(m, &mut g, &mut values, &mut params, loc)?,
                t => {
                    return self.err(format!(
                        "expected an op, a location label or `return`, found {}",
                        Self::describe(&t)
                    ));
                }
            }
        }
    }

    fn outputs(
        &mut self,
        g: &mut Graph,
        values: &HashMap<String, ValueRef>,
    ) -> Result<(), ParseError> {
        loop {
            let name_tok = self.i;
            let name = self.ident()?;
            self.expect_punct('=')?;
            let v = self.value_use(values)?;
            if self.check == Check::Full && g.outputs.iter().any(|(n, _)| *n == name) {
                return Err(self.at(name_tok, format!("output `{name}` is returned twice")));
            }
            g.outputs.push((name, v));
            if !self.eat_punct(',') {
                return Ok(());
            }
        }
    }

    fn value_use(&mut self, values: &HashMap<String, ValueRef>) -> Result<ValueRef, ParseError> {
        match self.peek().clone() {
            Tok::Value(v) => match values.get(&v) {
                Some(&r) => {
                    self.next();
                    Ok(r)
                }
                None => self.err(format!("`%{v}` is used before it is defined")),
            },
            t => self.err(format!("expected a value, found {}", Self::describe(&t))),
        }
    }

    fn stmt(
        &mut self,
        m: &Module,
        g: &mut Graph,
        values: &mut HashMap<String, ValueRef>,
        params: &mut HashMap<u32, ValueRef>,
        loc: Loc,
    ) -> Result<(), ParseError> {
        let stmt_tok = self.i;
        let mut results = Vec::new();
        loop {
            match self.next().tok {
                Tok::Value(v) => results.push(v),
                t => {
                    self.i -= 1;
                    return self.err(format!(
                        "expected a result `%N`, found {}",
                        Self::describe(&t)
                    ));
                }
            }
            if !self.eat_punct(',') {
                break;
            }
        }
        self.expect_punct('=')?;
        let op_name = self.ident()?;
        let mut attrs = Vec::new();
        if self.eat_punct('{') {
            loop {
                let key = self.ident()?;
                let val = if self.eat_punct('=') {
                    self.attr_value()?
                } else {
                    Attr::Flag
                };
                attrs.push((key, val));
                if self.eat_punct('}') {
                    break;
                }
                self.expect_punct(',')?;
            }
        }
        let mut operands = Vec::new();
        loop {
            let v = match self.peek().clone() {
                Tok::ParamRef(n) => {
                    self.next();
                    let Some(p) = m.params.get(n as usize) else {
                        self.i -= 1;
                        return self.err(format!("parameter @{n} is not declared"));
                    };
                    *params
                        .entry(n)
                        .or_insert_with(|| g.add_param(ParamId(n), p))
                }
                _ => self.value_use(values)?,
            };
            operands.push(v);
            if !self.eat_punct(',') {
                break;
            }
        }
        self.expect_punct(':')?;
        let mut tys = Vec::new();
        let mut places = Vec::new();
        loop {
            tys.push(self.ty()?);
            places.push(self.placement()?);
            if !self.eat_punct(',') {
                break;
            }
        }
        let kind = OpKind::from_parts(&op_name, attrs).map_err(|e| self.at(stmt_tok, e.0))?;
        if kind.is_leaf() {
            return Err(self.at(stmt_tok, format!("`{op_name}` cannot be written as an op")));
        }
        let n = match self.check {
            Check::Full => self.add_inferred(g, kind, &operands, tys, loc, stmt_tok)?,
            Check::Syntax => g.add_op_typed(kind, &operands, tys, loc),
        };
        let produced = g.node(n).results.len();
        if results.len() != produced {
            return Err(self.at(
                stmt_tok,
                format!(
                    "`{op_name}` has {produced} results, {} are named",
                    results.len()
                ),
            ));
        }
        for (r, name) in results.into_iter().enumerate() {
            if values.insert(name.clone(), n.res(r as u16)).is_some() {
                return Err(self.at(stmt_tok, format!("`%{name}` is defined twice")));
            }
        }
        for (r, p) in places.into_iter().enumerate() {
            if let Some(p) = p {
                g.plan
                    .get_or_insert_with(Default::default)
                    .insert(n.res(r as u16), p);
            }
        }
        Ok(())
    }

    /// Adds an op through type inference and checks that the text wrote the types it infers.
    fn add_inferred(
        &self,
        g: &mut Graph,
        kind: OpKind,
        operands: &[ValueRef],
        written: Vec<TensorType>,
        loc: Loc,
        stmt_tok: usize,
    ) -> Result<NodeId, ParseError> {
        let op_name = kind.name();
        let n = g
            .add_op(kind, operands, loc)
            .map_err(|e| self.at(stmt_tok, e.to_string()))?;
        let inferred = &g.node(n).results;
        if *inferred != written {
            let show = |t: &[TensorType]| {
                t.iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(self.at(
                stmt_tok,
                format!(
                    "`{op_name}` produces {}, but the text says {}",
                    show(inferred),
                    show(&written)
                ),
            ));
        }
        Ok(n)
    }

    /// An optional `in s3` / `in conv.0` after a result type.
    fn placement(&mut self) -> Result<Option<Placement>, ParseError> {
        if !matches!(self.peek(), Tok::Ident(s) if s == "in") {
            return Ok(None);
        }
        self.next();
        let name = self.ident()?;
        let slot = name
            .strip_prefix('s')
            .filter(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit()))
            .and_then(|d| d.parse().ok());
        Ok(Some(match slot {
            Some(s) => Placement::Slot(s),
            None => Placement::Output(name),
        }))
    }

    fn at(&self, tok: usize, msg: impl Into<String>) -> ParseError {
        let t = self.tok(tok);
        ParseError {
            line: t.line,
            col: t.col,
            msg: msg.into(),
        }
    }

    fn attr_value(&mut self) -> Result<Attr, ParseError> {
        match self.peek().clone() {
            Tok::Int(n) => {
                self.next();
                Ok(Attr::Int(n as usize))
            }
            Tok::Float(x) => {
                self.next();
                Ok(Attr::Float(x))
            }
            Tok::Ident(s) => {
                self.next();
                Ok(Attr::Ident(s))
            }
            Tok::Str(s) => {
                self.next();
                Ok(Attr::Str(s))
            }
            Tok::Punct('[') => Ok(Attr::Dims(self.dims()?)),
            t => self.err(format!(
                "expected an attribute value, found {}",
                Self::describe(&t)
            )),
        }
    }
}
