"""A fake-quantized W4A4 block: drop-in replacement for `models.transformer.Block`.

The pretrained weights stay frozen inside the wrapped FP block. Each of the four sites
transforms its input (x' = P (x / c)), fake-quantizes x' per token, and multiplies by
the fake-quantized folded weight W' = W diag(c) P^-1 (per output channel). Only the
transform, scale and clipping parameters train.

Where c goes at deployment: for the qkv and gate/up sites into the preceding RMSNorm
weight; for the o and down sites into the rows of v_proj and up_proj (per-row weight
quantization is invariant to row scaling, so that move is exact). Calibration divides
at the site, which is the same function.

Two explicit steps, as in torchao: a new block is in the calibration form
(differentiable fake-quant, `prepare()`); `convert()` switches it to the folded
deployment arithmetic (`quant/folded.py`), which a calibrated model evaluates with so it
rounds exactly as the exported model does.

`weight_override` replaces a linear's quantized weight by precomputed integer codes and
per-row scales (GPTQ output for the QuaRot baseline; integer format only).

FP4 formats (spec.format) quantize weights per block of the input dimension and
activations per token and block; the row-scale move above stays exact because the
folded FP4 weight keeps a per-row second-level scale (see folded.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import ConfigError
from ..models.families import LINEAR_SITE
from ..models.transformer import Block
from .folded import block_forward, block_math, dequantized
from .layout import transform_sites
from .quantizer import ActQuantizer, WeightQuantizer
from .spec import NO_QUANT_BITS, QuantSpec
from .transforms import SiteTransform


def _key(linear: str) -> str:  # ModuleDict keys cannot hold dots
    return linear.replace(".", "_")


class QuantBlock(nn.Module):
    def __init__(self, block: Block, spec: QuantSpec, seed: int = 0):
        super().__init__()
        cfg = block.attn.cfg
        self.cfg, self.spec = cfg, spec
        self.fp = block
        self.fp.requires_grad_(False)
        if spec.format.is_fp4:
            for site in transform_sites(cfg):
                if site.dim % spec.format.block_size:
                    raise ConfigError(f"{spec.format.value} quantizes blocks of "
                                      f"{spec.format.block_size} inputs; the {site.name} "
                                      f"site's width {site.dim} is not a multiple")
        kv_groups = (cfg.num_kv_heads, cfg.num_heads // cfg.num_kv_heads, cfg.head_dim)
        self.sites = nn.ModuleDict({
            site.name: SiteTransform(site.dim, spec.transform, spec.smooth, seed + 7 * i,
                                     kv_groups=kv_groups if site.name == "o" else None)
            for i, site in enumerate(transform_sites(cfg))
        })
        self.act = nn.ModuleDict({name: ActQuantizer(spec.a_bits, spec.learn_a_clip,
                                                     spec.format)
                                  for name in self.sites})
        self.wq = nn.ModuleDict({
            _key(name): WeightQuantizer(self.linear(name).out_features, spec.w_bits,
                                        spec.learn_w_clip, spec.format)
            for name in LINEAR_SITE
        })
        self.weight_override: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._folded_cache: dict[str, torch.Tensor] | None = None  # set by convert()
        self.to(next(block.parameters()).device)

    @property
    def converted(self) -> bool:
        return self._folded_cache is not None

    def prepare(self) -> QuantBlock:
        """The calibration form: differentiable fake-quant over learnable parameters."""
        self._folded_cache = None
        return self

    @torch.no_grad()
    def convert(self) -> QuantBlock:
        """The deployment form: the folded arithmetic on the current parameters (16-bit
        weights have no integer codes to fold, so such a block stays in calibration form)."""
        if self.spec.w_bits != NO_QUANT_BITS:
            self._folded_cache = dequantized(self.folded())
        return self

    def linear(self, name: str) -> nn.Linear:
        return self.fp.get_submodule(name)

    def trainable(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(transform and scale parameters, clipping parameters)."""
        clips, other = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (clips if "clip_logit" in name else other).append(p)
        return other, clips

    def folded_weight(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        w = self.linear(name).weight
        return self.sites[LINEAR_SITE[name]].fold_weight(w if dtype is None else w.to(dtype))

    def weight_codes(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Integer codes and per-row scales (float64) of a linear's folded weight."""
        if self.spec.w_bits == NO_QUANT_BITS:
            raise ConfigError("16-bit weights have no integer codes (nothing to fold)")
        if self.spec.format.is_fp4:
            raise ConfigError(f"{self.spec.format.value} weights have no integer codes "
                              f"(see fp4_weight)")
        if name in self.weight_override:
            return self.weight_override[name]
        with torch.no_grad():
            return self.wq[_key(name)].codes(self.folded_weight(name, torch.float64))

    def quantized_weight(self, name: str) -> torch.Tensor:
        if self.spec.w_bits == NO_QUANT_BITS:
            return self.folded_weight(name)
        if torch.is_grad_enabled() and name not in self.weight_override:
            # Recompute the fold in backward instead of keeping its intermediates: they are
            # several weight-sized tensors per linear, the recompute is a small fraction of
            # the step's matmul work.
            return checkpoint(self._fold_and_quantize, name, use_reentrant=False)
        # Evaluation folds in float64, exactly as `fold` does, so both round alike.
        if self.spec.format.is_fp4:
            with torch.no_grad():
                w = self.wq[_key(name)](self.folded_weight(name, torch.float64))
            return w.to(self.linear(name).weight.dtype)
        codes, scale = self.weight_codes(name)
        return (codes.double() * scale).to(self.linear(name).weight.dtype)

    def fp4_weight(self, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """FP4 E2M1 values (out, in), block scales (out, in / B) and second-level scale
        of a linear's folded weight (float64)."""
        return self.wq[_key(name)].fp4_codes(self.folded_weight(name, torch.float64))

    def _fold_and_quantize(self, name: str) -> torch.Tensor:
        return self.wq[_key(name)](self.folded_weight(name))

    def site_input(self, site: str, x: torch.Tensor, drop_prob: float = 0.0) -> torch.Tensor:
        """Transformed, fake-quantized input of a site (what its linears consume)."""
        return self.act[site](self.sites[site](x), drop_prob)

    def _mm(self, name: str, xq: torch.Tensor) -> torch.Tensor:
        lin = self.linear(name)
        return F.linear(xq, self.quantized_weight(name).to(xq.dtype), lin.bias)

    @torch.no_grad()
    def folded(self) -> dict[str, torch.Tensor]:
        """This block in the folded deployment form (see folded.py), computed in float64.

        Site scales c go into the RMSNorm weights (qkv, gate-up) and into the rows of
        v_proj / up_proj (o, down); per-row quantization is invariant to row scaling, so
        only the stored row scales change.
        """
        f64 = torch.float64
        c = {name: site.scale(f64) for name, site in self.sites.items()}
        out: dict[str, torch.Tensor] = {}
        for norm, site in (("attn_norm", "qkv"), ("mlp_norm", "gate_up")):
            w = getattr(self.fp, norm).weight.double()
            out[f"{norm}.weight"] = (w if c[site] is None else w / c[site]).float()
        o_rows = None if self.sites["o"].log_c is None else self.sites["o"].log_c.double().exp()
        row_div = {"attn.v_proj": o_rows, "mlp.up_proj": c["down"]}
        fp4 = self.spec.format.is_fp4
        for name in LINEAR_SITE:
            if fp4:  # per-row second-level scale t, so the row division stays exact
                codes, block_scale, tensor = self.fp4_weight(name)
                scale = tensor.double().expand(codes.shape[0]).clone()
                out[f"{name}.block_scale"] = block_scale.float()
            else:
                codes, scale = self.weight_codes(name)
                scale = scale.double().reshape(-1)
            bias = self.linear(name).bias
            bias = None if bias is None else bias.double()
            div = row_div.get(name)
            if div is not None:
                scale = scale / div
                bias = None if bias is None else bias / div
            out[f"{name}.codes"] = codes.float() if fp4 else codes.to(torch.int8)
            out[f"{name}.scale"] = scale.float()
            if bias is not None:
                out[f"{name}.bias"] = bias.float()
        for name, site in self.sites.items():
            factors = site.factors(f64)
            if factors is not None:
                out[f"{name}.p1"] = factors[0].float().contiguous()
                out[f"{name}.p2"] = factors[1].float().contiguous()
            out[f"{name}.act_clip"] = self.act[name].clip().float().reshape(())
        return out

    def forward(self, h, cos, sin, attn_mask, drop_prob: float = 0.0, past=None, present=None):
        """The folded deployment arithmetic after `convert()`, else the calibration form.
        `past` / `present`: cached keys and values (`models.transformer.attention`)."""
        if self._folded_cache is not None:
            return block_forward(self._folded_cache, self.cfg, self.spec.a_bits, h, cos, sin,
                                 attn_mask, past, present, fmt=self.spec.format)
        return block_math(
            self.cfg, h, cos, sin, attn_mask,
            norm=lambda name, x: getattr(self.fp, name)(x),
            site=lambda name, x: self.site_input(name, x, drop_prob),
            mm=self._mm, past=past, present=present,
        )

    def calib_state(self) -> dict[str, torch.Tensor]:
        """Everything calibration produced (no pretrained weights), for saving."""
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()
                 if not k.startswith("fp.")}
        for name, (codes, scale) in self.weight_override.items():
            state[f"override.{name}.codes"] = codes.cpu()
            state[f"override.{name}.scale"] = scale.cpu()
        return state

    def load_calib_state(self, state: dict[str, torch.Tensor]) -> None:
        own = {k: v for k, v in state.items() if not k.startswith("override.")}
        missing, unexpected = self.load_state_dict(own, strict=False)
        missing = [k for k in missing if not k.startswith("fp.")]
        if missing or unexpected:
            raise KeyError(f"calibration state mismatch: missing {missing}, "
                           f"unexpected {unexpected}")
        self._folded_cache = None
        device = next(self.fp.parameters()).device
        names = {k[len("override."):].rsplit(".", 1)[0] for k in state if k.startswith("override.")}
        self.weight_override = {
            n: (state[f"override.{n}.codes"].to(device), state[f"override.{n}.scale"].to(device))
            for n in names
        }
