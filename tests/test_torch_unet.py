"""The torch multi-view UNet: released (LDM/MVDream) parameter names and shapes, 3D attention,
the released config dialect, strict loading with named key errors."""

import json
import math
from pathlib import Path

import pytest
import torch

from see3d_core import unet_config as uc
from see3d_core.released_layout import read_unet_config, released_unet_config
from see3d_torch.unet import MultiViewUNet, timestep_embedding, unet_key_shapes

FIXTURE = Path(__file__).parent / "fixtures" / "sd21_unet_keys.json"


def test_sd21_keys_and_shapes_match_the_released_architecture_fixture():
    fixture = json.loads(FIXTURE.read_text())
    shapes = unet_key_shapes(uc.sd21())  # meta device: no 866M-parameter allocation
    assert shapes == fixture["shapes"]
    assert sum(math.prod(s) for s in shapes.values()) == fixture["num_parameters"] == 865_925_124
    # the names the released code uses (mv_unet.py / MVDream openaimodel.py)
    for key in ("time_embed.2.weight", "input_blocks.0.0.weight", "input_blocks.3.0.op.weight",
                "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight", "middle_block.1.proj_in.weight",
                "output_blocks.2.1.conv.weight", "output_blocks.5.2.conv.weight", "output_blocks.11.1.transformer_blocks.0.ff.net.0.proj.weight", "out.2.weight"):
        assert key in shapes
    assert shapes["input_blocks.0.0.weight"] == [320, 9, 3, 3]  # latent + condition latent + mask
    assert "input_blocks.1.1.transformer_blocks.0.attn1.to_q.bias" not in shapes  # q/k/v without bias


def test_fixture_agrees_with_diffusers_ldm_converter():
    """Independent check of the LDM names: diffusers' own LDM -> diffusers key converter maps the
    fixture onto an SD-2.1 `UNet2DConditionModel` (9 inputs) with every key and shape covered."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    with torch.device("meta"):
        reference = UNet2DConditionModel(
            sample_size=64, in_channels=9, out_channels=4, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
            attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",), up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        )
    fixture = json.loads(FIXTURE.read_text())["shapes"]
    ldm = {"model.diffusion_model." + k: torch.empty(s, device="meta") for k, s in fixture.items()}
    converted = convert_ldm_unet_checkpoint(ldm, dict(reference.config))
    wanted = {k: list(v.shape) for k, v in reference.state_dict().items()}
    assert {k: list(v.shape) for k, v in converted.items()} == wanted


def _tiny_model(seed=0, **changes):
    torch.manual_seed(seed)
    model = MultiViewUNet(uc.tiny().replace(**changes)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _inputs(b=2, v=3, size=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    cfg = uc.tiny()
    return (torch.randn(b, v, cfg.in_channels, size, size, generator=g), torch.tensor([3, 900])[:b],
            torch.randn(b, cfg.context_tokens, cfg.context_dim, generator=g))


@pytest.mark.parametrize("multiview", [True, False])
def test_self_attention_spans_views_only_when_multiview(multiview):
    model = _tiny_model(multiview_attention=multiview)
    x, t, ctx = _inputs()
    with torch.no_grad():
        base = model(x, t, ctx)
        x2 = x.clone()
        x2[:, 1] += 1.0  # change view 1 only
        changed = model(x2, t, ctx)
        x3 = x.clone()
        x3[1] += 1.0  # change sample 1 only
        other_sample = model(x3, t, ctx)
    view0_delta = (changed[:, 0] - base[:, 0]).abs().max().item()
    assert (view0_delta > 1e-4) if multiview else (view0_delta == 0.0)
    assert torch.equal(other_sample[0], base[0])  # samples never mix


def test_timestep_embedding_is_cos_then_sin():
    emb = timestep_embedding(torch.tensor([0.0, 10.0]), 8)
    assert torch.allclose(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    freqs = torch.exp(-math.log(10000.0) * torch.arange(4) / 4)
    assert torch.allclose(emb[1], torch.cat([torch.cos(10 * freqs), torch.sin(10 * freqs)]))
    # float32 whatever the model's precision, float64 only for a float64 model (the parity tests'
    # exact reference): at t = 961 the float32 phase t f carries ~1e-5 of rounding
    t = torch.tensor([961])
    assert timestep_embedding(t, 8).dtype == torch.float32
    exact = timestep_embedding(t, 8, dtype=torch.float64)
    freqs = torch.exp(-math.log(10000.0) * torch.arange(4, dtype=torch.float64) / 4)
    assert exact.dtype == torch.float64 and torch.allclose(exact[0], torch.cat([torch.cos(961 * freqs), torch.sin(961 * freqs)]), rtol=0, atol=1e-12)
    assert 1e-7 < float((timestep_embedding(t, 8).double() - exact).abs().max()) < 1e-4
    model = _tiny_model().double()
    seen = []
    model.time_embed.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    x, t, ctx = _inputs()
    model(x.double(), t, ctx.double())
    cfg = model.config
    assert torch.equal(seen[0], timestep_embedding(t.repeat_interleave(x.shape[1]), cfg.model_channels, cfg.timestep_max_period,
                                                   torch.float64))


def test_save_and_load_round_trip(tmp_path):
    model = _tiny_model()
    model.save_pretrained(tmp_path)
    loaded = MultiViewUNet.from_pretrained(tmp_path)
    x, t, ctx = _inputs()
    with torch.no_grad():
        assert torch.equal(model(x, t, ctx), loaded(x, t, ctx))
    half = MultiViewUNet.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16


def test_released_config_dialect_and_camera_embedding(tmp_path):
    raw = {"_class_name": "MultiViewUNetModel", "image_size": 32, "in_channels": 9, "out_channels": 4, "model_channels": 320,
           "num_res_blocks": 2, "attention_resolutions": [4, 2, 1], "channel_mult": [1, 2, 4, 4], "num_head_channels": 64,
           "context_dim": 1024, "transformer_depth": 1, "camera_dim": 16}
    config, camera_dim = released_unet_config(raw)
    assert camera_dim == 16 and config.replace(sample_size=64) == uc.sd21()
    shapes = unet_key_shapes(config, camera_dim=camera_dim)
    assert shapes["camera_embed.0.weight"] == [1280, 16]
    (tmp_path / "config.json").write_text(json.dumps({**raw, "num_head_channels": -1}))
    with pytest.raises(ValueError, match="num_head_channels"):
        read_unet_config(tmp_path)


def test_strict_loading_names_bad_keys(tmp_path):
    from safetensors.torch import load_file, save_file

    _tiny_model().save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "diffusion_pytorch_model.safetensors"))
    state["extra.weight"] = torch.zeros(1)
    del state["out.2.bias"]
    state["input_blocks.0.0.weight"] = torch.zeros(16, 5, 3, 3)
    save_file(state, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(ValueError, match=r"missing \['out.2.bias'\], unexpected \['extra.weight'\], mismatched \['input_blocks.0.0.weight"):
        MultiViewUNet.from_pretrained(tmp_path)
    (tmp_path / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="diffusion_pytorch_model.safetensors"):
        MultiViewUNet.from_pretrained(tmp_path)


def test_bad_inputs_are_named():
    model = _tiny_model()
    x, t, ctx = _inputs()
    with pytest.raises(ValueError, match="sample"):
        model(x[:, :, :5], t, ctx)
    with pytest.raises(ValueError, match="multiples of 2"):
        model(x[..., :15, :15], t, ctx)
    with pytest.raises(ValueError, match="context"):
        model(x, t, ctx[..., :3])
