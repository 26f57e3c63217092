"""ONNX Runtime vs PyTorch eager for the shipped classifier, in one process (ratios, not absolute claims).

    python bench/bench_inference.py [--model model_zoo/cifar10_lt_ce_resnet32.onnx] [--batch-sizes 1 64]
                                    [--threads 2] [--rounds 9] [--min-time 0.2] [--channels-last]

Compared, per batch size, on the same preprocessed batch (the CIFAR-10 test images in examples/, repeated):

- `onnxruntime`: `OnnxClassifier.session.run` as the app and the HTTP service call it (the classifier's own
  session: graph optimisations on, batch-norm folded into the convolutions at export);
- `torch eager`: `models.create_model("resnet32")` in eval mode under `torch.inference_mode()`, with the
  weights read back from the ONNX file's initializers. The export folded each batch norm into the
  convolution before it, so each convolution gets the folded weight and its batch norm becomes
  y = x + folded bias (weight 1, mean 0, variance 1 - eps); eager still runs every batch-norm op. The
  script prints the largest logit difference and the top-1 agreement between the two, so you can see
  it is the same model;
- `predict`: the full `OnnxClassifier.predict` path (PIL images in: resize/crop/normalise, session, softmax,
  top-5 records out), to show what preprocessing and post-processing add to the session.

Both runtimes use the same intra-op thread count (`--threads`, default 2). The variants run interleaved
round by round, with a short pause between blocks so that one runtime's spinning worker threads do not
eat into the next one's time; each block repeats calls until `--min-time` seconds have passed. Medians
of the rounds are printed with ms/batch, images/s and the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from servers import block_seconds

from inference.classifier import OnnxClassifier
from inference.images import load_image
from models import create_model

ROOT = Path(__file__).resolve().parents[1]


def torch_model_from_onnx(onnx_path: Path, model_name: str, num_classes: int) -> torch.nn.Module:
    """The eager model with the exported (batch-norm-folded) weights: conv X gets `classifier.X.weight` and
    `classifier.X.weight_bias`, and the batch norm after it adds that bias and nothing else."""
    weights = {init.name: torch.from_numpy(numpy_helper.to_array(init).copy())
               for init in onnx.load(str(onnx_path)).graph.initializer}
    model = create_model(model_name, num_classes=num_classes).eval()
    modules = dict(model.named_modules())
    used = set()
    with torch.no_grad():
        for name, module in modules.items():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.copy_(weights[f"classifier.{name}.weight"])
                bias = weights[f"classifier.{name}.weight_bias"]
                norm = modules[name.replace("conv", "bn")]  # conv1 -> bn1, layer1.0.conv2 -> layer1.0.bn2
                norm.weight.fill_(1.0)
                norm.bias.copy_(bias)
                norm.running_mean.zero_()
                norm.running_var.fill_(1.0 - norm.eps)
                used |= {f"classifier.{name}.weight", f"classifier.{name}.weight_bias"}
            elif isinstance(module, torch.nn.Linear):
                module.weight.copy_(weights[f"classifier.{name}.weight"])
                module.bias.copy_(weights[f"classifier.{name}.bias"])
                used |= {f"classifier.{name}.weight", f"classifier.{name}.bias"}
    unused = [n for n in weights if n.startswith("classifier.") and n not in used]
    if unused:
        raise ValueError(f"{onnx_path.name}: initializers not mapped onto {model_name}: {unused}")
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "model_zoo" / "cifar10_lt_ce_resnet32.onnx"))
    parser.add_argument("--examples", default=str(ROOT / "examples"))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of both runtimes")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--min-time", type=float, default=0.2, help="seconds per block of calls")
    parser.add_argument("--pause", type=float, default=0.2, help="seconds between blocks")
    parser.add_argument("--channels-last", action="store_true", help="eager input and weights in channels_last")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    classifier = OnnxClassifier(args.model, providers=["CPUExecutionProvider"], threads=args.threads)
    card = classifier.card
    model = torch_model_from_onnx(Path(args.model), card.model_name, card.num_classes)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    examples = [load_image(p) for p in sorted(Path(args.examples).glob("*.png"))]
    if not examples:
        raise SystemExit(f"no .png images in {args.examples}")

    print(f"{Path(args.model).name}: onnxruntime {classifier.session.get_providers()[0]} vs torch {torch.__version__} "
          f"eager ({'channels_last' if args.channels_last else 'NCHW'}), {args.threads} threads each, "
          f"{len(examples)} example images")
    check = classifier.preprocess(examples)
    with torch.inference_mode():
        eager_logits = model(torch.from_numpy(check).contiguous(memory_format=memory_format)).numpy()
    [onnx_logits] = classifier.session.run([classifier.output_name], {classifier.input_name: check})
    print(f"same model: max |logit difference| {np.abs(eager_logits - onnx_logits).max():.2e}, top-1 agreement "
          f"{(eager_logits.argmax(1) == onnx_logits.argmax(1)).mean():.0%} on the example images")

    for batch_size in args.batch_sizes:
        images = [examples[i % len(examples)] for i in range(batch_size)]
        batch = classifier.preprocess(images)
        tensor = torch.from_numpy(batch).contiguous(memory_format=memory_format)

        def run_onnx(batch=batch):
            classifier.session.run([classifier.output_name], {classifier.input_name: batch})

        def run_eager(tensor=tensor):
            with torch.inference_mode():
                model(tensor)

        def run_predict(images=images):
            classifier.predict(images, top_k=5)

        variants = {"onnxruntime": run_onnx, "torch eager": run_eager, "predict (ORT)": run_predict}
        for call in variants.values():  # warm-up: first calls allocate and pick kernels
            block_seconds(call, args.min_time / 2)
        timings = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, call in variants.items():
                time.sleep(args.pause)
                timings[name].append(block_seconds(call, args.min_time))
        medians = {name: statistics.median(values) for name, values in timings.items()}
        print(f"batch {batch_size} (median of {args.rounds} rounds):")
        for name, seconds in medians.items():
            rounds = ", ".join(f"{value * 1000:.3g}" for value in timings[name])
            print(f"  {name:14s} {seconds * 1000:8.3f} ms/batch  {batch_size / seconds:9.1f} images/s   (rounds: {rounds})")
        print(f"  eager / onnxruntime time = {medians['torch eager'] / medians['onnxruntime']:.2f}x   "
              f"predict / session.run time = {medians['predict (ORT)'] / medians['onnxruntime']:.2f}x")


if __name__ == "__main__":
    main()
