"""The progress callback announces a run, estimates its time left from the first steps, and reports again."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import Trainer, TrainingArguments

from liaf_hf.trainer.callbacks import TrainingProgressCallback, format_duration


class _Regression(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)

    def forward(self, inputs, targets):
        return {"loss": torch.nn.functional.mse_loss(self.linear(inputs).squeeze(-1), targets)}


def _rows(count: int) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [
        {"inputs": torch.randn(4, generator=generator), "targets": torch.randn((), generator=generator)}
        for _ in range(count)
    ]


def test_a_run_is_announced_estimated_and_finished(tmp_path, caplog):
    arguments = TrainingArguments(
        output_dir=str(tmp_path), max_steps=20, per_device_train_batch_size=2, report_to="none",
        save_strategy="no", disable_tqdm=True, use_cpu=True, logging_strategy="no",
    )  # fmt: skip
    trainer = Trainer(
        model=_Regression(), args=arguments, train_dataset=_rows(40),
        callbacks=[TrainingProgressCallback("toy regression", probe_steps=3)],
    )  # fmt: skip
    with caplog.at_level(logging.INFO, logger="liaf_hf.trainer.callbacks"):
        trainer.train()
    messages = [record.getMessage() for record in caplog.records if record.name == "liaf_hf.trainer.callbacks"]
    assert messages[0] == "Training toy regression: 20 steps"
    estimates = [message for message in messages if "of training left" in message]
    # The first after 1 + 3 steps, then one at each quarter (steps 5, 10, 15) that is not the end.
    assert [message.split(",")[0] for message in estimates] == [
        "toy regression: step 4 of 20",
        "toy regression: step 5 of 20",
        "toy regression: step 10 of 20",
        "toy regression: step 15 of 20",
    ]
    assert messages[-1] == "toy regression: trained 20 steps"


@pytest.mark.parametrize(("seconds", "words"), [(45, "45 s"), (192, "3.2 min"), (7200, "2.0 h")])
def test_durations_read_at_a_glance(seconds, words):
    assert format_duration(seconds) == words


def test_a_probe_of_no_steps_is_refused():
    with pytest.raises(ValueError, match="probe_steps"):
        TrainingProgressCallback("run", probe_steps=0)
