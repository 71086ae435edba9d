"""Flow-Euler sampling: schedules, guidance, starting part-way, progress and cancellation."""

from __future__ import annotations

import itertools

import pytest
import torch

from iscene_server.engine.samplers import FlowEulerSampler, Guidance, SamplerSettings, renoise, time_schedule
from iscene_server.errors import Cancelled

RELEASED_SCHEDULE = [1.000000, 0.986301, 0.971831, 0.956522, 0.940299, 0.923077, 0.904762, 0.885246, 0.864407,
                     0.842105, 0.818182, 0.792453, 0.764706, 0.734694, 0.702128, 0.666667, 0.627907, 0.585366,
                     0.538462, 0.486486, 0.428571, 0.363636, 0.290323, 0.206897, 0.111111, 0.000000]


def test_released_schedule():
    assert time_schedule(25, 3.0) == pytest.approx(RELEASED_SCHEDULE, abs=1e-6)
    active = [Guidance(3.0, (0.5, 1.0)).active_at(t) for t in time_schedule(25, 3.0)[:-1]]
    assert active == [True] * 19 + [False] * 6


@pytest.mark.parametrize("t_start", [0.3, 0.75, 1.0])
def test_partial_schedule_starts_at_t_start(t_start):
    times = time_schedule(10, 3.0, t_start)
    assert times[0] == pytest.approx(t_start) and times[-1] == 0.0
    assert all(a > b for a, b in itertools.pairwise(times))


def straight_flow(x0: torch.Tensor, noise: torch.Tensor, sigma_min: float = 1e-5):
    """The exact velocity field of the straight path between ``x0`` and ``noise``."""
    v = (1 - sigma_min) * noise - x0
    return lambda x, t, cond: v.expand_as(x)


@pytest.mark.parametrize("t_start", [1.0, 0.4])
def test_euler_recovers_the_clean_sample_of_a_straight_flow(t_start):
    x0, noise = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    start = renoise(x0, noise, t_start)
    result = FlowEulerSampler().sample(straight_flow(x0, noise), start, None, steps=6, rescale_t=3.0,
                                       t_start=t_start)
    torch.testing.assert_close(result.samples, x0 + 1e-5 * noise, atol=1e-5, rtol=1e-5)


def test_guidance_runs_the_negative_pass_only_inside_its_interval():
    calls = []

    def model(x, t, cond):
        calls.append((round(float(t[0]) / 1000, 4), cond))
        return torch.zeros_like(x)

    FlowEulerSampler().sample(model, torch.zeros(1, 2), "pos", "neg", steps=5, rescale_t=3.0,
                              guidance=Guidance(3.0, (0.5, 1.0)))
    negatives = [t for t, cond in calls if cond == "neg"]
    assert negatives == [1.0, 0.9231, 0.8182, 0.6667]
    assert [c for _, c in calls].count("pos") == 5


def test_callback_reports_every_step_and_can_cancel():
    seen = []

    def callback(step, total, t):
        seen.append((step, total))
        if step == 2:
            raise Cancelled()

    with pytest.raises(Cancelled):
        FlowEulerSampler().sample(lambda x, t, c: x, torch.ones(1), None, steps=5, callback=callback)
    assert seen == [(1, 5), (2, 5)]


def test_settings_from_a_pipeline_json_entry():
    entry = {"name": "FlowEulerGuidanceIntervalSampler", "args": {"sigma_min": 1e-5},
             "params": {"steps": 25, "cfg_strength": 5.0, "cfg_interval": [0.5, 1.0], "rescale_t": 3.0}}
    settings = SamplerSettings.from_pipeline_json(entry, steps=12, cfg_strength=None)
    assert settings == SamplerSettings(12, 5.0, (0.5, 1.0), 3.0, 1e-5)
    with pytest.raises(ValueError, match="unsupported sampler"):
        SamplerSettings.from_pipeline_json({"name": "DDIMSampler"})
