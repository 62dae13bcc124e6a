"""build-defaults' step timing (acg2vec_models.steps): steps add up under their name, in the order they first ran,
and the printed table accounts for the time outside the steps."""

from __future__ import annotations

import time

from acg2vec_models import steps


def test_steps_are_recorded_in_order_and_add_up(capsys):
    steps.reset()
    with steps.step("image feature extraction"):
        time.sleep(0.01)
    with steps.step("text training"):
        pass
    with steps.step("image feature extraction"):  # a step that runs again adds to its first entry
        time.sleep(0.01)
    recorded = steps.recorded()
    assert [name for name, _ in recorded] == ["image feature extraction", "text training"]
    assert recorded[0][1] >= 0.02
    assert "[build-defaults] text training:" in capsys.readouterr().err
    table = steps.table(recorded, total_s=recorded[0][1] + recorded[1][1] + 1.0).splitlines()
    assert [line.split()[0] for line in table] == ["image", "text", "other", "total"]
    assert table[2].endswith("1.0 s")  # the time outside the steps
    steps.reset()
    assert steps.recorded() == []
