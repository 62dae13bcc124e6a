"""Tiny random-weight PyTorch taggers of each published ONNX family, exported with each source's interface.

timm cannot be imported here (it imports torchvision, which does not load beside the local torch build), so the
architectures are written again compactly, mirroring timm's modules and forward code op for op where it shapes
the ONNX graph: ViT (timm vision_transformer: patch conv, class token, pre-norm blocks), EVA02 (timm eva: fused
qkv with q/v biases, 2-D rotary embedding on the patch tokens via `apply_rot_embed_cat`, SwiGLU MLP with its inner
LayerNorm), SwinV2 (timm swin_transformer_v2: NHWC stages, cyclic shift by torch.roll, window partition, cosine
attention with a clamped logit scale, continuous relative-position bias from an MLP, masked shifted windows,
res-post-norm, patch merging) and ConvNeXt (timm convnext: 4x4 stem, LayerNorm2d by permutes, depthwise 7x7,
inverted MLP on NHWC, layer scale, NormMlp head). Camie v2 (ViT backbone, initial head, top-k candidate tags
embedded and attending the patch tokens, refined head) and PixAI (EVA02 + linear head) follow their published
descriptions; DeepDanbooru's export is a small residual CNN taking NHWC 0..1.

`build_sources(folder)` exports every source (ONNX + tag file, with the source's input name, layout, size and
output names) once; the test module caches the folder under .cache keyed by this file's hash.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from acg2vec_models.vocab import DEEPDANBOORU_V3, WD14_SELECTED_TAGS

DIM = 32


# ---------------------------------------------------------------- shared pieces (timm's layer names)
class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int, flatten: bool = True):
        super().__init__()
        self.proj, self.flatten = nn.Conv2d(3, dim, patch, patch), flatten

    def forward(self, x):
        x = self.proj(x)
        return x.flatten(2).transpose(1, 2) if self.flatten else x.permute(0, 2, 3, 1)


# ---------------------------------------------------------------- ViT (timm vision_transformer)
class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv, self.proj = nn.Linear(dim, dim * 3), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), Mlp(dim, dim * 4)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self, size: int, patch: int, classes: int, depth: int = 2, dim: int = DIM, heads: int = 2):
        super().__init__()
        self.patch_embed = PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, (size // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, classes)

    def tokens(self, x):
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.norm(self.blocks(x))

    def forward(self, x):
        return self.head(self.tokens(x)[:, 1:].mean(dim=1))  # global_pool="avg"


# ---------------------------------------------------------------- EVA02 (timm eva)
def rot(x):
    return torch.stack([-x[..., 1::2], x[..., ::2]], -1).reshape(x.shape)


def apply_rot_embed_cat(x, emb):
    sin_emb, cos_emb = emb.tensor_split(2, -1)
    return x * cos_emb + rot(x) * sin_emb


def rope_table(grid: int, head_dim: int, ref: int = 16) -> torch.Tensor:
    """RotaryEmbeddingCat's [grid*grid, 2*head_dim] sin|cos table ("pixel" bands, scaled to ref_feat_shape)."""
    bands = torch.linspace(1.0, 224 / 2, head_dim // 4) * math.pi
    t = torch.arange(grid, dtype=torch.float32) / grid * ref / ref * 2 - 1
    grid_t = torch.stack(torch.meshgrid(t, t, indexing="ij"), dim=-1)
    pos = (grid_t.unsqueeze(-1) * bands).flatten(-2)  # [g, g, head_dim / 2]
    sin, cos = pos.sin().repeat_interleave(2, -1), pos.cos().repeat_interleave(2, -1)
    return torch.cat([sin.reshape(grid * grid, -1), cos.reshape(grid * grid, -1)], -1)


class EvaAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.randn(dim) * 0.02), nn.Parameter(torch.randn(dim) * 0.02)
        self.register_buffer("k_bias", torch.zeros(dim), persistent=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, rope):
        b, n, c = x.shape
        qkv = F.linear(x, weight=self.qkv.weight, bias=torch.cat((self.q_bias, self.k_bias, self.v_bias)))
        q, k, v = qkv.reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        q = torch.cat([q[:, :, :1, :], apply_rot_embed_cat(q[:, :, 1:, :], rope)], dim=2).type_as(v)
        k = torch.cat([k[:, :, :1, :], apply_rot_embed_cat(k[:, :, 1:, :], rope)], dim=2).type_as(v)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1_g, self.fc1_x, self.act = nn.Linear(dim, hidden), nn.Linear(dim, hidden), nn.SiLU()
        self.norm, self.fc2 = nn.LayerNorm(hidden, eps=1e-6), nn.Linear(hidden, dim)  # scale_mlp=True

    def forward(self, x):
        return self.fc2(self.norm(self.act(self.fc1_g(x)) * self.fc1_x(x)))


class EvaBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), EvaAttention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), SwiGLU(dim, int(dim * mlp_ratio))

    def forward(self, x, rope):
        x = x + self.attn(self.norm1(x), rope)
        return x + self.mlp(self.norm2(x))


class Eva(nn.Module):
    """EVA02 as timm builds eva02_large_patch14_448 (depth 24, dim 1024, 16 heads, mlp ratio 4 * 2 / 3)."""

    def __init__(self, size: int, patch: int, classes: int, depth: int = 2, dim: int = DIM, heads: int = 2,
                 mlp_ratio: float = 4 * 2 / 3):  # fmt: skip
        super().__init__()
        grid = size // patch
        self.patch_embed = PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, grid * grid + 1, dim) * 0.02)
        self.register_buffer("rope", rope_table(grid, dim // heads), persistent=False)
        self.blocks = nn.ModuleList([EvaBlock(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, classes)

    def features(self, x):
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x, self.rope)
        return self.norm(x)[:, 1:].mean(dim=1)

    def forward(self, x):
        return self.head(self.features(x))


# ---------------------------------------------------------------- SwinV2 (timm swin_transformer_v2)
def window_partition(x, w: int):
    b, h, wd, c = x.shape
    x = x.view(b, h // w, w, wd // w, w, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, w, w, c)


def window_reverse(windows, w: int, h: int, wd: int):
    c = windows.shape[-1]
    x = windows.view(-1, h // w, wd // w, w, w, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, h, wd, c)


class WindowAttention(nn.Module):
    def __init__(self, dim: int, window: int, heads: int):
        super().__init__()
        self.heads = heads
        self.logit_scale = nn.Parameter(torch.log(10 * torch.ones((heads, 1, 1))))
        self.cpb_mlp = nn.Sequential(nn.Linear(2, 64), nn.ReLU(inplace=True), nn.Linear(64, heads, bias=False))
        r = torch.arange(-(window - 1), window, dtype=torch.float32)
        table = torch.stack(torch.meshgrid(r, r, indexing="ij")).permute(1, 2, 0).unsqueeze(0) / (window - 1) * 8
        table = torch.sign(table) * torch.log2(torch.abs(table) + 1.0) / math.log2(8)
        self.register_buffer("relative_coords_table", table, persistent=False)
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
        self.register_buffer("relative_position_index", rel[..., 0] * (2 * window - 1) + rel[..., 1], persistent=False)
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.randn(dim) * 0.02), nn.Parameter(torch.randn(dim) * 0.02)
        self.register_buffer("k_bias", torch.zeros(dim), persistent=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, mask=None):
        b, n, c = x.shape
        qkv = F.linear(input=x, weight=self.qkv.weight, bias=torch.cat((self.q_bias, self.k_bias, self.v_bias)))
        q, k, v = qkv.reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * torch.clamp(self.logit_scale, max=math.log(1.0 / 0.01)).exp()
        bias = self.cpb_mlp(self.relative_coords_table).view(-1, self.heads)
        bias = bias[self.relative_position_index.view(-1)].view(n, n, -1).permute(2, 0, 1).contiguous()
        attn = attn + 16 * torch.sigmoid(bias).unsqueeze(0)
        if mask is not None:
            windows = mask.shape[0]
            attn = attn.view(-1, windows, self.heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.heads, n, n)
        return self.proj((attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c))


class SwinBlock(nn.Module):
    def __init__(self, dim: int, heads: int, grid: int, window: int, shift: int):
        super().__init__()
        self.window, self.shift, self.grid = window, shift, grid
        self.attn, self.norm1 = WindowAttention(dim, window, heads), nn.LayerNorm(dim)
        self.mlp, self.norm2 = Mlp(dim, dim * 4), nn.LayerNorm(dim)
        mask = None
        if shift:
            img = torch.zeros((1, grid, grid, 1))
            cnt = 0
            for hs in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
                for ws in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
                    img[:, hs, ws, :] = cnt
                    cnt += 1
            windows = window_partition(img, window).view(-1, window * window)
            mask = windows.unsqueeze(1) - windows.unsqueeze(2)
            mask = mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)
        self.register_buffer("attn_mask", mask, persistent=False)

    def _attn(self, x):
        _, h, w, c = x.shape
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = window_partition(x, self.window).view(-1, self.window * self.window, c)
        windows = self.attn(windows, mask=self.attn_mask).view(-1, self.window, self.window, c)
        x = window_reverse(windows, self.window, h, w)
        return torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2)) if self.shift else x

    def forward(self, x):
        b, h, w, c = x.shape
        x = x + self.norm1(self._attn(x))
        x = x.reshape(b, -1, c)
        x = x + self.norm2(self.mlp(x))
        return x.reshape(b, h, w, c)


class PatchMerging(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.reduction, self.norm = nn.Linear(4 * dim, 2 * dim, bias=False), nn.LayerNorm(2 * dim)

    def forward(self, x):
        b, h, w, c = x.shape
        x = x.reshape(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.norm(self.reduction(x))


class SwinV2(nn.Module):
    def __init__(self, size: int, patch: int, classes: int, window: int = 4, dim: int = 16):
        super().__init__()
        grid = size // patch
        self.patch_embed, self.embed_norm = PatchEmbed(patch, dim, flatten=False), nn.LayerNorm(dim)
        self.stage1 = nn.Sequential(SwinBlock(dim, 2, grid, window, 0), SwinBlock(dim, 2, grid, window, window // 2))
        self.merge = PatchMerging(dim)
        self.stage2 = nn.Sequential(SwinBlock(2 * dim, 4, grid // 2, window, 0))
        self.norm, self.head = nn.LayerNorm(2 * dim), nn.Linear(2 * dim, classes)

    def forward(self, x):
        x = self.stage2(self.merge(self.stage1(self.embed_norm(self.patch_embed(x)))))
        return self.head(self.norm(x).mean(dim=(1, 2)))


# ---------------------------------------------------------------- ConvNeXt (timm convnext)
class LayerNorm2d(nn.LayerNorm):
    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm, self.mlp = nn.LayerNorm(dim, eps=1e-6), Mlp(dim, 4 * dim)
        self.gamma = nn.Parameter(torch.rand(dim) * 0.5 + 0.5)

    def forward(self, x):
        shortcut = x
        x = self.mlp(self.norm(self.conv_dw(x).permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        return x.mul(self.gamma.reshape(1, -1, 1, 1)) + shortcut


class ConvNeXt(nn.Module):
    def __init__(self, classes: int, dims: tuple[int, int] = (16, 32)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), LayerNorm2d(dims[0], eps=1e-6))
        self.stage1 = nn.Sequential(ConvNeXtBlock(dims[0]))
        self.downsample = nn.Sequential(LayerNorm2d(dims[0], eps=1e-6), nn.Conv2d(dims[0], dims[1], 2, 2))
        self.stage2 = nn.Sequential(ConvNeXtBlock(dims[1]), ConvNeXtBlock(dims[1]))
        self.head_norm, self.fc = LayerNorm2d(dims[1], eps=1e-6), nn.Linear(dims[1], classes)

    def forward(self, x):
        x = self.stage2(self.downsample(self.stage1(self.stem(x))))
        x = F.adaptive_avg_pool2d(x, 1)
        return self.fc(self.head_norm(x).flatten(1))


# ---------------------------------------------------------------- published heads
class NhwcProbabilities(nn.Module):
    """WD v3's and DeepDanbooru's exports: NHWC input, sigmoid probabilities out."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return torch.sigmoid(self.net(x.permute(0, 3, 1, 2)))


class CamieV2(nn.Module):
    """ViT backbone -> initial logits; the top-k candidate tags are embedded, attend the patch tokens, and a
    refined head scores every tag from [pooled image, attended candidates]."""

    def __init__(self, size: int, classes: int, k: int = 8):
        super().__init__()
        self.backbone, self.k = ViT(size, 16, classes), k
        self.tag_embedding = nn.Embedding(classes, DIM)
        self.cross_attention = nn.MultiheadAttention(DIM, 2, batch_first=True)
        self.refined_classifier = nn.Linear(2 * DIM, classes)

    def forward(self, x):
        tokens = self.backbone.tokens(x)
        pooled = tokens[:, 1:].mean(dim=1)
        initial = self.backbone.head(pooled)
        candidates = torch.topk(torch.sigmoid(initial), self.k, dim=1).indices
        attended, _ = self.cross_attention(self.tag_embedding(candidates), tokens[:, 1:], tokens[:, 1:])
        refined = self.refined_classifier(torch.cat([pooled, attended.mean(dim=1)], dim=-1))
        return initial, refined, candidates


class PixAI(nn.Module):
    """EVA02 encoder + linear head; outputs prediction (sigmoid), logits, embedding like the ONNX port."""

    def __init__(self, size: int, classes: int):
        super().__init__()
        self.encoder = Eva(size, 14, classes)

    def forward(self, x):
        embedding = self.encoder.features(x)
        logits = self.encoder.head(embedding)
        return torch.sigmoid(logits), logits, embedding


class TinyResNet(nn.Module):
    """DeepDanbooru-like: conv-BN-ReLU stem, max pool, bottleneck blocks, 1x1 conv per tag, global average."""

    def __init__(self, classes: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 7, 2, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.block = nn.Sequential(nn.Conv2d(8, 4, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                                   nn.Conv2d(4, 4, 3, 2, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                                   nn.Conv2d(4, 16, 1, bias=False), nn.BatchNorm2d(16))  # fmt: skip
        self.shortcut = nn.Sequential(nn.Conv2d(8, 16, 1, 2, bias=False), nn.BatchNorm2d(16))
        # down to 16 x 16 before the per-tag conv (DeepDanbooru's six stages end at 8 x 8): 9,176 output channels
        # at 64 x 64 made this tiny model the slowest of the sources to run
        self.reduce = nn.Sequential(nn.Conv2d(16, 16, 3, 4, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.logits = nn.Conv2d(16, classes, 1, bias=False)

    def forward(self, x):
        x = self.pool(self.stem(x))
        x = self.reduce(F.relu(self.block(x) + self.shortcut(x)))
        return F.adaptive_avg_pool2d(self.logits(x), 1).flatten(1)


# ---------------------------------------------------------------- export
def wd_tags() -> list[tuple[str, int]]:
    import csv

    with WD14_SELECTED_TAGS.open(encoding="utf-8", newline="") as f:
        return [(r["name"], int(r["category"])) for r in csv.DictReader(f) if r.get("name")]


def character_tags(count: int = 100) -> list[tuple[str, int]]:
    """Character tags for the sources whose tag files have them (the repository's WD csv has none): DeepDanbooru
    v3 tags named like characters ("name_(series)")."""
    names = [
        n.strip()
        for n in DEEPDANBOORU_V3.read_text(encoding="utf-8").splitlines()
        if n.strip().endswith(")") and "(style)" not in n
    ]
    return [(n, 4) for n in names[:count]]


def _randomise(model: nn.Module, seed: int) -> nn.Module:
    """Random weights with enough spread that the probabilities differ from image to image."""
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d,)):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
        elif isinstance(m, nn.LayerNorm):
            m.weight.data.uniform_(0.8, 1.2)
            m.bias.data.uniform_(-0.1, 0.1)
    for name, p in model.named_parameters():
        if name.endswith("head.weight") or name.endswith("classifier.weight") or name.endswith("logits.weight"):
            p.data.normal_(0.0, 1.5 / math.sqrt(p.shape[1]) * 4)
    return model.eval()


def _export(model: nn.Module, example: torch.Tensor, path: Path, input_name: str, outputs: list[str],
            dynamo: bool = False) -> None:  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        if dynamo:
            batch = torch.export.Dim("batch", min=1, max=64)
            program = torch.onnx.export(model, (example,), dynamo=True, input_names=[input_name],
                                        output_names=outputs, dynamic_shapes=({0: batch},), verbose=False)  # fmt: skip
            program.save(str(path))
        else:
            axes = {name: {0: "batch"} for name in [input_name, *outputs]}
            torch.onnx.export(model, (example,), str(path), input_names=[input_name], output_names=outputs,
                              dynamic_axes=axes, opset_version=17, dynamo=False)  # fmt: skip


def _write_selected_tags(path: Path, tags: list[tuple[str, int]]) -> None:
    lines = ["tag_id,name,category,count", *[f"{i},{n},{c},{1000 - i % 1000}" for i, (n, c) in enumerate(tags)]]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


#: what each source folder holds: interface, builder of (model, example input), input name, output names
WD_FAMILIES = ("vit", "eva02", "swinv2", "convnext")


def build_sources(folder: Path) -> dict[str, Path]:
    """Exports every source into folder/<source>/ (ONNX + its tag file); returns {source: folder}."""
    tags = wd_tags()
    classes = len(tags)
    out: dict[str, Path] = {}
    builders = {
        "vit": lambda: ViT(448, 32, classes),
        "eva02": lambda: Eva(448, 28, classes),
        "swinv2": lambda: SwinV2(448, 28, classes),
        "convnext": lambda: ConvNeXt(classes),
    }
    for i, family in enumerate(WD_FAMILIES):
        target = folder / f"wd-{family}"
        model = NhwcProbabilities(_randomise(builders[family](), seed=10 + i))
        _export(model, torch.rand(2, 448, 448, 3) * 255, target / "model.onnx", "input", ["output"],
                dynamo=family == "convnext")  # fmt: skip
        shutil.copy(WD14_SELECTED_TAGS, target / "selected_tags.csv")
        out[f"wd-{family}"] = target

    target = folder / "camie-v2"
    # ratings (named rating_general ... as Camie's metadata names them), general (a few become "year"), characters
    camie_tags = [(f"rating_{n}" if c == 9 else n, c) for n, c in tags[:500]] + character_tags()
    category_names = {0: "general", 1: "artist", 3: "copyright", 4: "character", 5: "meta", 9: "rating"}
    camie = _randomise(CamieV2(512, len(camie_tags)), seed=20)
    _export(camie, torch.randn(2, 3, 512, 512), target / "camie-tagger-v2.onnx", "input",
            ["initial_predictions", "refined_predictions", "selected_candidates"])  # fmt: skip
    metadata = {
        "model_info": {"img_size": 512, "backbone": "vit"},
        "dataset_info": {
            "total_tags": len(camie_tags),
            "tag_mapping": {
                "idx_to_tag": {str(i): n for i, (n, _) in enumerate(camie_tags)},
                "tag_to_category": {
                    n: ("year" if i % 97 == 5 else category_names.get(c, "general"))
                    for i, (n, c) in enumerate(camie_tags)
                },
            },
        },
    }
    (target / "camie-tagger-v2-metadata.json").write_text(json.dumps(metadata), encoding="utf-8")
    out["camie-v2"] = target

    target = folder / "pixai"
    pixai_tags = [t for t in tags if t[1] == 0][:1900] + character_tags()
    _export(_randomise(PixAI(448, len(pixai_tags)), seed=30), torch.randn(2, 3, 448, 448), target / "model.onnx",
            "input", ["prediction", "logits", "embedding"])  # fmt: skip
    _write_selected_tags(target / "selected_tags.csv", pixai_tags)
    (target / "preprocess.json").write_text(json.dumps({"stages": [
        {"type": "resize", "size": [448, 448], "interpolation": "bilinear"}, {"type": "to_tensor"},
        {"type": "normalize", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}]}))  # fmt: skip
    out["pixai"] = target

    target = folder / "deepdanbooru"
    dd_tags = [line.strip() for line in DEEPDANBOORU_V3.read_text(encoding="utf-8").splitlines() if line.strip()]
    model = NhwcProbabilities(_randomise(TinyResNet(len(dd_tags)), seed=40))
    _export(model, torch.rand(2, 512, 512, 3), target / "deepdanbooru.onnx", "input_1:0", ["activation_1"])
    (target / "tags.txt").write_text("\n".join(dd_tags) + "\n", encoding="utf-8")
    out["deepdanbooru"] = target
    return out


def fingerprint() -> str:
    import hashlib

    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]


def cached_sources(cache_root: Path) -> dict[str, Path]:
    """The exported sources, built once per version of this file (tens of seconds) and reused."""
    folder = cache_root / f"onnx-sources-{fingerprint()}"
    for stale in cache_root.glob("onnx-sources-*"):
        if stale != folder:
            shutil.rmtree(stale, ignore_errors=True)
    if not (folder / ".complete").exists():
        if folder.exists():
            shutil.rmtree(folder)
        build_sources(folder)
        (folder / ".complete").write_text("ok")
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_dir()}
