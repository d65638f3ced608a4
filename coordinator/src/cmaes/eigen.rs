//! Symmetric eigendecomposition through faer, pinned to sequential execution.
//!
//! The coordinator rebuilds a run from its persisted state after a crash and must draw the
//! bit-identical population again, so the decomposition must not depend on how many threads
//! a machine has: `Par::Seq` fixes the blocking and the summation order.

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::evd::{self, ComputeEigenvectors};
use faer::{Mat, MatRef, Par};

/// The eigenvalues d² in ascending order and the eigenvectors as the columns of a row-major
/// n×n matrix B, so that `a = B·diag(d²)·Bᵀ`.
#[derive(Clone, Debug, PartialEq)]
pub struct SymmetricEigen {
    pub eigenvalues: Vec<f64>,
    pub eigenvectors: Vec<f64>,
}

/// Decomposes the symmetric row-major n×n matrix `a`; only its lower triangle is read.
/// Fails only when the iteration does not converge; non-finite input may instead come back
/// as non-finite eigenpairs, which the caller must check.
///
/// # Panics
/// If `a` does not hold n·n values.
pub fn symmetric_eigen(a: &[f64], n: usize) -> Result<SymmetricEigen, evd::EvdError> {
    assert_eq!(a.len(), n * n, "symmetric_eigen: a must hold n*n values");
    let par = Par::Seq;
    let a = MatRef::from_row_major_slice(a, n, n);
    let mut u = Mat::<f64>::zeros(n, n);
    let mut s = faer::diag::Diag::<f64>::zeros(n);
    let mut scratch = MemBuffer::new(evd::self_adjoint_evd_scratch::<f64>(
        n,
        ComputeEigenvectors::Yes,
        par,
        Default::default(),
    ));
    evd::self_adjoint_evd(
        a,
        s.as_mut(),
        Some(u.as_mut()),
        par,
        MemStack::new(&mut scratch),
        Default::default(),
    )?;
    let eigenvalues: Vec<f64> = s.column_vector().iter().copied().collect();
    let mut eigenvectors = vec![0.0; n * n];
    for (i, row) in eigenvectors.chunks_exact_mut(n).enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = u[(i, j)];
        }
    }
    Ok(SymmetricEigen {
        eigenvalues,
        eigenvectors,
    })
}
