"""`danna-sep models`: the bundles `--bundle NAME` finds, the original checkpoints folder
`$DANNA_CHECKPOINTS` names, and the registry's architectures.

Reads manifests as JSON and the architecture names from `danna_sep.catalog`, so that it
answers without importing torch; `--sizes` builds each architecture at its default size
(on torch's meta device, so no weights are allocated) to count its parameters.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Dict, List, Optional


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "models", help="list the bundles --bundle NAME finds, the original checkpoints and the architectures",
        description="List the shipped bundles and those under $DANNA_BUNDLES (what --bundle NAME finds, "
                    "in lookup order), the original tool's checkpoints folder $DANNA_CHECKPOINTS, and "
                    "the architectures that training configs and bundles name.")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--sizes", action="store_true",
                   help="also count each architecture's parameters at its default size (imports torch)")
    p.set_defaults(handler=_run)


def _checkpoints() -> Optional[Dict[str, object]]:
    from ..catalog import CHECKPOINTS_ENV, ORIGINAL_FILES, ORIGINAL_XUMX_ONNX, checkpoints_folder

    folder = checkpoints_folder()
    if folder is None:
        return None
    files = list(ORIGINAL_FILES.values()) + [ORIGINAL_XUMX_ONNX]
    present = [f for f in files if (folder / f).is_file()]
    return {"env": CHECKPOINTS_ENV, "path": str(folder), "exists": folder.is_dir(), "files": present}


def _architectures(sizes: bool) -> List[Dict[str, object]]:
    from ..catalog import ARCHITECTURES

    rows: List[Dict[str, object]] = [
        {"name": name, "network": network, "input": domain, "output": kind}
        for name, (network, domain, kind) in ARCHITECTURES.items()
    ]
    if sizes:
        import torch

        from .. import models

        for row in rows:
            with torch.device("meta"):
                model = models.build(str(row["name"]))
            row["parameters"] = models.parameter_count(model)
    return rows


def _table(rows: List[List[str]]) -> List[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def _run(args: argparse.Namespace) -> int:
    from ..catalog import BUNDLES_ENV, list_bundles

    bundles, problems = list_bundles()
    checkpoints = _checkpoints()
    architectures = _architectures(args.sizes)
    for line in problems:
        print(f"danna-sep: {line}", file=sys.stderr)
    if args.json:
        print(json.dumps({"bundles": [b.as_dict() for b in bundles], "checkpoints": checkpoints,
                          "architectures": architectures}, indent=2))
        return 0

    out: List[str] = [f"bundles (separate --bundle NAME; shipped, then ${BUNDLES_ENV}):"]
    if bundles:
        rows = [["name", "from", "models", "path"]]
        for b in bundles:
            what = b.problem if b.problem else ", ".join(b.models)
            note = " (shadowed by the one above)" if b.shadowed else ""
            rows.append([b.name, b.origin, what, f"{b.path}{note}"])
        out += _table(rows)
    else:
        out.append("  none")
    if checkpoints is not None:
        found = ", ".join(checkpoints["files"]) or "none of the original files"  # type: ignore[arg-type]
        state = found if checkpoints["exists"] else "no such folder"
        out.append(f"original checkpoints (separate without --bundle; ${checkpoints['env']}): "
                   f"{checkpoints['path']}: {state}")
    out.append("architectures (train configs' model.name, bundle members):")
    rows = [["name", "network", "input", "output"] + (["parameters"] if args.sizes else [])]
    for a in architectures:
        row = [str(a["name"]), str(a["network"]), str(a["input"]), str(a["output"])]
        if args.sizes:
            count = int(a["parameters"])  # type: ignore[call-overload]
            row.append(f"{count / 1e6:.2f} M ({count})")
        rows.append(row)
    out += _table(rows)
    print("\n".join(out))
    return 0
