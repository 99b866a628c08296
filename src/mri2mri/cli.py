"""The ``mri2mri`` command: builds configurations from arguments and calls the library.

Nothing here trains, evaluates or reads images itself. Errors of the user's making
(``UserError``) are printed as one line without a traceback and exit non-zero.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mri2mri import __version__
from mri2mri.config import (
    DEFAULT_RUN_NAME,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    check_int,
    parse_sources,
)
from mri2mri.errors import ConfigError, UserError
from mri2mri.threads import apply_thread_policy

if TYPE_CHECKING:
    from mri2mri.runfolder import RunFolder

# Defaults of `train` and `demo` (chosen by the equal-budget ablation in benchmarks/).
DEFAULTS = RunConfig()


# --------------------------------------------------------------------------------------------
# Shared options
# --------------------------------------------------------------------------------------------


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--source", type=parse_sources, default=DEFAULTS.data.source,
                       help="input contrast (T1, T2, FLAIR, T1c, PD), or several stacked as channels in "
                            "the order given: T1,T1c,FLAIR")  # fmt: skip
    group.add_argument("--target", default=DEFAULTS.data.target, help="contrast to synthesise")
    group.add_argument("--image-size", type=int, default=None, help="slice size in pixels (default 256)")
    group.add_argument("--context-slices", type=int, default=DEFAULTS.data.context_slices,
                       help="2.5D: neighbouring slices on each side as extra input channels")  # fmt: skip
    group.add_argument("--min-brain-fraction", type=float, default=DEFAULTS.data.min_brain_fraction)
    group.add_argument("--val-fraction", type=float, default=DEFAULTS.data.val_fraction)
    group.add_argument("--test-fraction", type=float, default=DEFAULTS.data.test_fraction)
    group.add_argument("--split-seed", type=int, default=DEFAULTS.data.split_seed)
    group.add_argument("--register", action="store_true", help="rigidly register source to target (mutual information)")
    group.add_argument("--cache", type=Path, default=None, help="where to keep the prepared slice cache")


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    model, train = DEFAULTS.model, DEFAULTS.train
    group = parser.add_argument_group("model")
    group.add_argument("--generator", default=model.generator,
                       help="basic, unet (the report's), resnet9, unet256 (pix2pix)")  # fmt: skip
    group.add_argument("--discriminator", default=model.discriminator,
                       help="basic (the report's PatchGAN), patch70, multiscale")  # fmt: skip
    group.add_argument("--base-channels", type=int, default=model.base_channels)
    group.add_argument("--norm", default=model.norm, help="batch, instance or none")
    group.add_argument("--dropout", type=float, default=model.dropout)
    group.add_argument("--upsample", default=model.upsample, help="transpose or resize")
    group.add_argument("--disc-layers", type=int, default=model.disc_layers)
    group.add_argument("--disc-scales", type=int, default=model.disc_scales)
    group.add_argument("--spectral-norm", action="store_true")
    group.add_argument("--residual", default=model.residual, choices=("intensity-map", "none"),
                       help="intensity-map: G learns a correction to the intensity-map baseline's image "
                            "(fitted on the training subjects); none: G makes the whole image")  # fmt: skip

    group = parser.add_argument_group("training")
    group.add_argument("--epochs", type=int, default=train.epochs)
    group.add_argument("--batch-size", type=int, default=train.batch_size)
    group.add_argument("--lr", type=float, default=train.lr)
    group.add_argument("--beta1", type=float, default=train.beta1)
    group.add_argument("--gan-loss", default=train.gan_loss, help="bce, lsgan, hinge or wgan-gp")
    group.add_argument("--lambda-l1", type=float, default=train.lambda_l1)
    group.add_argument("--lambda-l2", type=float, default=train.lambda_l2,
                       help="weight of the squared error (the conditional mean: what PSNR rewards)")  # fmt: skip
    group.add_argument("--lambda-ssim", type=float, default=train.lambda_ssim)
    group.add_argument("--lambda-fm", type=float, default=train.lambda_feature_matching,
                       help="weight of discriminator feature matching")  # fmt: skip
    group.add_argument("--lambda-perceptual", type=float, default=train.lambda_perceptual)
    group.add_argument("--perceptual-weights", default=None, help="state_dict file of the perceptual network")
    group.add_argument("--lambda-gp", type=float, default=train.lambda_gp)
    group.add_argument("--lr-decay-epochs", type=int, default=train.lr_decay_epochs)
    group.add_argument("--ema", type=float, default=train.ema_decay, help="EMA decay of G's weights (0: off)")
    group.add_argument("--grad-clip", type=float, default=train.grad_clip)
    group.add_argument("--d-steps", type=int, default=train.d_steps)
    group.add_argument("--augment", action=argparse.BooleanOptionalAction, default=DEFAULTS.data.augment,
                       help="MRI-aware augmentation of training slices (on by default; --no-augment turns it off)")  # fmt: skip
    group.add_argument("--seed", type=int, default=train.seed)
    group.add_argument("--init-from", default=None, metavar="CHECKPOINT",
                       help="start from another run's G and D weights (run folder or .pth; same networks)")  # fmt: skip
    group.add_argument("--device", default=train.device, help="auto, cpu, cuda or mps")
    group.add_argument("--precision", default=train.precision,
                       help="auto (bf16 on a GPU or a CPU with native bf16, else fp32), fp32, bf16 or fp16 (GPU)")  # fmt: skip
    group.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=train.channels_last,
                       help="NHWC memory format (default on: faster convolutions on CPUs and GPUs)")  # fmt: skip
    group.add_argument("--compile", action="store_true")
    group.add_argument("--num-workers", type=int, default=train.num_workers)
    group.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                       help="stop after this much training time, writing a checkpoint")  # fmt: skip
    group.add_argument("--max-steps-per-epoch", type=int, default=None)
    group.add_argument("--max-bad-steps", type=int, default=train.max_bad_steps)
    group.add_argument("--checkpoint-every", type=int, default=0, metavar="STEPS")
    group.add_argument("--preset", default=None, choices=sorted(PRESETS),
                       help="report-basic / report-unet: the report's experiments; pix2pix: its configuration")  # fmt: skip
    group.add_argument("--run-name", default=train.run_name)
    group.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    group.add_argument("--auto-resume", action="store_true",
                       help="resume when --out holds a checkpoint, else start (for torchrun --max-restarts)")  # fmt: skip


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lang", default="en", choices=("en", "zh"), help="language of figures and report")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


# Named configurations: the report's two experiments and pix2pix's, for reproducing them in one
# option. Options given explicitly on the command line win over the preset's values.
PRESETS: dict[str, dict[str, object]] = {
    "report-basic": {"generator": "basic", "discriminator": "basic", "base_channels": 64, "gan_loss": "bce",
                     "residual": "none", "augment": False},
    "report-unet": {"generator": "unet", "discriminator": "basic", "base_channels": 64, "gan_loss": "bce",
                    "residual": "none", "augment": False},
    "pix2pix": {"generator": "unet256", "discriminator": "patch70", "base_channels": 64, "gan_loss": "bce",
                "residual": "none", "augment": False},
}


def _apply_preset(args: argparse.Namespace) -> None:
    """Set the preset's values for every option still at its default."""
    if not args.preset:
        return
    defaults = {**vars(DEFAULTS.model), "gan_loss": DEFAULTS.train.gan_loss, "augment": DEFAULTS.data.augment}
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) == defaults[key]:
            setattr(args, key, value)


def _configs(args: argparse.Namespace, image_size: int) -> RunConfig:
    data = DataConfig(
        source=args.source,
        target=args.target,
        image_size=image_size,
        context_slices=args.context_slices,
        min_brain_fraction=args.min_brain_fraction,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        split_seed=args.split_seed,
        register=args.register,
        augment=args.augment,
    )
    model = ModelConfig(
        generator=args.generator,
        discriminator=args.discriminator,
        in_channels=data.in_channels,
        table_channel=data.table_channel,
        base_channels=args.base_channels,
        norm=args.norm,
        dropout=args.dropout,
        upsample=args.upsample,
        disc_layers=args.disc_layers,
        disc_scales=args.disc_scales,
        spectral_norm=args.spectral_norm,
        residual=args.residual,
    )
    train = TrainConfig(
        run_name=args.run_name,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        beta1=args.beta1,
        gan_loss=args.gan_loss,
        lambda_l1=args.lambda_l1,
        lambda_l2=args.lambda_l2,
        lambda_ssim=args.lambda_ssim,
        lambda_feature_matching=args.lambda_fm,
        lambda_perceptual=args.lambda_perceptual,
        perceptual_weights=args.perceptual_weights,
        lambda_gp=args.lambda_gp,
        lr_decay_epochs=args.lr_decay_epochs,
        ema_decay=args.ema,
        grad_clip=args.grad_clip,
        d_steps=args.d_steps,
        seed=args.seed,
        init_from=str(args.init_from) if args.init_from else None,
        device=args.device,
        precision=args.precision,
        channels_last=args.channels_last,
        compile=args.compile,
        num_workers=args.num_workers,
        time_budget=args.time_budget,
        max_steps_per_epoch=args.max_steps_per_epoch,
        max_bad_steps=args.max_bad_steps,
        lang=args.lang,
    )
    return RunConfig(data=data, model=model, train=train)


def _validate_choices(config: RunConfig) -> None:
    """Every name is checked before any data is prepared or any network is built."""
    from mri2mri import losses
    from mri2mri.models import check_image_size, check_model_config
    from mri2mri.runfolder import check_safe_name
    from mri2mri.runtime import check_precision, resolve_device

    check_safe_name(config.train.run_name)
    check_model_config(config.model)
    check_image_size(config.model, config.data.image_size)
    if config.train.gan_loss not in losses.GAN_LOSSES:
        raise ConfigError(
            f"unknown --gan-loss {config.train.gan_loss!r}; choose one of {', '.join(losses.GAN_LOSSES)}"
        )
    check_precision(config.train.precision, resolve_device(config.train.device))
    if config.train.gan_loss == "wgan-gp" and config.model.norm == "batch":
        # The gradient penalty assumes each sample's critic value depends on that sample alone.
        raise ConfigError("--gan-loss wgan-gp needs --norm instance or none (batch norm mixes samples)")


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


def cmd_phantom(args: argparse.Namespace) -> int:
    from mri2mri.data.phantom import write_phantom

    paths = write_phantom(args.out, n_subjects=args.subjects, seed=args.seed)
    print(f"wrote {len(paths)} simulated subjects (T1, T2, PD NIfTI) to {args.out}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from mri2mri.data.preprocess import prepare

    config = DataConfig(
        source=args.source, target=args.target,
        image_size=DEFAULTS.data.image_size if args.image_size is None else args.image_size,
        context_slices=args.context_slices, min_brain_fraction=args.min_brain_fraction,
        val_fraction=args.val_fraction, test_fraction=args.test_fraction,
        split_seed=args.split_seed, register=args.register,
    )  # fmt: skip
    out = prepare(args.data, config, args.out, progress=not args.quiet)
    print(f"slice cache ready: {out}")
    return 0


def _rank() -> int:
    """This process's rank under torchrun (0 otherwise)."""
    import os

    return int(os.environ.get("RANK", "0"))


def cmd_train(args: argparse.Namespace) -> int:
    import os

    from mri2mri.data.cache import SliceCache, is_cache
    from mri2mri.training import train

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not is_cache(args.data):
        raise UserError(
            f"{args.data}: under torchrun, train on a prepared cache (`mri2mri prepare DATA --out CACHE` "
            "first) so that the processes do not all prepare the data at once"
        )

    run_dir = args.out
    check_int("--checkpoint-every", args.checkpoint_every, 0)
    image_size = args.image_size
    if image_size is None:
        image_size = SliceCache(args.data).image_size[0] if is_cache(args.data) else 256
    config = _configs(args, image_size)
    if args.auto_resume and not args.resume:
        # torchrun restarts failed workers with the same command line: the first start trains
        # from scratch, every restart continues from the checkpoint the run has written.
        from mri2mri.checkpoint import has_checkpoint
        from mri2mri.runfolder import RunFolder

        args.resume = has_checkpoint(RunFolder(run_dir, config.train.run_name).last)
    if args.resume:
        config = _resume_config(run_dir, config, args)
    _validate_choices(config)
    from mri2mri.data.io import check_writable_folder
    from mri2mri.data.preprocess import ensure_cache
    from mri2mri.runfolder import RunFolder, RunLock, check_run_folder_location

    check_writable_folder(run_dir, "run folder")
    check_run_folder_location(run_dir, args.data)
    # Lock first: preparing data into the run folder must not touch an active run's cache.
    with contextlib.ExitStack() as stack:
        if _rank() == 0:
            stack.enter_context(RunLock(RunFolder(run_dir, config.train.run_name).lock))
        cache = ensure_cache(args.data, config.data, args.cache or run_dir / "cache")  # a cache is used as is
        if _rank() == 0:
            _record_split(cache, RunFolder(run_dir, config.train.run_name), args.resume)
        result = train(config, cache, run_dir, resume=args.resume, progress=not args.quiet,
                       checkpoint_every=args.checkpoint_every)  # fmt: skip
    if _rank() != 0:
        return 0
    how = "time budget reached" if result.stopped_by_budget else "done"
    print(f"training {how}: {result.epochs_done} epochs, {result.global_step} steps, "
          f"{result.train_seconds:.1f} s of training; run folder {run_dir}")  # fmt: skip
    return 0


def _resume_config(run_dir: Path, config: RunConfig, args: argparse.Namespace) -> RunConfig:
    """A resumed run keeps its saved configuration; only the length and budget may change."""
    from mri2mri.config import replace

    saved_file = run_dir / "config.json"
    if not saved_file.is_file():
        raise UserError(f"{run_dir}: nothing to resume (no config.json)")
    saved = RunConfig.load(saved_file)
    train = replace(saved.train, epochs=args.epochs, time_budget=args.time_budget,
                    device=args.device, num_workers=args.num_workers, lang=args.lang)  # fmt: skip
    return replace(saved, train=train)


def _record_split(cache: Path, folder: RunFolder, resume: bool) -> None:
    """The run keeps the split it trains on, written before the first step (a run stopped by a
    signal or a crash has it too), so `test` can refuse to score training subjects. A run that
    already has checkpoints keeps its own split (a fresh start there is refused anyway)."""
    from mri2mri.checkpoint import has_checkpoint
    from mri2mri.runfolder import write_split

    if not has_checkpoint(folder.last) or (resume and not folder.split.exists()):
        write_split(cache, folder.root)


def cmd_test(args: argparse.Namespace) -> int:
    from mri2mri.inference import evaluate_run

    metrics = evaluate_run(args.run, args.data, cache_dir=args.cache, out_dir=args.out,
                           lang=args.lang, device=args.device, batch_size=args.batch_size,
                           progress=not args.quiet,
                           uncertainty_passes=args.uncertainty_passes if args.uncertainty else 0,
                           trained_on=args.trained_on)  # fmt: skip
    print(json.dumps(metrics.get("summary", {}), indent=2))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from mri2mri.bids import is_bids_dataset, predict_bids
    from mri2mri.predict import predict_path

    options = dict(device=args.device, batch_size=args.batch_size, overwrite=args.overwrite,
                   precision=args.precision, uncertainty=args.uncertainty,
                   uncertainty_passes=args.uncertainty_passes)  # fmt: skip
    if args.contrast_inputs:  # --input CONTRAST=FILE ...: the one positional is OUTPUT
        from mri2mri.predict import parse_inputs

        given = [path for path in (args.input, args.output) if path is not None]
        if len(given) != 1:
            raise ConfigError("with --input CONTRAST=FILE give only OUTPUT (no INPUT)")
        written = predict_path(args.checkpoint, None, given[0], output_format=args.output_format,
                               inputs=parse_inputs(args.contrast_inputs), register=args.register, **options)  # fmt: skip
        for path in written:
            print(f"wrote {path}")
        return 0
    if args.input is None or args.output is None:
        raise ConfigError("predict needs INPUT and OUTPUT (or --input CONTRAST=FILE ... and OUTPUT)")
    if args.bids or is_bids_dataset(args.input):
        if args.output_format == "dicom":
            raise ConfigError("--output-format dicom does not apply to a BIDS dataset (BIDS is NIfTI)")
        written = predict_bids(args.checkpoint, args.input, args.output, **options)
    else:
        written = predict_path(args.checkpoint, args.input, args.output,
                               output_format=args.output_format, register=args.register, **options)  # fmt: skip
    for path in written:
        print(f"wrote {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from mri2mri.export import export_model

    written = export_model(args.checkpoint, onnx_path=args.onnx, safetensors_path=args.safetensors,
                           overwrite=args.overwrite)  # fmt: skip
    for path in written:
        print(f"wrote {path}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from mri2mri.compare import compare_runs
    from mri2mri.report import write_comparison_report

    table, csv_path, figure = compare_runs(args.runs, args.out, lang=args.lang)
    report = write_comparison_report(args.out, table, figure, args.lang)
    print(table)
    print(f"\nwrote {csv_path}, {figure}, {Path(args.out) / 'compare.md'} and {report}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Phantom -> prepare -> train -> test -> figures and report, on the built-in data."""
    import torch

    from mri2mri.data.phantom import write_phantom
    from mri2mri.data.preprocess import prepare
    from mri2mri.inference import evaluate_run
    from mri2mri.training import train

    started = time.perf_counter()
    out = Path(args.out)
    on_gpu = torch.cuda.is_available() and args.device in ("auto", "cuda")
    # Sized to finish in minutes on 2 CPU cores; full resolution where a GPU is present.
    image_size = args.image_size if args.image_size is not None else (256 if on_gpu else 128)
    epochs = args.epochs or (60 if on_gpu else 30)
    args.image_size = image_size
    args.epochs = epochs
    config = _configs(args, image_size)
    _validate_choices(config)
    data_dir = out / "phantom"
    if not (data_dir / "sub-01").is_dir():
        print(f"[1/4] simulating {args.subjects} subjects (T1, T2, PD) into {data_dir}")
        write_phantom(data_dir, n_subjects=args.subjects, seed=args.seed)
    print(f"[2/4] preparing slices ({image_size} px) into {out / 'cache'}")
    cache = prepare(data_dir, config.data, out / "cache", progress=not args.quiet)
    run_dir = out / config.train.run_name
    print(f"[3/4] training {config.model.generator} generator + {config.model.discriminator} "
          f"discriminator for {epochs} epochs into {run_dir}")  # fmt: skip
    from mri2mri.runfolder import RunFolder

    _record_split(cache, RunFolder(run_dir, config.train.run_name), args.resume)
    train(config, cache, run_dir, resume=args.resume, progress=not args.quiet)
    print("[4/4] testing on held-out subjects")
    metrics = evaluate_run(run_dir, cache, lang=args.lang, device=args.device, progress=not args.quiet)
    print(json.dumps(metrics.get("summary", {}), indent=2))
    print(f"demo finished in {time.perf_counter() - started:.0f} s; open {run_dir / 'report.html'}")
    return 0


# --------------------------------------------------------------------------------------------
# Parser and entry point
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mri2mri", description="Translate one MRI contrast into another with conditional GANs."
    )
    parser.add_argument("--version", action="version", version=f"mri2mri {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="the whole experiment on the built-in simulated data")
    demo.add_argument("--out", type=Path, default=Path("outputs"))
    demo.add_argument("--subjects", type=int, default=10, help="number of simulated subjects")
    _add_data_options(demo)
    _add_train_options(demo)
    _add_common(demo)
    demo.set_defaults(func=cmd_demo, epochs=None)

    phantom = sub.add_parser("phantom", help="write the simulated T1/T2/PD dataset as NIfTI subject folders")
    phantom.add_argument("--out", type=Path, required=True)
    phantom.add_argument("--subjects", type=int, default=10)
    phantom.add_argument("--seed", type=int, default=0)
    phantom.set_defaults(func=cmd_phantom)

    prep = sub.add_parser("prepare", help="volumes or PNG pairs -> slice cache with a subject-level split")
    prep.add_argument("data", type=Path)
    prep.add_argument("--out", type=Path, required=True)
    _add_data_options(prep)
    prep.add_argument("--quiet", action="store_true")
    prep.set_defaults(func=cmd_prepare)

    tr = sub.add_parser("train", help="train on raw data or a prepared cache")
    tr.add_argument("data", type=Path, help="a slice cache, a folder of subjects, or a PNG-pair root")
    tr.add_argument("--out", type=Path, default=Path("outputs") / DEFAULT_RUN_NAME, help="run folder")
    _add_data_options(tr)
    _add_train_options(tr)
    _add_common(tr)
    tr.set_defaults(func=cmd_train)

    te = sub.add_parser("test", help="metrics, baselines, figures and report on the run's test split")
    te.add_argument("run", type=Path, help="run folder or checkpoint")
    te.add_argument("data", type=Path, nargs="?", default=None,
                    help="cache or raw data (default: the cache the run trained on)")  # fmt: skip
    te.add_argument("--out", type=Path, default=None, help="where to write (default: the run folder)")
    te.add_argument("--cache", type=Path, default=None)
    te.add_argument("--device", default="auto")
    te.add_argument("--batch-size", type=int, default=16)
    te.add_argument("--uncertainty", action="store_true",
                    help="also measure how well the test-time-augmentation uncertainty ranks the errors "
                         "(Spearman per subject in metrics.json) and draw it in the test figures")  # fmt: skip
    te.add_argument("--uncertainty-passes", type=int, default=8, metavar="K",
                    help="number of test-time passes for --uncertainty (default 8)")  # fmt: skip
    te.add_argument("--trained-on", type=Path, default=None, metavar="SPLIT",
                    help="for a run folder without split.json: its split.json or the slice cache it trained "
                         "on, so that DATA is checked for training subjects")  # fmt: skip
    _add_common(te)
    te.set_defaults(func=cmd_test)

    pr = sub.add_parser("predict", help="synthesise a volume (NIfTI/DICOM in, NIfTI/DICOM out), an image, or a BIDS dataset")
    pr.add_argument("checkpoint", type=Path, help="checkpoint (.pth), run folder, or exported .onnx")
    pr.add_argument("input", type=Path, nargs="?",
                    help="NIfTI file, DICOM folder, PNG/TIFF, or a folder of them; for a model of several "
                         "sources a subject folder (contrasts found by name) or a folder of them")  # fmt: skip
    pr.add_argument("output", type=Path, nargs="?", help="output file, or folder in batch mode")
    pr.add_argument("--input", dest="contrast_inputs", action="append", default=None, metavar="CONTRAST=FILE",
                    help="one input of a model of several sources, named by contrast (repeat: --input "
                         "T1=t1.nii.gz --input FLAIR=flair.nii.gz); then give only OUTPUT")  # fmt: skip
    pr.add_argument("--register", action="store_true",
                    help="several sources: rigidly register each input to the first before resampling")  # fmt: skip
    pr.add_argument("--device", default="auto")
    pr.add_argument("--precision", default="auto",
                    help="auto (bf16 on a GPU or a CPU with native bf16, else fp32), fp32, bf16 or fp16 (GPU)")  # fmt: skip
    pr.add_argument("--batch-size", type=int, default=16)
    pr.add_argument("--overwrite", action="store_true")
    pr.add_argument("--output-format", default="auto", choices=("auto", "nifti", "dicom"),
                    help="auto: a DICOM series in gives a DICOM series folder out (unless OUTPUT ends in "
                         ".nii/.nii.gz), NIfTI in gives NIfTI out; dicom: a new MR series (one file per "
                         "slice, marked synthetic). From a DICOM input it keeps the study, patient and "
                         "every slice's geometry and points at the input slices (Source Image Sequence); "
                         "from a NIfTI input the geometry comes from the affine, the study and patient "
                         "UIDs are new and there is no Source Image Sequence")  # fmt: skip
    pr.add_argument("--bids", action="store_true",
                    help="INPUT is a BIDS dataset (automatic when it holds dataset_description.json): "
                         "write a BIDS derivative dataset into OUTPUT, "
                         "sub-XX/[ses-YY/]anat/sub-XX[_ses-YY]_desc-synthetic_<T2w...>.nii.gz + JSON sidecars")  # fmt: skip
    pr.add_argument("--uncertainty", action="store_true",
                    help="also write <output>_uncertainty.nii.gz: the voxelwise std over test-time passes "
                         "(horizontal flips and 1-2 pixel shifts); volumes only")  # fmt: skip
    pr.add_argument("--uncertainty-passes", type=int, default=8, metavar="K",
                    help="number of test-time passes for --uncertainty (default 8)")  # fmt: skip
    pr.set_defaults(func=cmd_predict)

    ex = sub.add_parser("export", help="ONNX and safetensors export, with a model card")
    ex.add_argument("checkpoint", type=Path)
    ex.add_argument("--onnx", type=Path, default=None)
    ex.add_argument("--safetensors", type=Path, default=None)
    ex.add_argument("--overwrite", action="store_true")
    ex.set_defaults(func=cmd_export)

    co = sub.add_parser("compare", help="one table and one figure across runs")
    co.add_argument("runs", type=Path, nargs="+")
    co.add_argument("--out", type=Path, default=Path("outputs") / "comparison")
    co.add_argument("--lang", default="en", choices=("en", "zh"))
    co.set_defaults(func=cmd_compare)
    return parser


def _trailing_output(parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str]) -> None:
    """``predict CKPT --input T1=a.nii.gz ... OUTPUT``: argparse gives up on a positional after
    options once the optional positionals were passed by, so take that one OUTPUT here; anything
    else left over is refused as ``parse_args`` refuses it."""
    trailing = (getattr(args, "func", None) is cmd_predict and getattr(args, "contrast_inputs", None)
                and args.input is None and args.output is None and len(extra) == 1
                and not extra[0].startswith("-"))  # fmt: skip
    if not trailing:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.output = Path(extra[0])


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()  # imports no torch: the thread policy can still be chosen after it
    args, extra = parser.parse_known_args(argv)
    if extra:
        _trailing_output(parser, args, extra)
    if getattr(args, "func", None) in (cmd_train, cmd_test, cmd_predict, cmd_demo):
        # Before torch loads (the OpenMP runtime reads its settings then); only the commands
        # that run networks pay the probe's fifth of a second.
        apply_thread_policy()
    if hasattr(args, "preset"):
        _apply_preset(args)
    warnings.simplefilter("default")
    warnings.formatwarning = lambda message, category, *rest: f"warning: {message}\n"
    try:
        return int(args.func(args) or 0)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return int(getattr(error, "exit_code", 2))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
