#!/usr/bin/env bash
# VNN-COMP convention: prepare_instance.sh v1 CATEGORY ONNX VNNLIB
# absdsl needs no preparation: the network is loaded and the property parsed within the
# timeout of run_instance.sh.
exit 0
