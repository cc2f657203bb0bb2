"""`conceptvae evaluate --saved`: a saved bank measured as `conceptvae edit` uses it, on the
linear fake model of test_calibration where every face's answer is known."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_calibration import BRIGHT, D, S, marker_world

from attributes.bank import VectorBank
from conceptvae.cli import cli
from conceptvae.evaluation.saved import measure_saved, saved_markdown, write_saved_report

torch.set_num_threads(1)

pytestmark = pytest.mark.filterwarnings("ignore:.*far from the training data:UserWarning")


def a_bank(step=0.975):
    """A's vector as a bank saves it: strength 1 a step of ``step`` in z0, with the footprint
    of the square z0 paints."""
    fp = np.zeros((S, S), np.float32)
    fp[BRIGHT] = 0.1 * step
    cal = {"A": {"scale": "judge", "unit": 1.0}}
    meta = {
        "model_hash": "linear",
        "method": "mean",
        "calibration": cal,
        "removal_scale": {"A": 1.0},
    }
    return VectorBank({"A": np.array([step, 0, 0, 0])}, metadata=meta, footprints={"A": fp})


def test_a_saved_bank_is_measured_as_edits_make_it(tmp_path):
    vae, cache, judge = marker_world(tmp_path)
    result = measure_saved(vae, a_bank(), None, cache, judge, n_faces=50, progress=False)
    rows = {r["direction"]: r for r in result["rows"]}
    assert set(rows) == {"add", "remove"} and result["edited"] == ["A"]  # C: no vector
    assert result["judged"] == ["A", "C"]  # ... but its flips count
    add, rem = rows["add"], rows["remove"]
    # every test face is within the step: all 8 gain A, all 8 lose it; adding flips C on the
    # 2 faces with the marker, removing on none
    assert add["success"] == 1.0 and rem["success"] == 1.0 and add["n"] == rem["n"] == 8
    assert add["leakage"] == 0.25 and rem["leakage"] == 0.0
    assert not add["works"] and rem["works"]
    assert add["why"][0].startswith("C 25%")
    # a bank whose strength 1 is too short for the faces past 0.45 is measured so
    short = measure_saved(vae, a_bank(0.45), None, cache, judge, n_faces=50, progress=False)
    assert [r["success"] for r in short["rows"]] == [0.5, 0.5]  # 0.1 ... 0.4 of 0.1 ... 0.8
    text = saved_markdown(result, "A title")
    assert "**1 of 2** (attribute, direction) pairs work" in text
    assert "| A | add | mean | 1.000 (" in text and "| no | C 25%" in text
    write_saved_report(result, tmp_path / "report", title="A title")
    back = json.loads((tmp_path / "report" / "report.json").read_text())
    assert [r["leakage"] for r in back["rows"]] == [0.25, 0.0]
    assert (tmp_path / "report" / "report.md").read_text() == text
    from attributes.errors import VectorError

    with pytest.raises(VectorError, match="unknown attribute 'Aa' in --attributes"):
        measure_saved(vae, a_bank(), None, cache, judge, attributes=["Aa"], progress=False)


def test_evaluate_saved_refuses_what_it_does_not_measure_and_a_run_without_vectors(tmp_path):
    from conceptvae.model import ConceptVAE, VAEConfig

    runner = CliRunner()
    r = runner.invoke(cli, ["evaluate", "synthfaces64", "x", "-o", str(tmp_path / "o"),
                            "--saved", "--methods", "mean"])  # fmt: skip
    assert r.exit_code == 2 and "--saved measures RUN's own vectors" in r.output
    ConceptVAE(
        VAEConfig(image_size=64, latent_dim=D, patch_size=16, channels=(8,))
    ).save_pretrained(tmp_path / "run")
    r = runner.invoke(cli, ["evaluate", str(tmp_path / "run"), "nowhere", "-o",
                            str(tmp_path / "o"), "--saved"])  # fmt: skip
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert "has no vectors to measure" in r.output and not (tmp_path / "o").exists()
