//! Every generated kernel against the reference math, through the `host.so` ABI; the PTX of
//! every kernel through `ptxas`; determinism, dumps and typed errors of the compile entry
//! points.

mod cases;
mod harness;

mod attention;
mod build;
mod epilogue;
mod gemv;
mod gpu;
mod mamba;
mod misc;
mod norm;
