"""fuse_qkv with what the Q/K/V projections carry besides their weights (CPU, tiny schnell, fp32).

diffusers' fuse_projections concatenates `.weight`/`.bias` only: a PEFT LoRA loaded before fusion, a forward hook
or a Linear subclass would be silently dropped (the fused model then equals the model without the LoRA). fluxperf
refuses those with the fix, and accepts a LoRA merged into the base weights (pipe.fuse_lora()), keeping it.
"""

from __future__ import annotations

import pytest
import torch

from fluxperf.apply import apply
from fluxperf.errors import RecipeError
from fluxperf.model.configs import dims_of_pipeline
from fluxperf.model.shapes import ShapeSpec, transformer_inputs
from fluxperf.recipe import Recipe

FUSED = Recipe(dtype="float32", fuse_qkv=True)
ATOL = 1e-5  # fp32: fusing concatenates the same weights, only summation order differs
PROJ = ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj")


def _forward(pipe):
    x = transformer_inputs(ShapeSpec("schnell", 64, 64, 1, text_len=16), dims_of_pipeline(pipe), dtype=torch.float32)
    with torch.no_grad():
        return pipe.transformer(**x)[0]


def _load_lora(pipe) -> int:
    """A real PEFT LoRA (rank 4, non-zero A and B) on every Q/K/V and added-K/V projection, through diffusers'
    own loader; returns how many projections carry it."""
    pytest.importorskip("peft", reason="needs peft (diffusers' LoRA loading requires it): pip install peft")
    g, state = torch.Generator().manual_seed(1), {}
    for name, module in pipe.transformer.named_modules():
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in PROJ:
            state[f"transformer.{name}.lora_A.weight"] = torch.randn(4, module.in_features, generator=g) * 0.3
            state[f"transformer.{name}.lora_B.weight"] = torch.randn(module.out_features, 4, generator=g) * 0.3
    pipe.load_lora_weights(state, adapter_name="style")
    return len(state) // 2


def test_unmerged_lora_is_refused_with_the_fix_and_nothing_changes(tiny_pipe_factory):
    pipe = tiny_pipe_factory()
    base = _forward(pipe)
    n = _load_lora(pipe)
    with_lora = _forward(pipe)
    assert n == 12 and (with_lora - base).abs().max() > 1e-2  # the LoRA changes the output
    with pytest.raises(RecipeError, match=r"transformer\.transformer_blocks\.0\.attn\.to_q carries the unmerged LoRA "
                                          r"adapter\(s\) \['style'\].*and 9 more.*Fix: .*pipe\.fuse_lora\(\)"):
        apply(pipe, FUSED)
    assert not getattr(pipe.transformer.transformer_blocks[0].attn, "fused_projections", False)
    torch.testing.assert_close(_forward(pipe), with_lora, atol=0, rtol=0)  # refused before anything changed


@pytest.mark.parametrize("unload", [False, True], ids=["fuse_lora", "fuse_lora+unload"])
def test_lora_merged_into_the_weights_is_kept_by_the_fusion(tiny_pipe_factory, unload):
    pipe = tiny_pipe_factory()
    base = _forward(pipe)
    _load_lora(pipe)
    with_lora = _forward(pipe)
    pipe.fuse_lora()
    if unload:
        pipe.unload_lora_weights()  # the merged weights stay, the PEFT layers go
    stack = apply(pipe, FUSED)
    out = _forward(pipe)
    torch.testing.assert_close(out, with_lora, atol=ATOL, rtol=0)
    assert (out - base).abs().max() > 1e-2
    assert stack.step("fuse_qkv")["merged_lora_projections"] == (0 if unload else 12)


def test_a_forward_hook_on_a_projection_is_refused(tiny_pipe_factory):
    """The same class without peft: anything a projection adds beyond weight and bias would be dropped."""
    pipe = tiny_pipe_factory()
    attn = pipe.transformer.single_transformer_blocks[1].attn
    attn.to_v.register_forward_hook(lambda module, args, out: out * 2)
    with pytest.raises(RecipeError, match=r"single_transformer_blocks\.1\.attn\.to_v has forward hooks.*Fix"):
        apply(pipe, FUSED)


def test_a_linear_subclass_is_refused(tiny_pipe_factory):
    class Scaled(torch.nn.Linear):
        def forward(self, x):
            return super().forward(x) * 0.5

    pipe = tiny_pipe_factory()
    attn = pipe.transformer.transformer_blocks[0].attn
    old = attn.add_k_proj
    attn.add_k_proj = Scaled(old.in_features, old.out_features)
    with pytest.raises(RecipeError, match=r"transformer_blocks\.0\.attn\.add_k_proj is a .*Scaled, not a torch\.nn\.Linear"):
        apply(pipe, FUSED)
