"""Runtime sampler speed on CPU: onnxruntime K-sample sampler vs naive runs vs torch.

Measured in one run, per model configuration (paper: 64 filters, depth 4; small:
16 filters), on one HxW image (default 512x512), untiled:
  * runtime sampler (OnnxBackend.predict) for K = 1, 4, 16, 32;
  * the naive way: the whole model run K times (K calls of predict with K=1);
  * torch eager sampling of the same model (PUNet.sample_logits + reductions),
    channels_last, and torch.compile (the best torch variant found);
  * ratios: cost(K=16)/cost(K=1), ORT vs torch eager and vs best torch at K=16;
  * the encoder's achieved GFLOP/s (FLOPs from torch.utils.flop_counter)
    against this machine's large-GEMM ceiling (best of numpy, torch and
    onnxruntime MatMul on the same threads);
  * peak RSS of a fresh process running the sampler at K = 16 and 32;
  * with --torch-em VENV, a side-by-side row on one imported model: torch-em
    eager (its own forward() + 16 x sample(), in VENV, a venv with torch-em
    0.10.9 such as the one .ci/torch_em_crosscheck.sh creates) versus probda's
    ONNX sampler at K = 16 on the same weights after `probda import`
    (torch-em's default ProbabilisticUNet with filters 16, 32, 64, 128, latent 6,
    3 fcomb convs, InstanceNorm), same image and threads. Each side is timed in a
    fresh process of its own (torch-em in VENV, probda with this interpreter), so
    neither runs beside threads the other left behind (torch's, after the export).

Usage:
    python benchmarks/sampler.py [--configs paper,small] [--size 512] [--threads N] [--repeats 3] [--no-compile]
                                 [--torch-em VENV]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="paper,small")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--threads", type=int, default=None, help="threads for every engine (default: physical cores)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--naive-max-k", type=int, default=16)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--torch-em", metavar="VENV", default=None, help="venv with torch-em 0.10.9: add the torch-em row")
    p.add_argument("--rss-child", nargs=4, metavar=("FOLDER", "K", "SIZE", "THREADS"), help=argparse.SUPPRESS)
    p.add_argument("--torch-em-child", nargs=4, metavar=("FOLDER", "SIZE", "THREADS", "REPEATS"), help=argparse.SUPPRESS)
    p.add_argument("--probda-child", nargs=4, metavar=("FOLDER", "SIZE", "THREADS", "REPEATS"), help=argparse.SUPPRESS)
    return p.parse_args()


def physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def say(msg: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up (session arenas, oneDNN primitives)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def image(size: int):
    import numpy as np

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    img = rng.normal(0, 0.2, (size, size))
    for _ in range(30):
        cy, cx, r = rng.uniform(0, size, 2).tolist() + [rng.uniform(5, 25)]
        img += (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    return img.astype(np.float32)


def gemm_ceiling(threads: int, n: int = 2048) -> dict[str, float]:
    """GFLOP/s of a large float32 GEMM in numpy, torch and onnxruntime."""
    import numpy as np
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper

    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    flops = 2 * n**3
    out = {"numpy": flops / best_time(lambda: a @ a, 3) / 1e9}
    ta = torch.from_numpy(a)
    with torch.inference_mode():
        out["torch"] = flops / best_time(lambda: ta @ ta, 3) / 1e9
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in "ab"],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    out["onnxruntime"] = flops / best_time(lambda: sess.run(None, {"a": a, "b": a}), 3) / 1e9
    return out


def torch_sampler(model, x, eps, *, channels_last: bool = False):
    """torch eager: PUNet.sample_logits + the same reductions as the decoder graph."""
    import torch

    def run():
        with torch.inference_mode():
            xi = x.contiguous(memory_format=torch.channels_last) if channels_last else x
            probs = torch.sigmoid(model.sample_logits(xi, eps=eps))
            mean = probs.mean(0)
            std = ((probs - mean) ** 2).mean(0).sqrt()
            hits = torch.where(mean >= 0.5, probs >= 0.9, probs <= 0.1).float().mean(0)
            return mean, std, hits

    return run


def rss_child(folder: str, k: int, size: int, threads: int) -> None:
    import resource

    from probda_deploy.runtime import OnnxBackend

    sampler = OnnxBackend(folder, device="cpu", threads=threads)
    sampler.predict(image(size), k=k, seed=0, tile=None)
    # VmHWM belongs to this process image; ru_maxrss would carry the parent's peak across fork/exec
    try:
        hwm = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM"))
        print(int(hwm.split()[1]) / 1024)
    except (OSError, StopIteration):
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def peak_rss(folder: Path, k: int, size: int, threads: int) -> float:
    cmd = [sys.executable, __file__, "--rss-child", str(folder), str(k), str(size), str(threads)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return float(res.stdout.strip().splitlines()[-1])


def bench_config(name: str, args, threads: int, workdir: Path) -> dict:
    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from probda_deploy.exporters import export_onnx
    from probda_deploy.models import build_model
    from probda_deploy.runtime import OnnxBackend

    torch.manual_seed(0)
    model = build_model("punet" if name == "paper" else "punet-small").eval()
    t0 = time.perf_counter()
    folder = export_onnx(model, workdir / f"{name}.probda", check=False)
    res = {"config": name, "filters": model.config.filters, "export_s": time.perf_counter() - t0}
    sampler = OnnxBackend(folder, device="cpu", threads=threads)
    img = image(args.size)
    say(f"exported in {res['export_s']:.0f} s; runtime sampler")
    for k in (1, 4, 16, 32):
        res[f"ort_k{k}"] = best_time(lambda: sampler.predict(img, k=k, seed=0, tile=None), args.repeats)
    say("naive K full runs")
    for k in (4, 16):
        if k <= args.naive_max_k:
            reps = 1 if name == "paper" else args.repeats
            res[f"naive_k{k}"] = best_time(lambda: [sampler.predict(img, k=1, seed=i, tile=None) for i in range(k)], reps)
    say("torch eager")
    x = torch.from_numpy((img - img.mean()) / (img.std() + 1e-7))[None, None]
    eps = torch.randn(16, 1, model.config.latent_dim)
    res["torch_k16"] = best_time(torch_sampler(model, x, eps), args.repeats)
    model_cl = build_model("punet" if name == "paper" else "punet-small").eval().to(memory_format=torch.channels_last)
    model_cl.load_state_dict(model.state_dict())
    res["torch_cl_k16"] = best_time(torch_sampler(model_cl, x, eps, channels_last=True), args.repeats)
    if not args.no_compile:
        say("torch.compile")
        try:
            compiled = torch.compile(model.sample_logits)
            t0 = time.perf_counter()
            with torch.inference_mode():
                compiled(x, eps=eps)
            res["compile_s"] = time.perf_counter() - t0

            class Wrap:
                sample_logits = staticmethod(compiled)

            res["torch_compile_k16"] = best_time(torch_sampler(Wrap, x, eps), args.repeats)
        except Exception as e:  # inductor needs a C++ toolchain; report and go on
            res["compile_error"] = f"{type(e).__name__}: {str(e)[:80]}"
    say("encoder FLOPs and peak RSS")
    s = model.config.size_multiple
    xp = torch.zeros(1, 1, -(-args.size // s) * s, -(-args.size // s) * s)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model.features(xp)
    res["encoder_gflop"] = counter.get_total_flops() / 1e9
    xin = np.zeros(tuple(xp.shape), np.float32)
    res["encoder_s"] = best_time(lambda: sampler.encode(xin), args.repeats)
    res["rss_k16_mb"] = peak_rss(folder, 16, args.size, threads)
    res["rss_k32_mb"] = peak_rss(folder, 32, args.size, threads)
    return res


TORCH_EM_KWARGS = {"input_channels": 1, "output_channels": 1, "num_filters": [16, 32, 64, 128], "latent_dim": 6,
                   "no_convs_fcomb": 3, "beta": 1.0, "rl_swap": True}


def _crosscheck_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("torch_em_crosscheck", Path(__file__).resolve().parents[1] / ".ci" / "torch_em_crosscheck.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def torch_em_child(folder: str, size: int, threads: int, repeats: int) -> None:
    """(Run in the torch-em venv.) Build and save the torch-em model; time forward() + 16 x sample() + reductions."""
    import json

    import torch

    torch.set_num_threads(threads)
    xc = _crosscheck_module()
    cls, how = xc._import_torch_em()
    model = xc._build(cls, TORCH_EM_KWARGS, seed=0)
    torch.save(xc._trainer_style_checkpoint(model, None, cls, TORCH_EM_KWARGS), Path(folder) / "torch_em.pt")
    img = image(size)
    x = torch.from_numpy((img - img.mean()) / (img.std() + 1e-7))[None, None]

    def run():
        with torch.inference_mode():
            model(x)
            probs = torch.stack([torch.sigmoid(model.sample()) for _ in range(16)])
            mean = probs.mean(0)
            std = ((probs - mean) ** 2).mean(0).sqrt()
            hits = torch.where(mean >= 0.5, probs >= 0.9, probs <= 0.1).float().mean(0)
            return mean, std, hits

    print(json.dumps({"torch_em_k16": best_time(run, repeats), "torch": torch.__version__, "how": how}))


def bench_torch_em(venv: Path, args, threads: int, workdir: Path) -> dict:
    """torch-em eager (in `venv`) vs probda's ONNX sampler on the same imported weights."""
    import json

    from probda_deploy.exporters import export_onnx
    from probda_deploy.models.checkpoint import save_checkpoint
    from probda_deploy.models.importer import import_checkpoint

    say("torch-em eager in its venv")
    cmd = [str(venv / "bin" / "python"), __file__, "--torch-em-child", str(workdir), str(args.size), str(threads), str(args.repeats)]
    env = {**os.environ, **{v: str(threads) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}}
    res = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout.strip().splitlines()[-1])
    say("probda import + export + runtime sampler")
    ckpt = save_checkpoint(import_checkpoint(workdir / "torch_em.pt").checkpoint, workdir / "torch_em_probda.pt")
    t0 = time.perf_counter()
    folder = export_onnx(ckpt, workdir / "torch_em.probda")
    res["export_s"] = time.perf_counter() - t0
    cmd = [sys.executable, __file__, "--probda-child", str(folder), str(args.size), str(threads), str(args.repeats)]
    res["ort_k16"] = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout.strip().splitlines()[-1])
    return res


def probda_child(folder: str, size: int, threads: int, repeats: int) -> None:
    """(Run in a fresh process.) Time probda's ONNX sampler at K=16; print the best time."""
    from probda_deploy.runtime import OnnxBackend

    sampler = OnnxBackend(folder, device="cpu", threads=threads)
    img = image(size)
    print(best_time(lambda: sampler.predict(img, k=16, seed=0, tile=None), repeats))


def report_torch_em(r: dict, args, threads: int) -> None:
    from machine import describe_cpu

    print(f"\n## torch-em vs probda on the same imported weights: {args.size}x{args.size}, CPU {describe_cpu(threads)}\n")
    print("| model | torch-em eager: forward + 16 x sample() | probda ONNX sampler K=16 | speed-up |")
    print("|---|---|---|---|")
    print(f"| torch-em ProbabilisticUNet [16, 32, 64, 128], InstanceNorm, latent 6 | {r['torch_em_k16']:.2f} s | "
          f"{r['ort_k16']:.2f} s | {r['torch_em_k16'] / r['ort_k16']:.2f}x |")
    print(f"\ntorch-em side: torch {r['torch']} ({r['how']}); probda export of the imported checkpoint {r['export_s']:.0f} s")


def report(rows: list[dict], ceiling: dict, args, threads: int) -> None:
    from machine import describe_cpu

    best_gemm = max(ceiling.values())
    print(f"\n## Runtime sampler benchmark: {args.size}x{args.size}, CPU {describe_cpu(threads)} for every engine\n")
    print("GEMM ceiling (2048^3 float32): " + ", ".join(f"{k} {v:.1f}" for k, v in ceiling.items()) + f" GFLOP/s -> ceiling {best_gemm:.1f}\n")
    print("| config | K=1 | K=4 | K=16 | K=32 | naive K=4 | naive K=16 | torch eager K=16 | channels_last K=16 | torch.compile K=16 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = [f"{r[k]:.2f} s" if k in r else (f"{int(k[7:]) * r['ort_k1']:.1f} s (K x K=1)" if k.startswith("naive") else "n/a") for k in
                 ("ort_k1", "ort_k4", "ort_k16", "ort_k32", "naive_k4", "naive_k16", "torch_k16", "torch_cl_k16", "torch_compile_k16")]
        print(f"| {r['config']} {r['filters']} | " + " | ".join(cells) + " |")
    print("\n| config | cost K16/K1 (<=1.25) | naive K16 / ORT K16 | ORT vs torch eager K16 (>=4x) | ORT vs best torch K16 (>=2x) | encoder GFLOP | encoder GFLOP/s | / ceiling (>=0.8) | peak RSS K16 | peak RSS K32 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        best_torch = min(r[k] for k in ("torch_k16", "torch_cl_k16", "torch_compile_k16") if k in r)
        gflops = r["encoder_gflop"] / r["encoder_s"]
        naive_k16 = r.get("naive_k16", 16 * r["ort_k1"])
        naive = f"{naive_k16 / r['ort_k16']:.1f}x" + ("" if "naive_k16" in r else " (16 x K=1)")
        print(f"| {r['config']} | {r['ort_k16'] / r['ort_k1']:.2f} | {naive} | {r['torch_k16'] / r['ort_k16']:.2f}x | "
              f"{best_torch / r['ort_k16']:.2f}x | {r['encoder_gflop']:.1f} | {gflops:.1f} | {gflops / best_gemm:.2f} | "
              f"{r['rss_k16_mb']:.0f} MB | {r['rss_k32_mb']:.0f} MB |")
    for r in rows:
        extra = f"; torch.compile first call {r['compile_s']:.0f} s" if "compile_s" in r else f"; torch.compile: {r.get('compile_error', 'skipped')}"
        print(f"\n{r['config']}: export {r['export_s']:.0f} s; encoder alone {r['encoder_s']:.2f} s{extra}")


def main() -> None:
    args = parse()
    threads = args.threads or physical_cores()
    if args.rss_child:
        folder, k, size, thr = args.rss_child
        rss_child(folder, int(k), int(size), int(thr))
        return
    if args.torch_em_child or args.probda_child:
        folder, size, thr, reps = args.torch_em_child or args.probda_child
        (torch_em_child if args.torch_em_child else probda_child)(folder, int(size), int(thr), int(reps))
        return
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    import torch

    torch.set_num_threads(threads)
    rows, te = [], None
    with tempfile.TemporaryDirectory(prefix="probda-bench-") as tmp:
        for name in filter(None, args.configs.split(",")):
            print(f"[{name}] exporting and measuring...", file=sys.stderr, flush=True)
            rows.append(bench_config(name.strip(), args, threads, Path(tmp)))
            say(f"raw: {rows[-1]}")
        if args.torch_em:
            te = bench_torch_em(Path(args.torch_em), args, threads, Path(tmp))
            say(f"raw: {te}")
    if rows:
        report(rows, gemm_ceiling(threads), args, threads)
    if te:
        report_torch_em(te, args, threads)


if __name__ == "__main__":
    main()
