#!/usr/bin/env bash
# A virtual environment with auto_LiRPA next to this machine's torch, for
# `absdsl bench bounds --table b --lirpa` (the reference library measured in the same run).
#
#   bash benchmarks/setup_lirpa.sh /work/lirpa-venv [TARBALL]
#   /work/lirpa-venv/bin/python -m absdsl bench bounds --table b --lirpa
#
# The venv sees the system packages (torch, numpy and absdsl itself), so nothing of ours is
# reinstalled and auto_LiRPA never becomes a dependency of absdsl.
#
# Which auto_LiRPA:
# - 0.7.1 from a source tarball: TARBALL if given, else ../shared/peers/auto_LiRPA-0.7.1.tar.gz
#   beside the repository when it exists. It declares torch < 2.9 (and test tools), so it is
#   installed without its dependencies; its public API (BoundedModule, BoundedTensor,
#   PerturbationLpNorm, compute_bounds with IBP, CROWN, CROWN-IBP) runs on this torch
#   unchanged. Of its import-time dependencies only appdirs and graphviz (the Python
#   package; no binary is needed) are not already here.
# - otherwise 0.3 from the package index (2022). It pins torch < 1.13, so it too goes in
#   without its dependencies, and three of its lines (two imports and a graph-attribute read)
#   name things that torch 2 and numpy 2 moved: they are edited in the venv's copy only, each
#   to a form that also works where the old name still exists; the bound code is untouched.
# Either way the bench prints the largest difference between its bounds and ours
# ("max abs diff"), which would show an installation that changed them. Running the script
# again on the same VENV is harmless.
set -euo pipefail
venv="${1:?usage: setup_lirpa.sh VENV_DIR [AUTO_LIRPA_TARBALL]}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tarball="${2:-$here/../../shared/peers/auto_LiRPA-0.7.1.tar.gz}"
if [ -n "${2:-}" ] && [ ! -f "$2" ]; then
    echo "setup_lirpa: no tarball at $2" >&2
    exit 2
fi
python="$(command -v python3 || command -v python)"
"$python" -m venv --system-site-packages "$venv"

if [ -f "$tarball" ]; then
    echo "setup_lirpa: installing $(basename "$tarball") (without its pinned dependencies)"
    "$venv/bin/pip" install --quiet --no-deps --force-reinstall "$tarball"
    "$venv/bin/pip" install --quiet --no-deps appdirs graphviz
    "$venv/bin/python" - <<'PY'
import auto_LiRPA  # fails here, not in the bench, if something is missing
import torch
from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm  # noqa: F401
print(f"auto_LiRPA {auto_LiRPA.__version__} ready next to torch {torch.__version__}")
PY
    exit 0
fi

echo "setup_lirpa: no auto_LiRPA 0.7.1 tarball at $tarball; installing 0.3 from the index"
"$venv/bin/pip" install --quiet --no-deps "auto_LiRPA==0.3" appdirs
"$venv/bin/python" - <<'PY'
import pathlib, sysconfig
root = pathlib.Path(sysconfig.get_paths()["purelib"]) / "auto_LiRPA"
edits = {
    "operators/base.py": [("from numpy.lib.arraysetops import isin", "from numpy import isin")],
    "parse_graph.py": [
        ("from torch.onnx.symbolic_helper import _set_opset_version\n",
         "try:\n"
         "    from torch.onnx.symbolic_helper import _set_opset_version\n"
         "except ImportError:  # newer torch keeps the exporter's globals here\n"
         "    from torch.onnx._internal.torchscript_exporter._globals import GLOBALS as _G\n\n"
         "    def _set_opset_version(version):\n"
         "        _G.export_onnx_opset_version = version\n"),
        ("attrs = {k: n[k] for k in n.attributeNames()}",
         "attrs = {k: getattr(n, n.kindOf(k))(k) for k in n.attributeNames()}"),
    ],
}
for name, pairs in edits.items():
    path = root / name
    text = path.read_text()
    for old, new in pairs:
        if new in text:  # edited by an earlier run
            continue
        if old not in text:
            raise SystemExit(f"setup_lirpa: {path}: expected line not found: {old.strip()!r}")
        text = text.replace(old, new)
    path.write_text(text)
import auto_LiRPA  # noqa: E402  (fails here, not in the bench, if an edit is missing)
print(f"auto_LiRPA {auto_LiRPA.__version__} ready in {root.parent.parent.parent.parent}")
PY
