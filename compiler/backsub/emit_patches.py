"""Emission of back-substitution in patch rows, for chains of 2-d convolutions.

A neuron of a conv layer depends on a window of each earlier map, so its rows need not span
whole maps: :func:`patch_geometry` finds the chain and each map's window geometry, and
:func:`patch_backsub_function` emits a function over those windows (runtime:
:mod:`.patches`, as ``patch_rows``).
"""

from __future__ import annotations

from collections.abc import Callable

from .. import linear_maps as lm
from ..codegen import Emitter
from ..exprs import num
from ..ir import Graph, Node


def patch_chain(graph: Graph, target: str) -> list[Node] | None:
    """The nodes from ``target`` back to the input when patches apply, else None.

    Patches need a chain (no add, cat or reshape) of 2-d convolutions, elementwise affine
    maps and activations over [C, H, W] maps, from an input of that shape.
    """
    chain = []
    node = graph.by_name[target]
    while True:
        chain.append(node)
        if len(node.shape) != 3:
            return None
        if node.kind == "input":
            return chain
        if len(node.inputs) != 1:
            return None
        if node.kind == "affine":
            m = node.attrs["map"]
            if isinstance(m, lm.Conv):
                if m.dims != 2 or not m.kernel:
                    return None
            elif not isinstance(m, lm.Elementwise):
                return None
        elif node.kind != "elementwise":
            return None
        node = graph.by_name[node.inputs[0]]


Geometry = tuple[int, int, int, int, int, int, int, int]


def patch_geometry(graph: Graph, target: str, saving: float
                   ) -> tuple[list[Node], list[Geometry]] | None:
    """The chain from ``target`` back to the input and, per node (target first), the window
    geometry of rows on its output map: ``(kh, kw, stride_h, stride_w, offset_h, offset_w,
    grid_h, grid_w)``; None when patches do not apply or their rows would be more than
    ``saving`` (the engine option ``patch_saving``) of dense rows."""
    chain = patch_chain(graph, target)
    if chain is None:
        return None
    grid = chain[0].shape[1:]
    kh, kw, sh, sw, oh, ow = 1, 1, 1, 1, 0, 0
    geoms = []
    patch_size = dense_size = 0
    for node in chain:
        geoms.append((kh, kw, sh, sw, oh, ow, grid[0], grid[1]))
        patch_size += node.shape[0] * kh * kw
        dense_size += node.shape[0] * node.shape[1] * node.shape[2]
        if node.kind == "affine" and isinstance(node.attrs["map"], lm.Conv):
            m = node.attrs["map"]
            kh = (kh - 1) * m.stride[0] + m.dilation[0] * (m.kernel[0] - 1) + 1
            kw = (kw - 1) * m.stride[1] + m.dilation[1] * (m.kernel[1] - 1) + 1
            oh, ow = oh * m.stride[0] - m.padding[0], ow * m.stride[1] - m.padding[1]
            sh, sw = sh * m.stride[0], sw * m.stride[1]
    if patch_size > saving * dense_size:
        return None
    return chain, geoms


def patch_backsub_function(graph: Graph, target: str, chain: list[Node],
                           geoms: list[Geometry], raw_lines: dict[str, str],
                           patch_lines: dict[str, str], out: Emitter) -> str:
    """Emit ``def backsub_patches_<target>(index)`` computing bounds of neurons ``index`` of
    ``target`` with rows in patch form (see ``patch_rows.patch_start``), for the chain and
    windows of :func:`patch_geometry`.

    ``raw_lines`` names each activation's relaxation lines; their map form is emitted into
    ``patch_lines`` the first time a patch function needs it.
    """
    for node in chain:
        if node.kind == "elementwise" and node.name not in patch_lines:
            shape = graph.by_name[node.inputs[0]].shape
            patch_lines[node.name] = out.fresh(f"patch_lines_{node.name}")
            out.emit(f"{patch_lines[node.name]} = patch_rows.patch_lines("
                     f"lines={raw_lines[node.name]}, shape={shape})")
    name = out.fresh(f"backsub_patches_{target}")
    body = Emitter(indent=out.indent + 1, used=out.used)
    first = _patch_first_conv(chain)
    start = 0
    head = chain[0].attrs["map"] if chain[0].kind == "affine" else None
    if isinstance(head, lm.Conv) and chain[1].kind == "elementwise":
        # the target conv and the relaxation of its input in one step: rows only where
        # they depend on the sign of the slopes, the rest convolved once per call
        maps = patch_lines[chain[1].name]
        centre = _patch_centre(chain, first, out) if chain[2] is first else None
        kern = out.value(f"kernels_{target}", f"patch_rows.patch_kernels(weight={head.weight}, "
                         f"stride={head.stride}, dilation={head.dilation}, groups={head.groups})")
        terms = out.value(f"terms_{target}", f"patch_rows.patch_first_terms(maps={maps}, "
                          f"centre_after={centre})")
        mid = out.value(f"mid_{target}", head.apply(f"{terms}[0]", with_bias=True))
        half = out.value(f"half_{target}", head.apply(f"{terms}[1]", absolute=True))
        body.emit(f"# affine %{target} and {chain[1].op} %{chain[1].name}")
        rows_of = patch_lines.get(f"{chain[1].name}#rows")  # per-row lines (row_slopes)
        per_row = f", per_row={rows_of}, centre_after={centre}" if rows_of else ""
        body.emit(f"rows, pos, acc = patch_rows.patch_start_relaxed(index=index, "
                  f"shape={chain[0].shape}, kernels={kern}, maps={maps}, geom={geoms[1]}, "
                  f"mid={mid}, half={half}{per_row})")
        body.emit("k = index.shape[-1]")
        start = 2
        if chain[2] is first:
            m = first.attrs["map"]
            _, radius = _fold_input(chain[3:-1], out)
            body.emit(f"# affine %{first.name}: windows {geoms[2][0]}x{geoms[2][1]}")
            body.emit(f"return patch_rows.patch_spread(rows_in={_conv_back(m, geoms[2])}, k=k, "
                      f"radius={radius}, geom={geoms[-1]}, pos=pos, acc=acc)")
            start = len(chain)
    else:
        body.emit(f"rows, pos, acc = patch_rows.patch_start(index=index, shape={chain[0].shape}, "
                  f"like=lo)")
        body.emit("k = index.shape[-1]")
    outside = False  # may rows be non-zero outside their map?
    for node, geom in zip(chain[start:], geoms[start:], strict=True):
        body.emit(f"# {node.op} %{node.name}: windows {geom[0]}x{geom[1]}")
        if node is first:
            if outside:
                body.emit(_mask(node, geom))
            body.emit(_patch_first_layer_return(node, chain, geom, geoms[-1], out))
            break
        step = _PATCH_STEPS[_patch_step(node)]
        outside = step(node, geom, outside, patch_lines, body.emit)
    out.emit(f"def {name}(index):")
    out.lines.extend(body.lines)
    return name


def _patch_step(node: Node) -> str:
    """Which step of a patch function a chain node takes: by kind, affine maps by class."""
    if node.kind != "affine":
        return node.kind
    return "scale" if isinstance(node.attrs["map"], lm.Elementwise) else "conv"


# Each step emits its lines for a node of the chain and returns whether the rows may then
# be non-zero outside their map (windows overhang it after a conv; a relaxation zeroes them).
PatchStep = Callable[[Node, Geometry, bool, dict[str, str], Callable[[str], None]], bool]


def _step_input(node: Node, geom: Geometry, outside: bool, patch_lines: dict[str, str],
                emit: Callable[[str], None]) -> bool:
    emit(f"return patch_rows.patch_concretize(rows=rows, k=k, centre=centre, "
         f"radius=radius, geom={geom}, pos=pos, acc=acc)")
    return outside


def _step_relax(node: Node, geom: Geometry, outside: bool, patch_lines: dict[str, str],
                emit: Callable[[str], None]) -> bool:
    rows_of = patch_lines.get(f"{node.name}#rows")  # per-row lines (row_slopes)
    per_row = f", per_row={rows_of}, index=index" if rows_of else ""
    emit(f"rows, acc = patch_rows.patch_relax(rows=rows, k=k, "
         f"maps={patch_lines[node.name]}, geom={geom}, pos=pos, acc=acc{per_row})")
    return False


def _step_scale(node: Node, geom: Geometry, outside: bool, patch_lines: dict[str, str],
                emit: Callable[[str], None]) -> bool:
    m = node.attrs["map"]
    if m.bias is not None:
        emit(_bias(node, geom))
    if m.scale is not None:
        scale = num(m.scale) if isinstance(m.scale, float) else m.scale
        emit(f"rows = patch_rows.patch_scale(rows=rows, k=k, scale={scale}, "
             f"geom={geom}, pos=pos, shape={node.shape})")
    return outside


def _step_conv(node: Node, geom: Geometry, outside: bool, patch_lines: dict[str, str],
               emit: Callable[[str], None]) -> bool:
    if outside:
        emit(_mask(node, geom))
    if node.attrs["map"].bias is not None:
        emit(_bias(node, geom))
    emit(f"rows = {_conv_back(node.attrs['map'], geom)}")
    return True


_PATCH_STEPS: dict[str, PatchStep] = {"input": _step_input, "elementwise": _step_relax,
                                      "scale": _step_scale, "conv": _step_conv}


def _patch_first_conv(chain: list[Node]) -> Node | None:
    """The conv of a patch chain nearest the input when only elementwise maps lie between
    them (normalisation), else None."""
    for node in reversed(chain[:-1]):
        m = node.attrs["map"] if node.kind == "affine" else None
        if isinstance(m, lm.Conv):
            return node
        if not isinstance(m, lm.Elementwise):
            return None
    return None


def _fold_input(below: list[Node], out: Emitter) -> tuple[str, str]:
    """Centre and radius of the input box mapped through the elementwise nodes ``below``
    (input side last): x s + t has centre c s + t and radius r |s|."""
    centre, radius = "centre", "radius"
    for e in reversed(below):
        em = e.attrs["map"]
        centre = out.value(f"centre_{e.name}", em.apply(centre, with_bias=True))
        if em.scale is not None:
            radius = out.value(f"radius_{e.name}", em.apply(radius, absolute=True))
    return centre, radius


def _patch_centre(chain: list[Node], first: Node, out: Emitter) -> str:
    """The first conv's output at the input box's centre (bias included), per sample."""
    centre, _ = _fold_input(chain[chain.index(first) + 1:-1], out)
    return out.value(f"centre_{first.name}", first.attrs["map"].apply(centre, with_bias=True))


def _patch_first_layer_return(node: Node, chain: list[Node], geom: Geometry,
                              geom_in: Geometry, out: Emitter) -> str:
    """Patch rows on the first conv's output concretised over the input box in one step,
    as :func:`_first_layer_return` does for dense rows: the centre term (bias included) one
    layer up, the elementwise maps below folded into the centre and the radius."""
    m = node.attrs["map"]
    centre = _patch_centre(chain, node, out)
    _, radius = _fold_input(chain[chain.index(node) + 1:-1], out)
    return (f"return patch_rows.patch_concretize_after(rows=rows, k=k, centre_after={centre}, "
            f"rows_in={_conv_back(m, geom)}, radius_in={radius}, geom={geom}, "
            f"geom_in={geom_in}, pos=pos, acc=acc)")


def _conv_back(m: lm.Conv, geom: Geometry) -> str:
    """Code of ``rows`` on a conv's output windows carried to its input windows."""
    return (f"patch_rows.patch_conv_back(rows=rows, weight={m.weight}, window={geom[:2]}, "
            f"stride={m.stride}, dilation={m.dilation}, groups={m.groups})")


def _mask(node: Node, geom: Geometry) -> str:
    return (f"rows = patch_rows.patch_mask(rows=rows, k=k, size={node.shape[1:]}, "
            f"geom={geom}, pos=pos)")


def _bias(node: Node, geom: Geometry) -> str:
    return (f"acc = patch_rows.patch_bias(rows=rows, k=k, bias={node.attrs['map'].bias}, "
            f"geom={geom}, pos=pos, shape={node.shape}, acc=acc)")

