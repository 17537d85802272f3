"""Reruns the bundled model's quality measurement and checks it against its model card.

The card's figures come from `python -m watermark.training.evaluate` (samples/tiny_eval.json);
this reruns it (about 30 minutes on 2 cores) and checks they reproduce. Tolerances: 0.3 dB for
PSNR and averaged NMSE/spectra (fixed seeds; only floating-point summation order may differ).
"""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

RECORD = Path(__file__).parent.parent / "samples" / "tiny_eval.json"


@pytest.mark.slow
def test_quality_figures_reproduce(tmp_path):
    pytest.importorskip("skimage")
    from watermark.training.evaluate import main

    out = tmp_path / "eval.json"
    card = json.loads(RECORD.read_text())
    args = card["command"].split()[3:]  # the recorded run's options ("python -m watermark.training.evaluate ...")
    result = CliRunner().invoke(main, [*args, "--out", str(out), "--grid", str(tmp_path / "grid.png")])
    assert result.exit_code == 0, result.output
    new = json.loads(out.read_text())
    for field in ("psnr_heldout_db", "psnr_train_photo_db", "nmse_encoder_db", "nmse_encoder_without_error_mean_db"):
        assert new[field] == pytest.approx(card[field], abs=0.3), field
    for k, v in card["nmse_forward_step_db"].items():
        assert new["nmse_forward_step_db"][k] == pytest.approx(v, abs=0.3), k
    assert new["spectrum_diff_db"] == pytest.approx(card["spectrum_diff_db"], abs=0.3)
    assert new["cocoercivity_min_ratio"]["positive"] == pytest.approx(card["cocoercivity_min_ratio"]["positive"], abs=3)
    for k, v in card["ddim_roundtrip_nmse_db"].items():
        assert new["ddim_roundtrip_nmse_db"][k] == pytest.approx(v, abs=0.5), k
    # the diagnostics of why decoder inversion stalls (model card)
    assert new["forward_step_identifiability"]["pixel_nmse_db"] == pytest.approx(
        card["forward_step_identifiability"]["pixel_nmse_db"], abs=0.3)
    assert new["decoder_dc_gain"]["gains"] == pytest.approx(card["decoder_dc_gain"]["gains"], rel=0.05)
    assert new["decoder_dc_gain"]["error_share_in_channel_means"] == pytest.approx(
        card["decoder_dc_gain"]["error_share_in_channel_means"], abs=0.03)
