#!/usr/bin/env python3
"""The official PyTorch AudioMAE++'s training step, timed: the peer every maepp speed is compared to.

    PEER_SRC=DIR python3 benchmarks/peer_step.py --size base --batch 512 --device cuda --amp bf16 --sdpa --compile

DIR holds the release's `src/` (github.com/SarthakYadav/audiomae-plusplus-official, MIT; see
benchmarks/README.md). Its own model code runs unchanged, built with the model arguments of its
configs (Transformer++ encoder and decoder, SwiGLU, no RoPE), and one step is forward, loss,
backward and a fused AdamW update on a random batch. As released it trains in float32, eagerly;
`--amp bf16` (autocast), `--compile` (torch.compile of forward and loss) and `--sdpa` (torch's
fused scaled_dot_product_attention in place of the release's explicit softmax, the same math) are
what a user would add. Prints one JSON line: the median step after 3 warm-up steps, clips/s, the
first step's time (compilation), peak memory.
"""

import argparse
import json
import os
import statistics
import sys
import time

# The release's configs pair each encoder size with its decoder: (width, depth, heads).
DECODERS = {"tiny": (384, 4, 8), "base": (384, 4, 8), "large": (512, 4, 8)}
OTHER_DECODER = (384, 4, 6)
WARM_UP = 3


def _fused_attention(layers, torch):
    """The release's Attention.forward, with its softmax(q k^T) v as one fused kernel."""
    import torch.nn.functional as F

    def forward(self, x, rope=None):
        batch, tokens, width = x.shape
        qkv = self.qkv_layer(x).reshape(batch, tokens, 3, self.num_heads, width // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [batch, heads, tokens, head_dim]
        if rope is not None:
            q, k = rope.rotate_queries_or_keys(q), rope.rotate_queries_or_keys(k)
        x = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, tokens, width)
        return self.proj_drop(self.proj_layer(x))

    layers.Attention.forward = forward


def build(size: str, decoder: tuple, device: str):
    from src.models import mae_pp

    width, depth, heads = decoder
    model = getattr(mae_pp, f"mae_plusplus_{size}")(
        mask_ratio=0.8,
        img_size=(200, 80),
        patch_size=(4, 16),
        decoder_embed_dim=width,
        decoder_depth=depth,
        decoder_num_heads=heads,
        encoder_plusplus_block=True,
        decoder_plusplus_block=True,
        encoder_use_swiglu_final_ffn=True,
        decoder_use_swiglu_final_ffn=True,
        encoder_use_rope=False,
        decoder_use_rope=False,
    )
    return model.to(device)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="base")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6, help="timed steps, after 3 warm-up steps")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", default="", choices=["", "bf16"])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--sdpa", action="store_true")
    parser.add_argument("--decoder", default=None, help="width/depth/heads; default: the release's config")
    args = parser.parse_args()
    if "PEER_SRC" not in os.environ:
        sys.exit("peer_step.py: set PEER_SRC to the folder holding the release's src/ (benchmarks/README.md)")
    sys.path.insert(0, os.environ["PEER_SRC"])
    import torch

    if args.sdpa:
        from src.models import layers

        _fused_attention(layers, torch)
    decoder = tuple(map(int, args.decoder.split("/"))) if args.decoder else DECODERS.get(args.size, OTHER_DECODER)
    model = build(args.size, decoder, args.device)
    encoder_params = sum(
        p.numel() for name, p in model.named_parameters() if p.requires_grad and not name.startswith("decoder")
    )
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05, fused=args.device == "cuda"
    )

    def loss_of(batch):
        prediction, target, mask = model(batch)
        return model.compute_loss(prediction, target, mask)

    loss_fn = torch.compile(loss_of) if args.compile else loss_of
    batch = torch.randn(args.batch, 1, 200, 80, device=args.device)
    synchronise = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    step_times = []
    started = time.perf_counter()
    for step in range(WARM_UP + args.steps):
        synchronise()
        begin = time.perf_counter()
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.amp == "bf16"):
            loss = loss_fn(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        synchronise()
        if step == 0:
            first_step_s = time.perf_counter() - started
        if step >= WARM_UP:
            step_times.append(time.perf_counter() - begin)
    step_s = statistics.median(step_times)
    memory = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else None
    print(
        json.dumps(
            {
                "peer": "official-pytorch",
                "size": args.size,
                "batch": args.batch,
                "device": args.device,
                "amp": args.amp or "fp32",
                "compile": args.compile,
                "sdpa": args.sdpa,
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "encoder_params": encoder_params,
                "first_step_s": round(first_step_s, 1),
                "step_s": round(step_s, 5),
                "clips_per_s": round(args.batch / step_s, 2),
                "max_mem_gib": memory and round(memory, 2),
                "loss": float(loss),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
