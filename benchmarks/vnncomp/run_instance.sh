#!/usr/bin/env bash
# VNN-COMP convention: run_instance.sh v1 CATEGORY ONNX VNNLIB RESULTS_FILE TIMEOUT
# Writes the result file (sat + counterexample, unsat, unknown, timeout); a bad input writes
# "error" and never claims an answer. ABSDSL overrides the command (e.g. "python3 -m absdsl.cli").
set -u
if [ "$#" -ne 6 ] || [ "$1" != "v1" ]; then
    echo "usage: $0 v1 CATEGORY ONNX VNNLIB RESULTS_FILE TIMEOUT" >&2
    exit 2
fi
onnx="$3"; vnnlib="$4"; results="$5"; timeout="$6"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
case "$onnx" in *.gz) gunzip -c "$onnx" > "$scratch/net.onnx"; onnx="$scratch/net.onnx";; esac
case "$vnnlib" in *.gz) gunzip -c "$vnnlib" > "$scratch/prop.vnnlib"; vnnlib="$scratch/prop.vnnlib";; esac
# shellcheck disable=SC2086 # ABSDSL may be a command with arguments
if ! ${ABSDSL:-absdsl} verify "$onnx" "$vnnlib" --timeout "$timeout" --out "$results"; then
    echo "error" > "$results"
fi
