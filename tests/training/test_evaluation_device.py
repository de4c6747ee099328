"""recipes/evaluation.py runs the model on the accelerator when there is one."""

import os

import torch
from sigma_testing_utils import REPO_ROOT

from modeling_sigma.training.recipe_config import load_recipe

evaluation = load_recipe(os.path.join(REPO_ROOT, "recipes", "evaluation.py"))


class FakeModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.moved_to = []

    def to(self, device):
        self.moved_to.append(device)
        return self


def test_model_moves_to_the_gpu_when_there_is_one(monkeypatch):
    model = FakeModel()
    monkeypatch.setattr(evaluation, "load_previous_stage", lambda path, previous: (model, None))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert evaluation.default_device() == "cuda"
    loaded = evaluation.load_model(evaluation.EvaluateArguments(model_name_or_path="x"))
    assert loaded is model and model.moved_to == ["cuda"] and not model.training
    evaluation.load_model(evaluation.EvaluateArguments(model_name_or_path="x", device="cpu"))
    assert model.moved_to == ["cuda", "cpu"]


def test_cpu_without_an_accelerator(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert evaluation.default_device() == "cpu"
