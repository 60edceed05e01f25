"""Fixtures of the ONNX tests: files exported once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
from onnx_helpers import export, mlp


@pytest.fixture(scope="session")
def mlp_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export(mlp(), (2,), tmp_path_factory.mktemp("onnx") / "mlp.onnx")
