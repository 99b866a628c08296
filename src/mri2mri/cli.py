"""The ``mri2mri`` command: builds configurations from arguments and calls the library.

Nothing here trains, evaluates or reads images itself. Errors of the user's making
(``UserError``) are printed as one line without a traceback and exit non-zero.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from mri2mri import __version__, console
from mri2mri.config import (
    BRAIN_EXTRACTIONS,
    LANGUAGES,
    PRESETS,
    DataConfig,
    RunConfig,
    check_int,
    preset_changes,
)
from mri2mri.errors import ConfigError, UserError
from mri2mri.options import (
    PREDICT_PRECISION,
    PREDICT_PRECISION_HELP,
    add_config_options,
    check_run,
    check_uncertainty,
    config_from_args,
    help_of,
    part_from_args,
)
from mri2mri.runfolder import (
    DEFAULT_RUN_NAME,
    RunFolder,
    RunLock,
    check_run_folder_location,
    write_split,
)
from mri2mri.threads import apply_thread_policy

# --------------------------------------------------------------------------------------------
# Options that are not part of the run configuration (those are derived from it: options.py)
# --------------------------------------------------------------------------------------------


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """``train`` and ``demo``: every field of the run configuration, plus how to run it."""
    add_config_options(parser, "data")
    parser.add_argument("--cache", type=Path, default=None, help="where to keep the prepared slice cache")
    add_config_options(parser, "model")
    add_config_options(parser, "train", title="training")
    add_config_options(parser, "augmentation", title="augmentation (with --augment)")
    group = parser.add_argument_group("how to run")
    group.add_argument("--preset", default=None, choices=sorted(PRESETS),
                       help="report-basic / report-unet: the report's experiments; pix2pix: its configuration")  # fmt: skip
    group.add_argument("--checkpoint-every", type=int, default=0, metavar="STEPS")
    group.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    group.add_argument("--auto-resume", action="store_true",
                       help="resume when --out holds a checkpoint, else start (for torchrun --max-restarts)")  # fmt: skip


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lang", default="en", choices=LANGUAGES, help="language of figures and report")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _apply_preset(args: argparse.Namespace) -> None:
    """Set the preset's values for every option still at its default."""
    if args.preset:
        for key, value in preset_changes(args.preset, vars(args)).items():
            setattr(args, key, value)


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


def cmd_phantom(args: argparse.Namespace) -> int:
    from mri2mri.data.phantom import write_phantom

    paths = write_phantom(args.out, n_subjects=args.subjects, seed=args.seed)
    console.say(f"wrote {len(paths)} simulated subjects (T1, T2, PD NIfTI) to {args.out}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from mri2mri.data.preprocess import prepare

    image_size = DataConfig.image_size if args.image_size is None else args.image_size
    config = part_from_args("data", args, image_size=image_size)
    out = prepare(args.data, config, args.out, progress=not args.quiet)
    console.say(f"slice cache ready: {out}")
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
    config = config_from_args(args, image_size)
    if args.auto_resume and not args.resume:
        # torchrun restarts failed workers with the same command line: the first start trains
        # from scratch, every restart continues from the checkpoint the run has written.
        from mri2mri.checkpoint import has_checkpoint

        args.resume = has_checkpoint(RunFolder(run_dir, config.train.run_name).last)
    if args.resume:
        config = _resume_config(run_dir, config, args)
    check_run(config)
    from mri2mri.data.io import check_writable_folder
    from mri2mri.data.preprocess import ensure_cache

    check_writable_folder(run_dir, "run folder")
    check_run_folder_location(run_dir, args.data)
    # Lock first: preparing data into the run folder must not touch an active run's cache.
    with contextlib.ExitStack() as stack:
        if _rank() == 0:
            stack.enter_context(RunLock(RunFolder(run_dir, config.train.run_name).lock))
        cache = ensure_cache(args.data, config.data, args.cache or RunFolder(run_dir).cache)  # a cache is used as is
        if _rank() == 0:
            _record_split(cache, RunFolder(run_dir, config.train.run_name), args.resume)
        result = train(config, cache, run_dir, resume=args.resume, progress=not args.quiet,
                       checkpoint_every=args.checkpoint_every)  # fmt: skip
    if _rank() != 0:
        return 0
    how = "time budget reached" if result.stopped_by_budget else "done"
    console.say(f"training {how}: {result.epochs_done} epochs, {result.global_step} steps, "
                f"{result.train_seconds:.1f} s of training; run folder {run_dir}")  # fmt: skip
    return 0


def _resume_config(run_dir: Path, config: RunConfig, args: argparse.Namespace) -> RunConfig:
    """A resumed run keeps its saved configuration; only the length and budget may change."""
    from mri2mri.config import replace

    saved_file = RunFolder(run_dir).config
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

    if not has_checkpoint(folder.last) or (resume and not folder.split.exists()):
        write_split(cache, folder.root)


def cmd_test(args: argparse.Namespace) -> int:
    from mri2mri.inference import evaluate_run

    metrics = evaluate_run(args.run, args.data, cache_dir=args.cache, out_dir=args.out,
                           lang=args.lang, device=args.device, batch_size=args.batch_size,
                           progress=not args.quiet,
                           uncertainty_passes=check_uncertainty(args.uncertainty, args.uncertainty_passes),
                           trained_on=args.trained_on, correction_weight=args.correction_weight,
                           tta_passes=args.tta)  # fmt: skip
    console.say(json.dumps(metrics.get("summary", {}), indent=2))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from mri2mri.bids import is_bids_dataset, predict_bids
    from mri2mri.predict import predict_path

    options = dict(device=args.device, batch_size=args.batch_size, overwrite=args.overwrite,
                   precision=args.precision, uncertainty=args.uncertainty,
                   uncertainty_passes=args.uncertainty_passes, correction_weight=args.correction_weight,
                   allow_synthetic_input=args.allow_synthetic_input, tta_passes=args.tta)  # fmt: skip
    extraction = dict(brain_extraction=args.brain_extraction, save_mask=args.save_mask)
    if args.contrast_inputs:  # --input CONTRAST=FILE ...: the one positional is OUTPUT
        from mri2mri.predict import parse_inputs

        given = [path for path in (args.input, args.output) if path is not None]
        if len(given) != 1:
            raise ConfigError("with --input CONTRAST=FILE give only OUTPUT (no INPUT)")
        written = predict_path(args.checkpoint, None, given[0], output_format=args.output_format,
                               inputs=parse_inputs(args.contrast_inputs), register=args.register, **options,
                               **extraction)  # fmt: skip
        for path in written:
            console.say(f"wrote {path}")
        return 0
    if args.input is None or args.output is None:
        raise ConfigError("predict needs INPUT and OUTPUT (or --input CONTRAST=FILE ... and OUTPUT)")
    if args.bids or is_bids_dataset(args.input):
        if args.output_format == "dicom":
            raise ConfigError("--output-format dicom does not apply to a BIDS dataset (BIDS is NIfTI)")
        if args.brain_extraction is not None or args.save_mask:  # BIDS derivatives name their own files
            raise ConfigError("--brain-extraction and --save-mask apply to volumes, not to a BIDS dataset; "
                              "predict its volumes one by one")  # fmt: skip
        written = predict_bids(args.checkpoint, args.input, args.output, **options)
    else:
        written = predict_path(args.checkpoint, args.input, args.output,
                               output_format=args.output_format, register=args.register, **options,
                               **extraction)  # fmt: skip
    for path in written:
        console.say(f"wrote {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from mri2mri.export import export_model

    written = export_model(args.checkpoint, onnx_path=args.onnx, safetensors_path=args.safetensors,
                           overwrite=args.overwrite, correction_weight=args.correction_weight)  # fmt: skip
    for path in written:
        console.say(f"wrote {path}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from mri2mri.compare import compare_runs
    from mri2mri.report import write_comparison_report

    table, csv_path, figure = compare_runs(args.runs, args.out, lang=args.lang)
    report = write_comparison_report(args.out, table, figure, args.lang)
    console.say(table)
    console.say(f"\nwrote {csv_path}, {figure}, {Path(args.out) / 'compare.md'} and {report}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from mri2mri.pretrained import model_card, models_table

    console.say(models_table() if args.name is None else model_card(args.name))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Phantom -> prepare -> train -> test -> figures and report, on the built-in data."""
    import torch

    from mri2mri.data.phantom import write_phantom
    from mri2mri.data.preprocess import prepare
    from mri2mri.inference import evaluate_run
    from mri2mri.runtime import demo_cpu_epochs
    from mri2mri.training import train

    started = time.perf_counter()
    out = Path(args.out)
    on_gpu = torch.cuda.is_available() and args.device in ("auto", "cuda")
    # Under ten minutes on 2 CPU cores (fewer epochs where they train in fp32); 256 px on a GPU.
    image_size = args.image_size if args.image_size is not None else (256 if on_gpu else 128)
    args.image_size = image_size
    args.epochs = epochs = args.epochs or (60 if on_gpu else demo_cpu_epochs(args.precision))
    config = config_from_args(args, image_size)
    check_run(config)
    data_dir = out / "phantom"
    if not (data_dir / "sub-01").is_dir():
        console.say(f"[1/4] simulating {args.subjects} subjects (T1, T2, PD) into {data_dir}")
        write_phantom(data_dir, n_subjects=args.subjects, seed=args.seed)
    console.say(f"[2/4] preparing slices ({image_size} px) into {out / 'cache'}")
    cache = prepare(data_dir, config.data, out / "cache", progress=not args.quiet)
    run_dir = out / config.train.run_name
    console.say(f"[3/4] training {config.model.generator} generator + {config.model.discriminator} "
                f"discriminator for {epochs} epochs into {run_dir}")  # fmt: skip
    _record_split(cache, RunFolder(run_dir, config.train.run_name), args.resume)
    train(config, cache, run_dir, resume=args.resume, progress=not args.quiet)
    console.say("[4/4] testing on held-out subjects")
    metrics = evaluate_run(run_dir, cache, lang=args.lang, device=args.device, progress=not args.quiet)
    console.say(json.dumps(metrics.get("summary", {}), indent=2))
    console.say(f"demo finished in {time.perf_counter() - started:.0f} s; open {RunFolder(run_dir).report}")
    return 0


# --------------------------------------------------------------------------------------------
# Parser and entry point
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``mri2mri`` parser; it imports no torch, so the thread policy can still be chosen."""
    parser = argparse.ArgumentParser(
        prog="mri2mri", description="Translate one MRI contrast into another with conditional GANs."
    )
    parser.add_argument("--version", action="version", version=f"mri2mri {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_demo, _add_phantom, _add_prepare, _add_train, _add_test, _add_predict,
                _add_export, _add_compare, _add_models):  # fmt: skip
        add(sub)
    return parser


def _add_demo(sub) -> None:
    demo = sub.add_parser("demo", help="the whole experiment on the built-in simulated data")
    demo.add_argument("--out", type=Path, default=Path("outputs"))
    demo.add_argument("--subjects", type=int, default=10, help="number of simulated subjects")
    _add_run_options(demo)
    _add_common(demo)
    demo.set_defaults(func=cmd_demo, epochs=None)


def _add_phantom(sub) -> None:
    phantom = sub.add_parser("phantom", help="write the simulated T1/T2/PD dataset as NIfTI subject folders")
    phantom.add_argument("--out", type=Path, required=True)
    phantom.add_argument("--subjects", type=int, default=10)
    phantom.add_argument("--seed", type=int, default=0)
    phantom.set_defaults(func=cmd_phantom)


def _add_prepare(sub) -> None:
    prep = sub.add_parser("prepare", help="volumes or PNG pairs -> slice cache with a subject-level split")
    prep.add_argument("data", type=Path)
    prep.add_argument("--out", type=Path, required=True)
    add_config_options(prep, "data", exclude=("augment",))  # augmentation is training's, not the cache's
    prep.add_argument("--quiet", action="store_true")
    prep.set_defaults(func=cmd_prepare)


def _add_train(sub) -> None:
    tr = sub.add_parser("train", help="train on raw data or a prepared cache")
    tr.add_argument("data", type=Path, help="a slice cache, a folder of subjects, or a PNG-pair root")
    tr.add_argument("--out", type=Path, default=Path("outputs") / DEFAULT_RUN_NAME, help="run folder")
    _add_run_options(tr)
    _add_common(tr)
    tr.set_defaults(func=cmd_train)


def _add_uncertainty(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--uncertainty", action="store_true", help=what)
    parser.add_argument("--uncertainty-passes", type=int, default=None, metavar="K",
                        help="number of test-time passes for --uncertainty (default 8)")  # fmt: skip


def _add_tta(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.add_argument("--tta", type=int, default=1, metavar="K",
                        help=f"{verb} the mean of K test-time passes (flips and 1-2 pixel shifts, each undone): "
                             "K times slower, slightly higher SSIM and PSNR; default 1, one plain pass")  # fmt: skip


def _add_correction_weight(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.add_argument("--correction-weight", type=float, default=None, metavar="W",
                        help=f"{verb} a residual generator with this share of its learned correction "
                             "(0 to 1; default: the one it was trained with)")  # fmt: skip


def _add_test(sub) -> None:
    te = sub.add_parser("test", help="metrics, baselines, figures and report on the run's test split")
    te.add_argument("run", type=Path, help="run folder or checkpoint")
    te.add_argument("data", type=Path, nargs="?", default=None,
                    help="cache or raw data (default: the cache the run trained on)")  # fmt: skip
    te.add_argument("--out", type=Path, default=None, help="where to write (default: the run folder)")
    te.add_argument("--cache", type=Path, default=None)
    te.add_argument("--device", default="auto")
    te.add_argument("--batch-size", type=int, default=16)
    _add_uncertainty(te, "also measure how well the test-time-augmentation uncertainty ranks the errors "
                         "(Spearman per subject in metrics.json) and draw it in the test figures")  # fmt: skip
    te.add_argument("--trained-on", type=Path, default=None, metavar="SPLIT",
                    help="for a run folder without split.json: its split.json or the slice cache it trained "
                         "on, so that DATA is checked for training subjects")  # fmt: skip
    _add_correction_weight(te, "score")
    _add_tta(te, "score")
    _add_common(te)
    te.set_defaults(func=cmd_test)


def _add_predict(sub) -> None:
    pr = sub.add_parser("predict", help="synthesise a volume (NIfTI/DICOM in, NIfTI/DICOM out), an image, or a BIDS dataset")
    pr.add_argument("checkpoint", type=Path, help="checkpoint (.pth), run folder, exported .onnx, or the name "
                                                   "of a ready-made model (`mri2mri models`)")  # fmt: skip
    pr.add_argument("input", type=Path, nargs="?",
                    help="NIfTI file, DICOM folder, PNG/TIFF, or a folder of them; for a model of several "
                         "sources a subject folder (contrasts found by name) or a folder of them")  # fmt: skip
    pr.add_argument("output", type=Path, nargs="?", help="output file, or folder in batch mode")
    pr.add_argument("--input", dest="contrast_inputs", action="append", default=None, metavar="CONTRAST=FILE",
                    help="one input of a model of several sources, named by contrast (repeat: --input "
                         "T1=t1.nii.gz --input FLAIR=flair.nii.gz); then give only OUTPUT")  # fmt: skip
    pr.add_argument("--register", action="store_true",
                    help="several sources: rigidly register each input to the first before resampling")  # fmt: skip
    pr.add_argument("--brain-extraction", default=None, choices=BRAIN_EXTRACTIONS,
                    help=help_of(DataConfig, "brain_extraction") + " (default: the model's own setting)")  # fmt: skip
    pr.add_argument("--save-mask", action="store_true",
                    help="also write <output>_mask.nii.gz: the brain mask used, on the input's grid")  # fmt: skip
    pr.add_argument("--device", default="auto")
    pr.add_argument("--precision", default=PREDICT_PRECISION, help=PREDICT_PRECISION_HELP)
    pr.add_argument("--batch-size", type=int, default=16)
    pr.add_argument("--overwrite", action="store_true")
    pr.add_argument("--allow-synthetic-input", action="store_true",
                    help="take inputs marked synthetic (an output of mri2mri, DICOM Synthetic Data YES); "
                         "refused by default, and left out of a batch with a note")  # fmt: skip
    pr.add_argument("--output-format", default="auto", choices=("auto", "nifti", "dicom"), help=OUTPUT_FORMAT_HELP)
    pr.add_argument("--bids", action="store_true",
                    help="INPUT is a BIDS dataset (automatic when it holds dataset_description.json): "
                         "write a BIDS derivative dataset into OUTPUT, "
                         "sub-XX/[ses-YY/]anat/sub-XX[_ses-YY]_desc-synthetic_<T2w...>.nii.gz + JSON sidecars")  # fmt: skip
    _add_correction_weight(pr, "run")
    _add_tta(pr, "write")
    _add_uncertainty(pr, "also write <output>_uncertainty.nii.gz: the voxelwise std over test-time passes "
                         "(horizontal flips and 1-2 pixel shifts); volumes only")  # fmt: skip
    pr.set_defaults(func=cmd_predict)


OUTPUT_FORMAT_HELP = (
    "auto: a DICOM series in gives a DICOM series folder out (unless OUTPUT ends in .nii/.nii.gz), "
    "NIfTI in gives NIfTI out; dicom: a new MR series (one file per slice, marked synthetic). From a "
    "DICOM input it keeps the study, patient and every slice's geometry and points at the input "
    "slices (Source Image Sequence); from a NIfTI input the geometry comes from the affine, the study "
    "and patient UIDs are new and there is no Source Image Sequence"
)


def _add_export(sub) -> None:
    ex = sub.add_parser("export", help="ONNX and safetensors export, with a model card")
    ex.add_argument("checkpoint", type=Path, help="checkpoint (.pth), run folder, or a ready-made model's name")
    ex.add_argument("--onnx", type=Path, default=None)
    ex.add_argument("--safetensors", type=Path, default=None)
    ex.add_argument("--overwrite", action="store_true")
    _add_correction_weight(ex, "export")
    ex.set_defaults(func=cmd_export)


def _add_compare(sub) -> None:
    co = sub.add_parser("compare", help="one table and one figure across runs")
    co.add_argument("runs", type=Path, nargs="+")
    co.add_argument("--out", type=Path, default=Path("outputs") / "comparison")
    co.add_argument("--lang", default="en", choices=LANGUAGES)
    co.set_defaults(func=cmd_compare)


def _add_models(sub) -> None:
    mo = sub.add_parser("models", help="the ready-made models: contrasts, training data, cross-validated scores")
    mo.add_argument("name", nargs="?", default=None, help="print this model's card instead of the table")
    mo.set_defaults(func=cmd_models)


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
        console.note(f"error: {error}")
        return int(getattr(error, "exit_code", 2))
    except KeyboardInterrupt:
        console.note("interrupted")
        return 130
    except BrokenPipeError:  # `mri2mri models | head`: the reader has gone, which is no error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own advice
        return 0


if __name__ == "__main__":
    sys.exit(main())
