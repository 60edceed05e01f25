"""Verification, an application on top of the compiler and training: ONNX networks
(``onnx_io``), VNN-LIB properties (``vnnlib``), the staged decision procedure (``verify``:
bounds, attack, branch and bound, MILP) and input-splitting branch and bound (``bab``)."""

# the complete stages of ``absdsl verify --complete`` (light: the command line reads it)
# auto: bab (input splitting) for <= 64 inputs, else relu (ReLU splitting), else milp
COMPLETE_STAGES = ("auto", "bab", "relu", "milp", "none")
