"""`pretrained=FILE` goes through timm's own loader (issue 17): `pretrained_cfg_overlay=dict(file=...)`,
so a file loads as timm loads its own weights: the classifier dropped where the class count
differs from the weights' config, a checkpoint's `model` entry unwrapped, .safetensors read."""

from __future__ import annotations

import pytest
import timm
import torch

from sslrun.errors import UserError
from sslrun.models import create_model


def _saved(tmp_path, num_classes: int, name: str = "w.pt", wrap: str = ""):
    torch.manual_seed(7)
    state = timm.create_model("resnet18", num_classes=num_classes).state_dict()
    path = tmp_path / name
    if name.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({wrap: state} if wrap else state, path)
    return path, state


def test_backbone_loaded_classifier_fresh_when_the_class_count_differs(tmp_path):
    path, state = _saved(tmp_path, 1000)
    model = create_model("resnet18", 3, str(path))
    own = model.state_dict()
    assert torch.equal(own["conv1.weight"], state["conv1.weight"]) and torch.equal(own["layer4.1.bn2.running_var"],
                                                                                   state["layer4.1.bn2.running_var"])
    assert own["fc.weight"].shape == (3, 512)


def test_classifier_kept_when_the_class_count_is_the_weights(tmp_path):
    path, state = _saved(tmp_path, 1000)
    model = create_model("resnet18", 1000, str(path))
    assert torch.equal(model.state_dict()["fc.weight"], state["fc.weight"])


def test_a_same_shaped_head_of_another_label_set_is_not_taken(tmp_path):
    """The file's head had 3 classes and so has the model: still a fresh head, by timm's rule (the
    class count is the weights' config's, 1000). The old hand-written loader copied it over."""
    path, state = _saved(tmp_path, 3)
    model = create_model("resnet18", 3, str(path))
    assert torch.equal(model.state_dict()["conv1.weight"], state["conv1.weight"])
    assert not torch.equal(model.state_dict()["fc.weight"], state["fc.weight"])


@pytest.mark.parametrize("name, wrap", [("w.safetensors", ""), ("ckpt.pt", "model"), ("ckpt.pt", "state_dict")])
def test_file_formats_timm_reads(tmp_path, name, wrap):
    path, state = _saved(tmp_path, 1000, name, wrap)
    model = create_model("resnet18", 5, str(path))
    assert torch.equal(model.state_dict()["conv1.weight"], state["conv1.weight"])


def test_weights_of_another_model_or_no_weights_is_one_line(tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"blocks.0.attn.qkv.weight": torch.zeros(3, 3)}, other)
    with pytest.raises(UserError, match="no tensor matches model resnet18"):
        create_model("resnet18", 3, str(other))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read weights"):
        create_model("resnet18", 3, str(junk))
    wrong, state = _saved(tmp_path, 1000, "wrong.pt")
    torch.save({**state, "conv1.weight": torch.zeros(32, 3, 7, 7)}, wrong)  # another width: timm refuses the shape
    with pytest.raises(UserError, match="cannot load weights"):
        create_model("resnet18", 3, str(wrong))


def test_an_unreadable_weights_file_is_refused_at_planning(digits, tmp_path):
    from sslrun.launch import plan_runs

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read weights"):
        plan_runs(["seeds=1,2"], [f"data={digits}", f"root={tmp_path}", "model=resnet18", f"pretrained={junk}"])
    assert not (tmp_path / digits.name).exists()
