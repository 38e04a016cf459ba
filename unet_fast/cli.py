"""The ``unet-fast`` command: train, predict, evaluate, export, demo, bench, tune."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

import unet_fast
from unet_fast.checkpoint import RECIPES, TrainConfig
from unet_fast.exports import FORMATS

# The demo's run, a few minutes on a 2-core CPU: a U-Net of four levels a quarter of the paper's
# width on 252-pixel tiles; Adam with a cosine decay (it settles in a short run, where the
# paper's SGD still swings); border term sigma 3 for cells about half the paper's size.
DEMO_CONFIG = TrainConfig(
    steps=900, tile=252, widths=(16, 32, 64, 128), optimizer="adam", lr=1e-3, lr_decay="cosine", sigma=3.0,
    val_every=150, checkpoint_every=300, synthetic_images=8, synthetic_size=512,
)
DEMO_TEST_SEED = 2015


def _train(args: argparse.Namespace) -> None:
    from unet_fast.checkpoint import load_checkpoint
    from unet_fast.training import train

    given = {field.name: getattr(args, field.name) for field in dataclasses.fields(TrainConfig)
             if getattr(args, field.name, None) is not None}
    checkpoint = Path(args.out) / "model.pt"
    if args.resume and not checkpoint.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {checkpoint}")
    if not args.resume and checkpoint.is_file():
        raise FileExistsError(f"{checkpoint} exists: pass --resume to continue it, or choose another --out")
    if args.resume and args.recipe:
        raise ValueError("--recipe: a resumed run keeps the recipe it started with")
    base = load_checkpoint(checkpoint)["config"] if args.resume else TrainConfig(**RECIPES[args.recipe or "default"])
    config = dataclasses.replace(base, **given)
    history = train(config, args.out, resume=args.resume, progress=True)
    _report_run(history, args.out)


def _report_run(history: dict, out: str | Path) -> None:
    last = history["validation"][-1] if history["validation"] else None
    scores = f"; validation IoU {last['iou']:.3f}, Dice {last['dice']:.3f}" if last else ""
    if last and "ap50" in last:  # (not in runs begun before it was measured)
        scores += f", AP50 {last['ap50']:.3f}"
    recovered = len(history.get("recoveries", []))
    again = f" (went back and halved the learning rate {recovered} times)" if recovered else ""
    print(f"trained {len(history['loss'])} steps{again}, final loss {history['loss'][-1]:.4f}{scores}")
    print(f"wrote {Path(out) / 'model.pt'} and {Path(out) / 'training_curve.png'}")


def _predict(args: argparse.Namespace) -> None:
    from unet_fast.checkpoint import load_model
    from unet_fast.predict import predict_files
    from unet_fast.runtimes import load_exported

    if _is_blockwise(args):
        return _predict_blockwise(args)
    for name in ("block", "probabilities", "overwrite", "resume", "scheduler", "workers"):
        if getattr(args, name) not in (None, False):
            raise ValueError(f"--{name}: only for a large image, segmented into --out NAME.ome.zarr, NAME.zarr or "
                             "NAME.tif")
    if args.model:
        model = load_exported(args.model)
    else:
        model = load_model(args.checkpoint, "cuda" if torch.cuda.is_available() else "cpu")
    written = predict_files(model, args.inputs, args.out, tile=args.tile, batch_size=args.batch_size or 4,
                            progress=True, method=args.instances or "watershed")
    print(f"wrote {len(written)} files to {args.out}")


def _is_blockwise(args: argparse.Namespace) -> bool:
    """A Zarr input, or an output that is a Zarr store or a TIFF file, goes block by block."""
    from unet_fast import stores

    try:
        stores.output_kind(args.out)
        return True
    except ValueError:
        if any(stores.is_zarr(path) for path in args.inputs):
            raise ValueError(f"--out {args.out}: a Zarr image is segmented into NAME.ome.zarr, NAME.zarr or "
                             "NAME.tif") from None
        return False


def _predict_blockwise(args: argparse.Namespace) -> None:
    from unet_fast.blockwise import segment_large
    from unet_fast.clusters import cluster_client

    if len(args.inputs) != 1:
        raise ValueError(f"--out {args.out} holds one image: give one input, not {len(args.inputs)}")
    if args.instances == "watershed":
        raise ValueError("--instances watershed: a large image's objects are the connected components of its "
                         "foreground (the watershed needs whole objects in memory); leave --instances out")
    with cluster_client(args.scheduler, args.workers) as (client, threads):
        summary = segment_large(args.model or args.checkpoint, args.inputs[0], args.out, tile=args.tile,
                                block=args.block, batch_size=args.batch_size or 1, probability=args.probabilities,
                                overwrite=args.overwrite, resume=args.resume, client=client, threads=threads,
                                progress=True)
    objects = sum(summary["objects"])
    frames = len(summary["objects"])
    print(f"wrote {args.out}: {objects} objects in {frames} frame{'s' * (frames > 1)}, {summary['blocks']} blocks of "
          f"{summary['block']} pixels, {summary['seconds']:.1f} s ({summary['pixels_per_second'] / 1e6:.2f} "
          "megapixels/s)")


def _export(args: argparse.Namespace) -> None:
    from unet_fast.exports import export

    package = {"name": args.name, "authors": args.author, "license": args.license, "sample": args.sample}
    given = {key: value for key, value in package.items() if value is not None}
    if args.format != "bioimageio" and given:
        raise ValueError(f"--{', --'.join(given)}: only for --format bioimageio")
    written = export(args.checkpoint, args.out, args.format, force=args.force, **given)
    print(f"wrote {', '.join(path.name for path in written)} to {args.out}")


def _demo(args: argparse.Namespace) -> None:
    """Trains a small U-Net on synthetic cells, then segments a large synthetic image."""
    from skimage.filters import threshold_otsu

    from unet_fast import data, files, metrics
    from unet_fast.checkpoint import load_model
    from unet_fast.predict import segment
    from unet_fast.training import train

    begin = time.perf_counter()
    out = Path(args.out)
    config = dataclasses.replace(DEMO_CONFIG, steps=args.steps)
    print(f"unet_fast {unet_fast.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"training a U-Net of widths {config.widths} on {config.synthetic_images} synthetic "
          f"{config.synthetic_size}x{config.synthetic_size} images, {config.steps} steps of one {config.tile}-pixel tile")
    start = time.perf_counter()
    history = train(config, out, progress=True)
    trained = time.perf_counter() - start
    print(f"trained in {trained:.0f} s")
    test = data.synthetic_cells(args.size, args.size, seed=DEMO_TEST_SEED)
    model = load_model(out / "model.pt")
    start = time.perf_counter()
    labels = segment(model, test.image, tile=args.tile, progress=True, method=args.instances or "watershed")
    segmented = time.perf_counter() - start
    print(f"segmented a {args.size}x{args.size} image with {int(test.labels.max())} cells in {segmented:.1f} s "
          f"(overlap-tile, {args.tile}-pixel tiles)")
    otsu = metrics.instances(test.image > threshold_otsu(test.image))
    rows = [("U-Net", metrics.scores(labels, test.labels)), ("Otsu threshold", metrics.scores(otsu, test.labels))]
    print(f"{'':16s}{'IoU':>8s}{'Dice':>8s}{'pixel error':>13s}{'Rand error':>12s}{'AP50':>8s}{'SEG':>8s}")
    for name, score in rows:
        print(f"{name:16s}{score['iou']:8.3f}{score['dice']:8.3f}{score['pixel_error']:13.3f}{score['rand_error']:12.3f}"
              f"{score['ap50']:8.3f}{score['seg']:8.3f}")
    files.write_rgb(out / "overlay.png", files.overlay(test.image, labels))
    files.write_labels(out / "labels.tif", labels)
    summary = {"train_seconds": trained, "segment_seconds": segmented, "total_seconds": time.perf_counter() - begin,
               "image_size": args.size, "steps": config.steps, "unet": rows[0][1], "otsu": rows[1][1]}
    with files.atomic_path(out / "scores.json") as temporary:
        temporary.write_text(json.dumps(summary, indent=2))
    print(f"wrote {out / 'overlay.png'}, {out / 'labels.tif'}, {out / 'training_curve.png'} and {out / 'scores.json'}")


def _bench(args: argparse.Namespace) -> None:
    """Prints (and optionally saves) this machine's speed-ups over the reference."""
    from unet_fast import bench, tuning

    unet_fast.UNetGeometry(depth=5, stages=4).output_size(args.size, name="--size")
    print(f"unet_fast {unet_fast.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    choices = bench.tune(args.size, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    if choices:
        print(f"convolution algorithms measured on this machine ({tuning.cache_path()}):")
        print(tuning.format_choices(choices))
    results = bench.run(size=args.size, rounds=args.rounds, busy=args.busy_core)
    print(bench.format_table(results))
    processes = []
    if not torch.cuda.is_available():
        processes = [bench.training_process(model, args.size, steps=args.steps) for model in ("unet_fast", "reference")]
        print(bench.format_processes(*processes))
    if args.peers:
        from unet_fast import peers

        print(peers.format_table(peers.compare(args.size, args.rounds), args.size))
    if args.json:
        bench.write_json(results, args.json, processes, choices)
        print(f"wrote {args.json}")


def _tune(args: argparse.Namespace) -> None:
    """Measures the convolution algorithms of a U-Net's shapes on this machine, ahead of time."""
    from unet_fast import tuning
    from unet_fast.checkpoint import TrainConfig, load_model

    model = load_model(args.checkpoint) if args.checkpoint else TrainConfig(widths=args.widths).build_model()
    model.geometry.output_size(args.size, name="--size")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    start = time.perf_counter()
    choices = tuning.tune(model, args.size, dtype=dtype, batch_size=args.batch_size, training=not args.inference)
    print(tuning.format_choices(choices))
    print(f"settled {len(choices)} convolution passes in {time.perf_counter() - start:.0f} s; "
          f"cached in {tuning.cache_path()}")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 64,128,256,512,1024, got {text!r}")


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    """Every TrainConfig field as an option; unset ones keep the recipe's value (or, with
    --resume, the checkpoint's). The defaults shown are the default recipe's."""
    defaults = TrainConfig(**RECIPES["default"])
    helps = {
        "data": "'synthetic' (generated fluorescence cells), 'synthetic-phase' (phase-contrast-like: dark "
                "cells in bright halos), 'synthetic-nuclei' (dense touching nuclei) or a folder with images/ "
                "and masks/",
        "steps": "training steps, one batch of tiles each",
        "widths": "channels per level, top to bottom, e.g. 64,128,256,512,1024",
        "tile": "input tile side in pixels; must fit the network (errors name the nearest sizes)",
        "bf16": "run the network under bf16 autocast",
        "paper_block": "ReLU after both convolutions of a block, as the paper (--no-paper-block: after the "
                       "second only, as the blog post's model)",
        "optimizer": "'sgd' (with --momentum) or 'adam'",
        "lr": "learning rate (the peak of the schedule)",
        "momentum": "SGD's momentum, in [0, 1)",
        "lr_decay": "'none' (constant) or 'cosine' (to 0 at the last step)",
        "warmup_steps": "steps over which the learning rate rises linearly to --lr (0: none)",
        "batch_size": "tiles per step (per process under torchrun)",
        "w0": "weight of the border term of the paper's weight map (0: class balance only)",
        "sigma": "width in pixels of the border term (about half a cell's gap)",
        "elastic_sigma": "standard deviation in pixels of the elastic deformation's displacements (0: none)",
        "val_fraction": "share of a folder's images held out for validation, in [0, 1)",
        "val_every": "steps between validations (0: never)",
        "checkpoint_every": "steps between checkpoints (0: only at the end)",
        "seed": "seed of the initialisation, the tiles and the validation split",
        "synthetic_images": "how many images --data synthetic generates",
        "synthetic_size": "side in pixels of each synthetic image",
        "backend": "kernels to run: cpu, cuda, triton or torch (none: chosen by the device)",
        "object_tiles": "share of tiles centred on a random object pixel, so that sparse images do not "
                        "waste steps on empty tiles (0: anywhere, as the paper)",
    }
    choices = {"optimizer": ("sgd", "adam"), "lr_decay": ("none", "cosine"), "backend": ("cpu", "cuda", "triton", "torch")}
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        default = getattr(defaults, field.name)
        text = f"{helps.get(field.name, field.name.replace('_', ' '))} (default {default})"
        if field.name == "widths":
            parser.add_argument(flag, type=_int_list, help=text)
        elif isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            parser.add_argument(flag, type=type(default) if default is not None else str, choices=choices.get(field.name),
                                help=text)


def _evaluate(args: argparse.Namespace) -> None:
    from unet_fast.evaluation import evaluate_folders, format_table

    scored, empty = evaluate_folders(args.pred, args.masks)
    print(format_table(scored))
    if empty:
        print(f"left out {len(empty)} frames whose mask holds no object: {', '.join(empty[:5])}"
              f"{' and more' if len(empty) > 5 else ''}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="unet-fast", description=unet_fast.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a U-Net: the paper's network, loss and augmentation")
    train.add_argument("--out", required=True, help="run folder: model.pt, training_curve.png")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument("--recipe", choices=list(RECIPES),
                       help="'default' (Adam 1e-3, 20 warm-up steps, cosine decay) or 'paper' (SGD 0.01, momentum "
                            "0.99, constant: the U-Net paper's); options given beside it override it (default: default)")
    _add_train_options(train)
    train.set_defaults(run=_train)

    predict = commands.add_parser("predict", help="segment images with a trained U-Net")
    predict.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help=".tif/.tiff/.png files or folders of them")
    network = predict.add_mutually_exclusive_group(required=True)
    network.add_argument("--checkpoint", help="RUN_DIR/model.pt from unet-fast train")
    network.add_argument("--model", help="an exported network: PACKAGE/rdf.yaml (its TorchScript weights) or a "
                                         ".onnx file (through onnxruntime), from unet-fast export")
    predict.add_argument("--out", required=True,
                         help="folder for the label images and overlays; or, for one large image read block by "
                              "block (always for a Zarr input), NAME.ome.zarr (labels/cells with OME-Zarr "
                              "image-label metadata), NAME.zarr (a plain Zarr array) or NAME.tif (a tiled BigTIFF), "
                              "holding (frames, y, x) uint32 labels")
    predict.add_argument("--tile", type=int, help="input tile side (default: chosen from the image size)")
    predict.add_argument("--batch-size", type=int,
                         help="tiles per forward pass (default 4; 1 for a large image, block by block: a third less "
                              "peak memory, and as fast on the CPU measured in docs/large_images.md)")
    _add_instances_option(predict)
    large = predict.add_argument_group("large images (--out NAME.ome.zarr, NAME.zarr or NAME.tif)")
    large.add_argument("--block", type=int, help="block side in pixels, rounded down to a multiple of the tile "
                                                 "stride (default 2048); memory grows with it, not the image")
    large.add_argument("--probabilities", action="store_true",
                       help="also write the foreground probability, as the OME-Zarr's image")
    large.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    large.add_argument("--resume", action="store_true", help="finish an interrupted run into --out, keeping the "
                                                             "blocks it wrote")
    cluster = large.add_mutually_exclusive_group()
    cluster.add_argument("--scheduler", metavar="ADDRESS", help="run the blocks on this dask.distributed "
                                                                "scheduler's workers (e.g. tcp://host:8786)")
    cluster.add_argument("--workers", type=int, help="run the blocks on a local dask cluster of this many worker "
                                                     "processes")
    predict.set_defaults(run=_predict)

    evaluate = commands.add_parser(
        "evaluate", help="score label images against ground-truth masks",
        description="Scores each mask in --masks against the file of the same name in --pred: foreground IoU, "
                    "Dice and pixel error; on instances the adapted Rand error, average precision at IoU 0.5, "
                    "0.75 and 0.9 (TP / (TP + FP + FN), as stardist and cellpose report it) and the Cell "
                    "Tracking Challenge's SEG. Binary masks count their connected components as instances.")
    evaluate.add_argument("--pred", required=True, help="folder of predicted label images (unet-fast predict --out)")
    evaluate.add_argument("--masks", required=True, help="folder of ground-truth masks, named as the images")
    evaluate.set_defaults(run=_evaluate)

    export = commands.add_parser(
        "export", help="write a trained U-Net as a bioimage.io package, TorchScript or ONNX",
        description="Writes the network of a checkpoint in formats that run without unet_fast: a bioimage.io "
                    "package (model spec 0.5: state dict with a plain-PyTorch architecture file, TorchScript and "
                    "ONNX weights, test tensors, cover, documentation) for Fiji, ilastik, QuPath, napari and the "
                    "BioImage Model Zoo; or only TorchScript, or only ONNX. ONNX and the package need the "
                    "[export] extra: pip install 'unet_fast[export]'.")
    export.add_argument("--checkpoint", required=True, help="RUN_DIR or RUN_DIR/model.pt from unet-fast train")
    export.add_argument("--out", required=True, help="folder to write into (must be empty unless --force)")
    export.add_argument("--format", choices=FORMATS, default="bioimageio",
                        help="bioimageio (all three weight formats), torchscript or onnx (default bioimageio)")
    export.add_argument("--force", action="store_true", help="write into a non-empty --out, replacing what export "
                                                             "writes there")
    export.add_argument("--name", help="the package's name (default: from the training data)")
    export.add_argument("--author", action="append", help="an author's name; repeat for several (default: your "
                                                          "login name)")
    export.add_argument("--license", help="SPDX licence of the model (default CC-BY-4.0)")
    export.add_argument("--sample", metavar="IMAGE", help="image whose centre becomes the test input (default: "
                                                          "the first training image)")
    export.set_defaults(run=_export)

    demo = commands.add_parser("demo", help="train on synthetic cells for a few minutes, segment a large image")
    demo.add_argument("--out", default="unet_fast_demo", help="folder for the outputs (default unet_fast_demo)")
    demo.add_argument("--steps", type=int, default=DEMO_CONFIG.steps, help=f"training steps (default {DEMO_CONFIG.steps})")
    demo.add_argument("--size", type=int, default=2048, help="side of the test image (default 2048)")
    demo.add_argument("--tile", type=int, default=572, help="input tile side for the test image (default 572)")
    _add_instances_option(demo)
    demo.set_defaults(run=_demo)

    bench_parser = commands.add_parser("bench", help="speed-ups over the reference on this machine")
    bench_parser.add_argument("--size", type=int, default=252, help="U-Net input side length (default 252)")
    bench_parser.add_argument("--rounds", type=int, default=5, help="alternating timed runs per side (default 5)")
    bench_parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    bench_parser.add_argument("--steps", type=int, default=3, help="steps of the fresh training processes (default 3)")
    bench_parser.add_argument("--busy-core", action="store_true",
                              help="also time a training step while another process spins on one core")
    bench_parser.add_argument("--peers", action="store_true",
                              help="also time the forward in onnxruntime, OpenVINO and ncnn (the [peers] extra), "
                                   "alternating with ours, and check their outputs agree")
    bench_parser.set_defaults(run=_bench)

    tune = commands.add_parser("tune", help="measure the convolution algorithms of a U-Net on this machine")
    tune.add_argument("--size", type=int, default=572, help="input side length (default 572)")
    tune.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="fp32, or bf16 autocast (default fp32)")
    tune.add_argument("--batch-size", type=int, default=1, help="images per batch (default 1)")
    tune.add_argument("--widths", type=_int_list, default=TrainConfig().widths,
                      help="channels per level (default the paper's 64,...,1024)")
    tune.add_argument("--checkpoint", help="tune the network of RUN_DIR/model.pt instead")
    tune.add_argument("--inference", action="store_true", help="forward passes only")
    tune.set_defaults(run=_tune)
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (ValueError, OSError, RuntimeError, ImportError) as error:
        if not _users_error(error):
            raise
        # what the user asked for cannot be done: one line, as argparse reports a bad option
        print(f"unet-fast {args.command}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def _add_instances_option(parser: argparse.ArgumentParser) -> None:
    from unet_fast.instances import METHODS

    parser.add_argument("--instances", choices=METHODS,
                        help="how cells are told apart in the predicted foreground: 'watershed' splits touching "
                             "cells whose parting line the network missed or saw faintly, and drops specks under a "
                             "tenth of the median cell's area; 'components' takes its connected components, as the paper (default watershed; components for large images)")


def _users_error(error: Exception) -> bool:
    """Bad input, files and folders, a missing optional dependency, or a run that diverged; not a
    fault of this program."""
    from unet_fast.training import TrainingDiverged

    return isinstance(error, (ValueError, OSError, ModuleNotFoundError, TrainingDiverged))


if __name__ == "__main__":
    main()
