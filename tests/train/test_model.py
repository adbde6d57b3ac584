from __future__ import annotations

import pytest
import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from diffusers.models.attention_processor import Attention

from tests.train.conftest import CLIP_DIM, call, clone, model_inputs, tiny_config_dict, tiny_model
from train.config import ConfigError, FaceProjectorConfig, config_from_dict
from train.model import AttentionContext, MFCAProcessor, build_face_projector, build_mcld, set_face_scale
from train.model.attention import install_denoising_processors
from train.model.pose_guider import PoseGuiderInitError, build_pose_guider, load_pose_guider_from_controlnet


def _stock_copy(model) -> UNet2DConditionModel:
    """The denoising UNet's weights in a stock UNet with diffusers' default attention processors."""
    stock = UNet2DConditionModel.from_config(model.denoising_unet.config)
    weights = {k: v for k, v in model.denoising_unet.state_dict().items() if ".processor." not in k}
    stock.load_state_dict(weights)
    return stock.eval()


def _cross_attention(model, prefix: str) -> tuple[Attention, MFCAProcessor]:
    for name, module in model.denoising_unet.named_modules():
        if isinstance(module, Attention) and module.is_cross_attention and name.startswith(prefix):
            return module, module.processor
    raise AssertionError(f"no cross-attention under {prefix}")


def test_at_init_mcld_is_the_plain_unet_when_conditions_are_neutral():
    # Zero-initialised pose guider, no ReferenceNet, no face, one CLIP token: exactly the stock UNet.
    model = tiny_model().eval()
    inputs = model_inputs(face_ok=[False, False])
    embedding = inputs["src_clip"]
    with torch.no_grad():
        ours = call(model, inputs, tex_clip=embedding, ref_latents=None)
        stock = _stock_copy(model)(inputs["noisy_latents"], inputs["timesteps"],
                                   encoder_hidden_states=embedding[:, None]).sample
    torch.testing.assert_close(ours, stock, rtol=1e-4, atol=1e-5)


def test_pose_guider_zero_init_then_pose_reaches_the_unet():
    model = tiny_model().eval()
    inputs = model_inputs()
    other_pose = torch.rand_like(inputs["pose"])
    with torch.no_grad():
        assert model.pose_guider(inputs["pose"]).shape == (2, 32, 8, 8)
        assert torch.equal(call(model, inputs), call(model, inputs, pose=other_pose))
        torch.nn.init.normal_(model.pose_guider.conv_out.weight, std=0.1)
        assert not torch.allclose(call(model, inputs), call(model, inputs, pose=other_pose))


def test_denoising_unet_refuses_to_run_without_pose_features():
    model = tiny_model()
    inputs = model_inputs()
    with pytest.raises(RuntimeError, match="without pose features"):
        model.denoising_unet(inputs["noisy_latents"], inputs["timesteps"],
                             encoder_hidden_states=torch.randn(2, 18, CLIP_DIM))


def test_reference_features_reach_the_denoising_unet_and_train_the_referencenet():
    model = tiny_model()
    inputs = model_inputs()
    with torch.no_grad():
        one = call(model, inputs)
        other = call(model, inputs, ref_latents=torch.randn_like(inputs["ref_latents"]))
        without = call(model, inputs, ref_latents=None)
    assert not torch.allclose(one, other)
    assert not torch.allclose(one, without)
    call(model, inputs).square().mean().backward()
    first_attn1 = model.reference_unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1
    assert first_attn1.to_q.weight.grad.abs().sum() > 0
    # What nothing downstream reads stays frozen (the reference freezes up_blocks.3 of SD's four).
    assert not model.reference_unet.conv_out.weight.requires_grad
    assert not any(p.requires_grad for p in model.reference_unet.up_blocks[-1].parameters())
    assert all(p.requires_grad for p in model.reference_unet.up_blocks[0].parameters())


def test_reference_bank_has_every_self_attention_layer():
    model = tiny_model()
    inputs = model_inputs()
    bank = model.reference_bank(inputs["ref_latents"], inputs["src_clip"][:, None])
    self_attentions = {name for name, m in model.denoising_unet.named_modules()
                       if isinstance(m, Attention) and not m.is_cross_attention}
    assert set(bank) == self_attentions
    for name, features in bank.items():
        module = model.denoising_unet.get_submodule(name)
        assert features.shape[0] == 2 and features.shape[2] == module.to_q.in_features


def test_ref_keep_masks_the_referencenet_per_sample():
    model = tiny_model().eval()
    inputs = model_inputs()
    with torch.no_grad():
        full = call(model, inputs)
        none = call(model, inputs, ref_latents=None)
        mixed = call(model, inputs, ref_keep=torch.tensor([False, True]))
    torch.testing.assert_close(mixed[0], none[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mixed[1], full[1], rtol=1e-4, atol=1e-5)


def test_face_tokens_are_masked_not_zeroed_where_there_is_no_face():
    model = tiny_model().eval()
    inputs = model_inputs(face_ok=[False, True])
    with torch.no_grad():
        base = call(model, inputs)
        other_face = call(model, inputs, face_emb=torch.randn_like(inputs["face_emb"]) * 20)
        zero_face = call(model, inputs, face_emb=torch.zeros_like(inputs["face_emb"]), face_ok=torch.tensor([True, True]))
    torch.testing.assert_close(base[0], other_face[0])  # no face: the embedding has no influence
    assert not torch.allclose(base[1], other_face[1])
    assert not torch.allclose(base[0], zero_face[0])  # zeros through the projector are not "no face"


def test_face_branch_receives_gradient_only_from_samples_with_a_face():
    for face_ok, expect_gradient in (([True, False], True), ([False, False], False)):
        model = tiny_model()
        call(model, model_inputs(face_ok=face_ok)).square().mean().backward()
        projector = sum(p.grad.abs().sum() for p in model.face_projector.parameters() if p.grad is not None)
        _, processor = _cross_attention(model, "mid_block")
        branch = processor.to_k_ip.weight.grad.abs().sum() + processor.to_v_ip.weight.grad.abs().sum()
        assert (projector > 0) == expect_gradient
        assert (branch > 0) == expect_gradient


def test_mfca_switcher_selects_clip_tokens_per_stage():
    model = tiny_model().eval()
    hidden = torch.randn(2, 16, 32)
    states = torch.randn(2, 2 + 16, CLIP_DIM)
    changed_src, changed_tex = states.clone(), states.clone()
    changed_src[:, 0] += 1.0
    changed_tex[:, 1] += 1.0
    expectations = {"down_blocks.0": (True, False), "mid_block": (True, True), "up_blocks.1": (False, True)}
    with torch.no_grad():
        for prefix, (sees_src, sees_tex) in expectations.items():
            attn, processor = _cross_attention(model, prefix)
            width = attn.to_q.in_features
            h = hidden[..., :1].expand(2, 16, width).contiguous() + torch.randn(2, 16, width)
            base = processor(attn, h, encoder_hidden_states=states)
            assert (not torch.allclose(base, processor(attn, h, encoder_hidden_states=changed_src))) == sees_src, prefix
            assert (not torch.allclose(base, processor(attn, h, encoder_hidden_states=changed_tex))) == sees_tex, prefix


def test_mfca_lambda_scales_the_face_branch_and_its_gradient():
    model = tiny_model()
    attn, processor = _cross_attention(model, "down_blocks.0")
    torch.manual_seed(0)
    hidden = torch.randn(2, 16, attn.to_q.in_features)
    states = torch.randn(2, 18, CLIP_DIM)
    context = AttentionContext(face_keep=torch.tensor([True, True]))
    outputs, gradients = {}, {}
    for scale in (0.0, 0.5, 1.0):
        set_face_scale(model.denoising_unet, scale)
        processor.to_v_ip.weight.grad = None
        out = processor(attn, hidden, encoder_hidden_states=states, mcld=context)
        out.sum().backward()
        outputs[scale] = out.detach()
        gradients[scale] = processor.to_v_ip.weight.grad.clone()
    torch.testing.assert_close(outputs[1.0] - outputs[0.0], 2 * (outputs[0.5] - outputs[0.0]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gradients[1.0], 2 * gradients[0.5])
    assert gradients[0.0].abs().sum() == 0
    assert not torch.allclose(outputs[1.0], outputs[0.0])


def test_gradient_checkpointing_gives_the_same_gradients():
    plain = tiny_model()
    checkpointed = clone(plain)
    checkpointed.denoising_unet.enable_gradient_checkpointing()
    checkpointed.reference_unet.enable_gradient_checkpointing()
    inputs = model_inputs()
    for model in (plain, checkpointed):
        model.train()
        call(model, inputs).square().mean().backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters()):
        if a.grad is None:
            assert b.grad is None, name
            continue
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_real_size_matches_the_paper_parameter_counts():
    # The paper: the face projector adds 76M parameters (80.3e6 = 76.6 Mi), the MFCA branches ~19M.
    with torch.device("meta"):
        projector = build_face_projector(FaceProjectorConfig(), face_dim=512, output_dim=768)
        unet = UNet2DConditionModel(cross_attention_dim=768)
        install_denoising_processors(unet, face_scale=0.5)
    assert sum(p.numel() for p in projector.parameters()) == 80_336_384
    mfca = sum(p.numel() for n, p in unet.named_parameters() if "_ip." in n)
    assert mfca == 2 * 768 * (2 * (320 + 640 + 1280) + 1280 + 3 * (1280 + 640 + 320))
    assert 18.5e6 < mfca < 19.5e6
    assert projector(torch.zeros(2, 1, 512, device="meta")).shape == (2, 16, 768)


def test_both_unets_load_from_a_local_sd_folder(tmp_path):
    torch.manual_seed(5)
    unet_kwargs = dict(tiny_config_dict()["model"]["unet"], cross_attention_dim=CLIP_DIM)
    saved = UNet2DConditionModel(**unet_kwargs)
    saved.save_pretrained(tmp_path / "sd" / "unet")
    config = config_from_dict(tiny_config_dict(model={"unet": None, "base_model_path": str(tmp_path / "sd")}),
                              where="test")
    model = build_mcld(config.model, clip_dim=CLIP_DIM, face_dim=512, latent_channels=8, where="test")
    for unet in (model.denoising_unet, model.reference_unet):
        torch.testing.assert_close(unet.conv_in.weight, saved.conv_in.weight)
    with pytest.raises(ConfigError, match="cross_attention_dim is 24 but the manifest's clip_dim is 32"):
        build_mcld(config.model, clip_dim=32, face_dim=512, latent_channels=8, where="test")
    empty = config_from_dict(tiny_config_dict(model={"unet": None, "base_model_path": str(tmp_path / "none")}),
                             where="test")
    with pytest.raises(ConfigError, match="no config.json"):
        build_mcld(empty.model, clip_dim=CLIP_DIM, face_dim=512, latent_channels=8, where="test")


def _tiny_controlnet(channels=(16, 32, 96, 256)) -> ControlNetModel:
    torch.manual_seed(7)
    return ControlNetModel(
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), layers_per_block=1,
        cross_attention_dim=CLIP_DIM, attention_head_dim=8, norm_num_groups=8,
        conditioning_embedding_out_channels=channels,
    )


def test_pose_guider_loads_a_controlnet_conditioning_embedding(tmp_path):
    controlnet = _tiny_controlnet()
    torch.nn.init.normal_(controlnet.controlnet_cond_embedding.conv_out.weight)
    controlnet.save_pretrained(tmp_path / "seg", safe_serialization=True)
    torch.save(controlnet.state_dict(), tmp_path / "diffusion_pytorch_model.bin")
    for source in (tmp_path / "seg", tmp_path / "diffusion_pytorch_model.bin"):
        guider = build_pose_guider(out_channels=32, channels=(16, 32, 96, 256))
        copied = load_pose_guider_from_controlnet(guider, source)
        assert "conv_in.weight" in copied and not any(k.startswith("conv_out") for k in copied)
        expected = controlnet.controlnet_cond_embedding
        torch.testing.assert_close(guider.blocks[3].weight, expected.blocks[3].weight)
        assert guider.conv_out.weight.abs().sum() == 0  # stays zero: nothing added at step 0


def test_pose_guider_init_errors_name_the_file(tmp_path):
    guider = build_pose_guider(out_channels=32, channels=(16, 32, 96, 256))
    with pytest.raises(PoseGuiderInitError, match="no such ControlNet"):
        load_pose_guider_from_controlnet(guider, tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PoseGuiderInitError, match="needs one of"):
        load_pose_guider_from_controlnet(guider, tmp_path / "empty")
    _tiny_controlnet(channels=(16, 32, 64, 128)).save_pretrained(tmp_path / "other", safe_serialization=True)
    with pytest.raises(PoseGuiderInitError, match="pose_guider_channels must match"):
        load_pose_guider_from_controlnet(guider, tmp_path / "other")
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(PoseGuiderInitError, match="bad.safetensors"):
        load_pose_guider_from_controlnet(guider, tmp_path / "bad.safetensors")
    torch.save({"unet.weight": torch.zeros(1)}, tmp_path / "unet.bin")
    with pytest.raises(PoseGuiderInitError, match="no controlnet_cond_embedding"):
        load_pose_guider_from_controlnet(guider, tmp_path / "unet.bin")


def test_processors_refuse_inputs_and_variants_they_would_get_wrong():
    from train.model.attention import (
        PlainAttnProcessor,
        ReferenceReadProcessor,
        ReferenceWriteProcessor,
        _stage_of,
        install_reference_processors,
    )

    holder = torch.nn.Module()
    holder.attn = Attention(query_dim=16, heads=2, dim_head=8, norm_num_groups=4)
    with pytest.raises(ValueError, match=r"attn: attention uses \['group_norm'\]"):
        install_reference_processors(holder)
    holder.attn = Attention(query_dim=16, heads=2, dim_head=8, residual_connection=True)
    with pytest.raises(ValueError, match="residual_connection"):
        install_reference_processors(holder)
    with pytest.raises(ValueError, match="not in a down, mid or up block"):
        _stage_of("conv_in")
    model = tiny_model()
    with pytest.raises(ValueError, match="no MFCA processors"):
        set_face_scale(model.reference_unet, 1.0)
    attn = Attention(query_dim=16, heads=2, dim_head=8)
    hidden = torch.randn(2, 4, 16)
    with pytest.raises(ValueError, match="attention masks are not supported"):
        PlainAttnProcessor(name="x")(attn, hidden, attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="needs a bank"):
        ReferenceWriteProcessor(name="x")(attn, hidden, mcld=AttentionContext(record=True))
    with pytest.raises(ValueError, match="got encoder states"):
        ReferenceReadProcessor(name="x")(attn, hidden, encoder_hidden_states=hidden)
    with pytest.raises(ValueError, match="no ReferenceNet features for this layer"):
        ReferenceReadProcessor(name="x")(attn, hidden, mcld=AttentionContext(bank={"y": hidden}))
    with pytest.raises(ValueError, match=r"features \(3, 4, 16\) do not fit \(2, 4, 16\)"):
        ReferenceReadProcessor(name="x")(attn, hidden, mcld=AttentionContext(bank={"x": torch.randn(3, 4, 16)}))
    cross, processor = _cross_attention(model, "mid_block")
    with pytest.raises(ValueError, match="needs packed encoder states"):
        processor(cross, torch.randn(2, 4, cross.to_q.in_features), encoder_hidden_states=torch.randn(2, 2, CLIP_DIM))


def test_model_config_options_take_effect(tmp_path):
    _tiny_controlnet().save_pretrained(tmp_path / "seg", safe_serialization=True)
    model = tiny_model(pose_guider_init=str(tmp_path / "seg"), gradient_checkpointing=True)
    torch.testing.assert_close(model.pose_guider.conv_in.weight,
                               _tiny_controlnet().controlnet_cond_embedding.conv_in.weight)
    assert model.denoising_unet.is_gradient_checkpointing and model.reference_unet.is_gradient_checkpointing
    with pytest.raises(ConfigError, match="model.unet is not a valid UNet2DConditionModel config"):
        tiny_model(unet={"down_block_types": ["NoSuchBlock2D"], "up_block_types": ["UpBlock2D"]})
    config = config_from_dict(tiny_config_dict(), where="test")
    with pytest.raises(ConfigError, match="the UNet takes 4 latent channels but the manifest's latent_channels is 6"):
        build_mcld(config.model, clip_dim=CLIP_DIM, face_dim=512, latent_channels=6, where="test")


def test_unreadable_or_foreign_controlnet_weights_are_refused(tmp_path):
    guider = build_pose_guider(out_channels=32, channels=(16, 32, 96, 256))
    (tmp_path / "garbage.bin").write_bytes(b"\x00garbage")
    with pytest.raises(PoseGuiderInitError, match="garbage.bin: not a readable torch weights file"):
        load_pose_guider_from_controlnet(guider, tmp_path / "garbage.bin")
    torch.save(torch.zeros(3), tmp_path / "tensor.bin")
    with pytest.raises(PoseGuiderInitError, match="holds a Tensor, not a state dict"):
        load_pose_guider_from_controlnet(guider, tmp_path / "tensor.bin")
    partial = {k: v for k, v in _tiny_controlnet().state_dict().items() if "blocks.5" not in k}
    torch.save(partial, tmp_path / "partial.bin")
    with pytest.raises(PoseGuiderInitError, match=r"lacks pose guider weights \['blocks.5.bias', 'blocks.5.weight'\]"):
        load_pose_guider_from_controlnet(guider, tmp_path / "partial.bin")
    _tiny_controlnet(channels=(16, 32, 96, 256, 320)).save_pretrained(tmp_path / "deeper", safe_serialization=True)
    with pytest.raises(PoseGuiderInitError, match="blocks.6.bias has no place in the pose guider"):
        load_pose_guider_from_controlnet(guider, tmp_path / "deeper")
