"""``favit-ps analyze ...``: analyses of trained models and of position-encoding tables.

* ``favit-ps analyze cross-terms --ckpt PATH [--config CFG.yaml] [--data ETTh1] [--batches 2] --out DIR``:
  load a trained Informer forecaster checkpoint, run test windows through it and decompose every self-attention
  layer's logits into token-token / token-pos / pos-token / pos-pos (+ bias remainder), which sum exactly to the
  logits. Writes per-layer heatmaps (heads × terms, batch-mean row-centred maps), a share bar chart,
  ``cross_terms.md`` (table: share of row-centred RMS, KL(softmax(S) ‖ softmax(S − T)) when the term is removed,
  correlation with the logits, p2p Toeplitz R²) and ``cross_terms.json``.
* ``favit-ps analyze fusion --ckpt K [K ...] --images N [--out DIR] [--block 0] [--data-dir D]``: run ``N`` real
  test images (the dataset of each checkpoint's data config) through trained FaViT classifiers and draw, for one
  FaSA layer per stage, which windows and positions each branch's fused keys come from, the tokens a selecting
  fusion keeps, and the attention of a few queries (see :mod:`.fusion_maps`). Writes ``sources.png``,
  ``windows.png``, ``attention.png`` and ``fusion_maps.json`` per checkpoint, and ``compare.png`` (one row per
  checkpoint) when several are given.
* ``favit-ps analyze pos-decay --out DIR [--max-len 100 --d-model 512 --i 10 --trials 25000]``: the report's
  ``pos_embedding_decay`` study for sinusoidal versus Legendre tables (see :mod:`.pos_decay`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from favit_probsparse.utils.io import save_figure, write_text
from favit_probsparse.utils.provenance import hardware_summary, status_line, utc_now

__all__ = [
    "load_classifier",
    "load_forecaster",
    "main",
    "run_cross_terms",
    "run_fusion",
    "write_cross_term_report",
]


def load_forecaster(ckpt_path: str | Path):
    """The checkpoint's :class:`~favit_probsparse.training.forecast.Forecaster` (eval mode, its weights)."""
    from favit_probsparse.training.forecast import forecaster_from_checkpoint

    return forecaster_from_checkpoint(ckpt_path)


def load_classifier(ckpt_path: str | Path):
    """``(ImageClassifier, datamodule hyper-parameters)`` from a Lightning checkpoint of an image classifier, read
    by the project's one checkpoint loader (weights only; a damaged file, another task or an incompatible version
    is a one-line named error).

    Evaluation weights (the EMA copy when the run evaluated with it) are what ``module._eval_model()`` returns.
    """
    from favit_probsparse.training.checkpoint import rebuild_module
    from favit_probsparse.training.classification import ImageClassifier

    module, ckpt = rebuild_module(ckpt_path, task=ImageClassifier.TASK, expected=ImageClassifier)
    return module, dict(ckpt.get("datamodule_hyper_parameters") or {})


def _test_images(dm_hp: dict, n: int, data_dir: str | None, ckpt: str):
    """``n`` evenly spaced images of the evaluation split (normalised), their display versions, labels, indices."""
    from favit_probsparse.data.vision import DatasetError, ImageClassificationDataModule

    if not dm_hp:
        raise SystemExit(
            f"error: {ckpt} records no datamodule hyper-parameters; cannot tell which images to use"
        )
    cls_path = dm_hp.get("_class_path", "ImageClassificationDataModule")
    if not cls_path.endswith("ImageClassificationDataModule"):
        raise SystemExit(f"error: {ckpt} was trained on {cls_path}, not an ImageClassificationDataModule")
    dm_hp = {k: v for k, v in dm_hp.items() if not k.startswith("_")}
    if data_dir is not None:
        dm_hp["data_dir"] = data_dir
    try:
        dm = ImageClassificationDataModule(**{**dm_hp, "download": False})
        dm.setup("test")
    except DatasetError as e:
        raise SystemExit(
            f"error: {e} (checkpoint {ckpt}; --data-dir points at the dataset elsewhere)"
        ) from None
    ds = dm.val_set
    if n < 1:
        raise SystemExit(f"error: --images must be at least 1, got {n}")
    n = min(n, len(ds))
    idx = torch.linspace(0, len(ds) - 1, n).round().long().tolist()
    xs, ys = zip(*(ds[i] for i in idx))
    x = torch.stack(xs)
    mean, std = torch.tensor(dm.mean).view(1, -1, 1, 1), torch.tensor(dm.std).view(1, -1, 1, 1)
    return x, (x * std + mean).clamp(0, 1), list(ys), idx, dm


def _test_clips(dm_hp: dict, n: int, data_dir: str | None, ckpt: str):
    """``n`` evenly spaced clips of the test split (normalised), their display versions, labels, indices."""
    from favit_probsparse.data.video import VideoClipDataModule
    from favit_probsparse.data.vision import IMAGENET_MEAN, IMAGENET_STD, DatasetError

    dm_hp = {k: v for k, v in dm_hp.items() if not k.startswith("_")}
    if data_dir is not None:
        dm_hp["data_dir"] = data_dir
    try:
        dm = VideoClipDataModule(**dm_hp)
        dm.setup("test")
    except DatasetError as e:
        raise SystemExit(
            f"error: {e} (checkpoint {ckpt}; --data-dir points at the dataset elsewhere)"
        ) from None
    ds = dm.test_set
    idx = torch.linspace(0, len(ds) - 1, min(max(n, 1), len(ds))).round().long().tolist()
    xs, ys = zip(*(ds[i] for i in idx))
    x = torch.stack(xs)
    mean = torch.tensor(dm.hparams.mean or IMAGENET_MEAN).view(1, -1, 1, 1, 1)
    std = torch.tensor(dm.hparams.std or IMAGENET_STD).view(1, -1, 1, 1, 1)
    return x, (x * std + mean).clamp(0, 1), list(ys), idx, dm


def run_video_fusion(args, model, dm_hp: dict, ckpt: str) -> int:
    """``analyze fusion`` on a video FaViT: one picture per window branch of block ``--block`` of each stage."""
    from .video_fusion import analyze_video, describe_video, plot_video_keys

    queries = [(args.queries[i], args.queries[i + 1]) for i in range(0, len(args.queries) - 1, 2)]
    x, shown, labels, idx, _ = _test_clips(dm_hp, args.images, args.data_dir, ckpt)
    try:
        summaries = analyze_video(model, x, queries, args.block)
    except ValueError as e:
        raise SystemExit(f"error: {ckpt}: {e}") from None
    out = Path(args.out)
    for s in summaries:
        r = s["record"]
        name = f"stage{r.stage + 1}_branch{r.branch}.png"
        title = (
            f"{model.fusion} fusion, {r.name}, grid {r.feat_hw}, window {r.window_size}: {r.num_keys} keys of "
            f"{r.num_windows} windows; test clip {idx[0]} (label {labels[0]}), ckpt {Path(ckpt).name}"
        )
        plot_video_keys(s, shown[0], out / name, title, args.dpi)
    report = {
        "ckpt": str(ckpt),
        "fusion": model.fusion,
        "clip_indices": idx,
        "labels": [int(y) for y in labels],
    }
    _write_json(
        out / "fusion_maps.json", report | {"queries_rel": queries, "branches": describe_video(summaries)}
    )
    print(f"wrote {out}/stage*_branch*.png and fusion_maps.json ({model.fusion}, clip {idx[0]})")
    return 0


def run_fusion(args) -> int:
    from favit_probsparse.models.favit_video import VideoFaViT

    from . import fusion_plots as fp
    from .fusion_maps import analyze_model, describe

    out = Path(args.out)
    queries = [(args.queries[i], args.queries[i + 1]) for i in range(0, len(args.queries) - 1, 2)]
    if len(args.ckpt) == 1:
        module, dm_hp = load_classifier(args.ckpt[0])
        if isinstance(module._eval_model(), VideoFaViT):
            return run_video_fusion(args, module._eval_model(), dm_hp, args.ckpt[0])
    rows, first_images = [], None
    report = {"images": args.images, "block": args.block, "queries_rel": queries, "checkpoints": []}
    for k, ckpt in enumerate(args.ckpt):
        module, dm_hp = load_classifier(ckpt)
        model = module._eval_model()
        x, shown, labels, idx, dm = _test_images(dm_hp, args.images, args.data_dir, ckpt)
        try:
            summaries = analyze_model(model, x, queries, args.block)
        except ValueError as e:
            raise SystemExit(f"error: {ckpt}: {e}") from None
        fusion = getattr(model, "fusion", "?")
        label = f"{k}: {fusion}" if len(args.ckpt) > 1 else fusion
        sub = out / (f"{k}_{fusion}" if len(args.ckpt) > 1 else "")
        title = (
            f"fusion={fusion}, {dm.data_path.name} test images {idx}, {x.shape[-1]}², ckpt {Path(ckpt).name}"
        )
        fp.plot_sources(summaries, shown, sub / "sources.png", title, args.dpi)
        fp.plot_windows(summaries, sub / "windows.png", title, args.dpi)
        fp.plot_attention(summaries, shown, sub / "attention.png", title, args.dpi)
        rows.append((label, summaries))
        first_images = shown if first_images is None else first_images
        report["checkpoints"].append(
            {
                "ckpt": str(ckpt),
                "fusion": fusion,
                "fusion_kwargs": getattr(model, "fusion_kwargs", {}),
                "img_size": list(x.shape[-2:]),
                "dataset": dm.data_path.name,
                "image_indices": idx,
                "labels": [int(y) for y in labels],
                "branches": describe(summaries),
            }
        )
        print(f"wrote {sub}/sources.png, windows.png, attention.png ({fusion}, {len(idx)} images)")
    same = {(c["dataset"], tuple(c["img_size"]), tuple(c["image_indices"])) for c in report["checkpoints"]}
    if len(rows) > 1 and len(same) > 1:
        print("note: the checkpoints use different datasets or image sizes; no compare.png")
    elif len(rows) > 1:
        fp.plot_compare(rows, first_images, out / "compare.png", args.dpi)
        print(f"wrote {out}/compare.png")
    _write_json(out / "fusion_maps.json", report)
    write_text(out / "fusion_maps.md", tokens_read_table(report))
    print(f"wrote {out}/fusion_maps.json, fusion_maps.md")
    return 0


def tokens_read_table(report: dict) -> str:
    """Markdown: per checkpoint and window branch, the windows fused, the keys made and how many distinct tokens
    of the stage map those keys read (min / mean / max over images and heads)."""
    lines = [
        "| checkpoint | fusion | layer | branch (dilation) | map | windows L | keys K | distinct tokens read "
        "(min / mean / max) | of H·W |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in report["checkpoints"]:
        for b in c["branches"]:
            n = [v for img in b["tokens_read"] for v in img]
            h, w = b["feat_hw"]
            lines.append(
                f"| {'/'.join(Path(c['ckpt']).parts[-4:])} | {c['fusion']} | {b['layer']} | "
                f"{b['branch']} ({b['dilation']}) | {h}×{w} | {b['num_windows']} | {b['num_keys']} | "
                f"{min(n)} / {sum(n) / len(n):.1f} / {max(n)} | {h * w} |"
            )
    return "\n".join(lines) + "\n"


def _write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=1))


def _datamodule(args, hp):
    from favit_probsparse.data.ett import ETTDataModule

    if args.config:
        from favit_probsparse.config import load_config

        cfg = load_config(args.config)  # follows `base:` presets
        init = dict(cfg.get("data", {}).get("init_args", {}))
        return ETTDataModule(**init)
    return ETTDataModule(
        name=args.data,
        seq_len=hp["seq_len"],
        label_len=hp["label_len"],
        pred_len=hp["pred_len"],
        features=hp["features"],
        embed=hp.get("embed", "timeF"),
        freq=hp.get("freq", "h"),
        batch_size=args.batch_size,
        path=args.data_path,
    )


def run_cross_terms(args) -> int:
    from favit_probsparse.models.informer import decoder_input

    from .informer_terms import informer_cross_terms

    module = load_forecaster(args.ckpt)
    hp = module.flat_hparams()
    dm = _datamodule(args, hp)
    dm.setup("test")
    loader = dm.test_dataloader()
    results = None
    n = 0
    for i, batch in enumerate(loader):
        if i >= args.batches:
            break
        bx, by, bxm, bym = (t.float() for t in batch)
        dec = decoder_input(
            by, hp["label_len"], hp["pred_len"], dec_fill=hp.get("dec_fill", hp.get("padding", 0))
        )
        res = informer_cross_terms(module.model, bx, bxm, dec, bym)
        w = bx.shape[0]
        if results is None:
            results = res
            for r in results:
                r.maps = {k: v * w for k, v in r.maps.items()}
                r.metrics = {t: {m: v * w for m, v in d.items()} for t, d in r.metrics.items()}
                r.p2p_toeplitz_r2 = r.p2p_toeplitz_r2 * w
        else:
            for r, r2 in zip(results, res):
                r.maps = {k: r.maps[k] + r2.maps[k] * w for k in r.maps}
                r.metrics = {
                    t: {m: r.metrics[t][m] + r2.metrics[t][m] * w for m in r.metrics[t]} for t in r.metrics
                }
                r.p2p_toeplitz_r2 = r.p2p_toeplitz_r2 + r2.p2p_toeplitz_r2 * w
                r.max_abs_sum_error = max(r.max_abs_sum_error, r2.max_abs_sum_error)
        n += w
    if not results:
        print("no self-attention layer with an additive decomposition (rotary/bias encodings are skipped)")
        return 1
    for r in results:
        r.maps = {k: v / n for k, v in r.maps.items()}
        r.metrics = {t: {m: v / n for m, v in d.items()} for t, d in r.metrics.items()}
        r.p2p_toeplitz_r2 = r.p2p_toeplitz_r2 / n
    write_cross_term_report(
        results,
        Path(args.out),
        title=f"Cross terms of {args.ckpt}",
        n_windows=n,
        model_desc=_describe(hp),
        dpi=args.dpi,
        status=status_line(
            f"The attention-logit decomposition of `{args.ckpt}` over {n} test windows",
            utc_now()[:16] + " UTC",
            hardware_summary(),
            f"favit-ps analyze cross-terms --ckpt {args.ckpt}"
            + (f" --config {args.config}" if args.config else f" --data {args.data}")
            + f" --batches {args.batches} --out {args.out}",
        ),
    )
    print(f"wrote {args.out}/cross_terms.md ({n} test windows)")
    return 0


def _describe(hp: dict) -> str:
    keys = (
        "attention",
        "pos_encoding",
        "pos_inject",
        "pos_terms",
        "embed_parts",
        "delta_v",
        "d_model",
        "n_heads",
        "seq_len",
        "label_len",
        "pred_len",
    )
    return ", ".join(f"{k}={hp[k]}" for k in keys if k in hp)


def _plot_layer_maps(plt, r, out: Path, n_windows: int, dpi: int) -> None:
    """One figure per layer: a row per head, a column per term (and the bias remainder and the logits)."""
    from .cross_terms import TERM_LABELS

    cols = ("c2c", "c2p", "p2c", "p2p", "bias", "logits")
    n_heads = r.maps["logits"].shape[0]
    fig, axes = plt.subplots(n_heads, len(cols), figsize=(1.6 * len(cols), 1.5 * n_heads), squeeze=False)
    for h in range(n_heads):
        vmax = max(float(r.maps[c][h].abs().max()) for c in cols) or 1.0
        for j, c in enumerate(cols):
            ax = axes[h, j]
            ax.imshow(
                r.maps[c][h].float().numpy(),
                cmap="RdBu_r",
                vmin=-vmax,
                vmax=vmax,
                interpolation="nearest",
            )
            ax.set_xticks([]), ax.set_yticks([])
            if h == 0:
                lab = TERM_LABELS.get(c, c) + ("" if c in (*r.active, "bias", "logits") else " (off)")
                ax.set_title(lab, fontsize=7)
            if j == 0:
                ax.set_ylabel(f"head {h}", fontsize=7)
    fig.suptitle(
        f"{r.name} [{r.mode}]; row-centred, mean over {n_windows} windows; one scale per head", fontsize=8
    )
    fig.tight_layout()
    save_figure(fig, out / f"cross_terms_{r.name.replace('.', '_')}.png", dpi=dpi)
    plt.close(fig)


def _plot_shares(plt, results, out: Path, dpi: int) -> None:
    """Stacked bars per layer and head: each active term's share of the row-centred RMS."""
    from .cross_terms import TERM_LABELS

    fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results), 2.8), squeeze=False)
    for ax, r in zip(axes[0], results):
        names = [*r.active, "bias"]
        bottom = torch.zeros_like(r.metrics[names[0]]["share"])
        for t in names:
            v = r.metrics[t]["share"]
            ax.bar(range(len(v)), v.numpy(), bottom=bottom.numpy(), label=TERM_LABELS[t])
            bottom = bottom + v
        ax.set_title(r.name, fontsize=8)
        ax.set_xlabel("head")
    axes[0][0].set_ylabel("share of row-centred RMS")
    axes[0][-1].legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, out / "cross_terms_shares.png", dpi=dpi + 20)
    plt.close(fig)


def write_cross_term_report(
    results, out: Path, title: str, n_windows: int, model_desc: str = "", dpi: int = 60, status: str = ""
) -> None:
    """Heatmaps per layer, the shares chart, ``cross_terms.md`` (tables) and ``cross_terms.json`` in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .cross_terms import TERM_LABELS

    out.mkdir(parents=True, exist_ok=True)
    for r in results:
        _plot_layer_maps(plt, r, out, n_windows, dpi)
    _plot_shares(plt, results, out, dpi)

    lines = [
        f"# {title}",
        "",
        *([status, ""] if status else []),
        f"Model: {model_desc}",
        "",
        f"Test windows: {n_windows}. Per layer, mean over heads "
        "(per-head values in cross_terms.json). share = row-centred RMS of the term / Σ over the layer's active "
        "terms and the bias remainder; KL = mean over rows of KL(softmax(S) ‖ softmax(S − T)) when the term is "
        "removed; corr = Pearson correlation of the row-centred term with the row-centred logits.",
        "",
        "| layer | split | term | share | KL if removed | corr | raw RMS |",
        "|---|---|---|---|---|---|---|",
    ]
    js = []
    for r in results:
        for t, m in r.metrics.items():
            lines.append(
                f"| {r.name} | {r.mode} | {TERM_LABELS[t]} | {m['share'].mean():.3f} | "
                f"{m['kl_removed'].mean():.4f} | {m['corr'].mean():.3f} | {m['rms'].mean():.3f} |"
            )
        js.append(
            {
                "layer": r.name,
                "mode": r.mode,
                "active": list(r.active),
                "max_abs_sum_error": r.max_abs_sum_error,
                "p2p_toeplitz_r2": r.p2p_toeplitz_r2.tolist(),
                "metrics": {t: {k: v.tolist() for k, v in m.items()} for t, m in r.metrics.items()},
                **r.extra,
            }
        )
    lines += [
        "",
        "| layer | max \\|Σ terms − logits\\| | p2p Toeplitz R² (mean over heads) |",
        "|---|---|---|",
    ]
    for r in results:
        r2 = r.p2p_toeplitz_r2.mean()
        lines.append(f"| {r.name} | {r.max_abs_sum_error:.2e} | {'–' if torch.isnan(r2) else f'{r2:.3f}'} |")
    write_text(out / "cross_terms.md", "\n".join(lines) + "\n")
    write_text(
        out / "cross_terms.json",
        json.dumps({"title": title, "model": model_desc, "n_windows": n_windows, "layers": js}, indent=1),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="favit-ps analyze", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    ct = sub.add_parser("cross-terms", help="decompose the attention logits of a trained Informer checkpoint")
    ct.add_argument("--ckpt", required=True, help="Lightning checkpoint of a Forecaster (Informer network)")
    ct.add_argument("--config", default=None, help="fit config whose data section defines the test windows")
    ct.add_argument("--data", default="ETTh1", help="ETT dataset when no --config is given")
    ct.add_argument("--data-path", default=None, help="explicit CSV path for --data (default: the data root)")
    ct.add_argument("--batches", type=int, default=2, help="test batches to average over")
    ct.add_argument("--batch-size", type=int, default=32)
    ct.add_argument("--dpi", type=int, default=55)
    ct.add_argument("--out", required=True)
    fz = sub.add_parser(
        "fusion", help="draw what each cross-window fusion of trained FaViTs keeps, on test images"
    )
    fz.add_argument(
        "--ckpt", required=True, nargs="+", help="Lightning checkpoint(s) of FaViT ImageClassifiers"
    )
    fz.add_argument("--images", type=int, default=4, help="test images (evenly spaced over the test split)")
    fz.add_argument("--out", default="fusion_maps", help="output folder")
    fz.add_argument("--block", type=int, default=0, help="FaSA block drawn in every stage (-1: the last)")
    fz.add_argument(
        "--queries",
        type=float,
        nargs="+",
        default=[0.3, 0.3, 0.6, 0.7],
        help="query points as image-relative y x pairs in [0, 1)",
    )
    fz.add_argument(
        "--data-dir", default=None, help="dataset folder, if not where the checkpoint's config says"
    )
    fz.add_argument("--dpi", type=int, default=80)
    pdc = sub.add_parser("pos-decay", help="E_W[p_iᵀ W p_j] and row-cosine plots, sinusoidal vs Legendre")
    pdc.add_argument("--out", required=True)
    pdc.add_argument("--max-len", type=int, default=100)
    pdc.add_argument("--d-model", type=int, default=512)
    pdc.add_argument("--i", type=int, default=10)
    pdc.add_argument("--trials", type=int, default=25000)
    pdc.add_argument("--dpi", type=int, default=90)
    args = parser.parse_args(argv)
    if args.cmd == "cross-terms":
        return run_cross_terms(args)
    if args.cmd == "fusion":
        if len(args.queries) < 2 or len(args.queries) % 2 or not all(0 <= v < 1 for v in args.queries):
            parser.error("--queries takes pairs of image-relative coordinates y x in [0, 1)")
        return run_fusion(args)
    from .pos_decay import make_pos_decay_plots

    paths = make_pos_decay_plots(args.out, args.max_len, args.d_model, args.i, args.trials, args.dpi)
    for p in paths.values():
        print(f"wrote {p}")
    return 0
