"""The defences of verify against forgery: the one-key rule and the consistency check."""

import numpy as np
import torch

from watermark.models import get_model
from watermark.pipeline import Decision, Recovery, consistency, detect
from watermark.scheme.detection import match_keys
from watermark.scheme.embedding import inject, watermarked_latents
from watermark.scheme.keys import new_key

SHAPE = (4, 32, 32)


def test_runner_up_is_the_second_key():
    a = new_key("tiny", SHAPE, channels=(0, 1), seed=1)
    b = new_key("tiny", SHAPE, channels=(2, 3), seed=2)
    c = new_key("tiny", SHAPE, channels=(0, 1), seed=3)
    both = inject(watermarked_latents(a, seeds=[5, 6]), b)
    for m in match_keys(both, [a, b, c]):
        assert m.p_value < 1e-6 and m.runner_up_p_value < 1e-6
    for m in match_keys(watermarked_latents(a, seeds=[7, 8]), [a, b, c]):
        assert m.key_id == a.key_id and m.runner_up_p_value > 1e-3
    assert match_keys(watermarked_latents(a, seeds=[9]), [a])[0].runner_up_p_value == 1.0


def test_one_key_rule_rejects_an_image_matching_two_keys():
    model = get_model("tiny")
    a = new_key("tiny", SHAPE, channels=(0, 1), seed=11)
    b = new_key("tiny", SHAPE, channels=(2, 3), seed=12)
    image = model.generate(inject(watermarked_latents(a, seeds=[3]), b), 10) * 2 - 1
    plain, = detect(model, image, [a, b], Recovery(), Decision(search="none"))
    ruled, = detect(model, image, [a, b], Recovery(), Decision(search="none", one_key=True))
    assert plain.watermarked and plain.runner_up_p_value <= 0.01
    assert not ruled.watermarked and ruled.rejected_by == "one key"


def test_consistency_separates_a_generated_image_from_noise():
    model = get_model("tiny")
    key = new_key("tiny", SHAPE, seed=13)
    generated = model.generate(watermarked_latents(key, seeds=[1, 2]), 10) * 2 - 1
    noise = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0)) * 2 - 1
    own, other = consistency(model, generated, Recovery()), consistency(model, noise, Recovery())
    assert np.all(own > other + 3), (own, other)  # measured: 14-17 dB against 10 dB
    checked, = detect(model, generated[:1], [key], Recovery(),
                      Decision(search="none", min_consistency=float(own.min()) + 50))
    assert not checked.watermarked and checked.rejected_by == "consistency" and checked.consistency_psnr is not None
