"""`model=cifar_cnn`: registered with timm, so it takes the path every backbone takes."""

from __future__ import annotations

import pytest
import timm
import torch

from conftest import FAST, _train
from sslrun.config import make_config, parse_overrides
from sslrun.errors import UserError
from sslrun.models import create_model, data_config


def test_registered_in_timm_and_keeps_resolution_until_three_poolings():
    assert timm.is_model("cifar_cnn")
    model = timm.create_model("cifar_cnn", num_classes=7)
    x = torch.randn(2, 3, 32, 32)
    assert model.forward_features(x).shape == (2, 64, 4, 4)
    assert model(x).shape == (2, 7)
    assert model(torch.randn(2, 3, 40, 40)).shape == (2, 7)  # global pooling: any size from 8 px up
    assert data_config(model) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_the_wide_variant_doubles_the_channels():
    model = create_model("cifar_cnn_wide", 10)
    assert model.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 128, 4, 4)
    assert model.pretrained_cfg["architecture"] == "cifar_cnn_wide"
    assert 0.28e6 < sum(p.numel() for p in model.parameters()) < 0.3e6


def test_the_wider_variant_has_one_and_a_half_times_the_wide_channels():
    model = create_model("cifar_cnn_wider", 10)
    assert model.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 192, 4, 4)
    assert model.pretrained_cfg["architecture"] == "cifar_cnn_wider"
    assert 0.6e6 < sum(p.numel() for p in model.parameters()) < 0.7e6


def test_frozen_trains_the_head_alone_and_a_pretrained_tag_is_one_clear_error():
    model = create_model("cifar_cnn", 48, frozen=True)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]
    assert model.get_classifier().out_features == 48
    with pytest.raises(UserError, match="model=cifar_cnn pretrained=timm: cannot load weights .*(?i:no pretrained weights)"):
        create_model("cifar_cnn", 10, pretrained="timm")


def test_a_weights_file_loads_through_timm_head_fresh_when_the_class_count_differs(tmp_path):
    source = create_model("cifar_cnn", 10)
    path = tmp_path / "cifar_cnn.pt"
    torch.save(source.state_dict(), path)
    other = create_model("cifar_cnn", 48, pretrained=str(path))
    assert torch.equal(other.features[0].weight, source.features[0].weight)
    assert other.head.out_features == 48
    same = create_model("cifar_cnn", 10, pretrained=str(path))
    assert torch.equal(same.head.weight, source.head.weight)


def test_a_fixmatch_run_on_it_finishes(digits, tmp_path):
    overrides = [*FAST, "model=cifar_cnn", f"data={digits}", f"root={tmp_path}", "sweep=s", "name=c"]
    make_config(parse_overrides(overrides))  # the login-node check accepts the name
    result = _train(overrides)
    assert result["model"] == "cifar_cnn" and result["steps"] == 12 and 0 <= result["val_acc"] <= 1
