"""A user's mistake ends with one line on stderr, exit code 2, no traceback, and nothing changed."""

import hashlib

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from cellvi.cli import main


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fails(argv, capsys, expected: str):
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("cellvi: error:") and expected in err, err


def test_input_mistakes(tiny_input, tmp_path, capsys):
    out = tmp_path / "out"
    before = _digest(tiny_input)
    _fails(["run", tmp_path / "missing.h5ad", "-o", out], capsys, "no such file")
    junk = tmp_path / "junk.h5ad"
    junk.write_text("gene,cell\n1,2\n")
    _fails(["run", junk, "-o", out], capsys, "cannot read")
    _fails(["run", tmp_path / "table.csv", "-o", out], capsys, "no such file")
    (tmp_path / "table.csv").write_text("a,b\n1,2\n")
    _fails(["run", tmp_path / "table.csv", "-o", out], capsys, "unsupported input")
    _fails(["run", tiny_input, "-o", out, "--batch-key", "donor"], capsys, "--batch-key 'donor' is not a column")
    _fails(["run", tiny_input, "-o", out, "--labels-key", "nope"], capsys, "--labels-key 'nope'")
    floats = ad.AnnData(sp.csr_matrix(np.full((20, 5), 0.5, dtype=np.float32)))
    floats.write_h5ad(tmp_path / "lognorm.h5ad")
    _fails(["run", tmp_path / "lognorm.h5ad", "-o", out], capsys, "does not hold raw counts")
    _fails(["run", tiny_input, "-o", out, "--layer", "counts"], capsys, "Layer 'counts'")
    assert not out.exists() and _digest(tiny_input) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no partial folder left


def test_existing_output_and_model_mismatch(tiny_run, tiny_input, tmp_path, capsys):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    _fails(["run", tiny_input, "-o", out], capsys, "already exists; pass --overwrite")
    _fails(["embed", tiny_run, tiny_input, "-o", out / "mine.txt"], capsys, "already exists")
    assert (out / "mine.txt").read_text() == "keep me" and len(list(out.iterdir())) == 1
    other = ad.read_h5ad(tiny_input)
    other.var_names = [f"other{i}" for i in range(other.n_vars)]
    other.write_h5ad(tmp_path / "other.h5ad")
    _fails(["embed", tiny_run, tmp_path / "other.h5ad", "-o", tmp_path / "e.h5ad"], capsys, "do not fit")
    _fails(["map-query", tiny_run, tmp_path / "other.h5ad", "-o", tmp_path / "q"], capsys, "do not fit")
    _fails(["info", tmp_path], capsys, "not a cellvi model folder")
    _fails(["de", tiny_run, tiny_input, "--groupby", "nope", "-o", tmp_path / "d.csv"], capsys, "--groupby 'nope'")
    assert not (tmp_path / "e.h5ad").exists() and not (tmp_path / "q").exists()


@pytest.mark.parametrize("argv", [["run", "x.h5ad"], ["frobnicate"]])
def test_bad_command_lines_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and "usage:" in capsys.readouterr().err
