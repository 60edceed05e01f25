"""The experiment's table (the paper's Table 1 layout), its findings and its figure."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from absdsl import domains as registry

from .config import METRICS, OPTIMIZERS, ParadoxConfig, eps_key
from .plan import run_name


# ---- the table ----------------------------------------------------------------------------
def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def build_tables(cfg: ParadoxConfig, certs: dict[str, dict[str, Any]],
                 tight: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per eps: Table 1's rows (PGD start, then one per domain) and the findings."""
    several = len(cfg.eps) > 1
    tables = []
    for eps in cfg.eps:
        start = run_name(eps, "pgd", None, several)
        rows = []
        pgd_cert = certs[start]
        rows.append({
            "domain": "PGD",
            "grad": {m: pgd_cert[f"{m}_acc"] for m in METRICS}, "pgpe": None,
            "tightness": None, "undecided": {"grad": _undecided(pgd_cert)},
        })
        for domain in cfg.domains:
            row: dict[str, Any] = {"domain": domain}
            for opt in OPTIMIZERS:
                name = run_name(eps, opt, domain, several)
                row[opt] = ({m: certs[name][f"{m}_acc"] for m in METRICS}
                            if name in certs else None)
                row[f"tightness_{opt}"] = (tight[name]["auc"].get(domain) if name in tight
                                           else None)
                if name in certs:
                    row.setdefault("undecided", {})[opt] = _undecided(certs[name])
            row["tightness"] = tight[start]["auc"][domain]  # on the shared PGD start
            rows.append(row)
        prefix = f"eps{eps_key(eps)}/" if several else ""
        networks = {name: {"auc": t["auc"],
                           "propagation_tightness": t["propagation_tightness"]}
                    for name, t in tight.items() if name.startswith(prefix)}
        tables.append({"eps": eps, "rows": rows, "tightness_by_network": networks,
                       "findings": findings([r for r in rows if r["domain"] != "PGD"],
                                            int(pgd_cert.get("n", 0)) or None)})
    return tables


def _undecided(summary: dict[str, Any]) -> int | None:
    """How many inputs every stage of the cascade left undecided (``unknown``)."""
    counts = summary.get("counts")
    return None if counts is None else int(counts.get("unknown", 0))


def _spearman(a: list[float], b: list[float]) -> float | None:
    """Rank correlation (average ranks for ties); None if either side is constant."""
    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    if len(a) < 2:
        return None
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    va = sum((x - ma) ** 2 for x in ra)
    vb = sum((y - mb) ** 2 for y in rb)
    if va == 0 or vb == 0:
        return None
    return cov / math.sqrt(va * vb)


def _above(by: dict[str, float], a: str, b: list[str], n: int | None) -> dict[str, Any] | None:
    """Is ``a``'s certified accuracy above every domain of ``b``? With the smallest gap, in
    points, and whether that gap is within two standard errors of a difference of two
    accuracies on ``n`` test inputs (the same inputs, so this is conservative)."""
    others = [d for d in b if d in by and d != a]
    if a not in by or not others:
        return None
    gap = min(by[a] - by[d] for d in others)
    out: dict[str, Any] = {"holds": bool(gap > 0), "gap_points": 100 * gap}
    if n:
        worst = max(others, key=lambda d: by[d])
        se = math.sqrt((by[a] * (1 - by[a]) + by[worst] * (1 - by[worst])) / n)
        out["two_se_points"] = 200 * se
        out["within_noise"] = bool(abs(gap) <= 2 * se)
    return out


# the paper's orderings (section 4.1): name -> (optimiser, the domain that should be above,
# the domains it should be above)
PAPER_ORDERINGS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "IBP best under GRAD": ("grad", "box", ("hbox", "zonotope", "crown-ibp", "deeppoly")),
    "DeepPoly above IBP under PGPE": ("pgpe", "deeppoly", ("box",)),
    "DeepPoly above IBP under RGS": ("rgs", "deeppoly", ("box",)),
}


def findings(rows: list[dict[str, Any]], n: int | None = None) -> dict[str, Any]:
    """Does the paradox (GRAD: tighter trains worse) and its reversal (smoothing) show here?

    Measured as the rank correlation between a domain's tightness on the shared start and
    the certified accuracy it trains to: negative under GRAD is the paradox, positive under
    PGPE (or RGS) the reversal; also whether the loosest domain beats the tightest under
    each, and the paper's two orderings (IBP best under GRAD; DeepPoly above IBP under
    smoothing) with their gaps against the noise of ``n`` test inputs.
    """
    out: dict[str, Any] = {}
    tight = [r["tightness"] for r in rows]
    loosest = rows[min(range(len(rows)), key=lambda i: tight[i])]["domain"] if rows else None
    tightest = rows[max(range(len(rows)), key=lambda i: tight[i])]["domain"] if rows else None
    out["loosest_domain"], out["tightest_domain"] = loosest, tightest
    certified: dict[str, dict[str, float]] = {}
    for opt in OPTIMIZERS:
        have = [r for r in rows if r.get(opt) is not None]
        certified[opt] = {r["domain"]: r[opt]["certified"] for r in have}
        if len(have) < 2:
            continue
        cert = [r[opt]["certified"] for r in have]
        rho = _spearman([r["tightness"] for r in have], cert)
        by = certified[opt]
        out[opt] = {
            "rank_correlation_tightness_vs_certified": rho,
            "loosest_minus_tightest_certified": (
                by[loosest] - by[tightest] if loosest in by and tightest in by else None),
            "best_domain": max(by, key=lambda d: by[d]),
        }

    def signed(opt: str, positive: bool) -> bool | None:
        f = out.get(opt)
        rho = None if f is None else f["rank_correlation_tightness_vs_certified"]
        return None if rho is None else bool(rho > 0 if positive else rho < 0)

    out["paradox_under_grad"] = signed("grad", False)
    out["reversal_under_pgpe"] = signed("pgpe", True)
    out["reversal_under_rgs"] = signed("rgs", True)
    orderings = {}
    for name, (opt, above, below) in PAPER_ORDERINGS.items():
        result = _above(certified.get(opt, {}), above, list(below), n)
        if result is not None:
            orderings[name] = result
    out["paper_orderings"] = orderings
    return out


def table_optimizers(tables: list[dict[str, Any]]) -> list[str]:
    """The optimisers with at least one trained row (the columns the table shows)."""
    return [o for o in OPTIMIZERS
            if any(r.get(o) for t in tables for r in t["rows"] if r["domain"] != "PGD")] \
        or ["grad"]


def format_tables(tables: list[dict[str, Any]], dataset: str) -> str:
    """The paper's Table 1 layout as text (accuracies in %, tightness as AUC)."""
    opts = table_optimizers(tables)
    w = 8 * len(opts)
    lines: list[str] = []
    head1 = (f"{'Dataset':<10}{'eps':<6}{'Relaxation':<12}{'Nat. Acc. [%]':^{w}}"
             f"{'Cert. Acc. [%]':^{w}}{'Adv. Acc. [%]':^{w}}{'Tightness (AUC)':^{w + 8}}")
    head2 = (f"{'':<28}" + "".join(f"{o.upper():>8}" for o in opts) * 3
             + f"{'start':>8}" + "".join(f"{o.upper():>8}" for o in opts))
    lines += [head1, head2, "-" * len(head2)]
    for t in tables:
        for i, r in enumerate(t["rows"]):
            name = registry.title(r["domain"])
            cells = []
            for m in METRICS:
                for opt in opts:
                    cells.append(_pct(r[opt][m]) if r.get(opt) else "-")
            tights = [r.get("tightness")] + [r.get(f"tightness_{o}") for o in opts]
            tcells = ["-" if v is None else f"{v:.3f}" for v in tights]
            lines.append(f"{dataset if i == 0 else '':<10}"
                         f"{eps_key(t['eps']) if i == 0 else '':<6}{name:<12}"
                         + "".join(f"{c:>8}" for c in cells)
                         + "".join(f"{c:>8}" for c in tcells))
        undecided = [f"{registry.title(r['domain'])} " + " ".join(
            f"{o.upper()} {n}" for o, n in r["undecided"].items() if n is not None)
            for r in t["rows"] if r.get("undecided")]
        if undecided:
            lines.append("  undecided inputs (unknown after every stage): "
                         + "; ".join(undecided))
        f = t["findings"]
        for opt, what in (("grad", "paradox_under_grad"), ("pgpe", "reversal_under_pgpe"),
                          ("rgs", "reversal_under_rgs")):
            if opt in f:
                rho = f[opt]["rank_correlation_tightness_vs_certified"]
                rho_s = "n/a" if rho is None else f"{rho:+.2f}"
                lines.append(f"  {opt.upper()}: rank corr(tightness, certified) = {rho_s}; "
                             f"best {f[opt]['best_domain']}; {what.replace('_', ' ')}: "
                             f"{f.get(what)}")
        for name, res in f.get("paper_orderings", {}).items():
            noise = ""
            if "two_se_points" in res:
                noise = (f"; 2 s.e. {res['two_se_points']:.1f} points"
                         + (", within noise" if res["within_noise"] else ""))
            lines.append(f"  paper: {name}: {'yes' if res['holds'] else 'no'} "
                         f"(gap {res['gap_points']:+.1f} points{noise})")
        lines.append("")
    lines.append("Tightness: AUC of the domain's certified accuracy over eps in [0, eps_max] "
                 "divided by eps_max; 'start' on the shared PGD network, the other columns on "
                 "the network the domain trained.")
    return "\n".join(lines)


def plot(tables: list[dict[str, Any]], path: Path, title: str) -> None:
    """Grouped bars per eps: natural / certified / adversarial (GRAD vs PGPE) and tightness."""
    import matplotlib  # lazy: heavy dependency matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: heavy dependency matplotlib

    n = len(tables)
    fig, axes = plt.subplots(n, 4, figsize=(16, 3.6 * n), squeeze=False)
    colors = {"grad": "#4c72b0", "pgpe": "#dd8452", "rgs": "#8172b3"}
    opts = table_optimizers(tables)
    width = 0.8 / len(opts)
    for row_axes, t in zip(axes, tables, strict=True):
        rows = [r for r in t["rows"] if r["domain"] != "PGD"]
        pgd = t["rows"][0]["grad"]
        names = [r["domain"] for r in rows]
        xs = list(range(len(rows)))
        for ax, m in zip(row_axes[:3], METRICS, strict=True):
            for k, opt in enumerate(opts):
                vals = [100 * r[opt][m] if r.get(opt) else 0.0 for r in rows]
                ax.bar([x + (k - (len(opts) - 1) / 2) * width for x in xs], vals, width=width,
                       color=colors[opt], label=opt.upper())
            ax.axhline(100 * pgd[m], color="k", ls="--", lw=1, label="PGD start")
            ax.set_xticks(xs, names)
            ax.set_title(f"{m} accuracy, eps {eps_key(t['eps'])}")
            ax.set_ylabel("%")
            ax.set_ylim(0, 100)
        ax = row_axes[3]
        ax.bar(xs, [r["tightness"] for r in rows], color="#55a868")
        ax.set_xticks(xs, names)
        ax.set_title("tightness on the PGD start (AUC)")
        ax.set_ylim(0, 1)
        row_axes[0].legend(loc="lower left", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
