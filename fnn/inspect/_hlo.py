"""Op counts of optimised HLO text (``compiled.as_text()``): which kernels a compiled call launches."""

import re
from collections import Counter

#: HLO ops that move no data and do no arithmetic; left out of the op counts.
BOOKKEEPING = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast"}

_COMPUTATION = re.compile(r"^(ENTRY\s+)?%([\w.\-]+)\s.*\{$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%[\w.\-]+\s*=\s*(.+)$")


def _op_kind(rest):
    """Opcode of an HLO instruction's right-hand side; fusions as ``fusion:kLoop``, ``fusion:kCustom``, ..."""
    if rest.startswith("("):  # a tuple type: skip to its closing parenthesis
        depth = 0
        for i, char in enumerate(rest):
            depth += {"(": 1, ")": -1}.get(char, 0)
            if depth == 0:
                rest = rest[i + 1 :]
                break
    else:
        rest = rest.split(" ", 1)[1]
    opcode = re.match(r"\s*([\w\-]+)\(", rest).group(1)
    if opcode == "fusion":
        return "fusion:" + re.search(r"kind=(k\w+)", rest).group(1)
    if opcode == "custom-call" and (target := re.search(r'custom_call_target="([^"]+)"', rest)):
        return f"custom-call:{target.group(1)}"  # on a GPU, a library's kernel: cuDNN's convolutions, cuBLAS's products
    return opcode


#: Custom-call targets that are library kernels for an HLO op (a GPU's cuBLAS products and cuDNN convolutions):
#: ``{op: target prefixes}``.
LIBRARY_KERNELS = {
    "dot": ("__cublas$gemm", "__cublas$lt$matmul"),
    "convolution": ("__cudnn$conv",),
}


def _library(counts, op):
    """How many of ``counts``' ops are ``op`` itself or a library kernel that computes one."""
    prefixes = tuple(f"custom-call:{p}" for p in LIBRARY_KERNELS[op])
    return counts[op] + sum(n for kind, n in counts.items() if kind.startswith(prefixes))


def _computations(hlo_text):
    """``{name: (is_entry, [instruction right-hand sides])}`` of an HLO module's text."""
    computations, current = {}, None
    for line in hlo_text.splitlines():
        if header := _COMPUTATION.match(line):
            current = computations[header.group(2)] = (bool(header.group(1)), [])
        elif current is not None and (instruction := _INSTRUCTION.match(line)):
            current[1].append(instruction.group(1))
    return computations


def hlo_counts(hlo_text):
    """Op counts of optimised HLO text (``compiled.as_text()``).

    ``ops_top`` counts the ops of the entry computation and of the loop
    bodies and conditions it reaches (the kernels a call launches);
    ``ops_all`` those of every computation, inside fusions too. Bookkeeping
    ops (parameters, constants, tuples, bitcasts) are left out. ``dots`` and ``convolutions``
    count every ``dot`` and ``convolution``, also those XLA CPU wraps in
    ``kind=kCustom`` fusions (matmul kernels) and those a GPU runs as library
    kernels (a custom call to cuBLAS or cuDNN, ``LIBRARY_KERNELS``; a
    custom call counts as ``custom-call:<target>``); ``dots_unfused`` the top-level
    ones; ``kernels`` the top-level ops that do work (fusions, unfused dots
    and other ops); ``fusions_*`` top-level fusions by kind; ``other_ops``
    top-level ops that are neither fusions nor dots.
    """
    computations = _computations(hlo_text)
    top = [name for name, (is_entry, _) in computations.items() if is_entry]
    for name in top:  # loop bodies and conditions reachable from the entry
        for rest in computations[name][1]:
            top += [n for n in re.findall(r"(?:body|condition)=%([\w.\-]+)", rest) if n not in top]

    def count(names):
        kinds = (_op_kind(rest) for name in names for rest in computations[name][1])
        return Counter(kind for kind in kinds if kind not in BOOKKEEPING)

    ops_top, ops_all = count(top), count(computations)
    fusions = {kind: n for kind, n in ops_top.items() if kind.startswith("fusion:")}
    custom, loop = fusions.get("fusion:kCustom", 0), fusions.get("fusion:kLoop", 0)
    return {
        "dots": _library(ops_all, "dot"),
        "dots_unfused": _library(ops_top, "dot"),
        "convolutions": _library(ops_all, "convolution"),
        "fusions_custom": custom,
        "fusions_loop": loop,
        "fusions_other": sum(fusions.values()) - custom - loop,
        "other_ops": sum(ops_top.values()) - sum(fusions.values()) - _library(ops_top, "dot"),
        "kernels": sum(ops_top.values()),
        "ops_top": dict(sorted(ops_top.items())),
        "ops_all": dict(sorted(ops_all.items())),
    }


def op_diff(counts, reference):
    """Non-zero differences ``counts - reference`` of two op-count dicts (``{}``: the same ops)."""
    keys = sorted({*counts, *reference})
    return {k: counts.get(k, 0) - reference.get(k, 0) for k in keys if counts.get(k, 0) != reference.get(k, 0)}
