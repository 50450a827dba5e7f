"""Does loading a saved model run code planted in its files? scvi-tools 1.4.2 versus cellvi.

A "payload" is a pickled object whose ``__reduce__`` opens (creates) a marker file: harmless, but any
code could stand in its place. For each library a small model is trained and saved in a temporary folder,
the payload is planted, the model is loaded, and we record whether the marker appeared.

* scvi-tools: the payload is added as one more entry of the genuine ``model.pt`` (torch.save format), so
  the file still loads as a model; ``SCVI.load`` reads it with ``torch.load(weights_only=False)``.
* cellvi: the payload replaces each file of the folder in turn (``model.json``, ``model.safetensors``,
  ``adata.h5ad``), and is also dropped in as ``model.pt`` beside a valid model.

Usage (from the repository root; the scvi-tools side runs in bench/.venv-scvi):

    python bench/pickle_safety.py            # writes bench/results/pickle_safety.{json,md}

Nothing leaves the temporary folder; it is deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCVI_PYTHON = HERE / ".venv-scvi" / "bin" / "python"


class Payload:
    """Unpickling this opens (creates) ``marker``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _counts(n_cells=200, n_genes=40):
    import anndata
    import numpy as np

    X = np.random.default_rng(0).poisson(2.0, size=(n_cells, n_genes)).astype(np.float32)
    a = anndata.AnnData(X)
    a.obs_names = [f"c{i}" for i in range(n_cells)]
    a.var_names = [f"g{i}" for i in range(n_genes)]
    return a


def run_scvi(work: Path) -> dict:
    import scvi
    import torch

    scvi.settings.seed = 0
    adata = _counts()
    scvi.model.SCVI.setup_anndata(adata)
    model = scvi.model.SCVI(adata, n_hidden=8, n_latent=2)
    model.train(max_epochs=1, accelerator="cpu", enable_progress_bar=False)
    folder = work / "scvi_model"
    model.save(str(folder), overwrite=True)
    path = folder / "model.pt"
    saved = torch.load(path, weights_only=False)  # our own, trusted file
    marker = work / "scvi_marker"
    saved["planted"] = Payload(str(marker))
    torch.save(saved, path)
    loaded, error = True, None
    try:
        scvi.model.SCVI.load(str(folder), adata=adata, accelerator="cpu")
    except Exception as exc:  # noqa: BLE001 - recorded, not hidden
        loaded, error = False, f"{type(exc).__name__}: {exc}"[:300]
    return {
        "library": f"scvi-tools {scvi.__version__}",
        "torch": torch.__version__,
        "cases": [
            {
                "planted_in": "model.pt (extra entry)",
                "payload_ran": marker.exists(),
                "load_succeeded": loaded,
                "error": error,
            }
        ],
    }


def run_cellvi(work: Path) -> dict:
    import io
    import pickle

    import torch

    import cellvi
    from cellvi.model import SCVI

    cellvi.settings.seed = 0
    cellvi.settings.progress_bar = False
    adata = _counts()
    SCVI.setup_anndata(adata)
    model = SCVI(adata, n_hidden=8, n_latent=2)
    model.train(max_epochs=1)
    good = work / "cellvi_model"
    model.save(good, overwrite=True, save_anndata=True)

    def blobs(marker):
        buf = io.BytesIO()
        torch.save({"model_state_dict": Payload(str(marker))}, buf)
        return {"pickle": pickle.dumps(Payload(str(marker))), "torch.save": buf.getvalue()}

    cases = []
    for name in ["model.pt", "model.json", "model.safetensors", "adata.h5ad"]:
        for kind in ["pickle", "torch.save"]:
            folder = work / f"cellvi_{name}_{kind}"
            shutil.copytree(good, folder)
            marker = work / f"cellvi_marker_{name}_{kind}"
            (folder / name).write_bytes(blobs(marker)[kind])
            loaded, error = True, None
            try:
                SCVI.load(folder)
            except Exception as exc:  # noqa: BLE001
                loaded, error = False, f"{type(exc).__name__}: {exc}"[:300]
            cases.append(
                {
                    "planted_in": f"{name} ({kind}){' beside a valid model' if name == 'model.pt' else ''}",
                    "payload_ran": marker.exists(),
                    "load_succeeded": loaded,
                    "error": error,
                }
            )
    return {"library": f"cellvi {cellvi.__version__}", "torch": torch.__version__, "cases": cases}


def _child(python: str, lib: str, work: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [python, __file__, "--lib", lib, "--work", str(work)], capture_output=True, text=True, env=env, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"{lib} child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _markdown(results: list[dict]) -> str:
    lines = [
        "# Pickle payload planted in a saved model",
        "",
        "Generated by `python bench/pickle_safety.py`. A payload that creates a marker file when unpickled is",
        "planted in a saved model folder, then the model is loaded.",
        "",
        "| library | planted in | payload ran | load succeeded | error |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        for c in r["cases"]:
            err = (c["error"] or "").split(":")[0]
            lines.append(
                f"| {r['library']} | {c['planted_in']} | {'**yes**' if c['payload_ran'] else 'no'} | "
                f"{'yes' if c['load_succeeded'] else 'no'} | {err} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lib", choices=["scvi", "cellvi"])
    parser.add_argument("--work")
    parser.add_argument("--scvi-python", default=str(SCVI_PYTHON))
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    if args.lib:  # child: one library, print JSON
        work = Path(args.work)
        print(json.dumps(run_scvi(work) if args.lib == "scvi" else run_cellvi(work)))
        return
    with tempfile.TemporaryDirectory(prefix="pickle-safety-") as tmp:
        results = [_child(args.scvi_python, "scvi", Path(tmp)), _child(sys.executable, "cellvi", Path(tmp))]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pickle_safety.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "pickle_safety.md").write_text(_markdown(results))
    print(_markdown(results))


if __name__ == "__main__":
    main()
