"""Throughput of each evaluation metric, images (pairs) per second, as JSON:

    python -m tools.bench_evaluate [--pairs 8] [--device cpu] [--face FOLDER]

Backbones are randomly initialised torchvision Inception v3 / AlexNet (speed does not depend on the weights);
LPIPS's linear layers are the lpips package's. The face path needs an insightface folder (--face).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from shards.bench import cpu_model
from tools.evaluate.inputs import RESOLUTIONS
from tools.evaluate.metrics import FaceScorer, inception_features, lpips_distance, pixel_scores
from tools.evaluate.models import (load_face_analysis, load_inception_blocks, load_lpips,
                                   packaged_lpips_weights)


def _rate(count: int, seconds: float) -> float:
    return round(count / seconds, 3) if seconds > 0 else float("inf")


def _timed(function, repeat: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        function()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--face", type=Path, default=None, help="insightface model folder (detector + recogniser)")
    args = parser.parse_args(argv)
    torch.backends.cuda.matmul.fp32_precision = torch.backends.cudnn.conv.fp32_precision = "ieee"  # no TF32
    from torchvision.models import alexnet, inception_v3

    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        torch.save(inception_v3(weights=None, aux_logits=True, init_weights=True).state_dict(),
                   Path(folder) / "inception.pth")
        torch.save(alexnet(weights=None).state_dict(), Path(folder) / "alexnet.pth")
        inception = load_inception_blocks(Path(folder) / "inception.pth").to(args.device)
        lpips = load_lpips(Path(folder) / "alexnet.pth", packaged_lpips_weights()).to(args.device)
    face = FaceScorer(load_face_analysis(args.face, device=args.device)) if args.face else None
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    rng = np.random.default_rng(0)
    report: dict = {"device": args.device, "cpu": cpu_model(), "torch_threads": torch.get_num_threads(),
                    "pairs": args.pairs, "batch_size": args.batch_size,
                    "gpu": torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else None,
                    "images_per_s": {}}
    for resolution in RESOLUTIONS.values():
        shape = (args.pairs, 3, resolution.height, resolution.width)
        gt = torch.from_numpy(rng.random(shape, dtype=np.float32))
        generated = (gt + torch.from_numpy(rng.normal(0, 0.05, shape).astype(np.float32))).clamp(0, 1)
        batches = [(generated[i:i + args.batch_size].to(args.device), gt[i:i + args.batch_size].to(args.device))
                   for i in range(0, args.pairs, args.batch_size)]
        inception_features(inception, batches[0][0][:1].clone())  # warm-up
        lpips_distance(lpips, batches[0][0][:1], batches[0][1][:1])

        def run_inception():
            for g, _ in batches:
                inception_features(inception, g.clone())
            sync()

        def run_lpips():
            for g, t in batches:
                lpips_distance(lpips, g, t)
            sync()

        rates = {"fid_inception": _rate(args.pairs, _timed(run_inception)),
                 "lpips": _rate(args.pairs, _timed(run_lpips))}
        gt_np, generated_np = gt.numpy(), generated.numpy()
        rates["psnr_ssim_ssim256"] = _rate(args.pairs, _timed(
            lambda: [pixel_scores(gt_np[i], generated_np[i]) for i in range(args.pairs)]))
        if face is not None and resolution.name == "256":
            as_bgr = [(np.ascontiguousarray(x.transpose(1, 2, 0)[:, :, ::-1]) * 255).astype(np.uint8)
                      for x in gt_np]
            rates["face"] = _rate(args.pairs, _timed(lambda: [face(b, b) for b in as_bgr]))
        report["images_per_s"][resolution.gen_folder] = rates
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
