"""``absdsl bench verify DIR``: run ``absdsl verify`` over a folder in VNN-COMP layout.

    absdsl bench verify DIR [--cap S] [--answers results.csv] [--every K] [--limit N]
    python benchmarks/bench_verify.py DIR ...              (the same, as a script)

``DIR/instances.csv`` lists ``onnx,vnnlib,timeout`` per line (paths relative to DIR; ``.gz``
files are read through a decompressed copy). Each instance is decided in this process with
``min(timeout, --cap)`` seconds, parsing and loading included (``decide_files``, the code of
``absdsl verify``); a bad file is an ``error``. The table prints per instance the answer, the
expected answer, seconds and the stage that decided, then the totals of unsat / sat / unknown
/ timeout / error, the correct answers, the **wrong** ones (sat against an expected unsat or
the reverse) and the overruns (more than one second past the limit).

The answers file has the columns ``benchmark,onnx,vnnlib,expected`` (more columns and one
row per competing tool are fine): the format of the competition's collected results.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from absdsl.errors import AbsdslError, InputError
from absdsl.verification import COMPLETE_STAGES
from absdsl.verification.verify import decide_files

OUTCOMES = ("unsat", "sat", "unknown", "timeout", "error")


@dataclass
class Instance:
    onnx: Path
    vnnlib: Path
    timeout: float


@dataclass
class Row:
    onnx: str
    vnnlib: str
    limit: float
    result: str
    expected: str | None
    seconds: float
    stage: str | None
    branches: int
    detail: str

    @property
    def wrong(self) -> bool:
        return (self.result in ("sat", "unsat") and self.expected in ("sat", "unsat")
                and self.result != self.expected)


def read_instances(folder: Path) -> list[Instance]:
    path = folder / "instances.csv"
    if not path.is_file():
        raise InputError(f"{folder}: no instances.csv (the VNN-COMP layout: onnx,vnnlib,timeout "
                         f"per line)")
    out = []
    with path.open() as f:
        for n, line in enumerate(csv.reader(f), 1):
            if not line or not "".join(line).strip():
                continue
            if len(line) != 3:
                raise InputError(f"{path}:{n}: expected onnx,vnnlib,timeout, got {line}")
            try:
                timeout = float(line[2])
            except ValueError:
                raise InputError(f"{path}:{n}: timeout {line[2]!r} is not a number") from None
            out.append(Instance(folder / line[0].strip(), folder / line[1].strip(), timeout))
    return out


def read_answers(path: Path) -> dict[tuple[str, str, str], str]:
    """(benchmark, onnx name, vnnlib name) -> expected answer; also ("", onnx, vnnlib)."""
    out: dict[tuple[str, str, str], str] = {}
    with path.open() as f:
        reader = csv.DictReader(f)
        missing = {"onnx", "vnnlib", "expected"} - set(reader.fieldnames or [])
        if missing:
            raise InputError(f"{path}: the answers file lacks the columns {sorted(missing)}")
        for row in reader:
            onnx, prop = _name(row["onnx"]), _name(row["vnnlib"])
            out[(row.get("benchmark", ""), onnx, prop)] = row["expected"]
            out[("", onnx, prop)] = row["expected"]
    return out


def _name(path: str) -> str:
    return Path(path.strip()).name.removesuffix(".gz")


def _plain(path: Path, scratch: Path) -> Path:
    """A decompressed copy of a ``.gz`` file (the competition ships some that way)."""
    if path.suffix != ".gz":
        return path
    target = scratch / path.name.removesuffix(".gz")
    if not target.exists():
        with gzip.open(path, "rb") as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst)
    return target


def run_instance(inst: Instance, limit: float, scratch: Path, complete: str) -> tuple[
        str, float, str | None, int, str]:
    start = time.perf_counter()
    try:
        onnx = _plain(inst.onnx, scratch)
        prop = _plain(inst.vnnlib, scratch)
        result, _ = decide_files(str(onnx), str(prop), timeout=limit, start=start,
                                 complete=complete)
    except AbsdslError as err:
        return "error", time.perf_counter() - start, None, 0, str(err).splitlines()[0][:200]
    except Exception as err:  # noqa: BLE001 - a crash on one instance is reported, not fatal
        return ("error", time.perf_counter() - start, None, 0,
                f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}")
    return result.result, time.perf_counter() - start, result.stage, result.branches, \
        "; ".join(result.notes)[:200]


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", metavar="DIR", help="a folder with instances.csv")
    parser.add_argument("--cap", type=float, default=None, metavar="SECONDS",
                        help="at most this many seconds per instance (default: its timeout)")
    parser.add_argument("--answers", default=None, metavar="FILE",
                        help="expected answers (columns benchmark,onnx,vnnlib,expected)")
    parser.add_argument("--every", type=int, default=1, metavar="K",
                        help="only every K-th instance (a spread-out subset)")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="at most N instances")
    parser.add_argument("--match", default=None, metavar="REGEX",
                        help="only instances whose onnx or vnnlib path matches")
    parser.add_argument("--complete", choices=COMPLETE_STAGES, default="auto")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json-out", default=None, metavar="FILE",
                        help="also write every row and the totals as JSON")


def run(args: argparse.Namespace) -> int:
    if args.cap is not None and not args.cap > 0:
        raise InputError(f"--cap must be a positive number of seconds, got {args.cap}")
    if args.every < 1 or (args.limit is not None and args.limit < 1) or args.threads < 1:
        raise InputError("--every, --limit and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    folder = Path(args.folder)
    instances = read_instances(folder)[:: args.every]
    if args.match:
        pattern = re.compile(args.match)
        instances = [i for i in instances if pattern.search(str(i.onnx))
                     or pattern.search(str(i.vnnlib))]
    instances = instances[: args.limit]
    answers = read_answers(Path(args.answers)) if args.answers else {}
    bench = folder.resolve().name
    rows: list[Row] = []
    print(f"{'onnx':<34} {'vnnlib':<24} {'limit':>5} {'result':<8} {'expected':<8} "
          f"{'seconds':>7}  stage (branches)")
    with tempfile.TemporaryDirectory() as tmp:
        for inst in instances:
            limit = inst.timeout if args.cap is None else min(inst.timeout, args.cap)
            result, seconds, stage, branches, detail = run_instance(inst, limit, Path(tmp),
                                                                    args.complete)
            key = (bench, _name(str(inst.onnx)), _name(str(inst.vnnlib)))
            expected = answers.get(key, answers.get(("", key[1], key[2])))
            row = Row(key[1], key[2], limit, result, expected, seconds, stage, branches,
                      detail)
            rows.append(row)
            flag = "  WRONG" if row.wrong else ""
            over = "  OVERRUN" if seconds > limit + 1.0 else ""
            print(f"{row.onnx[:34]:<34} {row.vnnlib[:24]:<24} {limit:>5.0f} {result:<8} "
                  f"{expected or '-':<8} {seconds:>7.2f}  {stage or ''}"
                  f"{f' ({branches})' if branches else ''}{flag}{over}"
                  f"{'  ' + detail if result == 'error' else ''}", flush=True)
    totals = summarize(rows)
    print("total: " + ", ".join(f"{k} {totals[k]}" for k in OUTCOMES)
          + f"; correct {totals['correct']} of {totals['with_answer']} with an answer; "
          f"wrong {totals['wrong']}; overruns {totals['overruns']}; "
          f"{totals['seconds']:.0f} s")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"rows": [asdict(r) for r in rows],
                                                   "totals": totals}, indent=1))
    return 1 if totals["wrong"] else 0


def summarize(rows: list[Row]) -> dict[str, float]:
    out: dict[str, float] = {k: sum(r.result == k for r in rows) for k in OUTCOMES}
    out["with_answer"] = sum(r.expected in ("sat", "unsat") for r in rows)
    out["correct"] = sum(r.result == r.expected and r.result in ("sat", "unsat") for r in rows)
    out["wrong"] = sum(r.wrong for r in rows)
    out["overruns"] = sum(r.seconds > r.limit + 1.0 for r in rows)
    out["seconds"] = sum(r.seconds for r in rows)
    return out


__all__ = ["read_answers", "read_instances", "register", "run", "summarize"]
