"""SMT proofs of a domain file's per-neuron rules, over the reals (``absdsl prove FILE``).

Proved, per rule: every relaxation case (``lower(x) <= f(x) <= upper(x)`` for all
``l <= x <= u`` under the case's guard and the negation of the earlier ones), every forward
domain's input, affine (a symbolic 2x2 map and bias), add and activation rules, on a
symbolic state of one or two neurons with two shared generators: for every x in
gamma(input state), the op's output lies in gamma(output state) at the same noise. Rules are
interpreted from the syntax tree (:mod:`absdsl.prove.interp`), never evaluated as Python.
"""

from .core import (
    ProofReport,
    ProofResult,
    SolverMissing,
    file_obligations,
    prove,
    prove_file,
    require_solver,
    solver_available,
)

__all__ = ["ProofReport", "ProofResult", "SolverMissing", "file_obligations", "prove",
           "prove_file", "require_solver", "solver_available"]
