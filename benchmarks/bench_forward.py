"""D0 raw network forward at 512x512, batch 1, on this CPU: ours against effdet in one run.

    .venv/bin/python benchmarks/bench_forward.py [--model tf_efficientdet_d0] [--repeats 10]

Prints the median latency of both and the ratio ours / effdet (below 1.0 is faster).
"""

from __future__ import annotations

import argparse

import torch

import efficientdet as ed
from common import interleaved_median_ms, machine, setup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="tf_efficientdet_d0")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    setup(args.threads)
    import effdet

    ref = effdet.create_model(args.model, pretrained=False, pretrained_backbone=False).eval()
    path = "/tmp/_bench_forward_ref.pth"
    torch.save(ref.state_dict(), path)
    ours = ed.create_model(args.model, checkpoint=path).eval()
    x = torch.randn(args.batch, 3, *ours.config.image_size)
    with torch.inference_mode():
        a, b = ref(x), ours(x)
        err = max((p - q).abs().max().item() for p, q in zip(a[0] + a[1], b[0] + b[1], strict=True))
        times = interleaved_median_ms(
            {"effdet": lambda: ref(x), "efficientdet": lambda: ours(x)}, repeats=args.repeats
        )
    print(f"# {args.model} raw forward, {tuple(x.shape)}, {machine()}, median of {args.repeats}")
    print(f"effdet       {times['effdet']:8.1f} ms")
    print(f"efficientdet {times['efficientdet']:8.1f} ms")
    print(f"ratio ours/effdet {times['efficientdet'] / times['effdet']:.3f}  (max abs output diff {err:.1e})")


if __name__ == "__main__":
    main()
