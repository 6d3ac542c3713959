"""The `softclip` subcommands other than `train`, each a thin adapter over an importable function.

Heavy modules (training, export, index, app) are imported inside the command that needs them, so
`softclip --help` and light commands start fast.
"""

from __future__ import annotations

import argparse
import json

from softclip.cli.registry import command


@command("presets", "list the model architectures shipped with softclip")
def _presets(parser: argparse.ArgumentParser) -> None:
    def run(args: argparse.Namespace) -> int:
        from softclip.config import list_presets

        print("\n".join(list_presets()))
        return 0

    parser.set_defaults(run=run)


@command("label", "label images or a whole folder zero-shot with a checkpoint or an export folder")
def _label(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", help="image files, or one folder (with --out)")
    parser.add_argument("--model", required=True, help="checkpoint folder, Hub id or ONNX export folder")
    parser.add_argument("--labels", required=True, help="comma-separated labels, e.g. 'cat,dog,car'")
    parser.add_argument("--out", default=None, help="CSV to write (labels every image under a folder)")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--max-megapixels", type=float, default=100.0)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")

    def run(args: argparse.Namespace) -> int:
        labels = labels_option(args.labels)
        if args.out:
            return label_folder_to_csv(args, labels)
        from softclip.export import encoder_for
        from softclip.zeroshot import label

        results = label(args.images, labels, model=encoder_for(args.model), top_k=args.top_k)
        if args.json:
            rows = [
                {"image": str(path), "labels": [vars(s) for s in ranked]} for path, ranked in zip(args.images, results)
            ]
            print(json.dumps(rows, indent=2))
        else:
            for path, ranked in zip(args.images, results):
                print(f"{path}\t" + "  ".join(f"{s.label} {s.probability:.3f}" for s in ranked))
        return 0

    parser.set_defaults(run=run)


def label_folder_to_csv(args: argparse.Namespace, labels: list[str]) -> int:
    from softclip.export import encoder_for
    from softclip.index import label_folder

    if len(args.images) != 1:
        raise SystemExit("softclip: label --out takes one folder")
    report = label_folder(
        args.images[0], encoder_for(args.model), labels, args.out, top_k=args.top_k, max_megapixels=args.max_megapixels
    )
    print(report)
    return 0


@command("synth", "write a SynthScenes split to disk as a CSV table or WebDataset shards")
def _synth(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="output folder")
    parser.add_argument("--n", type=int, default=1000, help="number of samples")
    parser.add_argument("--seed", type=int, default=None, help="dataset seed (default: the split's)")
    parser.add_argument("--split", default="train", choices=["train", "val", "test"])
    parser.add_argument("--format", default="csv", choices=["csv", "wds"])
    parser.add_argument("--caption-noise", type=float, default=0.2)
    parser.add_argument("--image-size", type=int, default=64)

    def run(args: argparse.Namespace) -> int:
        from softclip.training.scenes import SynthConfig
        from softclip.training.synthetic import write_split

        config = SynthConfig(image_size=args.image_size, caption_noise=args.caption_noise, split=args.split)
        print(write_split(args.out, args.n, seed=args.seed, fmt=args.format, config=config))
        return 0

    parser.set_defaults(run=run)


@command("eval", "evaluate a checkpoint or export: zero-shot, retrieval or the pointing game")
def _eval(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="checkpoint folder, Hub id or ONNX export folder")
    parser.add_argument("--task", choices=["zeroshot", "retrieval", "pointing"], default="zeroshot")
    parser.add_argument("--data", default="synth", help="synth, a folder of class subfolders, or a caption CSV")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")

    def run(args: argparse.Namespace) -> int:
        from softclip.export import encoder_for
        from softclip.training.evaluate import evaluate

        # Grad-CAM (the pointing game) needs the torch model; the other tasks take any encoder.
        model = args.model if args.task == "pointing" else encoder_for(args.model)
        metrics = evaluate(model, args.task, args.data)
        if args.json:
            print(json.dumps(metrics, indent=2))
        else:
            for name, value in metrics.items():
                print(f"{name:>28}  {value:.4f}" if isinstance(value, float) else f"{name:>28}  {value}")
        return 0

    parser.set_defaults(run=run)


@command("convert", "convert a pretrained CLIP (transformers, open_clip, OpenAI .pt, Hub id) to a softclip checkpoint")
def _convert(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="transformers or open_clip folder, OpenAI .pt file, or Hub id")
    parser.add_argument("--out", required=True, help="checkpoint folder to write")
    parser.add_argument("--tokenizer", default=None, help="folder with CLIP's vocab.json and merges.txt (for a .pt)")

    def run(args: argparse.Namespace) -> int:
        from softclip.pretrained import from_pretrained

        model = from_pretrained(args.source, tokenizer=args.tokenizer)
        out = model.save_pretrained(args.out)
        print(f"converted {args.source} ({model.config.vision.kind} image tower, {model.config.embed_dim}-d) to {out}")
        return 0

    parser.set_defaults(run=run)


@command("export", "export a checkpoint's towers to ONNX (parity measured and recorded)")
def _export(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint folder, CLIP folder or Hub id")
    parser.add_argument("--out", required=True, help="export folder to write")
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument("--fp16", action="store_true", help="fp16 weights (for GPUs)")
    precision.add_argument("--int8", action="store_true", help="dynamic int8 quantisation (for CPUs)")

    def run(args: argparse.Namespace) -> int:
        from softclip.export import export_model
        from softclip.export.folder import read_info

        out = export_model(args.checkpoint, args.out, fp16=args.fp16, int8=args.int8)
        print(f"exported to {out}\n" + json.dumps(read_info(out).get("parity", {}), indent=2))
        return 0

    parser.set_defaults(run=run)


@command("index", "index a folder of images (incremental); 'softclip index merge --index DIR' joins shards")
def _index(parser: argparse.ArgumentParser) -> None:
    from softclip.index.formats import extensions_help

    parser.epilog = f"Indexed file extensions (any case; each file is decoded by its content): {extensions_help()}."
    parser.add_argument("folder", help="folder of images, or 'merge' to merge the shards of --index")
    parser.add_argument("--index", required=True, help="index folder")
    parser.add_argument(
        "--model",
        default=None,
        help="ONNX export folder, or a model to export on first use and cache: a checkpoint, a CLIP folder or file, "
        "or a Hub id such as openai/clip-vit-base-patch32 (default: the export the index was built with)",
    )
    parser.add_argument("--int8", action="store_true", help="with a --model to export: int8 (faster on CPUs)")
    parser.add_argument("--factory", default=None, help="FAISS factory string, e.g. HNSW32 or IVF1024,PQ64")
    parser.add_argument("--shard", default=None, help="embed only shard i of n, as 'i/n'")
    parser.add_argument("--max-megapixels", type=float, default=100.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None, help="decoding threads")
    parser.add_argument(
        "--on-disk-above", type=int, default=None, help="above N vectors, IVF-PQ with its lists on disk"
    )
    parser.add_argument("--engine", choices=["local", "ray"], default="local", help="where to embed (ray: pip extra)")
    parser.add_argument("--address", default=None, help="with --engine ray: the cluster ('auto'; default: local)")
    parser.add_argument("--num-gpus-per-worker", type=float, default=0.0, help="with --engine ray: GPUs per encoder")

    def run(args: argparse.Namespace) -> int:
        from softclip import index

        if args.engine == "ray":
            return index_on_ray(args)
        if args.folder == "merge":
            report = index.merge_shards(index.find_shard_dirs(args.index), args.index, factory=args.factory)
            print(report)
            return 0
        shard = parse_shard(args.shard)
        if args.int8 and args.model is None:
            raise SystemExit("softclip: --int8 chooses how --model is exported; name the model with --model")
        if args.model is None:
            encoder = index.ImageIndex.open(args.index).encoder
        else:
            from softclip.export import OnnxEncoder
            from softclip.export.cache import cached_export

            encoder = OnnxEncoder(cached_export(args.model, int8=args.int8))
        report = index.build_index(
            args.folder,
            encoder,
            args.index,
            factory=args.factory,
            shard=shard,
            max_megapixels=args.max_megapixels,
            batch_size=args.batch_size,
            workers=args.workers,
            on_disk_above=args.on_disk_above,
        )
        print(index.format_report(report))
        return 0

    parser.set_defaults(run=run)


def index_on_ray(args: argparse.Namespace) -> int:
    """``softclip index ... --engine ray``: the export is the one named, else the one the index was built with."""
    if args.shard is not None or args.folder == "merge":
        raise SystemExit("softclip: --engine ray indexes the whole folder; --shard and merge are for the local engine")
    try:
        import ray  # noqa: F401

        from softclip.index.ray_index import build_index_on_ray
    except ImportError:
        raise SystemExit("softclip: --engine ray needs Ray: pip install 'softclip[ray]'") from None
    from softclip.index import format_report
    from softclip.index.index_folder import read_info

    if args.model is None:
        export_dir = read_info(args.index).export_dir
    else:
        from softclip.export.cache import cached_export

        export_dir = cached_export(args.model, int8=args.int8)
    if export_dir is None:
        raise SystemExit(f"softclip: the index {args.index!r} names no export folder; name one with --model")
    report = build_index_on_ray(
        args.folder,
        export_dir,
        args.index,
        address=args.address,
        num_gpus_per_worker=args.num_gpus_per_worker,
        factory=args.factory,
        max_megapixels=args.max_megapixels,
        batch_size=args.batch_size,
        on_disk_above=args.on_disk_above,
    )
    print(format_report(report))
    return 0


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'2/8' -> (2, 8), with a clear error for anything else."""
    if text is None:
        return None
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise SystemExit(f"softclip: --shard takes 'i/n' (e.g. 0/4), not {text!r}") from None
    if not 0 <= i < n:
        raise SystemExit(f"softclip: --shard {text}: i must be in [0, n)")
    return i, n


def output_format(args: argparse.Namespace) -> str:
    return "json" if args.json else "paths" if getattr(args, "paths", False) else "table"


@command("search", "search an index by text ('beach + 2:sunset - people') or by image")
def _search(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("index", help="index folder")
    parser.add_argument("query", nargs="?", default=None, help="text query; terms may be weighted and subtracted")
    parser.add_argument("--image", default=None, help="search by this image instead")
    parser.add_argument("-k", type=int, default=10, help="number of results")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--paths", action="store_true", help="print only the paths, one a line")

    def run(args: argparse.Namespace) -> int:
        from softclip.index import ImageIndex, format_hits

        if (args.query is None) == (args.image is None):
            raise SystemExit("softclip: search needs a text query or --image PATH (one of them)")
        with ImageIndex.open(args.index) as index:
            hits = index.search_image(args.image, args.k) if args.image else index.search_text(args.query, args.k)
        print(format_hits(hits, output_format(args)))
        return 0

    parser.set_defaults(run=run)


@command("describe", "the texts of an index's text collection closest to an image")
def _describe(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("index", help="index folder (with texts added by index-texts)")
    parser.add_argument("image", help="image file")
    parser.add_argument("-k", type=int, default=5)
    parser.add_argument("--json", action="store_true")

    def run(args: argparse.Namespace) -> int:
        from softclip.index import ImageIndex, format_hits

        with ImageIndex.open(args.index) as index:
            print(format_hits(index.describe(args.image, args.k), output_format(args)))
        return 0

    parser.set_defaults(run=run)


@command("index-texts", "embed a text file (one text a line) into an index for image-to-text lookup")
def _index_texts(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("index", help="index folder")
    parser.add_argument("texts", help="text file, one caption, tag or word a line")

    def run(args: argparse.Namespace) -> int:
        from pathlib import Path

        from softclip.index import index_texts

        count = index_texts(args.index, Path(args.texts).read_text().splitlines())
        print(f"{count} texts indexed")
        return 0

    parser.set_defaults(run=run)


@command("explain", "per-word Grad-CAM heatmaps of a caption over an image, as one panel")
def _explain(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="image file")
    parser.add_argument("caption", help="caption whose content words are explained")
    parser.add_argument("--model", required=True, help="checkpoint folder or Hub id (heatmaps need the torch model)")
    parser.add_argument("--out", default="heatmaps.png", help="PNG to write")
    parser.add_argument("--words", default=None, help="comma-separated words or phrases to explain instead")
    parser.add_argument(
        "--layers", help="all: Grad-CAM at every ViT block, averaged (default); last: at the last block only"
    )
    parser.add_argument(
        "--no-shifts", action="store_true", help="one pass instead of averaging over half-cell shifts of the image"
    )

    def run(args: argparse.Namespace) -> int:
        from softclip.explain import explain_panel
        from softclip.gradcam import DEFAULT_LAYERS
        from softclip.pretrained import from_pretrained

        words = labels_option(args.words, "--words") if args.words else None
        model = from_pretrained(args.model)
        layers = args.layers or DEFAULT_LAYERS  # gradcam names the choices when this is none of them
        panel = explain_panel(model, args.image, args.caption, words, layers=layers, shifts=not args.no_shifts)
        panel.save(args.out)
        print(args.out)
        return 0

    parser.set_defaults(run=run)


@command("app", "serve the Gradio app over an index (search, labels, heatmaps)")
def _app(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, help="index folder")
    parser.add_argument("--model", required=True, help="checkpoint folder (for the heatmaps)")
    parser.add_argument("--export", default=None, help="ONNX export folder (default: the one the index names)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--auth", default=None, help="'user:password' to require a login")

    def run(args: argparse.Namespace) -> int:
        from softclip.app.app import launch

        launch(args.index, args.model, args.export, host=args.host, port=args.port, auth=args.auth)
        return 0

    parser.set_defaults(run=run)


@command("demo", "export the shipped SoftCLIP demo model (or train it), index a gallery and open the app")
def _demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir", default=None, help="where the demo keeps its artefacts (default: ~/.cache/softclip/demo)"
    )
    parser.add_argument(
        "--train", action="store_true", help="train the shipped model's recipe instead of serving the shipped weights"
    )
    parser.add_argument("--steps", type=int, default=None, help="with --train: training steps (default: the recipe's)")
    parser.add_argument("--batch-size", type=int, default=None, help="with --train: batch (default: the recipe's)")
    parser.add_argument("--gallery", type=int, default=None, help="gallery size (default 2000)")
    parser.add_argument("--eval-size", type=int, default=None, help="scenes per evaluation set (default 500)")
    parser.add_argument("--no-launch", action="store_true", help="build everything, then stop")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)

    def run(args: argparse.Namespace) -> int:
        from pathlib import Path

        from softclip.app.demo import DemoConfig, default_folder, run_demo

        if not args.train and (args.steps is not None or args.batch_size is not None):
            parser.error("--steps and --batch-size set the training of --train; add --train")
        config = DemoConfig(Path(args.dir) if args.dir else default_folder(), train=args.train)
        for name in ("steps", "batch_size", "gallery", "eval_size"):
            if getattr(args, name) is not None:
                setattr(config, name, getattr(args, name))
        run_demo(config, launch=not args.no_launch, host=args.host, port=args.port)
        return 0

    parser.set_defaults(run=run)


def labels_option(text: str, option: str = "--labels") -> list[str]:
    """The labels (or words) of a comma-separated option, with a clear error when none is left."""
    from softclip.zeroshot import parse_labels

    labels = parse_labels(text)
    if not labels:
        raise SystemExit(f"softclip: {option} needs at least one comma-separated label")
    return labels
