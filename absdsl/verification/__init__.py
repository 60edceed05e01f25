"""Verification, an application on top of the compiler and training: ONNX networks
(``onnx_io``), VNN-LIB properties (``vnnlib``), the staged decision procedure (``verify``:
bounds, attack, branch and bound, MILP) and input-splitting branch and bound (``bab``)."""
