"""The checker's report: counterexamples, property results, the whole check."""

from __future__ import annotations

from dataclasses import dataclass, field

from .surfaces import BASE_SURFACES, Surface


@dataclass
class Counterexample:
    prop: str
    network: str
    lo: list
    hi: list
    point: list | None
    which: str           # "lower bound", "upper bound", "NaN bound", relaxation line ...
    index: tuple
    value: float
    bound: float
    excess: float
    tol: float
    spec: list | None = None
    note: str = ""

    def format(self) -> str:
        lines = [f"counterexample ({self.prop}): {self.which} violated by {self.excess:.6g} "
                 f"(tolerance {self.tol:.3g})", "network:", self.network,
                 f"box lo = {self.lo}", f"box hi = {self.hi}"]
        if self.spec is not None:
            lines.append(f"spec C = {self.spec}")
        if self.point is not None:
            lines.append(f"point x = {self.point}")
        lines.append(f"at output index {self.index}: concrete value {self.value:.17g}, "
                     f"bound {self.bound:.17g}")
        if self.note:
            lines.append(self.note)
        return "\n".join(lines)


@dataclass
class PropertyResult:
    name: str
    passed: bool
    examples: int
    counterexample: Counterexample | None = None
    error: str = ""

    def format(self) -> str:
        if self.passed:
            return f"PASS  {self.name} ({self.examples} examples)"
        body = self.counterexample.format() if self.counterexample else self.error
        return f"FAIL  {self.name}\n" + "\n".join("      " + ln for ln in body.splitlines())


@dataclass
class RuleReach:
    """How many examples reached each rule (``rule`` as written: kind, ops and file:line)."""

    rule: str
    ops: set[str]
    examples: int = 0



@dataclass
class CheckReport:
    domain: str
    results: list[PropertyResult] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    surfaces: list[Surface] = field(default_factory=list)
    reach: list[RuleReach] = field(default_factory=list)  # examples per rule ("rules")

    @property
    def ok(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def counterexample(self) -> Counterexample | None:
        return next((r.counterexample for r in self.results if r.counterexample), None)

    def format(self) -> str:
        lines = [f"absdsl check: domain {self.domain}"]
        if self.unsupported:
            lines.append(f"SKIP  ops without a rule in this domain: {', '.join(self.unsupported)}")
        extra = [s for s in self.surfaces if s.where != "built in"
                 and s not in BASE_SURFACES]
        if extra:
            lines.append("aimed at the guard surfaces " + "; ".join(
                f"{s.a:g} l + {s.b:g} u + {s.c:g} = 0" for s in extra[:8])
                + (f" (+{len(extra) - 8})" if len(extra) > 8 else ""))
        lines += [r.format() for r in self.results]
        for r in self.reach:
            state = "REACH" if r.examples else "FAIL "
            ops = f" via {', '.join(sorted(r.ops))}" if r.ops else ""
            lines.append(f"{state} {r.rule}: {r.examples} examples{ops}")
        lines.append("OK" if self.ok else "FAILED")
        return "\n".join(lines)


class Violation(AssertionError):
    def __init__(self, cex: Counterexample) -> None:
        super().__init__(cex.format())
        self.cex = cex
