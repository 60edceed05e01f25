#!/usr/bin/env bash
# A virtual environment with auto_LiRPA next to this machine's torch, for
# `absdsl bench bounds --table b --lirpa` (the reference library measured in the same run).
#
#   bash benchmarks/setup_lirpa.sh /tmp/lirpa
#   /tmp/lirpa/bin/python -m absdsl bench bounds --table b --lirpa --no-grad-timing
#
# The registry holds auto_LiRPA 0.3 (2022). It pins torch < 1.13, so it is installed without
# its dependencies on top of the installed torch (the venv sees the system packages, absdsl
# included). Three of its lines (two imports and a graph-attribute read) name things that
# torch 2 and numpy 2 moved; they are edited in the venv's copy only, each to a form that
# also works where the old name still exists, and the bound code itself is untouched. The
# bench prints the largest difference between its bounds and ours ("max abs diff"), which
# would show an edit that changed them.
set -euo pipefail
venv="${1:?usage: setup_lirpa.sh VENV_DIR}"
python="$(command -v python3 || command -v python)"
"$python" -m venv --system-site-packages "$venv"
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
